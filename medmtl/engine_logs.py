"""Engine log lines that mislead or repeat what medmtl already says; ``--verbose`` keeps them all."""

from __future__ import annotations

import logging


class _EngineStartFilter(logging.Filter):
    """Drops ignite's "Engine run resuming from iteration 0" line.

    MONAI's engines set their epoch count before ``run()``, so ignite announces every fresh run (and
    every validation pass) as a resumption, and a real resumption as one "from iteration 0" before
    the checkpoint is loaded; medmtl says itself when it resumes a run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Engine run resuming from iteration 0," not in record.getMessage()


def quiet_engine_logs(evaluator_info: bool = True) -> None:
    """Install :class:`_EngineStartFilter` on the loggers of MONAI's trainer and evaluator.

    Args:
        evaluator_info: keep the evaluator's INFO lines (epoch complete, run finished); inference
            turns them off, as its own progress says the same per case.
    """
    for name in ("SupervisedTrainer", "SupervisedEvaluator", "Workflow"):
        log = logging.getLogger(f"ignite.engine.engine.{name}")
        if not any(isinstance(f, _EngineStartFilter) for f in log.filters):
            log.addFilter(_EngineStartFilter())
    if not evaluator_info:
        logging.getLogger("ignite.engine.engine.SupervisedEvaluator").setLevel(logging.WARNING)


class _RunSummaryFilter(logging.Filter):
    """Drops MONAI's "input summary" of ``monai.bundle.run``: every override, case lists included."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(("--- input summary", "> ")) or msg.strip() == "---")


def quiet_run_summary() -> None:
    """Install :class:`_RunSummaryFilter` on MONAI's bundle-script logger (inference by default)."""
    log = logging.getLogger("monai.bundle.scripts")
    if not any(isinstance(f, _RunSummaryFilter) for f in log.filters):
        log.addFilter(_RunSummaryFilter())

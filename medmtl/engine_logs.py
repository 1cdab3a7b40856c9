"""Engine log lines that mislead or repeat what medmtl already says; ``--verbose`` keeps them all."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _EngineStartFilter(logging.Filter):
    """Drops ignite's "Engine run resuming from iteration 0" line.

    MONAI's engines set their epoch count before ``run()``, so ignite announces every fresh run (and
    every validation pass) as a resumption, and a real resumption as one "from iteration 0" before
    the checkpoint is loaded; medmtl says itself when it resumes a run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Engine run resuming from iteration 0," not in record.getMessage()


def _install(logger_name: str, kind: type[logging.Filter]) -> None:
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in log.filters):
        log.addFilter(kind())


def quiet_engine_logs() -> None:
    """Install :class:`_EngineStartFilter` on the loggers of MONAI's trainer and evaluator."""
    for name in ("SupervisedTrainer", "SupervisedEvaluator", "Workflow"):
        _install(f"ignite.engine.engine.{name}", _EngineStartFilter)


class _RunSummaryFilter(logging.Filter):
    """Drops MONAI's "input summary" of ``monai.bundle.run``: every override, case lists included."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(("--- input summary", "> ")) or msg.strip() == "---")


class _LoggingSetupFilter(logging.Filter):
    """Drops MONAI's "Setting logging properties based on config: ..." line of every bundle run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting logging properties")


def quiet_logging_setup() -> None:
    """Install :class:`_LoggingSetupFilter` on MONAI's bundle-workflow logger (unless verbose)."""
    _install("monai.bundle.workflows", _LoggingSetupFilter)


def quiet_run_summary() -> None:
    """Install :class:`_RunSummaryFilter` (and :func:`quiet_logging_setup`) on MONAI's bundle loggers."""
    _install("monai.bundle.scripts", _RunSummaryFilter)
    quiet_logging_setup()


class _PlainFormatter(logging.Formatter):
    """``medmtl: warning: MESSAGE``: one line, no time stamp or logger name."""

    def format(self, record: logging.LogRecord) -> str:
        return f"medmtl: {record.levelname.lower()}: {' '.join(record.getMessage().split())}"


#: the logger of MONAI's ``StatsHandler`` (the inference config's handler logs a failure's traceback there)
STATS_LOGGER = "monai.handlers.StatsHandler"


class _EngineFailureFilter(logging.Filter):
    """Drops the evaluator's own report of an exception (its message, then a full traceback).

    The command reports what went wrong in one line (see :mod:`medmtl.cli`); ignite's "terminating
    due to exception" and MONAI's ``StatsHandler`` traceback would print it again, hundreds of lines
    long, before that line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(
            (
                "Engine run is terminating due to exception",
                "Current run is terminating due to exception",
                "Exception: ",
            )
        )


@contextmanager
def quiet_inference_logs() -> Iterator[None]:
    """Inference as a user runs it: no engine start lines, no run summary, no evaluator epoch lines.

    The evaluator's INFO lines (epoch complete, run finished) say per run what the per-case progress
    already says; they are back after the block.
    """
    quiet_engine_logs()
    quiet_run_summary()
    evaluator = logging.getLogger("ignite.engine.engine.SupervisedEvaluator")
    level = evaluator.level
    evaluator.setLevel(logging.WARNING)
    failure = _EngineFailureFilter()
    reporters = [evaluator, logging.getLogger(STATS_LOGGER)]
    for log in reporters:
        log.addFilter(failure)
    # medmtl's own warnings (a constant contrast, a scan outside what the model knows) as one plain
    # line on stderr, like the command's errors, not in the engine's timestamped log format.
    own = logging.getLogger("medmtl")
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_PlainFormatter())
    propagate = own.propagate
    own.addHandler(handler)
    own.propagate = False
    try:
        yield
    finally:
        evaluator.setLevel(level)
        for log in reporters:
            log.removeFilter(failure)
        own.removeHandler(handler)
        own.propagate = propagate

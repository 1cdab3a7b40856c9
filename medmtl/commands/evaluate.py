"""``medmtl evaluate``: score predictions against the ground truth (metrics, summary, report, figures)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medmtl.datalist import DATALIST_SECTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl evaluate``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("pred_dir", type=Path, help="folder of predictions written by inference")
    parser.add_argument("--datalist", type=Path, required=True, help="medmtl datalist JSON")
    parser.add_argument(
        "--dataset-dir", type=Path, default=None, help="root of the datalist's relative paths"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: PRED_DIR/evaluation)")
    parser.add_argument(
        "--section", default="training", choices=list(DATALIST_SECTIONS), help="datalist section(s) to score"
    )
    parser.add_argument("--cases", nargs="+", default=None, metavar="ID", help="score only these cases")
    parser.add_argument("--no-figures", action="store_true", help="skip the per-case and summary figures")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl evaluate`` (see :func:`medmtl.evaluation.cli_main`)."""
    from medmtl.evaluation import cli_main

    return cli_main(args)

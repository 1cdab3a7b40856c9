"""``medmtl demo``: the whole pipeline on built-in synthetic data, in a few minutes on a CPU."""

from __future__ import annotations

import argparse

from medmtl.commands.arg_types import positive_int
from medmtl.demo import DEMO_DEFAULTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl demo``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument(
        "--cases", type=positive_int, default=DEMO_DEFAULTS["n_cases"], help="number of phantoms"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=DEMO_DEFAULTS["epochs"], help="training epochs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of phantoms, folds and training")
    parser.add_argument(
        "--stage",
        default="plain",
        choices=["plain", "all"],
        help="plain: joint training from scratch; all: the staged schedule",
    )
    parser.add_argument("--fresh", action="store_true", help="delete a previous demo in --out first")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl demo`` (see :func:`medmtl.demo.cli_main`)."""
    from medmtl.demo import cli_main

    return cli_main(args)

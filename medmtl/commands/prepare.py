"""``medmtl prepare``: discover and validate cases, write a datalist with patient-grouped folds."""

from __future__ import annotations

import argparse

from medmtl.commands.arg_types import positive_int
from medmtl.conventions import CONVENTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl prepare``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument(
        "data_dir", help="dataset folder (BraTS 2018-21, 2023+, UPENN-GBM, MSD Task01; any depth)"
    )
    parser.add_argument("--out", required=True, help="datalist JSON to write (report written beside it)")
    parser.add_argument(
        "--folds", type=positive_int, default=5, help="patient-grouped cross-validation folds"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    parser.add_argument("--strict", action="store_true", help="any bad case: exit 1 and write nothing")
    parser.add_argument(
        "--convention",
        choices=list(CONVENTIONS),
        default=None,
        help="declare the label convention (default: detect per case from the label values)",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="keep cases lacking a contrast (default: skip them)"
    )
    parser.add_argument(
        "--unlabelled",
        choices=["test", "train"],
        default="test",
        help="cases without a label map: 'test' lists them for inference only (default); 'train' adds them "
        "to the training folds as unlabelled studies, which train the synthesis loss only",
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="threads reading files in parallel")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl prepare`` (see :func:`data_prep.datalist.cli_main`)."""
    from data_prep.datalist import cli_main

    return cli_main(args)

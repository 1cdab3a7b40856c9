"""``medmtl phantoms``: write synthetic BraTS-like cases in a release layout (built-in data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.phantoms.naming import LAYOUT_ALIASES, LAYOUTS, SEG_DTYPES
from medmtl.commands.arg_types import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl phantoms``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("out", type=Path, help="dataset folder to write the cases into")
    parser.add_argument("--n", type=positive_int, default=8, help="number of cases")
    parser.add_argument(
        "--shape", type=positive_int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"), help="grid size"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        default=None,
        metavar="MM",
        help="voxel size in mm, one value or three (default: isotropic, filling a 240x240x155 mm BraTS "
        "field of view, e.g. 2.5 for 96 96 64)",
    )
    parser.add_argument(
        "--layout",
        default="brats2023",
        choices=[*LAYOUTS, *LAYOUT_ALIASES],
        help="release file layout and label values: "
        + "; ".join(f"{k}: {v.pattern}" for k, v in LAYOUTS.items()),
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the set; case i uses a seed derived from (seed, i)"
    )
    parser.add_argument(
        "--seg-dtype", default="uint8", choices=SEG_DTYPES, help="on-disk dtype of the label maps"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace case folders that exist")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl phantoms`` (see :func:`data_prep.phantoms.cli.cli_main`)."""
    from data_prep.phantoms.cli import cli_main

    return cli_main(args)

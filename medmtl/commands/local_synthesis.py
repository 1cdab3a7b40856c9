"""``medmtl inpaint`` and ``medmtl synth-lesion``: local synthesis in a region of a case."""

from __future__ import annotations

import argparse

from medmtl.commands.arg_types import device_name


def _add_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("case", help="case folder (any supported layout) with all four contrasts")
    if task == "inpaint":
        parser.add_argument("--mask", required=True, help="region to fill (NIfTI on the case's grid)")
    else:
        parser.add_argument(
            "--label", required=True, help="lesion label map (NIfTI, BraTS labels, case grid)"
        )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--bundle", default=None, help="bundle with models/local_synthesis (default: shipped)"
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="torch device (default: cuda when available)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def add_inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl inpaint``.

    Args:
        parser: the subcommand's parser.
    """
    _add_arguments(parser, "inpaint")


def add_lesion_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl synth-lesion``.

    Args:
        parser: the subcommand's parser.
    """
    _add_arguments(parser, "lesion")


def inpaint_main(args: argparse.Namespace) -> int:
    """Run ``medmtl inpaint`` (see :func:`medmtl.local_synthesis.cli_main`)."""
    from medmtl.local_synthesis import cli_main

    return cli_main(args, "inpaint")


def lesion_main(args: argparse.Namespace) -> int:
    """Run ``medmtl synth-lesion`` (see :func:`medmtl.local_synthesis.cli_main`)."""
    from medmtl.local_synthesis import cli_main

    return cli_main(args, "lesion")

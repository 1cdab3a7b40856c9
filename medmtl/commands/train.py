"""``medmtl train``: run the bundle's training configs (staged schedule, one stage, or an ablation)."""

from __future__ import annotations

import argparse

from medmtl.commands.arg_types import positive_int
from medmtl.stages import ABLATIONS, STAGES, TASK_CONFIGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl train``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("--dataset-dir", required=True, help="root of the datalist's paths")
    parser.add_argument("--datalist", required=True, help="datalist JSON from `medmtl prepare`")
    parser.add_argument("--out", required=True, help="run folder: becomes a bundle with trained weights")
    parser.add_argument(
        "--stage",
        default="all",
        choices=["all", "plain", *STAGES, *ABLATIONS, *TASK_CONFIGS],
        help=f"all: the staged schedule {' -> '.join(STAGES)}; plain: joint training from scratch; "
        "one stage; a single-task ablation; local_synthesis (healthy-tissue inpainting + lesion "
        "synthesis); or refine (a full-resolution head over a trained coarse model, given by "
        "--set coarse_weights=RUN/models/model.pt)",
    )
    parser.add_argument("--preset", default="cpu", choices=["cpu", "gpu"], help="cpu: 2 mm, small widths")
    parser.add_argument("--bundle", default=None, help="source bundle (default: the shipped one)")
    parser.add_argument("--epochs", type=positive_int, help="max_epochs for each stage")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")


def main(args: argparse.Namespace) -> int:
    """Run ``medmtl train`` (see :func:`medmtl.training.cli_main`)."""
    from medmtl.training import cli_main

    return cli_main(args)

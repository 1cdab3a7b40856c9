"""The ``medmtl`` command line: one subcommand per pipeline stage.

Each stage lives in its own module (or an object of a module, ``module:attribute``), which provides
``add_cli_arguments(parser)`` and ``cli_main(args) -> int``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help). Order is the order of the pipeline.
COMMANDS: dict[str, tuple[str, str]] = {
    "phantoms": ("data_prep.phantoms", "write synthetic BraTS-like cases (built-in data)"),
    "prepare": ("data_prep.datalist", "discover + validate cases and write a datalist with folds"),
    "train": ("medmtl.training", "train the bundle: staged schedule, one stage, or an ablation"),
    "infer": ("medmtl.inference", "sliding-window inference: seg + synthesised contrasts as NIfTI"),
    "evaluate": ("medmtl.evaluation", "score predictions: metrics.csv, summary.json, report.md, figures"),
    "export": ("medmtl.export", "export the trained network to TorchScript or ONNX"),
    "inpaint": ("medmtl.local_synthesis:inpaint_command", "fill a masked region with healthy tissue"),
    "synth-lesion": ("medmtl.local_synthesis:lesion_command", "paint a tumour from a label map into a case"),
    "demo": ("medmtl.demo", "the whole pipeline on built-in synthetic data (CPU, a few minutes)"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand's arguments.

    Returns:
        The top-level parser; ``args.func`` is the chosen stage's ``cli_main``.
    """
    from medmtl import __version__

    parser = argparse.ArgumentParser(
        prog="medmtl",
        description="Multi-task brain-tumour MRI: segmentation + contrast synthesis with MONAI.",
    )
    parser.add_argument("--version", action="version", version=f"medmtl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module_path, _, attr = module_name.partition(":")
        module = importlib.import_module(module_path)
        if attr:
            module = getattr(module, attr)
        p = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip().split("\n")[0]
        )
        module.add_cli_arguments(p)
        p.set_defaults(func=module.cli_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmtl`` console script.

    Args:
        argv: arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit code.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as err:
        # User errors: one clear line, no traceback.
        print(f"medmtl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

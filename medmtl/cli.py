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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; only the chosen subcommand's module is imported.

    Every stage module imports torch and MONAI (seconds); ``medmtl --help``, ``--version`` and the
    list of commands need none of them.

    Args:
        command: the subcommand whose arguments to add (its module is imported); None adds none.

    Returns:
        The top-level parser; ``args.func`` is the chosen stage's ``cli_main``.
    """
    from medmtl import __version__

    parser = argparse.ArgumentParser(
        prog="medmtl",
        description="Multi-task brain-tumour MRI: segmentation + contrast synthesis with MONAI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medmtl {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show library warnings and engine logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        if name != command:
            continue
        module_path, _, attr = module_name.partition(":")
        module = importlib.import_module(module_path)
        if attr:
            module = getattr(module, attr)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if not args.verbose:
        import warnings

        # Our bundle configs are ours: MONAI's notice that a config may run code is for configs of
        # unknown origin. Deprecation notices of the libraries are not the user's business either.
        warnings.filterwarnings("ignore", message=r"parsing config_file .*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError) as err:
        # User errors: one clear line, no traceback.
        print(f"medmtl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``medmtl`` command line: one subcommand per pipeline stage.

Each subcommand's arguments live in a light module of :mod:`medmtl.commands` (no torch, no MONAI),
whose entry point imports the stage that does the work; this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module of :mod:`medmtl.commands`, its argument adder, its entry point). Order is the
#: order of the pipeline.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "phantoms": ("phantoms", "add_arguments", "main"),
    "prepare": ("prepare", "add_arguments", "main"),
    "train": ("train", "add_arguments", "main"),
    "infer": ("infer", "add_arguments", "main"),
    "evaluate": ("evaluate", "add_arguments", "main"),
    "export": ("export", "add_arguments", "main"),
    "inpaint": ("local_synthesis", "add_inpaint_arguments", "inpaint_main"),
    "synth-lesion": ("local_synthesis", "add_lesion_arguments", "lesion_main"),
    "demo": ("demo", "add_arguments", "main"),
}
#: one-line help of each subcommand (kept here: the list of commands imports none of their modules)
HELP: dict[str, str] = {
    "phantoms": "write synthetic BraTS-like cases (built-in data)",
    "prepare": "discover + validate cases and write a datalist with folds",
    "train": "train the bundle: staged schedule, one stage, or an ablation",
    "infer": "sliding-window inference: seg + synthesised contrasts as NIfTI",
    "evaluate": "score predictions: metrics.csv, summary.json, report.md, figures",
    "export": "export the trained network to TorchScript or ONNX",
    "inpaint": "fill a masked region with healthy tissue",
    "synth-lesion": "paint a tumour from a label map into a case",
    "demo": "the whole pipeline on built-in synthetic data (CPU, a few minutes)",
}

VERBOSE_HELP = "show library warnings and engine logs"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Print a warning as one ``medmtl: warning: ...`` line (no class name, no source line)."""
    text = " ".join(str(message).split())
    print(f"medmtl: warning: {text}", file=file or sys.stderr, flush=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one worth reading (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


class _Parser(argparse.ArgumentParser):
    """An argument error is one line, as every other user error is, and says where the usage is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; only the chosen subcommand's module is imported.

    The stages import torch and MONAI (seconds); parsing, help and argument errors need neither.

    Args:
        command: the subcommand whose arguments to add (its module is imported); None adds none.

    Returns:
        The top-level parser; ``args.func`` is the chosen stage's ``cli_main``.
    """
    from medmtl._version import __version__

    parser = _Parser(
        prog="medmtl",
        description="Multi-task brain-tumour MRI: segmentation + contrast synthesis with MONAI.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"medmtl {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, (module_name, add, entry) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=HELP[name],
            description=HELP[name],
            formatter_class=_HelpFormatter,
        )
        # --verbose is read before or after the subcommand: SUPPRESS keeps the top level's value.
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if name != command:
            continue
        module = importlib.import_module(f"medmtl.commands.{module_name}")
        getattr(module, add)(p)
        p.set_defaults(func=getattr(module, entry))
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
    import warnings

    shown = warnings.showwarning
    try:
        return _run(args)
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand; every failure a user can act on is one line on stderr."""
    import warnings

    from medmtl.errors import MissingDependencyError

    if not args.verbose:
        from medmtl.engine_logs import quiet_logging_setup

        quiet_logging_setup()
        warnings.showwarning = _one_line_warning
        # Our bundle configs are ours: MONAI's notice that a config may run code is for configs of
        # unknown origin. Deprecation notices of the libraries are not the user's business either.
        warnings.filterwarnings("ignore", message=r"parsing config_file .*", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Every output is written whole or not at all (medmtl.io): an interrupt leaves finished files only.
        out = getattr(args, "out", None)
        kept = f"finished outputs are kept in {out}, " if out else ""
        print(
            f"medmtl {args.command}: interrupted; {kept}the file being written was discarded; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    except (FileNotFoundError, FileExistsError, PermissionError, ValueError, MissingDependencyError) as err:
        # User errors (and an optional package a feature needs): one clear line, no traceback.
        print(f"medmtl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # The system refused (a full disk, a read-only folder): one line naming the file and what to do.
        print(f"medmtl {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The command line's arguments: one module per ``medmtl`` subcommand, with no heavy imports.

Each module holds ``add_arguments(parser)`` and ``main(args) -> int``; ``main`` imports the stage
that does the work only when it runs, so ``medmtl <cmd> --help`` and argument errors answer at once
(torch and MONAI take seconds to import). The checks that need no library (choices, numeric
ranges, device names) are argparse types (:mod:`medmtl.commands.arg_types`).
"""

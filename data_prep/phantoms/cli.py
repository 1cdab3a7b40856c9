"""``medmtl phantoms``: write a synthetic data set (arguments in :mod:`medmtl.commands.phantoms`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_prep.phantoms.writer import get_layout, write_phantoms


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl phantoms``.

    Args:
        args: parsed arguments of :func:`medmtl.commands.phantoms.add_arguments`.

    Returns:
        Exit code 0.
    """
    spacing = args.spacing
    if spacing is not None and len(spacing) not in (1, 3):
        raise ValueError(f"--spacing takes one value or three, got {len(spacing)}")
    if spacing is not None and len(spacing) == 1:
        spacing = spacing[0]
    naming = get_layout(args.layout)
    start = time.perf_counter()

    def report(folder: Path) -> None:
        print(f"wrote {folder}", file=sys.stderr)

    folders = write_phantoms(
        args.out,
        n=args.n,
        shape=args.shape,
        layout=naming.name,
        seed=args.seed,
        spacing=spacing,
        seg_dtype=args.seg_dtype,
        overwrite=args.overwrite,
        progress=report,
    )
    elapsed = time.perf_counter() - start
    print(
        f"{len(folders)} {naming.name} phantom case(s) in {args.out} ({naming.pattern}), "
        f"{elapsed / len(folders):.1f} s per case"
    )
    return 0

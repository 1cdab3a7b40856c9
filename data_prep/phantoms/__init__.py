"""Write synthetic BraTS-like cases: skull-stripped T1, T1c, T2, FLAIR and a tumour label map.

The toolkit's built-in data. Each case is a procedural brain (folded cortex, white matter, deep grey
nuclei, ventricles, CSF, cerebellum, brainstem) with a glioma-like tumour (necrotic core, enhancing
rim, oedema spreading along white matter, mass effect), rendered with the tissue contrast of each
sequence, a bias field, Rician noise and a per-case intensity scale, and stored like a real release
(LPS int16 volumes, label values of its convention).

Command line::

    medmtl phantoms OUT --n 8 --shape 96 96 64 --layout brats2023 --seed 0

Python::

    from data_prep.phantoms import make_phantom, write_phantoms
    case = make_phantom((96, 96, 64), seed=0)          # arrays in memory
    folders = write_phantoms("phantoms", n=8, seed=0)  # files on disk
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from data_prep.phantoms.anatomy import TISSUES
from data_prep.phantoms.phantom import Phantom, default_spacing, lps_affine, make_phantom
from data_prep.phantoms.tumour import KINDS
from data_prep.phantoms.writer import (
    LAYOUT_ALIASES,
    LAYOUTS,
    SEG_DTYPES,
    case_seed,
    get_layout,
    write_case,
    write_phantoms,
)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``medmtl phantoms`` arguments to ``parser``.

    Args:
        parser: the subcommand's parser.
    """
    parser.add_argument("out", type=Path, help="dataset folder to write the cases into")
    parser.add_argument("--n", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=[96, 96, 64],
        metavar=("X", "Y", "Z"),
        help="grid size (default 96 96 64)",
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
        "--seg-dtype",
        default="uint8",
        choices=SEG_DTYPES,
        help="on-disk dtype of the label maps (default uint8)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace case folders that exist")


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl phantoms``.

    Args:
        args: parsed arguments of :func:`add_cli_arguments`.

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


__all__ = [
    "KINDS",
    "LAYOUTS",
    "LAYOUT_ALIASES",
    "SEG_DTYPES",
    "TISSUES",
    "Phantom",
    "add_cli_arguments",
    "case_seed",
    "cli_main",
    "default_spacing",
    "get_layout",
    "lps_affine",
    "make_phantom",
    "write_case",
    "write_phantoms",
]

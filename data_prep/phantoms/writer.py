"""Write phantom cases to disk in the file layout of a real BraTS-style release."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_prep.phantoms.naming import LAYOUT_ALIASES, LAYOUTS, SEG_DTYPES, ReleaseNaming  # noqa: F401
from data_prep.phantoms.phantom import Phantom, make_phantom
from medmtl.contrasts import CONTRASTS
from medmtl.io import write_json, write_nifti
from medmtl.labels import check_convention

#: Name of the manifest written beside the cases.
MANIFEST = "phantoms.json"


def get_layout(name: str) -> ReleaseNaming:
    """Look up a layout by name or alias.

    Args:
        name: ``brats2023``, ``brats2021`` (or ``brats2018-2021``), ``upenn`` (or ``upenn_gbm``).

    Returns:
        The layout.

    Raises:
        ValueError: for an unknown name.
    """
    key = LAYOUT_ALIASES.get(name, name)
    if key not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; expected one of {[*LAYOUTS, *LAYOUT_ALIASES]}")
    return LAYOUTS[key]


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a set made with ``seed`` (independent streams per case).

    Args:
        seed: the set's seed.
        index: case number.

    Returns:
        A 32-bit seed derived from (seed, index) with numpy's ``SeedSequence``.
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_case(
    phantom: Phantom,
    out: str | os.PathLike,
    case_id: str,
    layout: str = "brats2023",
    seg_dtype: str = "uint8",
    with_label: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write one phantom as a case folder ``out/<case_id>/`` of a release layout.

    The files are written into a hidden temporary folder beside the case and the folder is
    renamed into place at the end, so a case folder is complete or absent.

    Args:
        phantom: the case.
        out: dataset folder.
        case_id: the case id (folder and file prefix).
        layout: release layout (see :data:`LAYOUTS`).
        seg_dtype: on-disk dtype of the label map (:data:`SEG_DTYPES`).
        with_label: write the label map (False: an inference-only case).
        overwrite: replace an existing case folder.

    Returns:
        The case folder.

    Raises:
        FileExistsError: if the case folder exists and ``overwrite`` is False.
        ValueError: for an unknown layout or dtype, or a phantom whose label convention is not the
            layout's.
    """
    naming = get_layout(layout)
    if seg_dtype not in SEG_DTYPES:
        raise ValueError(f"seg_dtype must be one of {SEG_DTYPES}, got {seg_dtype!r}")
    if check_convention(phantom.convention) != naming.convention:
        raise ValueError(
            f"layout {naming.name} stores labels in the {naming.convention} convention, "
            f"but the phantom's labels are {phantom.convention}"
        )
    out_dir = Path(out)
    final = out_dir / case_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"case folder {final} exists; pass overwrite=True (--overwrite) to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}.", dir=out_dir))
    old: Path | None = None
    try:
        note = f"medmtl phantom seed={phantom.seed}"
        for c, contrast in enumerate(CONTRASTS):
            name = naming.file_name(case_id, naming.files[contrast])
            write_nifti(tmp / name, phantom.images[c], phantom.affine, dtype=np.int16, description=note)
        if with_label:
            name = naming.file_name(case_id, naming.label)
            write_nifti(
                tmp / name, phantom.label, phantom.affine, dtype=np.dtype(seg_dtype), description=note
            )
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a dataset folder is not
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{case_id}.old.", dir=out_dir))
            os.replace(final, old / case_id)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_phantoms(
    out: str | os.PathLike,
    n: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    layout: str = "brats2023",
    seed: int = 0,
    spacing: float | Sequence[float] | None = None,
    seg_dtype: str = "uint8",
    overwrite: bool = False,
    progress: Any = None,
) -> list[Path]:
    """Write ``n`` phantom cases in a release layout, plus a ``phantoms.json`` manifest.

    Case ``i`` is made from :func:`case_seed` ``(seed, i)``, so the same arguments always give
    bit-identical files, and case ``i`` is the same whatever ``n`` is.

    Args:
        out: dataset folder (created if needed).
        n: number of cases.
        shape: grid size of every case.
        layout: ``brats2023``, ``brats2021`` or ``upenn`` (file names and label values as in the
            real release).
        seed: seed of the set.
        spacing: voxel size (mm); default fills a BraTS field of view (2.5 mm for 96x96x64).
        seg_dtype: on-disk dtype of the label maps.
        overwrite: replace existing case folders.
        progress: optional callable, called with each finished case folder.

    Returns:
        The case folders, in order.

    Raises:
        FileExistsError: if a case folder exists and ``overwrite`` is False (checked before any
            case is written).
        ValueError: for bad arguments.
    """
    naming = get_layout(layout)
    if n < 1:
        raise ValueError(f"number of cases must be at least 1, got {n}")
    out_dir = Path(out)
    ids = [naming.case_id.format(index=i) for i in range(n)]
    if not overwrite:
        taken = [str(out_dir / i) for i in ids if (out_dir / i).exists()]
        if taken:
            raise FileExistsError(
                f"{len(taken)} case folder(s) exist, e.g. {taken[0]}; pass overwrite=True (--overwrite)"
            )
    folders, cases = [], []
    for i, case_id in enumerate(ids):
        phantom = make_phantom(shape, spacing, case_seed(seed, i), naming.convention)
        folders.append(write_case(phantom, out_dir, case_id, naming.name, seg_dtype, overwrite=overwrite))
        cases.append({"case_id": case_id, "seed": phantom.seed, **phantom.info})
        if progress is not None:
            progress(folders[-1])
    write_json(
        out_dir / MANIFEST,
        {
            "description": "synthetic BraTS-like cases made by medmtl phantoms",
            "layout": naming.name,
            "pattern": naming.pattern,
            "label_convention": naming.convention,
            "seed": int(seed),
            "shape": [int(s) for s in shape],
            "spacing_mm": [float(s) for s in phantom.spacing],
            "cases": cases,
        },
    )
    return folders

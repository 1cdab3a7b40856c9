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

import importlib
from typing import Any

#: public name -> the submodule that defines it (loaded on first use: the command line lists
#: layouts without importing numpy and torch)
_EXPORTS: dict[str, str] = {
    "TISSUES": "anatomy",
    "Phantom": "phantom",
    "default_spacing": "phantom",
    "lps_affine": "phantom",
    "make_phantom": "phantom",
    "KINDS": "tumour",
    "LAYOUT_ALIASES": "naming",
    "LAYOUTS": "naming",
    "SEG_DTYPES": "naming",
    "case_seed": "writer",
    "get_layout": "writer",
    "write_case": "writer",
    "write_phantoms": "writer",
    "cli_main": "cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"data_prep.phantoms.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'data_prep.phantoms' has no attribute {name!r}")

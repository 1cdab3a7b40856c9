"""Raw clinical studies made BraTS-like before inference, and outputs mapped back onto them.

Modules, in the order a study goes through them:

- :mod:`~medmtl.preprocessing.dicom`: a contrast from a NIfTI file or a DICOM series folder;
- :mod:`~medmtl.preprocessing.registration`: rigid mutual-information co-registration and the 1 mm grid
  (SimpleITK);
- :mod:`~medmtl.preprocessing.brain`: brain extraction with HD-BET (``pip install "medmtl[clinical]"``);
- :mod:`~medmtl.preprocessing.study`: the whole step before inference and the mapping back after it.

Names load on first use, so ``import medmtl.preprocessing`` costs nothing until one is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "read_volume": "dicom",
    "study_sources": "dicom",
    "RigidRegistration": "registration",
    "register_rigid": "registration",
    "isotropic_grid": "registration",
    "resample": "registration",
    "ras_affine": "registration",
    "hd_bet_mask": "brain",
    "check_brain_volume": "brain",
    "PreprocessedStudy": "study",
    "preprocess_study": "study",
    "choose_reference": "study",
    "map_case_outputs": "study",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medmtl.preprocessing.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medmtl.preprocessing' has no attribute {name!r}")

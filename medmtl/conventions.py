"""BraTS label conventions and region names, as plain data (no torch, no MONAI).

The conversions that use them are in :mod:`medmtl.labels`; this module is what the command line
needs to list choices without importing those libraries.
"""

from __future__ import annotations

#: Region channel order of every network output and region tensor.
REGIONS: tuple[str, ...] = ("TC", "WT", "ET")

#: Label values per convention: name -> {"NETC": v, "SNFH": v, "ET": v}.
CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2021": {"NETC": 1, "SNFH": 2, "ET": 4},
    "brats2023": {"NETC": 1, "SNFH": 2, "ET": 3},
    "msd": {"NETC": 2, "SNFH": 1, "ET": 3},
}

#: Conventions that may be written as outputs (MSD is read, never written).
OUTPUT_CONVENTIONS: tuple[str, ...] = ("brats2021", "brats2023")
#: The convention of outputs for a case that names none, and for MSD-labelled inputs.
DEFAULT_OUTPUT_CONVENTION = "brats2023"


def writable_convention(convention: str | None) -> str:
    """The convention a case's outputs are written in (the one place of this fallback).

    Args:
        convention: the case's (or the requested) convention; None when unknown.

    Returns:
        ``convention`` when outputs can be written in it, else :data:`DEFAULT_OUTPUT_CONVENTION`
        (MSD-labelled inputs are answered in BraTS 2023 values, the nearest writable convention).
    """
    return convention if convention in OUTPUT_CONVENTIONS else DEFAULT_OUTPUT_CONVENTION


#: BraTS overlay colours (RGB 0-1) used by figures: NETC red, SNFH green, ET yellow.
COLOURS: dict[str, tuple[float, float, float]] = {
    "NETC": (1.0, 0.0, 0.0),
    "SNFH": (0.0, 0.8, 0.0),
    "ET": (1.0, 1.0, 0.0),
}

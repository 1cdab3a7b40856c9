"""Reading one contrast of a raw study: a NIfTI file or a DICOM series folder, as one 3D volume."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import SimpleITK as sitk

from medmtl.contrasts import canonical


def read_volume(path: str | os.PathLike, contrast: str = "image") -> sitk.Image:
    """Read a 3D volume from a NIfTI (or other ITK-readable) file or a folder holding one DICOM series.

    Args:
        path: a file, or a folder with the DICOM files of one series (read with SimpleITK's
            ``ImageSeriesReader``, slices sorted by position by GDCM).
        contrast: the contrast's name, for messages.

    Returns:
        The volume, with its geometry (origin, spacing, direction) in ITK's LPS space.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a folder with no DICOM series or several, an unreadable file, or a volume
            that is not 3D; naming the path and what was expected.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{contrast}: {p} does not exist")
    if p.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
        if not series:
            raise ValueError(f"{contrast}: {p} is a folder without a DICOM series; expected one series")
        if len(series) > 1:
            raise ValueError(
                f"{contrast}: {p} holds {len(series)} DICOM series ({', '.join(series)}); expected one"
            )
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series[0]))
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise ValueError(f"{contrast}: cannot read the DICOM series in {p}: {_first_line(err)}") from None
    else:
        try:
            image = sitk.ReadImage(str(p))
        except RuntimeError as err:
            raise ValueError(f"{contrast}: cannot read {p} as an image: {_first_line(err)}") from None
    size = image.GetSize()
    if image.GetDimension() != 3 or min(size) < 2 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{contrast}: {p}: expected one 3D volume (a series of at least 2 slices), found size {size}"
            f" with {image.GetNumberOfComponentsPerPixel()} component(s)"
        )
    return image


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _dicom_folder(p: Path) -> bool:
    return p.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p)))


def study_sources(case: str | os.PathLike | Mapping[str, str | os.PathLike]) -> tuple[str, dict[str, str]]:
    """The files (or DICOM folders) of a raw study, by canonical contrast.

    A folder's entries are named by the same rule as any case's files (the last ``_``/``-``
    separated token(s) of the name, e.g. ``..._t1c.nii.gz``, ``..._fla.nii.gz``, ``T2_FLAIR/``;
    see :func:`data_prep.layouts.split_case_file`), but the part before it may differ from entry to
    entry, as series exported from a scanner do. Label maps (``seg``) are ignored.

    Args:
        case: the study folder, or ``{contrast: file or DICOM folder}`` in any contrast spelling.

    Returns:
        ``(case id, {contrast: absolute path})``; the id is the folder's name (or the first file's).

    Raises:
        FileNotFoundError: for a missing folder or file.
        ValueError: when no contrast is found or one contrast has two entries, naming them.
    """
    from data_prep.layouts import LABEL_SUFFIX, split_case_file, strip_nifti_suffix

    if isinstance(case, Mapping):
        out = {}
        for key, path in case.items():
            if not Path(path).exists():
                raise FileNotFoundError(f"{key}: {path} does not exist")
            out[canonical(key)] = str(Path(path).resolve())
        if not out:
            raise ValueError("no contrast files given")
        first = Path(next(iter(out.values())))
        stem = strip_nifti_suffix(first.name) or first.name
        return stem, out
    folder = Path(case)
    if not folder.is_dir():
        raise FileNotFoundError(f"study folder {folder} does not exist")
    found: dict[str, str] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = strip_nifti_suffix(entry.name) if entry.is_file() else entry.name
        parsed = split_case_file(stem) if stem else None
        if parsed is None and entry.is_dir() and stem:
            try:  # a series folder named just after its contrast ("FLAIR/")
                parsed = ("", "", canonical(stem))
            except ValueError:
                parsed = None
        if parsed is None or parsed[2] == LABEL_SUFFIX or (entry.is_dir() and not _dicom_folder(entry)):
            continue
        contrast = parsed[2]
        if contrast in found:
            raise ValueError(
                f"{folder}: two entries for contrast {contrast}: "
                f"{Path(found[contrast]).name} and {entry.name}"
            )
        found[contrast] = str(entry.resolve())
    if not found:
        raise ValueError(
            f"{folder}: no contrast found; expected NIfTI files or DICOM series folders whose names end in "
            "a contrast (e.g. _t1, _t1c, _t2, _flair, or -t1n/-t1c/-t2w/-t2f)"
        )
    return folder.resolve().name, found

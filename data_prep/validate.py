"""Check that a discovered case can be trained or inferred on, and say precisely what is wrong if not.

Every problem names the file and the reason: a missing contrast, an unreadable or truncated file,
a 2D/4D volume where a 3D one is expected, a shape or affine that differs between the contrasts and
the label map, non-finite voxels, or label values outside the BraTS label conventions.

Each file is opened once: headers are checked first (cheap), then the voxel data are read once
(decompressing the whole file is also what detects a truncated ``.nii.gz``).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from data_prep.layouts import LAYOUTS, Case
from medmtl.io import AFFINE_ATOL_MM, grid_mismatch
from medmtl.labels import allowed_values, check_convention, detect_convention

#: What reading a damaged NIfTI can raise: gzip / zlib errors for truncated or corrupt archives,
#: nibabel's own for headers, ValueError / MemoryError for data that do not fit the header.
READ_ERRORS: tuple[type[BaseException], ...] = (
    ImageFileError,
    HeaderDataError,
    WrapStructError,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    MemoryError,
)


@dataclass(frozen=True)
class Problem:
    """One finding about one file.

    Args:
        file: the file (path relative to the dataset folder), or the case folder for case-level findings.
        reason: what was expected and what was found.
    """

    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class CaseReport:
    """The outcome of :func:`validate_case`.

    Args:
        case: the case checked.
        problems: findings that make the case unusable.
        warnings: findings worth knowing that do not (a tolerated missing contrast, an empty label map).
        convention: label convention of the case (of its label map, or the one its outputs will use).
        convention_source: ``"detected"`` (from the label values), ``"declared"`` or ``"layout default"``.
        label_values: distinct values of the label map (empty without one).
        shape: spatial shape of the case's grid.
        spacing: voxel size (mm) of the case's grid.
    """

    case: Case
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    convention: str | None = None
    convention_source: str = "layout default"
    label_values: list[int] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None

    @property
    def ok(self) -> bool:
        """True when the case has no problem."""
        return not self.problems

    def reason(self) -> str:
        """All problems in one line (for summaries and the datalist's ``skipped`` list)."""
        return "; ".join(str(p) for p in self.problems)


def resolve_convention(
    values: set[int], layout_convention: str, declared: str | None = None
) -> tuple[str, str]:
    """Label convention of a label map from its values, the layout's convention and a declaration.

    Args:
        values: the distinct values of the label map.
        layout_convention: the convention of the layout the case was found in; used where the values
            do not decide (no enhancing tumour), and always for MSD, whose values cannot be told from
            BraTS 2023 ones.
        declared: a convention the user declared for the dataset; the values must fit it.

    Returns:
        ``(convention, source)`` with source ``"declared"``, ``"detected"`` or ``"layout default"``.

    Raises:
        ValueError: when the values fit no convention, or contradict the declared / MSD convention.
    """
    shown = sorted(values)
    if declared is not None:
        allowed = allowed_values(check_convention(declared))
        if not values <= allowed:
            raise ValueError(
                f"label values {shown} contradict the declared convention {declared} "
                f"(allowed {sorted(allowed)}; values {sorted(values - allowed)} do not belong)"
            )
        return declared, "declared"
    if layout_convention not in ("brats2021", "brats2023"):
        allowed = allowed_values(layout_convention)
        if not values <= allowed:
            raise ValueError(
                f"label values {shown} do not fit the {layout_convention} convention of this layout "
                f"(expected a subset of {sorted(allowed)})"
            )
        return layout_convention, "layout default"
    detected = detect_convention(values, default=None)
    if detected is None:
        return layout_convention, "layout default"
    return detected, "detected"


def _load(path: Path, rel: str, problems: list[Problem]) -> nib.Nifti1Image | None:
    try:
        return nib.load(str(path), mmap=False)
    except READ_ERRORS as err:
        problems.append(
            Problem(
                rel,
                f"cannot read the NIfTI header: truncated, empty or not NIfTI ({type(err).__name__}: {err})",
            )
        )
        return None


def _read(img: nib.Nifti1Image, rel: str, problems: list[Problem]) -> np.ndarray | None:
    try:
        return np.asanyarray(img.dataobj)
    except READ_ERRORS as err:
        problems.append(
            Problem(
                rel,
                f"cannot read the voxel data, the file is truncated or corrupt ({type(err).__name__}: {err})",
            )
        )
        return None


def _finite(arr: np.ndarray, rel: str, problems: list[Problem]) -> bool:
    if arr.dtype.kind not in "fc":
        return True
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        problems.append(Problem(rel, f"{bad} voxels are NaN or infinite (expected finite intensities)"))
    return not bad


def _label_values(arr: np.ndarray, rel: str, problems: list[Problem]) -> set[int] | None:
    if not _finite(arr, rel, problems):
        return None
    if arr.dtype.kind == "f":
        off = arr != np.rint(arr)
        if off.any():
            examples = sorted({float(v) for v in arr[off][:1000]})[:5]
            problems.append(
                Problem(rel, f"label map has non-integral values (e.g. {examples}); expected integer labels")
            )
            return None
    return {int(v) for v in np.unique(arr)}


def _expected_ndim(case: Case, rel: str) -> tuple[int, str]:
    if rel == case.image_4d:
        return 4, f"a 4D image with {len(case.channels)} channels ({', '.join(case.channels)})"
    return 3, "a 3D volume"


def _check_contrasts(case: Case, allow_missing: bool, report: CaseReport) -> None:
    missing = case.missing
    if not missing:
        return
    present = list(case.images) if case.image_4d is None else list(case.channels)
    note = f"missing contrast(s) {', '.join(missing)} (found {', '.join(present) or 'none'})"
    if allow_missing and present:
        report.warnings.append(Problem(case.folder, note))
    else:
        report.problems.append(Problem(case.folder, note))


def _open_headers(case: Case, problems: list[Problem]) -> dict[str, nib.Nifti1Image]:
    """Open every file of the case (headers only) that lies inside the root and has the right rank."""
    # Lexical containment only: symlinked files inside the dataset folder are followed.
    root = Path(os.path.normpath(case.root.absolute()))
    images: dict[str, nib.Nifti1Image] = {}
    for rel in case.files:
        path = Path(os.path.normpath(root / rel))
        if not path.is_relative_to(root):
            problems.append(Problem(rel, f"leads to {path}, outside the dataset folder {root}"))
            continue
        img = _load(path, rel, problems)
        if img is None:
            continue
        ndim, what = _expected_ndim(case, rel)
        shape = tuple(int(s) for s in img.shape)
        if len(shape) != ndim or (ndim == 4 and shape[3] != len(case.channels)):
            problems.append(Problem(rel, f"expected {what}, found a {len(shape)}D array of shape {shape}"))
            continue
        if abs(np.linalg.det(img.affine[:3, :3])) < 1e-12:
            problems.append(
                Problem(rel, f"degenerate affine (zero voxel size or collinear axes): {img.affine}")
            )
            continue
        images[rel] = img
    return images


def _check_grid(case: Case, images: dict[str, nib.Nifti1Image], atol: float, report: CaseReport) -> None:
    """All files share the grid of the first image: same spatial shape, affines equal within ``atol``."""
    ref_rel = next((r for r in images if r != case.label), None) or next(iter(images), None)
    if ref_rel is None:
        return
    ref = images[ref_rel]
    report.shape = tuple(int(s) for s in ref.shape[:3])
    report.spacing = tuple(float(z) for z in ref.header.get_zooms()[:3])
    ref_name = Path(ref_rel).name
    for rel, img in images.items():
        if rel == ref_rel:
            continue
        mismatch = grid_mismatch(img.shape, img.affine, ref.shape, ref.affine, atol)
        if mismatch and mismatch.startswith("shape"):
            report.problems.append(Problem(rel, f"{mismatch} ({ref_name})"))
        elif mismatch:
            report.problems.append(
                Problem(
                    rel,
                    f"{mismatch} from that of {ref_name}: "
                    f"{np.round(img.affine, 4).tolist()} vs {np.round(ref.affine, 4).tolist()}",
                )
            )


def _check_data(
    case: Case,
    images: dict[str, nib.Nifti1Image],
    report: CaseReport,
    allow_missing: bool = False,
    read_images: bool = True,
) -> set[int] | None:
    """Read each volume once: readable, finite, not constant; returns the label values (None without a
    usable label).

    A constant image (all zeros, say) holds no contrast: models treat it as missing, so it is a
    problem unless missing contrasts are allowed, and then a warning. Without ``read_images`` only
    the label is read (inference reads the images itself, and checks them as it does).
    """
    values: set[int] | None = None
    for rel, img in images.items():
        if rel != case.label and not read_images:
            continue
        arr = _read(img, rel, report.problems)
        if arr is None:
            continue
        if rel == case.label:
            values = _label_values(arr, rel, report.problems)
        elif _finite(arr, rel, report.problems):
            channels = [arr[..., i] for i in range(arr.shape[-1])] if arr.ndim == 4 else [arr]
            for i, ch in enumerate(channels):
                lo, hi = float(ch.min()), float(ch.max())
                if lo == hi:
                    where = f" (channel {i})" if arr.ndim == 4 else ""
                    note = f"image{where} is constant ({lo:g} everywhere): an unusable, missing contrast"
                    (report.warnings if allow_missing else report.problems).append(Problem(rel, note))
        del arr  # one volume in memory at a time
    return values


def _check_convention(case: Case, values: set[int] | None, declared: str | None, report: CaseReport) -> None:
    layout_convention = LAYOUTS[case.layout].convention
    if case.label is None:
        report.convention = declared or layout_convention
        report.convention_source = "declared" if declared else "layout default"
        return
    if values is None:
        return
    report.label_values = sorted(values)
    try:
        report.convention, report.convention_source = resolve_convention(values, layout_convention, declared)
    except ValueError as err:
        report.problems.append(Problem(case.label, str(err)))
        return
    if values <= {0}:
        report.warnings.append(Problem(case.label, "label map is empty (no tumour voxels)"))


def validate_case(
    case: Case,
    declared_convention: str | None = None,
    allow_missing: bool = False,
    atol: float = AFFINE_ATOL_MM,
    read_images: bool = True,
) -> CaseReport:
    """Check one case: contrasts present, files readable, 3D (4D for MSD images), one grid, finite values,
    label values inside a convention.

    Headers are checked for all files first; then each volume is read once.

    Args:
        case: a case from :func:`data_prep.layouts.discover`.
        declared_convention: a label convention the user declared (see :data:`medmtl.labels.CONVENTIONS`);
            the label values must fit it. Without one it is detected from the values.
        allow_missing: a missing contrast is a warning rather than a problem (at least one must be there).
        atol: tolerance (mm) when comparing affines between the files of the case.
        read_images: read the image volumes (finite, not constant); False checks their headers only,
            for a caller that reads and checks them once itself (inference).

    Returns:
        A :class:`CaseReport`; ``report.ok`` is False when anything makes the case unusable.
    """
    if declared_convention is not None:
        check_convention(declared_convention)
    report = CaseReport(case=case)
    report.problems.extend(Problem(f, r) for f, r in case.problems)
    _check_contrasts(case, allow_missing, report)
    images = _open_headers(case, report.problems)
    _check_grid(case, images, atol, report)
    values = _check_data(case, images, report, allow_missing, read_images)
    _check_convention(case, values, declared_convention, report)
    return report


__all__ = [
    "AFFINE_ATOL_MM",
    "READ_ERRORS",
    "Problem",
    "CaseReport",
    "resolve_convention",
    "validate_case",
]

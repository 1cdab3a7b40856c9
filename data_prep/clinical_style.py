"""Clinical-style studies made from co-registered cases: each contrast on its own grid, moved.

A raw clinical study has every series on its own grid (thick axial or oblique slices, its own field
of view) and the head moved a little between series. :func:`acquire` makes one such series from a
co-registered volume with a known rigid motion, so that co-registration can be scored against the
truth (:func:`registration_error`), and :func:`clinical_style_study` writes a whole study.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Acquisition:
    """How one series of a clinical-style study is acquired.

    Args:
        spacing: voxel size (mm), e.g. ``(0.9, 0.9, 5.5)`` for thick axial slices.
        tilt_deg: slice tilt about the left-right axis (oblique slices), degrees.
        rotation_deg: head rotation about x, y, z (degrees) since the reference series.
        translation_mm: head translation (mm, LPS) since the reference series.
    """

    spacing: Sequence[float] = (1.0, 1.0, 1.0)
    tilt_deg: float = 0.0
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0)
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0)


def _centre(image: sitk.Image) -> tuple[float, ...]:
    return image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])


def acquire(image: sitk.Image, how: Acquisition, label: bool = False) -> tuple[sitk.Image, sitk.Transform]:
    """One series of a clinical-style study: ``image`` seen on a new grid with the head moved.

    Args:
        image: a volume of the co-registered case (its grid is the truth's).
        how: the new grid and the motion.
        label: nearest-neighbour resampling (label maps).

    Returns:
        ``(series, truth)``: the series, and the transform that maps points of the original space to
        the series' space (what registering the series to an unmoved reference should recover).
    """
    centre = _centre(image)
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(math.radians(how.tilt_deg), 0.0, 0.0)
    direction = np.asarray(image.GetDirection()).reshape(3, 3) @ np.asarray(tilt.GetMatrix()).reshape(3, 3)
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    spacing = np.asarray(how.spacing, dtype=float)
    size = np.maximum(2, np.round(extent / spacing)).astype(int)
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((np.asarray(centre) - direction @ (spacing * (size - 1) / 2)).tolist())
    # The head moves by ``motion`` (original -> moved); a series voxel at p sees the original at
    # motion^-1(p) ... which is what Resample wants: the transform from series to original points.
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre)
    motion.SetRotation(*[math.radians(a) for a in how.rotation_deg])
    motion.SetTranslation([float(t) for t in how.translation_mm])
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel = image.GetPixelID() if label else sitk.sitkFloat32
    series = sitk.Resample(image, grid, motion.GetInverse(), interp, 0.0, pixel)
    return series, motion


def registration_error(
    recovered: sitk.Transform, truth: sitk.Transform, points: np.ndarray
) -> tuple[float, float, float]:
    """How far a recovered rigid transform is from the truth.

    Args:
        recovered: what registration found (reference points -> series points).
        truth: the true one (from :func:`acquire`).
        points: (N, 3) physical points where the displacement error counts (e.g. brain voxels).

    Returns:
        ``(rotation error in degrees, displacement error at the points' centre in mm, largest
        displacement error over the points in mm)``.
    """
    r = np.asarray(sitk.Euler3DTransform(recovered).GetMatrix()).reshape(3, 3)
    t = np.asarray(sitk.Euler3DTransform(truth).GetMatrix()).reshape(3, 3)
    angle = math.degrees(math.acos(np.clip((np.trace(r.T @ t) - 1) / 2, -1.0, 1.0)))
    pts = np.asarray(points, dtype=float)
    errors = [
        np.linalg.norm(np.subtract(recovered.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))))
        for p in [pts.mean(0), *pts]
    ]
    return angle, float(errors[0]), float(max(errors[1:]))


def brain_points(image: sitk.Image, step: int = 8) -> np.ndarray:
    """Physical points of the non-zero voxels of ``image`` (every ``step``-th along each axis)."""
    arr = sitk.GetArrayViewFromImage(image)[::step, ::step, ::step]
    idx = np.argwhere(arr != 0) * step
    return np.array([image.TransformIndexToPhysicalPoint([int(i) for i in v[::-1]]) for v in idx])


def clinical_style_study(
    images: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    acquisitions: Mapping[str, Acquisition],
    case_id: str,
) -> tuple[Path, dict[str, sitk.Transform]]:
    """Write a clinical-style study: each contrast acquired on its own grid with its own motion.

    Args:
        images: ``{contrast: file}`` of a co-registered case.
        out_dir: where the study folder goes.
        acquisitions: ``{contrast: Acquisition}``; a contrast absent here keeps its grid.
        case_id: the study's name (``<case_id>/<case_id>_<contrast>.nii.gz``).

    Returns:
        ``(study folder, {contrast: true transform})``.
    """
    folder = Path(out_dir) / case_id
    folder.mkdir(parents=True, exist_ok=True)
    truths: dict[str, sitk.Transform] = {}
    for contrast, path in images.items():
        image = sitk.ReadImage(str(path))
        how = acquisitions.get(contrast, Acquisition(spacing=image.GetSpacing()))
        series, truths[contrast] = acquire(image, how)
        sitk.WriteImage(sitk.Cast(series, sitk.sitkFloat32), str(folder / f"{case_id}_{contrast}.nii.gz"))
    return folder, truths

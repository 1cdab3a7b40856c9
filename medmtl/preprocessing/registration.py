"""Rigid co-registration by mutual information and resampling onto a 1 mm grid, with SimpleITK.

Every contrast of a study is registered to one reference contrast with SimpleITK's
``ImageRegistrationMethod``: Mattes mutual information (Mattes et al., IEEE TMI 2003), a rigid
(Euler) transform, gradient descent with scales from physical shifts, and a coarse-to-fine
(multi-resolution) schedule. Physical coordinates follow ITK (LPS); the affines medmtl hands on are
NIfTI's (RAS), converted in :func:`ras_affine`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: Most metric samples per iteration at full resolution (see :func:`register_rigid`).
MAX_SAMPLES = 200_000

#: ITK physical space is LPS, NIfTI world space RAS: the two differ by a flip of x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class RigidRegistration:
    """The result of registering one contrast to the reference.

    Attributes:
        transform: maps points of the reference (fixed) space to the contrast's (moving) space, as
            ``sitk.Resample`` wants it; write it with ``sitk.WriteTransform`` (ITK ``.tfm``).
        metric: final Mattes mutual information (negative; lower is better aligned).
        initial_metric: the metric at the start (the better of scanner coordinates and moments).
        initialiser: ``"scanner"`` (the series' own physical coordinates) or ``"moments"``.
        iterations: optimiser iterations at the last level.
        stop: the optimiser's stop condition.
    """

    transform: sitk.Transform
    metric: float
    initial_metric: float
    initialiser: str
    iterations: int
    stop: str

    def rotation_deg(self) -> float:
        """Rotation angle of the transform in degrees."""
        return rotation_angle_deg(self.transform)

    def translation_mm(self) -> np.ndarray:
        """Translation of the transform in mm (LPS)."""
        return np.asarray(_as_euler(self.transform).GetTranslation())


def _as_euler(tx: sitk.Transform) -> sitk.Euler3DTransform:
    if isinstance(tx, sitk.CompositeTransform):
        tx = tx.GetNthTransform(tx.GetNumberOfTransforms() - 1)
    return sitk.Euler3DTransform(tx)


def rotation_angle_deg(tx: sitk.Transform) -> float:
    """The rotation angle (degrees) of a rigid transform's matrix.

    Args:
        tx: a rigid transform (Euler, versor, or a composite of one).

    Returns:
        The angle of its rotation about its axis, in degrees.
    """
    m = np.asarray(_as_euler(tx).GetMatrix()).reshape(3, 3)
    return math.degrees(math.acos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0)))


def _metric_method(bins: int, sampling: float, seed: int) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    bins: int = 32,
    sampling: float | None = None,
    shrink: Sequence[int] = (4, 2, 1),
    smoothing_mm: Sequence[float] = (3.0, 1.5, 0.0),
    iterations: int = 100,
    seed: int = 0,
) -> RigidRegistration:
    """Register ``moving`` rigidly to ``fixed`` by Mattes mutual information.

    Series of one session share the scanner's coordinates, so the start is the better (by the
    metric) of those coordinates as they are and SimpleITK's moments initialiser (centres of mass
    aligned), which rescues series whose coordinates do not match. Then gradient descent on an
    Euler transform, coarse to fine.

    Args:
        fixed: the reference contrast (any grid, thick slices allowed).
        moving: the contrast to align to it.
        bins: histogram bins of the metric.
        sampling: fraction of the fixed voxels sampled per iteration (random, seeded); by default
            10 %, at most :data:`MAX_SAMPLES` points at full resolution.
        shrink: shrink factor per level, coarse to fine.
        smoothing_mm: Gaussian smoothing per level, in mm.
        iterations: maximum optimiser iterations per level.
        seed: sampling seed (the result is reproducible).

    Returns:
        A :class:`RigidRegistration`.

    References:
        Mattes et al., "PET-CT image registration in the chest using free-form deformations",
        IEEE TMI 22(1), 2003 (the metric); SimpleITK (Lowekamp et al., Front. Neuroinform. 2013).
    """
    if sampling is None:
        # The metric's noise is set by the number of samples, not by the fraction: a 1 mm BraTS
        # volume (9 M voxels) needs no more points than a thick-slice series (1.5 M).
        sampling = min(0.1, MAX_SAMPLES / float(np.prod(fixed.GetSize())))
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    # Rotations about the centre of the reference: rotation and translation then barely couple.
    centre = fixed_f.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed_f.GetSize()])
    scanner = sitk.Euler3DTransform()
    scanner.SetCenter(centre)
    moments = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            fixed_f, moving_f, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    )
    probe = _metric_method(bins, sampling, seed)
    starts = {}
    for name, tx in (("scanner", scanner), ("moments", moments)):
        probe.SetInitialTransform(tx, inPlace=False)
        starts[name] = (probe.MetricEvaluate(fixed_f, moving_f), tx)
    initialiser = min(starts, key=lambda k: starts[k][0])
    initial_metric, initial = starts[initialiser]

    reg = _metric_method(bins, sampling, seed)
    # Regular-step descent halves its step whenever the direction turns: it settles to well under
    # a voxel, where a fixed-rate descent stops early on a noisy (sampled) metric.
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smoothing_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(sitk.Euler3DTransform(initial), inPlace=False)
    result = reg.Execute(fixed_f, moving_f)
    return RigidRegistration(
        transform=_as_euler(result),
        metric=float(reg.GetMetricValue()),
        initial_metric=float(initial_metric),
        initialiser=initialiser,
        iterations=int(reg.GetOptimizerIteration()),
        stop=reg.GetOptimizerStopConditionDescription(),
    )


def isotropic_grid(reference: sitk.Image, spacing: float = 1.0) -> sitk.Image:
    """An empty RAS grid of ``spacing`` mm voxels covering the reference's physical extent.

    The grid's first voxel sits on the reference voxel centre nearest the RAS origin corner, so a
    reference already on a 1 mm axis-aligned grid (a BraTS case) maps voxel for voxel, with no
    interpolation.

    Args:
        reference: the reference contrast.
        spacing: voxel size in mm.

    Returns:
        A float32 image of zeros (origin, spacing, RAS direction, size set).
    """
    size = reference.GetSize()
    corners = np.array(
        [
            reference.TransformContinuousIndexToPhysicalPoint([c * (s - 1) for c, s in zip(corner, size)])
            for corner in np.ndindex(2, 2, 2)
        ]
    )
    # RAS voxel axes in ITK's LPS space: x decreases, y decreases, z increases.
    direction = np.diag([-1.0, -1.0, 1.0])
    ras = corners * np.array([-1.0, -1.0, 1.0])
    lo, hi = ras.min(0), ras.max(0)
    n = [int(math.floor((h - low) / spacing + 1e-3)) + 1 for low, h in zip(lo, hi)]
    grid = sitk.Image(n, sitk.sitkFloat32)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((lo * np.array([-1.0, -1.0, 1.0])).tolist())
    return grid


def resample(
    image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None = None, label: bool = False
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` through ``transform`` (grid point -> image point).

    Args:
        image: the image to resample.
        grid: the target geometry.
        transform: maps the grid's physical points into ``image``'s space; identity when None.
        label: nearest-neighbour (labels, masks) instead of linear interpolation (images).

    Returns:
        An image on ``grid`` (float32 for images, the input's type for labels), 0 outside ``image``.
    """
    tx = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    pixel = image.GetPixelID() if label else sitk.sitkFloat32
    return sitk.Resample(image, grid, tx, interp, 0.0, pixel)


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The NIfTI (RAS) voxel-to-world matrix of an image, for axes in nibabel's (x, y, z) order.

    Args:
        image: a 3D SimpleITK image.

    Returns:
        A 4x4 affine.
    """
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def to_array(image: sitk.Image) -> np.ndarray:
    """Voxels in nibabel's (x, y, z) axis order (SimpleITK's arrays are (z, y, x))."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def from_array(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    """An image with ``grid``'s geometry holding ``array`` (nibabel's (x, y, z) axis order).

    Args:
        array: voxels, shaped like ``grid`` in (x, y, z) order.
        grid: the geometry.

    Returns:
        The image.
    """
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    out.CopyInformation(grid)
    return out

"""Smooth random fields and partial-volume ramps, the building blocks of the phantoms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Mean variance per dimension of a B-spline series with i.i.d. unit coefficients: the integral of
#: the squared B-spline of that order, i.e. the B-spline of twice the order plus one at 0
#: (151/315 for cubic, 2/3 for linear).
_BSPLINE_VARIANCE_1D = {1: 2.0 / 3.0, 3: 151.0 / 315.0}


@dataclass(frozen=True)
class SmoothField:
    """A band-limited Gaussian random field in millimetre coordinates, with unit variance.

    The field is a cubic B-spline series over a lattice of i.i.d. normal coefficients; the lattice
    step sets the correlation length. It is defined on a fixed physical box, so a field drawn from
    a given generator state has the same values at the same physical point whatever image grid
    samples it (a phantom of one seed looks the same at every resolution).

    Args:
        coefficients: lattice of B-spline coefficients (float32).
        origin: physical position (mm) of lattice index (0, 0, 0).
        step: lattice step in mm.
    """

    coefficients: np.ndarray
    origin: np.ndarray
    step: float

    @classmethod
    def random(
        cls,
        rng: np.random.Generator,
        step: float,
        half_extent: Sequence[float] = (160.0, 160.0, 160.0),
        centre: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> SmoothField:
        """Draw a field covering ``centre +- half_extent`` (mm).

        Args:
            rng: the generator to draw the coefficients from.
            step: lattice step (mm), roughly the size of the field's features.
            half_extent: half size of the box (mm) where the field is defined; outside it the
                field continues with its border values.
            centre: centre of the box (mm).

        Returns:
            The field.
        """
        half = np.asarray(half_extent, dtype=np.float64)
        n = np.ceil(2.0 * half / step).astype(int) + 4
        origin = np.asarray(centre, dtype=np.float64) - (n - 1) / 2.0 * step
        coefficients = rng.standard_normal(tuple(n), dtype=np.float32)
        return cls(coefficients=coefficients, origin=origin, step=float(step))

    def __call__(self, points: np.ndarray, order: int = 3) -> np.ndarray:
        """Evaluate the field.

        Args:
            points: physical coordinates (mm), shape (3, ...).
            order: 3 for the smooth B-spline field; 1 for a cheaper, piecewise-linear version
                (a different field with the same lattice).

        Returns:
            float32 values with unit variance, shape ``points.shape[1:]``.
        """
        index = (
            points - self.origin.reshape((3,) + (1,) * (points.ndim - 1)).astype(np.float32)
        ) / np.float32(self.step)
        out = ndi.map_coordinates(
            self.coefficients, index, order=order, prefilter=False, mode="nearest", output=np.float32
        )
        # Without the spline prefilter the lattice values are smoothed, not interpolated: rescale to
        # unit variance.
        out *= np.float32(_BSPLINE_VARIANCE_1D[order] ** -1.5)
        return out


def ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel inside a surface, from the signed distance of its centre.

    A voxel of size ``width`` whose centre lies at ``d`` from a plane (positive inside) is covered
    by ``clip(d / width + 1/2, 0, 1)``: the box-filter partial-volume fraction.

    Args:
        signed_distance: distance (mm) of voxel centres to the surface, positive inside.
        width: voxel size (mm).

    Returns:
        float32 fractions in [0, 1].
    """
    out = np.asarray(signed_distance, dtype=np.float32) / np.float32(width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)`` as float32."""
    return np.maximum(x, np.float32(0.0), dtype=np.float32)

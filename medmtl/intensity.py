"""Histogram standardisation of synthesised contrasts to the training set's intensity landmarks.

A regression-trained synthesis branch predicts something near the conditional mean: where it cannot
know a voxel (a vessel, an enhancing rim) it gives a middling value, so its histogram lacks the
contrast's bright tail. Scorers that rescale each image by its own brain percentiles (the BraTS
synthesis protocol, :func:`medmtl.metrics.normalise_intensity`) then place the bulk of the synthetic
brain far from the acquired one's. Standardising each synthesised image to the mean percentile
landmarks of that contrast over the training cases, a monotone map that keeps every voxel's rank,
restores the contrast's histogram without inventing structure.

Method: L. G. Nyúl, J. K. Udupa and X. Zhang, "New variants of a method of MRI scale
standardization", IEEE TMI 19(2), 2000 (piecewise-linear map between percentile landmarks; the same
as TorchIO's ``HistogramStandardization``), applied here in the nonzero z-score space of the pipeline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medmtl.contrasts import canonical

logger = logging.getLogger(__name__)

# dense in the tails, where a synthetic histogram differs most from an acquired one
LANDMARK_PERCENTILES: tuple[float, ...] = (
    0.0,
    0.5,
    1.0,
    2.5,
    5.0,
    *range(10, 95, 5),
    95.0,
    97.5,
    99.0,
    99.5,
    100.0,
)


def image_landmarks(
    image: Any, mask: Any | None = None, percentiles: Sequence[float] = LANDMARK_PERCENTILES
) -> np.ndarray:
    """Percentile landmarks of one image's brain voxels, in nonzero z-score units.

    Args:
        image: 3D image in any intensity space.
        mask: brain voxels; the image's nonzero voxels when None (skull-stripped BraTS scans).
        percentiles: where the landmarks sit, increasing, in [0, 100].

    Returns:
        float64 landmarks, one per percentile.

    Raises:
        ValueError: when the mask is empty or the brain is constant.
    """
    img = np.asarray(image, dtype=np.float64)
    brain = img != 0 if mask is None else np.asarray(mask, dtype=bool)
    values = img[brain]
    if values.size == 0:
        raise ValueError("the brain mask is empty: no landmarks")
    std = values.std()
    if not std > 0:
        raise ValueError("the brain is constant: no landmarks")
    return np.percentile((values - values.mean()) / std, percentiles)


def learn_landmarks(
    entries: Iterable[Mapping[str, Any]],
    contrasts: Sequence[str],
    percentiles: Sequence[float] = LANDMARK_PERCENTILES,
) -> dict[str, Any]:
    """Mean percentile landmarks of each contrast over a set of cases (the training cases).

    Args:
        entries: datalist entries with absolute paths under the contrast names (see
            :func:`medmtl.datalist.load_datalist`); a case lacking a contrast is skipped for it.
        contrasts: the synthesised contrasts to learn.
        percentiles: landmark positions.

    Returns:
        ``{"percentiles": [...], "<contrast>": [...]}``, JSON-serialisable (stored in
        ``model_config.json`` as ``synth_landmarks``); a contrast no case has is left out.
    """
    import nibabel as nib

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for entry in entries:
        for c in contrasts:
            path = entry.get(canonical(c))
            if not path:
                continue
            try:
                marks = image_landmarks(np.asanyarray(nib.load(str(path)).dataobj), None, percentiles)
            except ValueError as err:
                logger.warning("%s: %s; left out of the %s landmarks", path, err, c)
                continue
            sums[c] = sums.get(c, 0.0) + marks
            counts[c] = counts.get(c, 0) + 1
    out: dict[str, Any] = {"percentiles": [float(p) for p in percentiles]}
    for c, total in sums.items():
        out[c] = [round(float(v), 5) for v in total / counts[c]]
    return out


def check_landmarks(landmarks: Mapping[str, Any] | None, where: str = "synth_landmarks") -> None:
    """Raise a clear error when stored landmarks cannot be used.

    Args:
        landmarks: the ``synth_landmarks`` dict of a model config, or None (nothing to check).
        where: name used in the message (the file and key).

    Raises:
        ValueError: percentiles missing or not increasing in [0, 100], or a contrast's landmarks of the
            wrong length, not finite or decreasing.
    """
    if landmarks is None:
        return
    if not isinstance(landmarks, Mapping):
        raise ValueError(f"{where}: expected an object of percentiles and per-contrast landmarks")
    pct = landmarks.get("percentiles")
    if not isinstance(pct, list) or len(pct) < 2:
        raise ValueError(f"{where}: 'percentiles' must be a list of at least two numbers")
    try:
        p = np.asarray(pct, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'percentiles' must be numbers, got {pct}") from None
    if np.any(np.diff(p) <= 0) or p[0] < 0 or p[-1] > 100:
        raise ValueError(f"{where}: 'percentiles' must increase within [0, 100], got {pct}")
    for name, marks in landmarks.items():
        if name == "percentiles":
            continue
        try:
            m = np.asarray(marks, dtype=np.float64)
        except (TypeError, ValueError):
            m = np.full(0, np.nan)
        if m.shape != p.shape or not np.all(np.isfinite(m)) or np.any(np.diff(m) < 0):
            raise ValueError(f"{where}: landmarks of {name!r} must be {p.size} finite non-decreasing numbers")


def standardise(
    image: np.ndarray, mask: np.ndarray, landmarks: Sequence[float], percentiles: Sequence[float]
) -> np.ndarray:
    """Map an image's brain voxels piecewise-linearly from its own percentiles onto ``landmarks``.

    Voxel ranks are kept; voxels outside ``mask`` are returned unchanged. A constant brain is
    returned unchanged (there is no histogram to map).

    Args:
        image: 3D image (e.g. a synthesised contrast in z-score units).
        mask: boolean brain mask, same shape.
        landmarks: target values at ``percentiles`` (from :func:`learn_landmarks`).
        percentiles: landmark positions, increasing.

    Returns:
        float32 image of the same shape.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    brain = np.asarray(mask, dtype=bool)
    values = out[brain]
    if values.size == 0 or math.isclose(float(values.min()), float(values.max())):
        return out
    source = np.percentile(values, percentiles)
    # np.interp needs increasing x: equal source percentiles (flat stretches) are merged
    source, keep = np.unique(source, return_index=True)
    target = np.asarray(landmarks, dtype=np.float64)[keep]
    out[brain] = np.interp(values, source, target).astype(np.float32)
    return out


def standardise_synth(
    synth: Mapping[str, np.ndarray], brain: np.ndarray | None, landmarks: Mapping[str, Any] | None
) -> dict[str, np.ndarray]:
    """Standardise every synthesised contrast that has landmarks; others are returned as they are.

    Args:
        synth: ``{contrast: image}`` in the source grid.
        brain: the source brain mask; None leaves the images unchanged (no brain to map).
        landmarks: ``synth_landmarks`` of the model config, or None (off).

    Returns:
        ``{contrast: image}``.
    """
    if not landmarks or brain is None:
        return dict(synth)
    pct = landmarks["percentiles"]
    return {
        c: standardise(img, brain, landmarks[c], pct) if c in landmarks else img for c, img in synth.items()
    }

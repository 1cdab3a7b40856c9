"""Post-processing of the thresholded regions: small whole-tumour components, the BraTS ET rule."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medmtl.labels import REGIONS


def remove_small_components(regions: np.ndarray, spacing: Sequence[float], min_ml: float) -> np.ndarray:
    """Drop connected components of the whole tumour smaller than ``min_ml`` (and TC / ET inside them).

    Scattered false-positive specks far from the tumour dominate HD95; BraTS pipelines remove them
    after thresholding (cf. Isensee et al., nnU-Net for BraTS 2020, arXiv:2011.00848). The largest
    component is always kept, so a case never loses its whole prediction.

    Args:
        regions: (3, H, W, D) uint8 region masks (TC, WT, ET).
        spacing: voxel size in mm.
        min_ml: smallest component kept, in millilitres; 0 keeps everything.

    Returns:
        The filtered region masks (a new array).
    """
    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    wt = regions[REGIONS.index("WT")]
    if min_ml <= 0 or not wt.any():
        return regions
    remove = RemoveSmallObjects(
        min_size=min_ml * 1000.0, connectivity=3, by_measure=True, pixdim=[float(s) for s in spacing]
    )
    with warnings.catch_warnings():
        # MONAI hands scikit-image >= 0.26 its deprecated ``min_size``: same result, one warning per case
        warnings.filterwarnings(
            "ignore", message="Parameter `min_size` is deprecated", category=FutureWarning
        )
        kept = remove(wt[None])
    kept = np.asarray(kept)[0] > 0
    if not kept.any():
        kept = np.asarray(KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(wt[None]))[0] > 0
    return (regions & kept[None]).astype(regions.dtype)


def small_et_to_netc(regions: np.ndarray, spacing: Sequence[float], et_min_ml: float) -> np.ndarray:
    """The BraTS ET rule: a predicted enhancing tumour smaller than ``et_min_ml`` becomes NETC.

    Cases without enhancement (low-grade gliomas) are scored with an empty ET, where any false-positive
    ET voxel costs the whole Dice (0 instead of 1); Isensee et al. ("nnU-Net for Brain Tumor
    Segmentation", BraTS 2020, arXiv:2011.00848) replace a small predicted ET by necrosis, with the
    threshold chosen on validation cases. The voxels stay in TC and WT.

    Args:
        regions: (3, H, W, D) uint8 region masks (TC, WT, ET).
        spacing: voxel size in mm.
        et_min_ml: smallest ET kept, in millilitres; 0 keeps every ET.

    Returns:
        The region masks (a new array when ET was removed).
    """
    et = REGIONS.index("ET")
    if et_min_ml <= 0 or not regions[et].any():
        return regions
    volume_ml = float(regions[et].sum()) * float(np.prod([float(s) for s in spacing])) / 1000.0
    if volume_ml >= et_min_ml:
        return regions
    out = regions.copy()
    out[REGIONS.index("TC")] |= out[et]
    out[et] = 0
    return out


def region_thresholds(
    thresholds: float | Sequence[float] | Mapping[str, float] | None, where: str = "thresholds"
) -> np.ndarray:
    """Probability thresholds of the three regions as a (3, 1, 1, 1) array, channel order ``REGIONS``.

    A model's ``model_config.json`` may hold thresholds chosen on validation cases
    (``benchmarks/thresholds.py``); without them every region is cut at 0.5.

    Args:
        thresholds: one number for all regions, three in the order TC, WT, ET, a mapping
            ``{"TC": t, "WT": t, "ET": t}``, or None (0.5).
        where: name used in the error message (file and key, or option).

    Returns:
        float32 array of shape (3, 1, 1, 1).

    Raises:
        ValueError: a threshold that is not a number in (0, 1), or a region missing or unknown.
    """
    if thresholds is None:
        values: list[Any] = [0.5] * len(REGIONS)
    elif isinstance(thresholds, Mapping):
        unknown = sorted(set(thresholds) - set(REGIONS))
        missing = [r for r in REGIONS if r not in thresholds]
        if unknown or missing:
            raise ValueError(f"{where}: expected the regions {list(REGIONS)}, got {sorted(thresholds)}")
        values = [thresholds[r] for r in REGIONS]
    elif isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        values = [thresholds] * len(REGIONS)
    else:
        values = thresholds.ravel().tolist() if isinstance(thresholds, np.ndarray) else list(thresholds)
        if len(values) != len(REGIONS):
            raise ValueError(
                f"{where}: expected {len(REGIONS)} thresholds ({', '.join(REGIONS)}), got {values}"
            )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
            raise ValueError(f"{where}: thresholds must be numbers in (0, 1), got {values}")
    return np.asarray(values, np.float32).reshape(-1, 1, 1, 1)

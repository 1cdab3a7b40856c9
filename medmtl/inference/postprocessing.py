"""Post-processing of the thresholded regions: small whole-tumour components, the BraTS ET rule."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

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

"""Scores for the two outputs: tumour segmentation and contrast synthesis.

Segmentation is scored per BraTS region (TC, WT, ET) with the rules of the BraTS challenge for empty
regions; synthesis is scored per contrast, BraTS synthesis-challenge style, on images clipped to the
0.5-99.5 percentiles of the brain and rescaled to [0, 1]. Synthesis scores are averaged over a named
region (brain, tumour, non-tumour brain), never over the whole volume: the zero background around a
skull-stripped brain is matched perfectly by any image and pulls whole-volume SSIM towards 1.

References:
    Bakas et al., "Identifying the best machine learning algorithms for brain tumor segmentation,
    progression assessment, and overall survival prediction in the BRATS challenge",
    arXiv:1811.02629 (2018).
    Li et al., "The Brain Tumor Segmentation (BraTS) Challenge 2023: Brain MR Image Synthesis for
    Tumor Segmentation (BraSyn)", arXiv:2305.09011 (2023).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_hausdorff_distance,
    get_confusion_matrix,
)
from monai.transforms import ScaleIntensityRangePercentiles
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from medmtl.contrasts import CONTRASTS, canonical
from medmtl.labels import REGIONS, label_to_regions

#: HD95 given by the BraTS challenge when exactly one of prediction and truth is empty (mm): the
#: diagonal of the 240 x 240 x 155 mm BraTS volume.
BRATS_MAX_HD95: float = 373.13

#: The acquired contrast that a naive synthesis baseline copies for each missing contrast.
NEAREST: dict[str, str] = {"t1c": "t1n", "t1n": "t1c", "t2w": "t2f", "t2f": "t2w"}

#: Percentiles (inside the brain) at which images are clipped before synthesis scoring.
CLIP_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Regions over which synthesis scores are averaged.
SYNTHESIS_REGIONS: tuple[str, ...] = ("brain", "tumour", "nontumour")

#: Segmentation metric names, each reported per region as ``<name>_<region>``.
SEGMENTATION_METRICS: tuple[str, ...] = ("Dice", "HD95", "VolDiff_ml", "VolDiff_rel", "Sens", "Spec")

#: Synthesis metric names, each reported per region as ``<name>_<region>``.
SYNTHESIS_METRICS: tuple[str, ...] = ("SSIM", "PSNR", "MAE", "MSE")


def _spacing3(spacing: float | Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    if np.isscalar(spacing):
        return (float(spacing),) * 3  # type: ignore[arg-type]
    sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"voxel spacing must be 3 positive numbers (mm), got {spacing!r}")
    return sp  # type: ignore[return-value]


def _squeeze_volume(array: Any, name: str) -> np.ndarray:
    arr = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a 3D volume (H, W, D) or (1, H, W, D), got shape {arr.shape}")
    return arr


def region_masks(label: Any, convention: str) -> np.ndarray:
    """Boolean BraTS region masks (TC, WT, ET) of a label map.

    Args:
        label: label map, shape (H, W, D) or (1, H, W, D).
        convention: its label convention (see :mod:`medmtl.labels`).

    Returns:
        Array of shape (3, H, W, D), channel order :data:`medmtl.labels.REGIONS`.
    """
    lab = np.rint(_squeeze_volume(label, "label")).astype(np.int16)
    return np.asarray(label_to_regions(lab, convention), dtype=bool)


def dice_hd95(pred: np.ndarray, true: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Dice and 95th-percentile Hausdorff distance (mm) of two binary masks, BraTS rules for empties.

    Both empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 :data:`BRATS_MAX_HD95`. Otherwise
    Dice from the voxel counts (double precision) and MONAI's surface-based HD95 with the voxel
    spacing (symmetric: the larger of the two directed 95th percentiles).

    Args:
        pred: predicted mask (H, W, D).
        true: reference mask, same shape.
        spacing: voxel size in mm along the three array axes.

    Returns:
        ``(dice, hd95_mm)``.
    """
    p, t = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: prediction {p.shape} vs reference {t.shape}")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 1.0, 0.0
    if p_any != t_any:
        return 0.0, BRATS_MAX_HD95
    # Counted in float64: MONAI's compute_dice returns float32, off in the 8th digit for a real tumour.
    dice = 2.0 * float(np.count_nonzero(p & t)) / float(np.count_nonzero(p) + np.count_nonzero(t))
    pt, tt = (torch.from_numpy(m.astype(np.float32))[None, None] for m in (p, t))
    with warnings.catch_warnings():
        # MONAI passes a deprecated argument to its own edge finder; nothing for the caller to act on.
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            pt, tt, include_background=True, percentile=95, spacing=list(_spacing3(spacing))
        )
    return dice, float(hd[0, 0])


def sensitivity_specificity(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Voxel-wise sensitivity and specificity of a binary mask.

    As in the BraTS 2023 evaluation, sensitivity is 1 when both masks are empty and 0 when only the
    reference is empty (a prediction where there is nothing to find).

    Args:
        pred: predicted mask (H, W, D).
        true: reference mask, same shape.

    Returns:
        ``(sensitivity, specificity)``.
    """
    # MONAI's confusion matrix needs numeric masks: with bool tensors it counts no true positives.
    pt = torch.from_numpy(np.asarray(pred, dtype=np.float32))[None, None]
    tt = torch.from_numpy(np.asarray(true, dtype=np.float32))[None, None]
    cm = get_confusion_matrix(pt, tt, include_background=True)
    sens = float(compute_confusion_matrix_metric("sensitivity", cm)[0, 0])
    spec = float(compute_confusion_matrix_metric("specificity", cm)[0, 0])
    if not tt.any():
        sens = 0.0 if pt.any() else 1.0
    if np.isnan(spec):  # a reference covering the whole volume leaves no negatives
        spec = 1.0
    return sens, spec


def segmentation_metrics(
    pred_label: Any,
    true_label: Any,
    pred_convention: str,
    true_convention: str,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, float]:
    """Score a predicted BraTS label map against the reference, per region (TC, WT, ET).

    Both maps are turned into regions in their own convention first, so a BraTS 2023 prediction
    (ET = 3) is compared correctly with a BraTS 2021 reference (ET = 4).

    Args:
        pred_label: predicted label map (H, W, D) or (1, H, W, D), same grid as ``true_label``.
        true_label: reference label map.
        pred_convention: label convention of the prediction.
        true_convention: label convention of the reference.
        spacing: voxel size in mm along the array axes (1 mm isotropic when None).

    Returns:
        Per region R in TC, WT, ET: ``Dice_R``, ``HD95_R`` (mm), ``VolDiff_ml_R`` (predicted minus
        reference volume, ml), ``VolDiff_rel_R`` (that difference over the reference volume; 0 when both
        are empty, NaN when only the reference is), ``Sens_R``, ``Spec_R``.
    """
    sp = _spacing3(spacing)
    pred_r = region_masks(pred_label, pred_convention)
    true_r = region_masks(true_label, true_convention)
    if pred_r.shape != true_r.shape:
        raise ValueError(
            f"label maps differ in shape: prediction {pred_r.shape[1:]} vs reference {true_r.shape[1:]}"
        )
    voxel_ml = float(np.prod(sp)) / 1000.0
    out: dict[str, float] = {}
    for i, region in enumerate(REGIONS):
        p, t = pred_r[i], true_r[i]
        dice, hd95 = dice_hd95(p, t, sp)
        sens, spec = sensitivity_specificity(p, t)
        vol_p, vol_t = float(p.sum()) * voxel_ml, float(t.sum()) * voxel_ml
        diff = vol_p - vol_t
        rel = diff / vol_t if vol_t > 0 else (0.0 if vol_p == 0 else float("nan"))
        out[f"Dice_{region}"] = dice
        out[f"HD95_{region}"] = hd95
        out[f"VolDiff_ml_{region}"] = diff
        out[f"VolDiff_rel_{region}"] = rel
        out[f"Sens_{region}"] = sens
        out[f"Spec_{region}"] = spec
    return out


def normalise_intensity(
    image: Any, brain_mask: Any, percentiles: tuple[float, float] = CLIP_PERCENTILES
) -> np.ndarray:
    """Clip an image at percentiles of its brain voxels and rescale the brain to [0, 1].

    Voxels outside the brain are set to 0, so two images compared after this step share their
    background whatever intensity space each came in (raw scanner units, z-scores).

    Args:
        image: 3D image.
        brain_mask: boolean mask of the brain, same shape.
        percentiles: lower and upper clipping percentiles, computed inside the brain.

    Returns:
        float64 image in [0, 1]; all zeros inside the brain when the brain is constant.
    """
    img = _squeeze_volume(image, "image").astype(np.float64)
    mask = _squeeze_volume(brain_mask, "brain mask").astype(bool)
    out = np.zeros_like(img)
    if mask.any():
        scale = ScaleIntensityRangePercentiles(
            lower=percentiles[0], upper=percentiles[1], b_min=0.0, b_max=1.0, clip=True, dtype=np.float64
        )
        with warnings.catch_warnings():
            # a constant brain makes MONAI warn of a zero range; it maps the brain to b_min (0), as wanted
            warnings.filterwarnings("ignore", message="Divide by zero")
            out[mask] = np.nan_to_num(np.asarray(scale(img[mask][None]))[0], nan=0.0)
    return out


def _region_scores(
    ssim_map: np.ndarray | None, pred: np.ndarray, ref: np.ndarray, mask: np.ndarray
) -> dict[str, float]:
    names = [m for m in SYNTHESIS_METRICS if m != "SSIM" or ssim_map is not None]
    if not mask.any():
        return dict.fromkeys(names, float("nan"))
    r, p = ref[mask], pred[mask]
    mse = float(mean_squared_error(r, p))
    psnr = float(peak_signal_noise_ratio(r, p, data_range=1.0)) if mse > 0 else float("inf")
    scores = {"PSNR": psnr, "MAE": float(np.abs(r - p).mean()), "MSE": mse}
    if ssim_map is not None:
        scores["SSIM"] = float(ssim_map[mask].mean())
    return {m: scores[m] for m in names}


def synthesis_metrics(
    pred: Any,
    ref: Any,
    brain_mask: Any | None = None,
    tumour_mask: Any | None = None,
    spacing: float | Sequence[float] | None = None,
    ssim: bool = True,
) -> dict[str, float]:
    """Score a synthesised contrast against the acquired one, averaged over named regions.

    Both images are clipped at the 0.5 and 99.5 percentiles of their own brain voxels and rescaled to
    [0, 1] (:func:`normalise_intensity`), as in the BraTS synthesis challenge; then the SSIM map is
    computed on the whole volume (scikit-image, 7-voxel window, data range 1) and averaged over the
    voxels of each region only. PSNR (peak 1), MAE and MSE are computed over the same voxels.

    Args:
        pred: synthesised image (H, W, D), any intensity space (e.g. z-scores).
        ref: the acquired image of the same contrast, same grid.
        brain_mask: where the brain is; the nonzero voxels of ``ref`` when None (BraTS images are
            skull-stripped with a zero background).
        tumour_mask: whole-tumour mask (WT); tumour and non-tumour scores are NaN without it (and the
            tumour scores are NaN when it is empty).
        spacing: voxel size in mm; when given, the volume of each region is reported too.
        ssim: compute the SSIM map (the costly part); without it the ``SSIM_*`` keys are left out.

    Returns:
        ``SSIM_<region>``, ``PSNR_<region>`` (dB; inf for identical images), ``MAE_<region>`` and
        ``MSE_<region>`` for region in brain, tumour, nontumour, plus ``Vol_ml_<region>`` when
        ``spacing`` is given.
    """
    p_raw, r_raw = _squeeze_volume(pred, "prediction"), _squeeze_volume(ref, "reference")
    if p_raw.shape != r_raw.shape:
        raise ValueError(f"image shapes differ: synthesised {p_raw.shape} vs reference {r_raw.shape}")
    brain = r_raw != 0 if brain_mask is None else _squeeze_volume(brain_mask, "brain mask").astype(bool)
    if brain.shape != r_raw.shape:
        raise ValueError(f"brain mask shape {brain.shape} differs from the image shape {r_raw.shape}")
    if not brain.any():
        raise ValueError("the brain mask is empty: nothing to score")
    masks = {"brain": brain}
    if tumour_mask is not None:
        tumour = _squeeze_volume(tumour_mask, "tumour mask").astype(bool)
        if tumour.shape != r_raw.shape:
            raise ValueError(f"tumour mask shape {tumour.shape} differs from the image shape {r_raw.shape}")
        masks["tumour"] = tumour & brain
        masks["nontumour"] = brain & ~tumour
    else:
        masks["tumour"] = masks["nontumour"] = np.zeros_like(brain)
    p, r = normalise_intensity(p_raw, brain), normalise_intensity(r_raw, brain)
    ssim_map = structural_similarity(r, p, data_range=1.0, full=True)[1] if ssim else None
    out: dict[str, float] = {}
    for region in SYNTHESIS_REGIONS:
        for name, value in _region_scores(ssim_map, p, r, masks[region]).items():
            out[f"{name}_{region}"] = value
    if spacing is not None:
        voxel_ml = float(np.prod(_spacing3(spacing))) / 1000.0
        for region in SYNTHESIS_REGIONS:
            out[f"Vol_ml_{region}"] = float(masks[region].sum()) * voxel_ml
    return out


def baseline_source(contrast: str, available: Iterable[str] | None = None) -> str:
    """The acquired contrast that the naive baseline copies in place of ``contrast``.

    Args:
        contrast: the synthesised contrast (any spelling).
        available: contrasts acquired for the case (any spelling); all but ``contrast`` when None.

    Returns:
        :data:`NEAREST` of ``contrast`` if it was acquired, else the first acquired contrast in
        canonical order.

    Raises:
        ValueError: when no other contrast was acquired.
    """
    target = canonical(contrast)
    avail = [c for c in CONTRASTS if c != target]
    if available is not None:
        acquired = {canonical(c) for c in available}
        avail = [c for c in avail if c in acquired]
    if not avail:
        raise ValueError(f"no acquired contrast to copy as a baseline for {target}")
    return NEAREST[target] if NEAREST[target] in avail else avail[0]


__all__: Sequence[str] = (
    "BRATS_MAX_HD95",
    "NEAREST",
    "CLIP_PERCENTILES",
    "SYNTHESIS_REGIONS",
    "SEGMENTATION_METRICS",
    "SYNTHESIS_METRICS",
    "region_masks",
    "dice_hd95",
    "sensitivity_specificity",
    "segmentation_metrics",
    "normalise_intensity",
    "synthesis_metrics",
    "baseline_source",
)

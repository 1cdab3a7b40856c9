"""BraTS challenge scores computed by the official packages: lesion-wise segmentation, local synthesis.

Lesion-wise Dice and HD95 per region (ET, TC, WT) come from the ``brats-evaluation`` package (the
official BraTS 2023+ segmentation evaluation, built on ``panoptica``): each region is split into
connected components, predicted and reference lesions are matched one-to-one (maximum bipartite
matching on Dice, any overlap counts), and Dice / HD95 are averaged over the matched lesions, exactly
as its ``brats-parse-metrics seg`` command reports them (``lesionwise_dsc_mean_<region>``,
``lesionwise_hd95_mean_<region>``). Nothing of the matching is re-implemented here: the package's own
bundled configuration is loaded and run.

The official configurations expect BraTS 2023+ label values (ET = 3; in the post-treatment glioma
configuration 4 is the resection cavity), so label maps in another convention are converted first: a
BraTS 2018-2021 map (ET = 4) given as it is would have its enhancing tumour scored as resection cavity.

Local-synthesis (inpainting) scores come from the ``inpainting`` package (the official BraTS 2023
local synthesis metrics): both images are normalised with the 0.5 / 99.5 percentiles of the voided
input image and SSIM, PSNR and MSE are taken inside the inpainted region.

Both packages are optional (``pip install "medmtl[brats]"``); :func:`brats_evaluation_status` and
:func:`inpainting_status` say whether they can be used.

Global synthesis (BraSyn) scores follow the challenge's published evaluation script, for which no
package exists (a synthesis in z-score space is first shifted so that its non-zero voxels start at
0, as the script expects non-negative scanner intensities): each image is clipped at the 0.5 / 99.5
percentiles of its whole volume (the lower one floored at 0) and scaled to [0, 1]; the tumour and
the non-tumour part are each cut out (the rest set to 0), the full-image SSIM map of torchmetrics'
``StructuralSimilarityIndexMeasure`` (Gaussian window 11, sigma 1.5, reflect padding, data range
from the images) is computed on each pair and averaged over that part's voxels. The non-tumour part
is the whole volume outside the tumour, background included, as the challenge counts it (so it is
not comparable with our brain-only scores). The map is computed with separable filtering on the
images' bounding box (equal to torchmetrics' map, tested, at a fraction of its cost on a whole
volume).

References:
    Kofler et al., "Panoptica -- instance-wise evaluation of 3D semantic and instance segmentation
    maps", arXiv:2312.02608 (2023); package ``brats-evaluation`` (github.com/BrainLesion/BraTS-evaluation).
    Kofler et al., "The Brain Tumor Segmentation (BraTS) Challenge 2023: Local Synthesis of Healthy
    Brain Tissue via Inpainting", arXiv:2305.08992 (2023); package ``inpainting``.
    Li et al., "The Brain Tumor Segmentation (BraTS) Challenge 2023: Brain MR Image Synthesis for
    Tumor Segmentation (BraSyn)", arXiv:2305.09011 (2023); evaluation script github.com/hongweilibran/BraSyn.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from medmtl.labels import REGIONS, check_label_values, convert_convention

#: PyPI name of the official BraTS segmentation evaluation.
BRATS_EVALUATION_PACKAGE: str = "brats-evaluation"

#: PyPI name of the official BraTS 2023 local synthesis (inpainting) metrics.
INPAINTING_PACKAGE: str = "inpainting"

#: Bundled ``brats-evaluation`` configuration used by default (glioma; regions et, tc, wt).
DEFAULT_CONFIG: str = "gli"

#: Our region name -> the label group of the official configurations.
CONFIG_GROUPS: dict[str, str] = {"ET": "et", "TC": "tc", "WT": "wt"}

#: Lesion-wise metric names, each reported per region as ``<name>_<region>``.
LESIONWISE_METRICS: tuple[str, ...] = ("LesionDice", "LesionHD95", "LesionTP", "LesionFP", "LesionFN")

#: HD95 (mm) that the official parser gives in place of an infinite one (no prediction, or no match):
#: the diameter of the 240 x 240 x 155 mm SRI-24 volume, rounded as the package rounds it.
HD95_PENALTY: float = 373.0

#: Inpainting metric names of the official package that we report (prefixed ``Inpaint``).
INPAINTING_METRICS: tuple[str, ...] = ("ssim", "psnr", "mse")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def brats_evaluation_status() -> dict[str, Any]:
    """Whether the official BraTS segmentation evaluation can be used, for reports.

    Returns:
        ``{"available": bool, "package": "brats-evaluation", "version": str | None, "config": str,
        "reason": str | None}``; ``reason`` says why it is unavailable and how to install it.
    """
    status: dict[str, Any] = {
        "available": False,
        "package": BRATS_EVALUATION_PACKAGE,
        "version": _version(BRATS_EVALUATION_PACKAGE),
        "panoptica_version": _version("panoptica"),
        "config": DEFAULT_CONFIG,
        "reason": None,
    }
    try:
        import brats_evaluation  # noqa: F401
        import panoptica  # noqa: F401
    except ImportError as err:
        status["reason"] = (
            f"the official BraTS evaluation package is not installed ({err}); "
            'install it with `pip install "medmtl[brats]"` to get the lesion-wise scores'
        )
        return status
    status["available"] = True
    return status


def inpainting_status() -> dict[str, Any]:
    """Whether the official BraTS 2023 inpainting metrics can be used.

    Returns:
        ``{"available": bool, "package": "inpainting", "version": str | None, "reason": str | None}``.
    """
    status: dict[str, Any] = {
        "available": False,
        "package": INPAINTING_PACKAGE,
        "version": _version(INPAINTING_PACKAGE),
        "reason": None,
    }
    try:
        from inpainting import challenge_metrics_2023  # noqa: F401
    except ImportError as err:
        status["reason"] = (
            f"the official BraTS inpainting metrics package is not installed ({err}); "
            'install it with `pip install "medmtl[brats]"`'
        )
        return status
    status["available"] = True
    return status


@functools.lru_cache(maxsize=4)
def load_evaluator(config: str = DEFAULT_CONFIG) -> Any:
    """The official ``panoptica`` evaluator of a bundled ``brats-evaluation`` configuration.

    Args:
        config: bundled configuration name (``gli``, ``mets``, ``ped``, ``MenRT``, ``MenPre``, ``GoAT``;
            see ``brats_evaluation.config_path``).

    Returns:
        A ``panoptica.Panoptica_Evaluator``.

    Raises:
        ImportError: when ``brats-evaluation`` is not installed.
    """
    status = brats_evaluation_status()
    if not status["available"]:
        raise ImportError(status["reason"])
    import brats_evaluation
    from panoptica import Panoptica_Evaluator

    # The loader prints a note about labels shared by several groups (tc, wt): intended by the config.
    with contextlib.redirect_stdout(io.StringIO()):
        return Panoptica_Evaluator.load_from_config(brats_evaluation.config_path(config))


def to_brats2023(label: Any, convention: str, name: str = "label map") -> np.ndarray:
    """A label map in BraTS 2023+ values (NETC 1, SNFH 2, ET 3), as the official configurations expect.

    Args:
        label: integer label map (H, W, D).
        convention: its convention (see :mod:`medmtl.labels`).
        name: what the map is (a file name), for error messages.

    Returns:
        uint8 array in the ``brats2023`` convention.

    Raises:
        ValueError: naming ``name`` when the map holds values outside ``convention``.
    """
    arr = np.rint(np.asarray(label)).astype(np.int16)
    try:
        check_label_values(arr, convention)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    return np.asarray(convert_convention(arr, convention, "brats2023")).astype(np.uint8)


def _official_values(region_result: dict[str, Any]) -> dict[str, float]:
    # Same keys and the same treatment as brats_evaluation.metrics_parser.parse_seg_results.
    return {
        "LesionDice": float(region_result.get("sq_dsc", np.nan)),
        "LesionHD95": float(region_result.get("sq_hd95", np.nan)),
        "LesionTP": float(region_result.get("tp", np.nan)),
        "LesionFP": float(region_result.get("fp", np.nan)),
        "LesionFN": float(region_result.get("fn", np.nan)),
    }


def lesionwise_metrics(
    pred_label: Any,
    true_label: Any,
    pred_convention: str,
    true_convention: str,
    spacing: Sequence[float] | None = None,
    config: str = DEFAULT_CONFIG,
    pred_name: str = "prediction",
    true_name: str = "reference",
) -> dict[str, float]:
    """Lesion-wise Dice and HD95 per region (ET, TC, WT) from the official BraTS evaluation.

    Both maps are converted to BraTS 2023+ values and scored by ``brats-evaluation``'s bundled
    ``panoptica`` configuration. The values are those of the package's ``lesionwise_dsc_mean`` and
    ``lesionwise_hd95_mean`` columns: Dice / HD95 averaged over matched lesions; when no lesion is
    matched, Dice 0 and HD95 infinite; when the region is empty in both maps, NaN.

    Args:
        pred_label: predicted label map (H, W, D), same grid as ``true_label``.
        true_label: reference label map.
        pred_convention: label convention of the prediction.
        true_convention: label convention of the reference.
        spacing: voxel size in mm along the array axes (1 mm isotropic when None).
        config: bundled ``brats-evaluation`` configuration.
        pred_name: name of the prediction (its file) for error messages.
        true_name: name of the reference (its file) for error messages.

    Returns:
        Per region R in TC, WT, ET: ``LesionDice_R``, ``LesionHD95_R`` (mm), ``LesionTP_R``,
        ``LesionFP_R``, ``LesionFN_R`` (matched, unmatched predicted, unmatched reference lesions).

    Raises:
        ImportError: when ``brats-evaluation`` is not installed.
        ValueError: naming the file when the maps differ in shape or hold values outside their
            convention.
    """
    evaluator = load_evaluator(config)
    pred = to_brats2023(np.squeeze(np.asarray(pred_label)), pred_convention, pred_name)
    true = to_brats2023(np.squeeze(np.asarray(true_label)), true_convention, true_name)
    if pred.shape != true.shape or pred.ndim != 3:
        raise ValueError(
            f"{pred_name}: shape {pred.shape} differs from the reference {true_name} {true.shape}"
        )
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # panoptica warns that its surface-dice tolerance is a default and prints a citation banner.
        warnings.simplefilter("ignore", UserWarning)
        skip = [g for g in evaluator.segmentation_class_groups_names if g not in CONFIG_GROUPS.values()]
        results = evaluator.evaluate(pred, true, voxelspacing=sp, skip_groups=skip)
    out: dict[str, float] = {}
    for region in REGIONS:
        values = _official_values(results[CONFIG_GROUPS[region]].to_dict())
        for key, value in values.items():
            out[f"{key}_{region}"] = value
    return out


def inpainting_metrics(prediction: Any, target: Any, voided: Any, mask: Any) -> dict[str, float]:
    """BraTS 2023 local synthesis scores of an inpainted image, by the official ``inpainting`` package.

    Args:
        prediction: the inpainted image (H, W, D), the case's own intensity scale.
        target: the acquired image, same grid.
        voided: the input image with the region blanked; its 0.5 / 99.5 percentiles normalise both.
        mask: the inpainted region (non-zero voxels).

    Returns:
        ``InpaintSSIM``, ``InpaintPSNR`` (dB, data range of the normalised reference) and ``InpaintMSE``,
        all inside ``mask``.

    Raises:
        ImportError: when ``inpainting`` is not installed.
        ValueError: when the shapes differ or the mask is empty.
    """
    status = inpainting_status()
    if not status["available"]:
        raise ImportError(status["reason"])
    import torch
    from inpainting.challenge_metrics_2023 import generate_metrics

    arrays = [np.asarray(a, dtype=np.float32) for a in (prediction, target, voided)]
    region = np.asarray(mask) != 0
    if any(a.shape != region.shape for a in arrays):
        shapes = [a.shape for a in arrays]
        raise ValueError(f"image shapes {shapes} differ from the mask shape {region.shape}")
    if not region.any():
        raise ValueError("the inpainting mask is empty: nothing to score")
    # The package takes (1, H, W, D) tensors, the layout of its own NIfTI reader.
    pred_t, target_t, voided_t = (torch.from_numpy(a).unsqueeze(0) for a in arrays)
    with contextlib.redirect_stdout(io.StringIO()):
        scores = generate_metrics(pred_t, target_t, voided_t, torch.from_numpy(region).unsqueeze(0))
    return {f"Inpaint{k.upper()}": float(scores[k]) for k in INPAINTING_METRICS}


#: BraSyn score names (tumour and non-tumour SSIM, whole-volume PSNR), prefixed ``BraSyn``.
BRASYN_METRICS: tuple[str, ...] = ("BraSynSSIM_tumour", "BraSynSSIM_nontumour", "BraSynPSNR")

#: SSIM window of the BraSyn evaluation (torchmetrics' defaults).
_BRASYN_WINDOW, _BRASYN_SIGMA = 11, 1.5


def _brasyn_normalise(image: np.ndarray) -> np.ndarray:
    # The challenge's normalisation clips below 0: it expects scanner intensities. A synthesis in
    # medmtl's z-score space is first shifted within its non-zero voxels so that their minimum is 0
    # (background stays 0), an affine change that SSIM after the percentile scaling barely sees.
    nonzero = image != 0
    if nonzero.any() and image[nonzero].min() < 0:
        image = np.where(nonzero, image - image[nonzero].min(), 0.0)
    lo, hi = np.percentile(image, [0.5, 99.5])
    lo = max(float(lo), 0.0)
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float64)
    return (np.clip(image, lo, hi) - lo) / (hi - lo)


def brasyn_ssim_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """torchmetrics' full-image SSIM map (``StructuralSimilarityIndexMeasure(return_full_image=True)``).

    Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, reflect padding, data range the larger of the
    two images' ranges; computed with separable filtering (one 1D convolution per axis).

    Args:
        pred: 3D image.
        target: 3D image, same shape.

    Returns:
        The SSIM map, same shape.
    """
    import torch
    import torch.nn.functional as F

    from medmtl.losses.synthesis import separable_ssim_map

    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None, None]
    data_range = max(float(p.max() - p.min()), float(t.max() - t.min()))
    if data_range <= 0:
        return np.ones(pred.shape)
    half = (_BRASYN_WINDOW - 1) // 2
    pad = [half] * 6
    with torch.no_grad():
        p, t = F.pad(p / data_range, pad, mode="reflect"), F.pad(t / data_range, pad, mode="reflect")
        return separable_ssim_map(p, t, _BRASYN_WINDOW, _BRASYN_SIGMA)[0, 0].double().numpy()


def _mean_ssim_in(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> float:
    # Where both images are 0 over a whole window the SSIM map is exactly 1: only the bounding box
    # of their content (plus a window) is computed, the rest counted as 1.
    if not region.any():
        return float("nan")
    content = (pred != 0) | (target != 0)
    if not content.any():
        return 1.0
    half = (_BRASYN_WINDOW - 1) // 2 + 1
    idx = np.nonzero(content)
    box = tuple(
        slice(max(int(i.min()) - half, 0), min(int(i.max()) + half + 1, n)) for i, n in zip(idx, pred.shape)
    )
    inside = np.zeros(pred.shape, bool)
    inside[box] = True
    ssim_box = brasyn_ssim_map(pred[box], target[box])
    total = float(ssim_box[region[box]].sum()) + float((region & ~inside).sum())
    return total / float(region.sum())


def brasyn_metrics(prediction: Any, target: Any, tumour: Any) -> dict[str, float]:
    """BraTS 2023-2025 global synthesis (BraSyn) scores of a synthesised contrast.

    Both images normalised as the challenge does (0.5 / 99.5 percentiles of the whole volume, lower
    one floored at 0, scaled to [0, 1]); SSIM of the tumour and of the non-tumour part, each image
    cut to that part and the torchmetrics SSIM map averaged over its voxels; PSNR (peak 1) over the
    whole volume. See the module docstring for what the non-tumour part counts.

    Args:
        prediction: the synthesised image (H, W, D), any intensity space.
        target: the acquired image, same grid.
        tumour: the tumour (non-zero voxels of the label map).

    Returns:
        ``BraSynSSIM_tumour`` (NaN without a tumour), ``BraSynSSIM_nontumour``, ``BraSynPSNR`` (dB).

    Raises:
        ValueError: when the shapes differ.
    """
    pred = _brasyn_normalise(np.asarray(prediction, dtype=np.float64))
    ref = _brasyn_normalise(np.asarray(target, dtype=np.float64))
    mask = np.asarray(tumour) != 0
    if pred.shape != ref.shape or mask.shape != ref.shape:
        raise ValueError(
            f"shapes differ: synthesised {pred.shape}, acquired {ref.shape}, tumour {mask.shape}"
        )
    mse = float(np.mean((pred - ref) ** 2))
    return {
        "BraSynSSIM_tumour": _mean_ssim_in(pred * mask, ref * mask, mask),
        "BraSynSSIM_nontumour": _mean_ssim_in(pred * ~mask, ref * ~mask, ~mask),
        "BraSynPSNR": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
    }


__all__: Sequence[str] = (
    "BRATS_EVALUATION_PACKAGE",
    "INPAINTING_PACKAGE",
    "DEFAULT_CONFIG",
    "CONFIG_GROUPS",
    "LESIONWISE_METRICS",
    "HD95_PENALTY",
    "INPAINTING_METRICS",
    "BRASYN_METRICS",
    "brasyn_metrics",
    "brasyn_ssim_map",
    "brats_evaluation_status",
    "inpainting_status",
    "load_evaluator",
    "to_brats2023",
    "lesionwise_metrics",
    "inpainting_metrics",
)

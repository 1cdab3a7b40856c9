"""Image-synthesis losses restricted to a weighted region (the brain, optionally stressing the tumour)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers import separable_filtering
from monai.transforms.utils_pytorch_numpy_unification import percentile

from medmtl.metrics import CLIP_PERCENTILES

__all__ = ["SSIM_RANGES", "MaskedL1SSIMLoss", "masked_l1", "masked_ssim"]

SSIM_RANGES: tuple[str, ...] = ("minmax", "percentile")
"""How :func:`masked_ssim` maps intensities to SSIM's data range of 1: the target's min-max, or the
``CLIP_PERCENTILES`` of the target inside the weighted region, per image and contrast (the scaling
``medmtl evaluate`` scores with)."""


def _check(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"synthesis prediction and target differ in shape: {list(pred.shape)} vs {list(target.shape)}"
        )
    if weight is not None and (weight.shape[0] != pred.shape[0] or weight.shape[2:] != pred.shape[2:]):
        raise ValueError(
            f"voxel weight must have shape ({pred.shape[0]}, 1 or C, {list(pred.shape[2:])}), "
            f"found {list(weight.shape)}"
        )


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error over the voxels that ``weight`` selects (a weighted mean over the batch).

    Args:
        pred: ``(B, C, *S)`` prediction.
        target: ``(B, C, *S)`` target.
        weight: ``(B, 1 or C, *S)`` non-negative voxel weights (a 0/1 brain mask, possibly raised in the
            tumour); ``None`` means every voxel counts once.

    Returns:
        ``sum(w |pred - target|) / sum(w)`` over voxels and channels; 0 (with a gradient path) when the
        weights are all zero.
    """
    _check(pred, target, weight)
    err = (pred - target).abs()
    if weight is None:
        return err.mean()
    w = weight.to(err.dtype).expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-8)


def separable_ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM map over valid windows, data range 1, with a separable Gaussian window.

    Numerically the map of MONAI's ``compute_ssim_and_cs`` (same window, constants and valid-window
    crop), but the Gaussian local statistics run as one 1D convolution per axis through MONAI's
    ``separable_filtering``: 3 x 11 instead of 11^3 multiplications per voxel in 3D, which made the
    SSIM term's backward pass several times the cost of the whole network's on a CPU.

    Args:
        x: ``(B, C, *S)`` image in [0, 1].
        y: ``(B, C, *S)`` image in [0, 1].
        win_size: Gaussian window size.
        kernel_sigma: Gaussian window standard deviation.
        k1: luminance stability constant.
        k2: contrast stability constant.

    Returns:
        The SSIM map, ``(B, C, *[s - win_size + 1 for s in S])``.
    """
    spatial_dims = x.dim() - 2
    coords = torch.arange(win_size, dtype=x.dtype, device=x.device) - (win_size - 1) / 2
    g = torch.exp(-0.5 * (coords / kernel_sigma) ** 2)
    kernels = [g / g.sum()] * spatial_dims
    half = (win_size - 1) // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        out = separable_filtering(t, kernels)
        for d in range(spatial_dims):
            out = out.narrow(2 + d, half, t.shape[2 + d] - win_size + 1)
        return out

    c1, c2 = k1**2, k2**2
    mu_x, mu_y = blur(x), blur(y)
    sigma_x = blur(x * x) - mu_x * mu_x
    sigma_y = blur(y * y) - mu_y * mu_y
    sigma_xy = blur(x * y) - mu_x * mu_y
    contrast = (2 * sigma_xy + c2) / (sigma_x + sigma_y + c2)
    return ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * contrast


def _percentile_window(
    target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lo, span)`` of shape ``(B, C, 1, ...)``: each target contrast's ``CLIP_PERCENTILES`` over the
    voxels with positive weight (all voxels where that contrast has none)."""
    b, c = target.shape[:2]
    inside = None if weight is None else (weight > 0).expand(b, c, *target.shape[2:])
    lo, hi = target.new_empty(b, c), target.new_empty(b, c)
    for i in range(b):
        for j in range(c):
            values = target[i, j].flatten()
            if inside is not None and inside[i, j].any():
                values = values[inside[i, j].flatten()]
            # MONAI's percentile, as ScaleIntensityRangePercentiles computes it for `medmtl evaluate`
            lo[i, j], hi[i, j] = percentile(values, CLIP_PERCENTILES)
    shape = [b, c] + [1] * (target.dim() - 2)
    return lo.view(shape), (hi - lo).clamp_min(1e-6).view(shape)


def masked_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    intensity_range: str = "minmax",
) -> torch.Tensor:
    """Structural similarity averaged over a weighted region (Wang et al., IEEE TIP 2004).

    The SSIM map is MONAI's (``monai.metrics.regression.compute_ssim_and_cs``, the function behind
    ``SSIMLoss``), computed with a separable window (:func:`separable_ssim_map`); its mean is taken
    with ``weight`` (cropped to the map, which is computed over
    valid windows only), instead of multiplying both images by a mask, which would turn the background
    into identical zeros that score a perfect SSIM and dilute the loss by the background fraction.
    Both images are first mapped by the same affine map taking the target's intensity range to
    [0, 1] (``data_range=1``): the z-scored intensities are centred on 0, where SSIM's luminance term
    is unstable. The range is the target's min-max over the patch (``"minmax"``, one range per image
    for all contrasts), or the 0.5/99.5 percentiles of each target contrast inside the weighted region
    (``"percentile"``, no clipping). The second is the scale ``medmtl evaluate`` scores at: a min-max
    range also spans the background and the brightest vessel, which on BraTS t1c patches shrinks
    the brain's local variances about threefold, towards SSIM's constant ``(k2)^2``, so the structure
    term's gradient weakens. With ``weight=None`` and ``"minmax"`` this equals ``1 - SSIMLoss`` on
    the rescaled images.

    Args:
        pred: ``(B, C, *S)`` prediction, ``S`` 2D or 3D, each size at least ``win_size``.
        target: ``(B, C, *S)`` target.
        weight: ``(B, 1 or C, *S)`` voxel weights or ``None``.
        win_size: Gaussian window size.
        kernel_sigma: Gaussian window standard deviation.
        k1: luminance stability constant.
        k2: contrast stability constant.
        intensity_range: one of :data:`SSIM_RANGES`.

    Returns:
        The weighted mean SSIM (a scalar tensor; 0 when the weights are all zero).
    """
    _check(pred, target, weight)
    spatial_dims = pred.dim() - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"SSIM needs 2D or 3D images, found shape {list(pred.shape)}")
    if min(pred.shape[2:]) < win_size:
        raise ValueError(f"SSIM window {win_size} is larger than the image size {list(pred.shape[2:])}")
    if intensity_range not in SSIM_RANGES:
        raise ValueError(f"SSIM intensity_range must be one of {SSIM_RANGES}, found {intensity_range!r}")
    with torch.no_grad():
        if intensity_range == "percentile":
            lo, span = _percentile_window(target, weight)
        else:
            flat = target.flatten(1)
            lo = flat.amin(1)
            span = (flat.amax(1) - lo).clamp_min(1e-6)
            shape = [-1] + [1] * (pred.dim() - 1)
            lo, span = lo.view(shape), span.view(shape)
    ssim_map = separable_ssim_map((pred - lo) / span, (target - lo) / span, win_size, kernel_sigma, k1, k2)
    if weight is None:
        return ssim_map.mean()
    half = (win_size - 1) // 2
    w = weight.to(ssim_map.dtype)
    for d in range(spatial_dims):
        w = w.narrow(2 + d, half, ssim_map.shape[2 + d])
    w = w.expand_as(ssim_map)
    return (ssim_map * w).sum() / w.sum().clamp_min(1e-8)


class MaskedL1SSIMLoss(nn.Module):
    """``l1_weight * L1 + ssim_weight * (1 - SSIM)`` over a weighted region; terms with weight 0 are skipped.

    Args:
        l1_weight: weight of the mean absolute error.
        ssim_weight: weight of ``1 - SSIM``.
        win_size: SSIM window size.
        kernel_sigma: SSIM Gaussian standard deviation.
        ssim_range: how SSIM scales intensities, one of :data:`SSIM_RANGES` (see :func:`masked_ssim`).
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        ssim_weight: float = 1.0,
        win_size: int = 11,
        kernel_sigma: float = 1.5,
        ssim_range: str = "minmax",
    ) -> None:
        super().__init__()
        if l1_weight < 0 or ssim_weight < 0 or l1_weight + ssim_weight == 0:
            raise ValueError(
                f"need non-negative L1/SSIM weights, not both 0; found {l1_weight}, {ssim_weight}"
            )
        self.l1_weight = l1_weight
        self.ssim_weight = ssim_weight
        self.win_size = win_size
        self.kernel_sigma = kernel_sigma
        if ssim_range not in SSIM_RANGES:
            raise ValueError(f"ssim_range must be one of {SSIM_RANGES}, found {ssim_range!r}")
        self.ssim_range = ssim_range

    def components(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The unweighted terms.

        Args:
            pred: ``(B, C, *S)`` prediction.
            target: ``(B, C, *S)`` target.
            weight: ``(B, 1 or C, *S)`` voxel weights or ``None``.

        Returns:
            ``{"l1": ..., "ssim_loss": 1 - SSIM}``, each only when its weight is non-zero.
        """
        out: dict[str, torch.Tensor] = {}
        if self.l1_weight > 0:
            out["l1"] = masked_l1(pred, target, weight)
        if self.ssim_weight > 0:
            ssim = masked_ssim(
                pred,
                target,
                weight,
                win_size=self.win_size,
                kernel_sigma=self.kernel_sigma,
                intensity_range=self.ssim_range,
            )
            out["ssim_loss"] = 1.0 - ssim
        return out

    def combine(self, components: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of :meth:`components`' output.

        Args:
            components: the unweighted terms.

        Returns:
            A scalar tensor.
        """
        weights = {"l1": self.l1_weight, "ssim_loss": self.ssim_weight}
        terms = [weights[k] * v for k, v in components.items()]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: ``(B, C, *S)`` prediction.
            target: ``(B, C, *S)`` target.
            weight: ``(B, 1 or C, *S)`` voxel weights or ``None``.

        Returns:
            A scalar tensor.
        """
        return self.combine(self.components(pred, target, weight))

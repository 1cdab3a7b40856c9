"""A coarse multi-task U-Net inside a full-resolution model: the part refinement and guided synthesis share.

The multi-task U-Net is trained on 2 mm volumes (on a CPU, 1 mm training is 8x the cost). A model
that returns 1 mm outputs runs it on the input's 2 mm grid (as ``Spacingd`` makes it) and brings its
outputs back to the input's size (as ``Invertd`` does); what it adds at full resolution is the
subclass's part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from medmtl.networks.multitask_unet import MultiTaskUNet


class CoarseWrapper(nn.Module):
    """Runs a :class:`MultiTaskUNet` at ``1/factor`` of the input resolution.

    Subclasses implement :meth:`forward`; the attributes export, training and the bundle configs read
    from a network (``spatial_dims``, ``in_channels``, ``seg_channels``, ``synth_channels``,
    ``input_mask``, ``divisor``, ``forward_tuple``, ``parameter_groups``) are those of the coarse
    network, so a wrapped model is used exactly like a plain one.

    Args:
        base: the coarse network.
        factor: resolution factor between input and coarse network.
    """

    def __init__(self, base: MultiTaskUNet, factor: int = 2) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"factor must be >= 1, found {factor}")
        self.base = base
        self.factor = int(factor)

    @property
    def spatial_dims(self) -> int:
        return self.base.spatial_dims

    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    @property
    def seg_channels(self) -> int:
        return self.base.seg_channels

    @property
    def synth_channels(self) -> int:
        return self.base.synth_channels

    @property
    def input_mask(self) -> bool:
        return self.base.film is not None

    @property
    def divisor(self) -> int:
        return self.base.divisor * self.factor

    def coarse(self, x: torch.Tensor, channel_mask: torch.Tensor | None) -> dict[str, Any]:
        """The coarse network's outputs on every ``factor``-th voxel of the input.

        The coarse network learnt on volumes that MONAI's ``Spacingd`` resampled: it keeps the first
        voxel's centre, so coarse voxel ``k`` lies on fine voxel ``factor * k`` and, for an integer
        factor, linear resampling takes that voxel's value. The same grid here gives the coarse
        network the inputs it knows (an average over blocks would be smoother, and half a voxel off).
        """
        if self.factor == 1:
            return self.base(x, channel_mask)
        step = (slice(None), slice(None)) + (slice(None, None, self.factor),) * (x.ndim - 2)
        return self.base(x[step], channel_mask)

    def upsample(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Coarse outputs back on the grid of ``like``, as ``Invertd`` would bring them back.

        Linear interpolation between coarse voxels at fine voxels ``factor * k``; the fine voxels past
        the last coarse one take its value (``Spacingd``'s border padding).
        """
        size = [int(s) for s in like.shape[2:]]
        inner = [self.factor * (int(n) - 1) + 1 for n in y.shape[2:]]
        mode = "trilinear" if like.ndim == 5 else "bilinear"
        up = F.interpolate(y, size=inner, mode=mode, align_corners=True) if inner != list(y.shape[2:]) else y
        pad: list[int] = []
        for s, i in zip(reversed(size), reversed(inner)):
            pad += [0, s - i]
        return F.pad(up, pad, mode="replicate") if any(pad) else up

    def upsample_seg(self, logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Segmentation logits back on the grid of ``like``, interpolated as probabilities.

        The bundle's inference takes the sigmoid before ``Invertd`` interpolates: interpolated logits
        would cross a low threshold (0.2) nearer the tumour than interpolated probabilities and shrink
        every region at its border (by 8-12 ml of whole tumour on BraTS cases).
        """
        eps = 1e-6
        return torch.logit(self.upsample(torch.sigmoid(logits), like).clamp(eps, 1.0 - eps))

    def extras(self, coarse: dict[str, Any]) -> dict[str, Any]:
        """The coarse network's training-only outputs (``seg_ds``, ``vae_loss``) in training mode."""
        return {k: v for k, v in coarse.items() if k not in ("seg", "synth")} if self.training else {}

    def forward_tuple(
        self, x: torch.Tensor, channel_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference outputs as a tuple ``(seg, synth)`` (for tracing and export)."""
        out = self.forward(x, channel_mask)
        return out["seg"], out["synth"]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The coarse network's parameter groups."""
        return self.base.parameter_groups()


def load_coarse_weights(
    net: CoarseWrapper,
    state: Mapping[str, torch.Tensor],
    adapt: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
    source: str = "the coarse weights",
) -> CoarseWrapper:
    """Load the weights of a trained coarse model into a wrapped network's coarse part.

    Args:
        net: the wrapped network.
        state: the coarse model's state dict (read by
            :func:`medmtl.bundle_config.coarse_state`: networks know tensors, not files).
        adapt: called with (the checkpoint's state, the coarse network's own state) to rewrite entries
            whose shapes the wrapper changed, before loading.
        source: what the state came from, for the error message.

    Returns:
        ``net``.

    Raises:
        ValueError: when the weights do not fit the coarse network.
    """
    state = dict(state)
    if adapt is not None:
        adapt(state, net.base.state_dict())
    try:
        net.base.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{source} does not hold the weights of the coarse network its config describes: {err}"
        ) from None
    return net

"""A coarse multi-task U-Net inside a full-resolution model: the part refinement and guided synthesis share.

The multi-task U-Net is trained on 2 mm volumes (on a CPU, 1 mm training is 8x the cost). A model
that returns 1 mm outputs runs it on the input average-pooled by ``factor`` and brings its outputs
back to the input's size; what it adds at full resolution is the subclass's part.
"""

from __future__ import annotations

from collections.abc import Callable
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
        """The coarse network's outputs on the input average-pooled by ``factor``."""
        pool = F.avg_pool3d if x.ndim == 5 else F.avg_pool2d
        small = pool(x, self.factor, ceil_mode=True) if self.factor > 1 else x
        return self.base(small, channel_mask)

    def upsample(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``y`` interpolated (trilinear / bilinear) to the spatial size of ``like``."""
        mode = "trilinear" if like.ndim == 5 else "bilinear"
        return F.interpolate(y, size=[int(s) for s in like.shape[2:]], mode=mode, align_corners=False)

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
    weights: str | None,
    adapt: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> CoarseWrapper:
    """Load the weights of a trained coarse model into a wrapped network's coarse part.

    Args:
        net: the wrapped network.
        weights: the coarse model's ``model.pt`` (read as data, ``weights_only``).
        adapt: called with (the checkpoint's state, the coarse network's own state) to rewrite entries
            whose shapes the wrapper changed, before loading.

    Returns:
        ``net``.

    Raises:
        ValueError: without ``weights``, or when they do not fit the coarse network.
    """
    from medmtl.bundle_config import read_state_dict

    if not weights:
        raise ValueError(
            "this stage starts from a trained coarse model: set coarse_weights=RUN/models/model.pt"
        )
    state = dict(read_state_dict(weights))
    if adapt is not None:
        adapt(state, net.base.state_dict())
    try:
        net.base.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{weights} does not hold the weights of the coarse network its config describes: {err}"
        ) from None
    return net

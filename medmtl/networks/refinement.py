"""A full-resolution refinement head over a coarse multi-task U-Net: 1 mm outputs with 1 mm detail.

The multi-task U-Net is trained on 2 mm volumes (on a CPU, 1 mm training is 8x the cost). Resampled
to 2 mm and back, the real T1 post-contrast keeps only 0.74-0.79 SSIM in the brain, and a 2-5 mm
enhancing rim loses its shape, so no 2 mm model can pass that ceiling however good. The refinement
head reads the 1 mm inputs beside the coarse outputs upsampled to 1 mm and predicts a residual
correction of both, so the detail of the acquired contrasts reaches the synthesised ones and the
segmentation borders; it is a few light convolutions, cheap beside the coarse network. This is the
cascade of nnU-Net's full-resolution stage (Isensee et al., Nature Methods 2021) reduced to a
residual head, as in the coarse-to-fine refinement of Kamnitsas et al.'s DeepMedic multi-scale
pathways (Medical Image Analysis 2017).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

from medmtl.networks.coarse import CoarseWrapper, load_coarse_weights
from medmtl.networks.multitask_unet import MultiTaskUNet


class RefinementHead(nn.Module):
    """Residual correction of coarse outputs from full-resolution inputs.

    Args:
        in_channels: full-resolution input contrasts.
        seg_channels: segmentation channels of the coarse network.
        synth_channels: synthesised channels of the coarse network.
        features: channels of the hidden layers.
        layers: 3x3x3 convolution layers before the 1x1 output projection.
        input_mask: the channel mask is given to the head as constant channels.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        seg_channels: int,
        synth_channels: int,
        features: int = 8,
        layers: int = 2,
        input_mask: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if layers < 1 or features < 1:
            raise ValueError(f"layers and features must be >= 1, found {layers} and {features}")
        self.seg_channels, self.synth_channels = seg_channels, synth_channels
        self.input_mask = input_mask
        width = in_channels * (2 if input_mask else 1) + seg_channels + synth_channels
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks.append(
                Convolution(
                    spatial_dims,
                    width if i == 0 else features,
                    features,
                    kernel_size=3,
                    act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                    norm=("instance", {"affine": True}),
                )
            )
        self.body = nn.Sequential(*blocks)
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.out = conv(features, seg_channels + synth_channels, kernel_size=1)
        # Zero-initialised projection: an untrained head returns the coarse outputs unchanged, so
        # refinement training starts from the coarse model's quality, never below it.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        x: torch.Tensor,
        seg: torch.Tensor,
        synth: torch.Tensor,
        channel_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refine upsampled coarse outputs.

        Args:
            x: ``(B, in_channels, *S)`` full-resolution inputs (missing contrasts zero-filled).
            seg: ``(B, seg_channels, *S)`` coarse segmentation logits, upsampled to ``S``.
            synth: ``(B, synth_channels, *S)`` coarse synthesis, upsampled to ``S``.
            channel_mask: ``(B, in_channels)`` 0/1 mask with ``input_mask``.

        Returns:
            ``(seg logits, synthesis)`` at ``S``.
        """
        parts = [x, seg, synth]
        if self.input_mask:
            mask = (
                torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
                if channel_mask is None
                else channel_mask
            )
            mask = mask.to(x.dtype).expand(x.shape[0], -1)
            parts.insert(1, mask.reshape(*mask.shape, *([1] * (x.ndim - 2))).expand_as(x))
        delta = self.out(self.body(torch.cat(parts, dim=1)))
        return seg + delta[:, : self.seg_channels], synth + delta[:, self.seg_channels :]


class RefinedMultiTaskUNet(CoarseWrapper):
    """A :class:`MultiTaskUNet` run at ``1/factor`` of the input resolution, refined at full resolution.

    The coarse network reads the input's coarse grid (2 mm for 1 mm inputs, as ``Spacingd`` makes
    it); its outputs are brought back to the input's size (linear, as ``Invertd``) and corrected by a
    :class:`RefinementHead`. Outputs have the input's spatial size, as the coarse network's do; the
    interface is the coarse network's (:class:`~medmtl.networks.coarse.CoarseWrapper`), so the
    bundle's inferers, export and training use it unchanged.

    Args:
        base: the coarse network.
        factor: resolution factor between input and coarse network.
        features: channels of the head's hidden layers.
        layers: convolution layers of the head.
    """

    def __init__(self, base: MultiTaskUNet, factor: int = 2, features: int = 8, layers: int = 2) -> None:
        super().__init__(base, factor)
        self.head = RefinementHead(
            base.in_channels,
            base.seg_channels,
            base.synth_channels,
            features=features,
            layers=layers,
            input_mask=base.film is not None,
            spatial_dims=base.spatial_dims,
        )

    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Run the coarse network and the refinement.

        Args:
            x: ``(B, in_channels, *S)`` full-resolution input.
            channel_mask: as for :meth:`MultiTaskUNet.forward`.

        Returns:
            ``{"seg", "synth"}`` at ``S``; in training mode also the coarse network's extra outputs
            (``"seg_ds"``, ``"vae_loss"``).
        """
        coarse = self.coarse(x, channel_mask)
        seg, synth = self.head(
            x, self.upsample_seg(coarse["seg"], x), self.upsample(coarse["synth"], x), channel_mask
        )
        return {"seg": seg, "synth": synth, **self.extras(coarse)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The coarse network's groups plus ``"refine"``, the head's parameters."""
        groups = self.base.parameter_groups()
        groups["refine"] = list(self.head.parameters())
        return groups


def load_coarse(
    net: RefinedMultiTaskUNet, state: Mapping[str, torch.Tensor], source: str = "the coarse weights"
) -> RefinedMultiTaskUNet:
    """Load the weights of a trained coarse model into a refined network's coarse part.

    Args:
        net: the refined network.
        state: the coarse model's state dict (:func:`medmtl.bundle_config.coarse_state`).
        source: what the state came from, for the error message.

    Returns:
        ``net``.

    Raises:
        ValueError: when the weights do not fit the coarse network.
    """
    return load_coarse_weights(net, state, source=source)

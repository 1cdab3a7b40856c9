"""Conditioning of a network on which input contrasts are present."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ChannelMaskFiLM"]


class ChannelMaskFiLM(nn.Module):
    """Feature-wise linear modulation of a feature map by a per-sample channel-availability mask.

    ``h -> h * (1 + gamma(m)) + beta(m)`` with ``gamma, beta`` a linear function of the 0/1 mask ``m``
    (Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018). Feeding the
    mask as constant extra input channels would give the stem almost the same information (a 3x3
    convolution of a constant map is a per-channel constant away from the border) at the cost of full
    resolution channels; the modulation adds a scale as well and costs nothing spatially.

    Args:
        mask_channels: length of the mask (number of input contrasts).
        features: channels of the modulated feature map.
        spatial_dims: number of spatial dimensions of the feature map.
    """

    def __init__(self, mask_channels: int, features: int, spatial_dims: int) -> None:
        super().__init__()
        self.features = features
        self.spatial_dims = spatial_dims
        self.linear = nn.Linear(mask_channels, 2 * features)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Modulate ``h``.

        Args:
            h: features ``(B, features, *S)``.
            mask: ``(B, mask_channels)`` or ``(1, mask_channels)`` of 0/1.

        Returns:
            The modulated features, same shape as ``h``.
        """
        gb = self.linear(mask.to(h.dtype))
        gamma, beta = gb[:, : self.features], gb[:, self.features :]
        for _ in range(self.spatial_dims):
            gamma = gamma.unsqueeze(-1)
            beta = beta.unsqueeze(-1)
        return torch.addcmul(beta, h, 1.0 + gamma)

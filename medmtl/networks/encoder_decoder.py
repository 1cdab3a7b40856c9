"""Residual encoder and decoder stages of the multi-task U-Net, built from MONAI's SegResNet blocks.

The layout follows SegResNet (Myronenko, "3D MRI brain tumor segmentation using autoencoder
regularization", BrainLes 2018, arXiv:1810.11654): a convolutional stem, then per level a strided
3x3 convolution and pre-activation residual blocks; the decoder upsamples with a 1x1 convolution plus
linear interpolation and adds the encoder's skip feature. The widths are free per level (not tied to
powers of two), so a decoder can be narrower than the encoder at full resolution, where convolutions
and feature maps are most expensive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.segresnet_block import ResBlock, get_conv_layer, get_upsample_layer
from monai.networks.layers.factories import Dropout
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import UpsampleMode

__all__ = ["ChannelsLast", "DecoderLevel", "ResidualDecoder", "ResidualEncoder", "make_head"]


class ChannelsLast(nn.Module):
    """Return the input in channels-last memory format (values and shape unchanged).

    Placed before a 1x1 convolution at full resolution: on CPU, oneDNN otherwise reorders a plain
    ``(B, C, *S)`` map and its output into 16-channel blocks, two padded copies that set the network's
    peak memory on a whole volume; in channels-last format it reads and writes the maps directly.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.three_d = spatial_dims == 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` in channels-last format.

        Args:
            x: ``(B, C, *S)``.

        Returns:
            The same values, channels-last strides.
        """
        if self.three_d:
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x.contiguous(memory_format=torch.channels_last)


def make_head(
    spatial_dims: int, in_channels: int, out_channels: int, norm: tuple | str, act: tuple | str
) -> nn.Sequential:
    """Output head: norm, activation, 1x1 convolution with bias (SegResNet's ``conv_final``).

    The residual blocks end in a raw sum, so the head normalises and activates before projecting.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: feature channels.
        out_channels: output channels.
        norm: MONAI norm name/args.
        act: MONAI activation name/args.

    Returns:
        The head module.
    """
    return nn.Sequential(
        get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=in_channels),
        get_act_layer(act),
        ChannelsLast(spatial_dims),
        get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=1, bias=True),
    )


class ResidualEncoder(nn.Module):
    """SegResNet-style encoder returning the feature map of every level.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        features: channels per level, full resolution first; level ``i`` has stride ``2**i``.
        blocks_down: residual blocks per level (same length as ``features``).
        norm: MONAI norm name/args (e.g. ``("instance", {"affine": True})``).
        act: MONAI activation name/args.
        dropout: dropout probability after the stem (0 disables it).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features: Sequence[int],
        blocks_down: Sequence[int],
        norm: tuple | str,
        act: tuple | str,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(blocks_down) != len(features):
            raise ValueError(
                f"blocks_down needs one entry per level: expected {len(features)}, found {len(blocks_down)}"
            )
        self.spatial_dims = spatial_dims
        self.features = tuple(int(f) for f in features)
        self.conv_init = get_conv_layer(spatial_dims, in_channels, self.features[0])
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.down_layers = nn.ModuleList()
        for i, (width, n_blocks) in enumerate(zip(self.features, blocks_down)):
            pre = (
                get_conv_layer(spatial_dims, self.features[i - 1], width, stride=2)
                if i > 0
                else nn.Identity()
            )
            blocks = [ResBlock(spatial_dims, width, norm=norm, act=act) for _ in range(int(n_blocks))]
            self.down_layers.append(nn.Sequential(pre, *blocks))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution stem convolution (before the first residual blocks).

        Args:
            x: input ``(B, in_channels, *S)``.

        Returns:
            ``(B, features[0], *S)``.
        """
        return self.conv_init(x)

    def forward_levels(self, stem: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the levels on the stem output.

        Args:
            stem: a one-element list holding the stem output ``(B, features[0], *S)``; it is emptied,
                so the caller keeps no reference to that full-resolution map while the levels run.

        Returns:
            One feature map per level, full resolution first, bottleneck last.
        """
        x = self.dropout(stem.pop())
        feats: list[torch.Tensor] = []
        for layer in self.down_layers:
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x``.

        Args:
            x: input ``(B, in_channels, *S)``, each spatial size divisible by ``2**(levels - 1)``.

        Returns:
            One feature map per level, full resolution first, bottleneck last.
        """
        return self.forward_levels([self.stem(x)])


class DecoderLevel(nn.Module):
    """One decoder level: upsample the coarser map, add the (projected) skip, refine with residual blocks.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels of the coarser map.
        skip_channels: channels of the encoder skip at this level (ignored without skips).
        channels: channels of this level.
        n_blocks: residual blocks after the merge (0 allowed).
        norm: MONAI norm name/args.
        act: MONAI activation name/args.
        upsample_mode: MONAI upsample mode.
        use_skip: add the encoder skip feature.
        ds_channels: output channels of a deep-supervision head at this level; 0 for none.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        channels: int,
        n_blocks: int,
        norm: tuple | str,
        act: tuple | str,
        upsample_mode: UpsampleMode | str,
        use_skip: bool = True,
        ds_channels: int = 0,
    ) -> None:
        super().__init__()
        self.use_skip = use_skip
        self.has_ds = ds_channels > 0
        self.up = nn.Sequential(
            get_conv_layer(spatial_dims, in_channels, channels, kernel_size=1),
            get_upsample_layer(spatial_dims, channels, upsample_mode=upsample_mode),
        )
        self.projects_skip = use_skip and skip_channels != channels
        self.skip_proj: nn.Module = nn.Identity()
        if self.projects_skip:
            self.skip_proj = nn.Sequential(
                ChannelsLast(spatial_dims),
                get_conv_layer(spatial_dims, skip_channels, channels, kernel_size=1),
            )
        self.blocks = nn.Sequential(
            *[ResBlock(spatial_dims, channels, norm=norm, act=act) for _ in range(n_blocks)]
        )
        self.ds_head = (
            make_head(spatial_dims, channels, ds_channels, norm, act) if self.has_ds else nn.Identity()
        )

    def merge(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` and add the skip.

        Args:
            x: the coarser decoder map.
            skip: the encoder feature of this level (not read without skips).

        Returns:
            The merged map at this level's resolution.
        """
        x = self.up(x)
        if self.use_skip:
            # In place: the upsampled map is not needed by autograd, and at full resolution a second
            # copy would set the peak memory.
            x.add_(self.skip_proj(skip))
        return x

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Merge and refine.

        Args:
            x: the coarser decoder map.
            skip: the encoder feature of this level.

        Returns:
            This level's decoder map.
        """
        return self.blocks(self.merge(x, skip))


class ResidualDecoder(nn.Module):
    """SegResNet-style decoder with free widths per level and optional deep-supervision heads.

    Level ``i`` (from the bottleneck up): 1x1 convolution to the level's width, x2 upsampling, addition
    of the encoder skip (projected by a 1x1 convolution when the decoder is narrower than the encoder
    there), then ``blocks_up`` residual blocks. With ``use_skips=False`` it decodes a single map (used by
    the VAE branch).

    Args:
        spatial_dims: number of spatial dimensions.
        encoder_features: encoder channels per level, full resolution first (bottleneck last).
        decoder_features: decoder channels per level except the bottleneck, full resolution first
            (length ``levels - 1``).
        blocks_up: residual blocks per decoder level, ordered from the bottleneck up as in MONAI's
            SegResNet (the last entry is the full-resolution level); 0 is allowed.
        out_channels: channels of the full-resolution output.
        norm: MONAI norm name/args.
        act: MONAI activation name/args.
        upsample_mode: MONAI upsample mode (``"nontrainable"``, ``"deconv"``, ``"pixelshuffle"``).
        deep_supervision: add a head at every decoder level below full resolution.
        use_skips: add the encoder skip features.
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_features: Sequence[int],
        decoder_features: Sequence[int],
        blocks_up: Sequence[int],
        out_channels: int,
        norm: tuple | str,
        act: tuple | str,
        upsample_mode: UpsampleMode | str = UpsampleMode.NONTRAINABLE,
        deep_supervision: bool = False,
        use_skips: bool = True,
    ) -> None:
        super().__init__()
        enc = [int(f) for f in encoder_features]
        dec = [int(f) for f in decoder_features]
        n_up = len(enc) - 1
        if len(dec) != n_up:
            raise ValueError(
                f"decoder_features needs one entry per level below the bottleneck: expected {n_up}, "
                f"found {len(dec)}"
            )
        if len(blocks_up) != n_up:
            raise ValueError(
                f"blocks_up needs one entry per decoder level: expected {n_up}, found {len(blocks_up)}"
            )
        self.deep_supervision = deep_supervision
        self.levels = nn.ModuleList()
        in_width = enc[-1]
        for k in range(n_up):
            level = n_up - 1 - k
            ds = out_channels if deep_supervision and level > 0 else 0
            self.levels.append(
                DecoderLevel(
                    spatial_dims,
                    in_width,
                    enc[level],
                    dec[level],
                    int(blocks_up[k]),
                    norm,
                    act,
                    upsample_mode,
                    use_skip=use_skips,
                    ds_channels=ds,
                )
            )
            in_width = dec[level]
        self.head = make_head(spatial_dims, in_width, out_channels, norm, act)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode encoder features.

        Args:
            feats: encoder features, full resolution first, bottleneck last (only the bottleneck is
                read when the decoder has no skips).

        Returns:
            The full-resolution output and, with deep supervision in training mode, the lower-resolution
            outputs (coarsest first, each at its level's own resolution); otherwise an empty list.
        """
        n_up = len(feats) - 1
        x = feats[-1]
        ds_out: list[torch.Tensor] = []
        for k, level in enumerate(self.levels):
            x = level(x, feats[max(n_up - 1 - k, 0)])
            if self.training and level.has_ds:
                ds_out.append(level.ds_head(x))
        return self.head(x), ds_out

"""Variational auto-encoder branch that regularises a shared encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.segresnet_block import get_conv_layer, get_upsample_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.utils import UpsampleMode

from medmtl.networks.encoder_decoder import ResidualDecoder

__all__ = ["VAEBranch"]


class VAEBranch(nn.Module):
    """Reconstruct the network input from the encoder bottleneck through a Gaussian latent.

    As in Myronenko, "3D MRI brain tumor segmentation using autoencoder regularization", BrainLes 2018
    (arXiv:1810.11654) and MONAI's ``SegResNetVAE``: the bottleneck is reduced (norm, act, strided
    convolution to 16 channels), flattened to a mean and a standard deviation, sampled, mapped back and
    decoded without skip connections to the input. The loss is ``KL(N(mu, sigma) || N(0, 1)) + MSE``,
    unweighted (the paper weights each term 0.1 in the total loss; :class:`medmtl.losses.MultiTaskLoss`
    applies its ``vae_weight``). Unlike ``SegResNetVAE``, whose reconstruction reuses the segmentation
    decoder's layers, this branch has its own decoder so that it regularises only the shared encoder.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: channels to reconstruct (the network input).
        input_shape: the fixed spatial size of training inputs; each size divisible by ``2**levels``,
            one at least ``2**(levels + 1)``.
        encoder_features: encoder channels per level, full resolution first.
        decoder_features: decoder channels per level below the bottleneck, full resolution first.
        blocks_up: residual blocks per decoder level, from the bottleneck up.
        norm: MONAI norm name/args.
        act: MONAI activation name/args.
        upsample_mode: MONAI upsample mode.
        latent_dim: size of the latent vector (the paper uses 128).
        estimate_std: learn the latent standard deviation (the paper); if False use ``default_std`` and
            the KL term reduces to ``mean(mu**2)`` as in ``SegResNetVAE``.
        default_std: the fixed standard deviation when ``estimate_std`` is False.
        reduced_channels: channels of the reduced bottleneck before flattening (16 in the paper).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        input_shape: Sequence[int],
        encoder_features: Sequence[int],
        decoder_features: Sequence[int],
        blocks_up: Sequence[int],
        norm: tuple | str,
        act: tuple | str,
        upsample_mode: UpsampleMode | str = UpsampleMode.NONTRAINABLE,
        latent_dim: int = 128,
        estimate_std: bool = True,
        default_std: float = 0.3,
        reduced_channels: int = 16,
    ) -> None:
        super().__init__()
        levels = len(encoder_features)
        factor = 2**levels
        shape = [int(s) for s in input_shape]
        if len(shape) != spatial_dims or any(s <= 0 or s % factor for s in shape):
            raise ValueError(
                f"vae_input_shape must have {spatial_dims} sizes, each a multiple of {factor} "
                f"(2**levels), found {tuple(input_shape)}"
            )
        self.input_shape = shape
        self.reduced_shape = [s // factor for s in shape]
        if max(self.reduced_shape) < 2:
            # the reduced bottleneck is normalised per instance, which needs more than one voxel
            raise ValueError(
                f"vae_input_shape {tuple(input_shape)} is too small: "
                f"at least one size must be >= {2 * factor}"
            )
        self.reduced_channels = reduced_channels
        self.estimate_std = estimate_std
        self.default_std = default_std
        bottleneck = int(encoder_features[-1])
        n_flat = reduced_channels * int(torch.tensor(self.reduced_shape).prod())
        self.down = nn.Sequential(
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=bottleneck),
            get_act_layer(act),
            get_conv_layer(spatial_dims, bottleneck, reduced_channels, stride=2, bias=True),
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=reduced_channels),
            get_act_layer(act),
        )
        self.fc_mean = nn.Linear(n_flat, latent_dim)
        self.fc_std = nn.Linear(n_flat, latent_dim) if estimate_std else None
        self.fc_up = nn.Linear(latent_dim, n_flat)
        self.act = get_act_layer(act)
        self.up = nn.Sequential(
            get_conv_layer(spatial_dims, reduced_channels, bottleneck, kernel_size=1),
            get_upsample_layer(spatial_dims, bottleneck, upsample_mode=upsample_mode),
            get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=bottleneck),
            get_act_layer(act),
        )
        self.decoder = ResidualDecoder(
            spatial_dims,
            encoder_features,
            decoder_features,
            blocks_up,
            in_channels,
            norm,
            act,
            upsample_mode=upsample_mode,
            use_skips=False,
        )

    def forward(
        self, net_input: torch.Tensor, bottleneck: torch.Tensor, channel_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the VAE loss (KL + reconstruction MSE) for one batch.

        Args:
            net_input: the encoder's input ``(B, C, *input_shape)``.
            bottleneck: the encoder's deepest features.
            channel_weight: optional ``(B, C)`` 0/1 weights; channels with weight 0 (absent contrasts)
                do not count in the reconstruction error.

        Returns:
            A scalar tensor.
        """
        if list(net_input.shape[2:]) != self.input_shape:
            raise ValueError(
                f"the VAE branch needs training inputs of the fixed size vae_input_shape="
                f"{self.input_shape}, found {list(net_input.shape[2:])}"
            )
        h = self.down(bottleneck).flatten(1)
        mean = self.fc_mean(h)
        eps = torch.randn_like(mean)
        if self.fc_std is not None:
            std = F.softplus(self.fc_std(h))
            kl = 0.5 * torch.mean(mean**2 + std**2 - torch.log(1e-8 + std**2) - 1.0)
            z = mean + std * eps
        else:
            kl = torch.mean(mean**2)
            z = mean + self.default_std * eps
        z = self.act(self.fc_up(z)).view([-1, self.reduced_channels] + self.reduced_shape)
        recon, _ = self.decoder([self.up(z)])
        sq = (recon - net_input) ** 2
        if channel_weight is None:
            mse = sq.mean()
        else:
            w = channel_weight.to(sq.dtype).expand(sq.shape[0], sq.shape[1])
            per_channel = sq.flatten(2).mean(-1)
            mse = (per_channel * w).sum() / w.sum().clamp_min(1.0)
        return kl + mse

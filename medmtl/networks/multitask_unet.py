"""The multi-task U-Net: one shared residual encoder, a segmentation decoder and a synthesis decoder."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import UpsampleMode

from medmtl.networks.conditioning import ChannelMaskFiLM
from medmtl.networks.encoder_decoder import ChannelsLast, ResidualDecoder, ResidualEncoder
from medmtl.networks.vae import VAEBranch

__all__ = ["MultiTaskUNet", "set_trainable"]


class MultiTaskUNet(nn.Module):
    """Shared-encoder U-Net with a tumour-segmentation branch and a contrast-synthesis branch.

    The encoder is MONAI's SegResNet encoder (Myronenko, arXiv:1810.11654; residual blocks from
    ``monai.networks.blocks.segresnet_block``); both decoders read its skip features. Each decoder is
    SegResNet's decoder with free widths. Full-resolution feature maps dominate time and memory on a
    whole BraTS volume, so by default the decoders are light: half as wide as the encoder
    (``decoder_features = features[:-1] // 2``), one residual block per level below full resolution and
    none at full resolution (``blocks_up=(1, 1, 0)``), where the upsampled decoder map and the projected
    encoder skip are merged and fed to the head (norm, activation, 1x1 convolution). With the SegResNet
    BraTS encoder this yields both outputs in about 0.8x the CPU time and 0.7-0.75x the peak memory of
    a single-output SegResNet on a whole volume; ``blocks_up=(1, 1, 1)`` restores a full-resolution
    block per decoder (then slightly slower than that SegResNet on CPU).

    Inputs of any spatial size are accepted: the input is zero-padded at the end of each axis to a
    multiple of ``2**(levels - 1)`` (and to at least ``2**levels``, so the bottleneck keeps two voxels
    per axis) and the outputs are cropped back, so they have exactly the input's spatial size. A
    scripted copy keeps this logic; a traced copy pads only as the traced size needed, so trace it at
    a size that needs no padding (e.g. the sliding-window ROI) to run it on other such sizes.

    Outputs of :meth:`forward` (a dict):

    - ``"seg"``: ``(B, seg_channels, *S)`` region logits (TC, WT, ET; sigmoid, multi-label);
    - ``"synth"``: ``(B, synth_channels, *S)`` synthesised contrasts (no output activation: the
      targets are z-scored intensities);
    - training mode and ``deep_supervision``: ``"seg_ds"``, a list of segmentation logits of the lower
      decoder levels, coarsest first, each at its own resolution (``ceil(S / 2**k)``, not upsampled;
      ``monai.losses.DeepSupervisionLoss`` resizes the target to each);
    - training mode and ``vae``: ``"vae_loss"``, the VAE branch's scalar loss (KL + reconstruction).

    In eval mode only ``"seg"`` and ``"synth"``, so ``monai.inferers.SlidingWindowInferer`` stitches both
    from one pass.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input contrasts.
        seg_channels: segmentation output channels (3 regions).
        synth_channels: synthesised contrasts.
        features: encoder channels per level, full resolution first.
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level, from the bottleneck up (as in SegResNet); the
            last entry is the full-resolution level (0 allowed).
        decoder_features: decoder channels per level below the bottleneck, full resolution first; both
            decoders share them. Default: half of ``features[:-1]``.
        norm: MONAI norm name/args. Norms must not track running statistics (instance, group, layer
            norms) for :func:`set_trainable` to keep a frozen part bit-identical.
        act: MONAI activation name/args.
        dropout: dropout probability after the stem.
        upsample_mode: MONAI upsample mode of the decoders.
        deep_supervision: add segmentation heads at the lower decoder levels (training mode only).
        vae: add the VAE regularisation branch on the bottleneck (training mode only).
        vae_input_shape: the fixed spatial size of training patches, required with ``vae``.
        vae_latent_dim: size of the VAE latent vector.
        vae_estimate_std: learn the latent standard deviation (see :class:`VAEBranch`).
        input_mask: condition the network on a ``(B, in_channels)`` 0/1 channel mask (which contrasts
            are real): absent channels are zero-filled and the stem features are FiLM-modulated by the mask,
            so one model serves any subset of contrasts.
        seg_prior: initial foreground probability of every region channel: the seg heads' biases start
            at ``log(p / (1 - p))`` (the prior initialisation of Lin et al., "Focal Loss for Dense Object
            Detection", ICCV 2017). The heads project instance-normalised features, so background
            logits sit near the bias; from 0 (p = 0.5) Adam needs thousands of steps to move it, and
            early models mark the whole brain as tumour. ``None`` keeps PyTorch's default.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        seg_channels: int = 3,
        synth_channels: int = 1,
        features: Sequence[int] = (16, 32, 64, 128),
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 0),
        decoder_features: Sequence[int] | None = None,
        norm: tuple | str = ("instance", {"affine": True}),
        act: tuple | str = ("relu", {"inplace": True}),
        dropout: float = 0.0,
        upsample_mode: UpsampleMode | str = UpsampleMode.NONTRAINABLE,
        deep_supervision: bool = False,
        vae: bool = False,
        vae_input_shape: Sequence[int] | None = None,
        vae_latent_dim: int = 128,
        vae_estimate_std: bool = True,
        input_mask: bool = False,
        seg_prior: float | None = 0.1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, found {spatial_dims}")
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 levels, found {tuple(features)}")
        for name, value in (
            ("in_channels", in_channels),
            ("seg_channels", seg_channels),
            ("synth_channels", synth_channels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, found {value}")
        features = tuple(int(f) for f in features)
        if decoder_features is None:
            decoder_features = tuple(max(1, f // 2) for f in features[:-1])
        decoder_features = tuple(int(f) for f in decoder_features)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.seg_channels = seg_channels
        self.synth_channels = synth_channels
        self.features = features
        self.decoder_features = decoder_features
        self.levels = len(features)
        self.divisor = 2 ** (self.levels - 1)
        self.deep_supervision = deep_supervision
        self.input_mask = input_mask

        self.encoder = ResidualEncoder(spatial_dims, in_channels, features, blocks_down, norm, act, dropout)
        self.film = ChannelMaskFiLM(in_channels, features[0], spatial_dims) if input_mask else None
        dec_kw: dict[str, Any] = {"norm": norm, "act": act, "upsample_mode": upsample_mode}
        self.seg_decoder = ResidualDecoder(
            spatial_dims,
            features,
            decoder_features,
            blocks_up,
            seg_channels,
            deep_supervision=deep_supervision,
            **dec_kw,
        )
        self.synth_decoder = ResidualDecoder(
            spatial_dims, features, decoder_features, blocks_up, synth_channels, **dec_kw
        )
        if seg_prior is not None:
            if not 0.0 < seg_prior < 1.0:
                raise ValueError(f"seg_prior must be a probability in (0, 1), found {seg_prior}")
            self._init_seg_bias(math.log(seg_prior / (1.0 - seg_prior)))
        self.channels_last = ChannelsLast(spatial_dims)
        self.vae: VAEBranch | None = None
        if vae:
            if vae_input_shape is None:
                raise ValueError("vae=True needs vae_input_shape, the fixed spatial size of training patches")
            self.vae = VAEBranch(
                spatial_dims,
                in_channels,
                vae_input_shape,
                features,
                decoder_features,
                blocks_up,
                norm,
                act,
                upsample_mode=upsample_mode,
                latent_dim=vae_latent_dim,
                estimate_std=vae_estimate_std,
            )

    # ------------------------------------------------------------------ helpers
    def _init_seg_bias(self, value: float) -> None:
        heads = [self.seg_decoder.head] + [lvl.ds_head for lvl in self.seg_decoder.levels if lvl.has_ds]
        with torch.no_grad():
            for head in heads:
                conv = [m for m in head.modules() if isinstance(m, nn.modules.conv._ConvNd)][-1]
                conv.bias.fill_(value)

    def _check_input(self, x: torch.Tensor, channel_mask: torch.Tensor | None) -> None:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"MultiTaskUNet expects input (B, {self.in_channels}, {self.spatial_dims} spatial sizes), "
                f"found shape {list(x.shape)}"
            )
        if channel_mask is not None:
            if not self.input_mask:
                raise ValueError("channel_mask given, but the network was built with input_mask=False")
            ok = channel_mask.dim() == 2 and channel_mask.shape[1] == self.in_channels
            if not ok or channel_mask.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"channel_mask must have shape ({x.shape[0]} or 1, {self.in_channels}), "
                    f"found {list(channel_mask.shape)}"
                )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        needed = False
        for d in range(self.spatial_dims - 1, -1, -1):
            n = x.shape[2 + d]
            # at least two bottleneck voxels per axis: instance norm needs more than one value
            extra = max((-n) % self.divisor, 2 * self.divisor - n)
            needed = needed or extra > 0
            pad += [0, extra]
        return F.pad(x, pad) if needed else x

    def _crop(self, y: torch.Tensor, size: list[int]) -> torch.Tensor:
        for d in range(self.spatial_dims):
            if y.shape[2 + d] != size[d]:
                y = y.narrow(2 + d, 0, size[d])
        return y

    def _stem(self, x: torch.Tensor, channel_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.encoder.stem(x)
        if self.film is None:
            return h
        mask = channel_mask if channel_mask is not None else x.new_ones(1, self.in_channels)
        return self.film(h, mask)

    def encode(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Shared encoder features of an input of any size.

        The masked and padded copy of the input is only referenced while the stem runs, so it does not
        add to the peak memory of a whole-volume pass.

        Args:
            x: ``(B, in_channels, *S)`` input.
            channel_mask: optional ``(B, in_channels)`` 0/1 mask (with ``input_mask``).

        Returns:
            The features of every level on the padded grid, full resolution first.
        """
        return self.encoder.forward_levels(
            [self._stem(self._pad(self._mask_input(x, channel_mask)), channel_mask)]
        )

    def decode(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run the two decoders level by level on shared encoder features.

        The decoders advance together so that the full-resolution skip, the largest feature map, is
        released as soon as both have added it, before their full-resolution blocks and heads run.
        ``feats`` is emptied.

        Args:
            feats: encoder features, full resolution first (consumed).

        Returns:
            ``(seg logits, synth, seg_ds)`` on the padded grid; ``seg_ds`` as in :meth:`forward`.
        """
        n_up = len(feats) - 1
        seg = feats[-1]
        synth = feats[-1]
        seg_ds: list[torch.Tensor] = []
        for k, (seg_level, synth_level) in enumerate(zip(self.seg_decoder.levels, self.synth_decoder.levels)):
            i = n_up - 1 - k
            if seg_level.projects_skip or synth_level.projects_skip:
                # One channels-last copy serves both 1x1 skip projections (see ChannelsLast).
                feats[i] = self.channels_last(feats[i])
            seg = seg_level.merge(seg, feats[i])
            synth = synth_level.merge(synth, feats[i])
            if k == n_up - 1:
                feats.clear()
            seg = seg_level.blocks(seg)
            synth = synth_level.blocks(synth)
            if self.training and seg_level.has_ds:
                seg_ds.append(seg_level.ds_head(seg))
        return self.seg_decoder.head(seg), self.synth_decoder.head(synth), seg_ds

    def _mask_input(self, x: torch.Tensor, channel_mask: torch.Tensor | None) -> torch.Tensor:
        if channel_mask is None or self.film is None:
            return x
        m = channel_mask.to(x.dtype)
        for _ in range(self.spatial_dims):
            m = m.unsqueeze(-1)
        return x * m

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Run both branches.

        Args:
            x: ``(B, in_channels, *S)`` input, any spatial size.
            channel_mask: ``(B, in_channels)`` (or ``(1, in_channels)``) 0/1 mask of the channels that are
                real, with ``input_mask=True``; ``None`` means all are real.

        Returns:
            ``{"seg", "synth"}`` and, in training mode, ``"seg_ds"`` / ``"vae_loss"`` when enabled
            (see the class docstring).
        """
        self._check_input(x, channel_mask)
        size = [int(s) for s in x.shape[2:]]
        out: dict[str, Any] = {}
        if self.training and self.vae is not None:
            # the VAE reconstructs the (masked, padded) input, so that copy is kept here
            padded = self._pad(self._mask_input(x, channel_mask))
            feats = self.encoder.forward_levels([self._stem(padded, channel_mask)])
            out["vae_loss"] = self.vae(padded, feats[-1], channel_mask if self.film is not None else None)
        else:
            feats = self.encode(x, channel_mask)
        seg, synth, seg_ds = self.decode(feats)
        out["seg"] = self._crop(seg, size)
        out["synth"] = self._crop(synth, size)
        if self.training and self.deep_supervision:
            out["seg_ds"] = [
                self._crop(d, [-(-s // (seg.shape[2] // d.shape[2])) for s in size]) for d in seg_ds
            ]
        return out

    def forward_tuple(
        self, x: torch.Tensor, channel_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference outputs as a tuple ``(seg, synth)`` (for tracing and export).

        Args:
            x: ``(B, in_channels, *S)`` input.
            channel_mask: optional channel mask as in :meth:`forward`.

        Returns:
            ``(seg logits, synthesised contrasts)``, both at the input's spatial size.
        """
        self._check_input(x, channel_mask)
        size = [int(s) for s in x.shape[2:]]
        seg, synth, _ = self.decode(self.encode(x, channel_mask))
        return self._crop(seg, size), self._crop(synth, size)

    # ------------------------------------------------------------------ staged training
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for staged training and per-part learning rates.

        Returns:
            ``{"encoder": [...], "seg": [...], "synth": [...]}`` plus ``"vae": [...]`` when the VAE
            branch exists. The channel-mask modulation belongs to the encoder. Every parameter is in
            exactly one group.
        """
        groups: dict[str, list[nn.Parameter]] = {
            "encoder": list(self.encoder.parameters()),
            "seg": list(self.seg_decoder.parameters()),
            "synth": list(self.synth_decoder.parameters()),
        }
        if self.film is not None:
            groups["encoder"] += list(self.film.parameters())
        if self.vae is not None:
            groups["vae"] = list(self.vae.parameters())
        return groups


def set_trainable(
    net: MultiTaskUNet, encoder: bool = True, seg: bool = True, synth: bool = True, vae: bool | None = None
) -> None:
    """Freeze or unfreeze the parts of a :class:`MultiTaskUNet` (staged training).

    For a :class:`~medmtl.networks.refinement.RefinedMultiTaskUNet` or a
    :class:`~medmtl.networks.guided.GuidedSynthesisUNet` the flags apply to its coarse network; a
    refinement head is always trained.

    Frozen parameters get ``requires_grad=False`` and their ``.grad`` is cleared, so an optimiser built
    over all parameters (Adam, SGD with momentum, weight decay) leaves them bit-identical: PyTorch
    optimisers skip parameters whose gradient is ``None``.

    Args:
        net: the network.
        encoder: train the shared encoder (and the channel-mask modulation).
        seg: train the segmentation decoder.
        synth: train the synthesis decoder.
        vae: train the VAE branch; ``None`` follows ``encoder`` (it only regularises the encoder).

    Raises:
        ValueError: if a part to freeze has norm layers that track running statistics (batch norm),
            which would keep changing in training mode.
    """
    base = getattr(net, "base", None)
    if base is not None:  # a wrapper of a coarse network, with a head that is always trained or none
        set_trainable(base, encoder=encoder, seg=seg, synth=synth, vae=vae)
        head = getattr(net, "head", None)
        for p in head.parameters() if head is not None else ():
            p.requires_grad_(True)
        return
    flags = {"encoder": encoder, "seg": seg, "synth": synth, "vae": encoder if vae is None else vae}
    groups = net.parameter_groups()
    modules = {"encoder": [net.encoder, net.film], "seg": [net.seg_decoder], "synth": [net.synth_decoder]}
    modules["vae"] = [net.vae]
    for part, trainable in flags.items():
        if trainable:
            continue
        for module in modules[part]:
            if module is None:
                continue
            for name, sub in module.named_modules():
                if getattr(sub, "track_running_stats", False):
                    raise ValueError(
                        f"cannot freeze '{part}': layer {name or type(sub).__name__} tracks running "
                        "statistics that change in training mode; use instance/group norm"
                    )
    for part, params in groups.items():
        for p in params:
            p.requires_grad_(flags[part])
            if not flags[part]:
                p.grad = None

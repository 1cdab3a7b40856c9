"""Guided synthesis: missing contrasts built from the acquired contrasts' own full-resolution detail.

A 2 mm network cannot draw 1 mm anatomy: the real T1 post-contrast resampled to 2 mm and back keeps
only 0.74-0.79 SSIM in the brain, and a synthesis decoder that predicts intensities directly gives a
smooth picture that loses to the native T1 copied as T1c on unseen sites. But the target contrast
shares most of its structure with the acquired ones, through a relation between intensities that
changes from tissue to tissue: a *local* affine combination of the acquired contrasts, with
coefficients that vary smoothly in space, carries most of it (fitted to the real T1c with a few mm
Gaussian weights, such a combination of T1, T2 and FLAIR reaches 0.7-0.8 SSIM), while a single
global combination gains nothing over the copy.

So the coarse network predicts, for every target contrast, a field of coefficients (one per input
contrast) and an additive term (what no input shows, e.g. enhancement) at its own resolution; the
fields are upsampled to the input's resolution and applied there to the acquired images. This is the
guided filter's local linear model (He, Sun and Tang, "Guided Image Filtering", TPAMI 2013) with
learned coefficients, as in the trainable guided filter of Wu et al. ("Fast End-to-End Trainable
Guided Filter", CVPR 2018) and the bilateral-grid coefficients of HDRNet (Gharbi et al., SIGGRAPH
2017). Absent inputs contribute nothing: their coefficients are multiplied by the channel mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from medmtl.networks.coarse import CoarseWrapper, load_coarse_weights
from medmtl.networks.multitask_unet import MultiTaskUNet

__all__ = ["GuidedSynthesisUNet", "apply_guidance", "guided_field_channels", "load_coarse_guided"]


def guided_field_channels(in_channels: int, synth_channels: int) -> int:
    """Channels of the coefficient fields: per target, one coefficient per input and an additive term.

    Args:
        in_channels: input contrasts.
        synth_channels: synthesised (target) contrasts.

    Returns:
        ``synth_channels * (in_channels + 1)``.
    """
    return synth_channels * (in_channels + 1)


def apply_guidance(
    fields: torch.Tensor, guide: torch.Tensor, channel_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply per-voxel affine combinations of the guide's channels.

    Args:
        fields: ``(B, T * (C + 1), *S)``: for target ``t``, channels ``t * (C + 1) + c`` (``c < C``) are
            the coefficients of guide channel ``c`` and ``t * (C + 1) + C`` the additive term.
        guide: ``(B, C, *S)`` the acquired images (absent channels zero).
        channel_mask: ``(B or 1, C)`` 0/1 mask of the real guide channels; ``None``: all real.

    Returns:
        ``(B, T, *S)``: ``sum_c a_tc * mask_c * guide_c + b_t``.
    """
    b, c = guide.shape[:2]
    if fields.shape[1] % (c + 1) or fields.shape[2:] != guide.shape[2:]:
        raise ValueError(
            f"coefficient fields {list(fields.shape)} do not fit a guide of shape {list(guide.shape)}: "
            f"expected (B, T * {c + 1}, {list(guide.shape[2:])})"
        )
    t = fields.shape[1] // (c + 1)
    coeffs = fields.reshape(fields.shape[0], t, c + 1, *fields.shape[2:])
    if channel_mask is not None:
        guide = guide * channel_mask.to(guide.dtype).reshape(-1, c, *([1] * (guide.dim() - 2)))
    return (coeffs[:, :, :c] * guide.unsqueeze(1)).sum(2) + coeffs[:, :, c]


class GuidedSynthesisUNet(CoarseWrapper):
    """A :class:`MultiTaskUNet` at ``1/factor`` resolution whose synthesis the full-resolution inputs guide.

    The coarse network reads the input's coarse grid (2 mm for 1 mm inputs, as ``Spacingd`` makes it).
    Its segmentation logits are brought back to the input's size (linear, as ``Invertd``); its synthesis
    decoder predicts the coefficient fields of :func:`apply_guidance`, which are upsampled likewise and
    applied to the full-resolution inputs. Outputs have the input's spatial size; the interface is the
    coarse network's (:class:`~medmtl.networks.coarse.CoarseWrapper`) but for ``synth_channels``, the
    number of target contrasts, so the bundle's inferers, export and training use it unchanged.

    Args:
        base: the coarse network; its ``synth_channels`` must be
            :func:`guided_field_channels` ``(in_channels, targets)``.
        factor: resolution factor between input and coarse network.
    """

    def __init__(self, base: MultiTaskUNet, factor: int = 2) -> None:
        if base.synth_channels % (base.in_channels + 1):
            raise ValueError(
                f"a guided network's coarse synthesis branch predicts (inputs + 1) fields per target: "
                f"{base.synth_channels} channels is not a multiple of {base.in_channels + 1}"
            )
        super().__init__(base, factor)

    @property
    def synth_channels(self) -> int:
        return self.base.synth_channels // (self.base.in_channels + 1)

    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """Run the coarse network, upsample its outputs and apply the synthesis fields to ``x``.

        Args:
            x: ``(B, in_channels, *S)`` full-resolution input.
            channel_mask: as for :meth:`MultiTaskUNet.forward`.

        Returns:
            ``{"seg", "synth"}`` at ``S``; in training mode also the coarse network's extra outputs
            (``"seg_ds"``, ``"vae_loss"``).
        """
        coarse = self.coarse(x, channel_mask)
        fields = self.upsample(coarse["synth"], x)
        synth = apply_guidance(fields, x, channel_mask if self.input_mask else None)
        return {"seg": self.upsample_seg(coarse["seg"], x), "synth": synth, **self.extras(coarse)}


def load_coarse_guided(
    net: GuidedSynthesisUNet, state: Mapping[str, torch.Tensor], source: str = "the coarse weights"
) -> GuidedSynthesisUNet:
    """Start a guided network from a trained coarse model that synthesises intensities directly.

    Every weight is copied; the synthesis head's last projection, which predicted each target's
    intensity, now predicts that target's additive term, and the coefficient channels start at zero.
    So the untrained guided network returns the coarse model's synthesis upsampled (and its
    segmentation exactly), and training starts from the coarse model's quality.

    Args:
        net: the guided network.
        state: the coarse model's state dict (:func:`medmtl.bundle_config.coarse_state`).
        source: what the state came from, for the error message.

    Returns:
        ``net``.

    Raises:
        ValueError: when the weights do not fit the coarse network.
    """
    c, t = net.in_channels, net.synth_channels
    bias_rows = [k * (c + 1) + c for k in range(t)]

    def widen_head(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
        for key, value in list(state.items()):
            if not key.startswith("synth_decoder.head") or key not in own or own[key].shape == value.shape:
                continue
            if value.shape[0] == t and own[key].shape[1:] == value.shape[1:]:
                widened = torch.zeros_like(own[key])
                widened[bias_rows] = value.to(widened.dtype)
                state[key] = widened

    return load_coarse_weights(net, state, widen_head, source)

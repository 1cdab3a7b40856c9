"""The joint loss of the multi-task network: L = l1 * L_gen + l2 * L_seg (+ regularisers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.losses import DeepSupervisionLoss

from medmtl.labels import REGIONS
from medmtl.losses.adversarial import AdversarialTerm
from medmtl.losses.segmentation import get_seg_loss
from medmtl.losses.synthesis import MaskedL1SSIMLoss
from medmtl.losses.weighting import TaskWeighting, get_weighting, pcgrad_backward

__all__ = ["MultiTaskLoss"]

_WT = REGIONS.index("WT")


class MultiTaskLoss(nn.Module):
    """Joint segmentation + synthesis loss for :class:`medmtl.networks.MultiTaskUNet` outputs.

    ``L = weighting({"gen": L_gen, "seg": L_seg}) + vae_weight * vae_loss + adv_weight * L_adv`` where,
    with fixed weighting, the first part is ``l1 * L_gen + l2 * L_seg``:

    - ``L_seg``: Dice + BCE (or Dice + focal) on the region logits ``pred["seg"]`` against the region
      targets ``target["seg"]`` (TC, WT, ET; sigmoid, multi-label). With ``pred["seg_ds"]`` (deep
      supervision) it is MONAI's ``DeepSupervisionLoss`` over the full-resolution and lower-resolution
      logits, the targets resized by nearest neighbour, level ``k`` weighted ``2**-k`` and the weights
      normalised to sum 1, so ``L_seg`` keeps the scale of a single Dice + BCE. With
      ``target["has_label"]`` (``(B,)``, 0 for an unlabelled study) it is computed over the labelled
      samples only (batch Dice pools their voxels alone); with none labelled it is 0, its gradients
      zero, and so is its weighted term. Unlabelled studies then train ``L_gen`` only.
    - ``L_gen``: ``gen_l1 * L1 + gen_ssim * (1 - SSIM)`` between ``pred["synth"]`` and
      ``target["synth"]``, counted over the brain only (``brain_masked``): L1 is a masked mean and SSIM
      the mean of MONAI's SSIM map over the brain (see :func:`medmtl.losses.synthesis.masked_ssim`).
      ``tumour_weight`` adds that much weight to voxels inside the whole tumour (``target["seg"]``'s WT
      channel). The brain mask is ``target["brain_mask"]``; without it, the voxels where any target
      contrast is non-zero (z-scored volumes keep a zero background).
    - ``vae_loss``: the network's VAE term when ``pred`` has it (Myronenko 2018 weights it 0.1).
    - ``L_adv``: with ``adversarial=True``, the generator loss of a patch discriminator on the brain-
      masked synthesis; train the discriminator with :meth:`discriminator_step`.

    A task is skipped, not computed, when its weight is 0 or its prediction or target is missing
    (single-task training and ablations). Only the learned weights (``weighting="uncertainty"``) are
    parameters of this module; give ``loss.parameters()`` to the optimiser with the network's.

    Args:
        seg_loss: ``"dicece"`` or ``"dicefocal"``.
        gen_l1: weight of L1 inside ``L_gen``.
        gen_ssim: weight of ``1 - SSIM`` inside ``L_gen``.
        l1: weight of the synthesis task ``L_gen``.
        l2: weight of the segmentation task ``L_seg``.
        weighting: ``"fixed"``, ``"uncertainty"`` (Kendall et al. 2018), ``"pcgrad"`` (Yu et al. 2020;
            the terms are combined by :meth:`backward`), or a :class:`TaskWeighting`.
        tumour_weight: extra voxel weight inside the whole tumour for ``L_gen`` (0 = none).
        brain_masked: count synthesis errors over the brain only.
        adversarial: add the adversarial term.
        adv_weight: weight of the adversarial term.
        vae_weight: weight of the network's VAE loss.
        batch_dice: Dice over the whole batch per region.
        ssim_win_size: SSIM Gaussian window size.
        ssim_range: how the SSIM term scales intensities, one of
            :data:`medmtl.losses.synthesis.SSIM_RANGES` (see :func:`medmtl.losses.synthesis.masked_ssim`).
        spatial_dims: spatial dimensions, for the discriminator (with ``adversarial``).
        synth_channels: synthesised contrasts, for the discriminator (with ``adversarial``).
        adversarial_kwargs: further :class:`AdversarialTerm` arguments.
    """

    def __init__(
        self,
        seg_loss: str = "dicece",
        gen_l1: float = 1.0,
        gen_ssim: float = 1.0,
        l1: float = 1.0,
        l2: float = 1.0,
        weighting: str | TaskWeighting = "fixed",
        tumour_weight: float = 0.0,
        brain_masked: bool = True,
        adversarial: bool = False,
        adv_weight: float = 0.01,
        vae_weight: float = 0.1,
        batch_dice: bool = True,
        ssim_win_size: int = 11,
        ssim_range: str = "minmax",
        spatial_dims: int = 3,
        synth_channels: int = 1,
        adversarial_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if l1 < 0 or l2 < 0 or l1 + l2 == 0:
            raise ValueError(
                f"task weights l1 (synthesis) and l2 (segmentation) must be >= 0, not both 0: {l1}, {l2}"
            )
        if tumour_weight < 0:
            raise ValueError(f"tumour_weight must be >= 0, found {tumour_weight}")
        self.l1, self.l2 = float(l1), float(l2)
        self.seg_loss = get_seg_loss(seg_loss, batch_dice=batch_dice)
        self.gen_loss = MaskedL1SSIMLoss(gen_l1, gen_ssim, win_size=ssim_win_size, ssim_range=ssim_range)
        task_weights = {"seg": self.l2, "gen": self.l1}
        self.weighting = (
            weighting if isinstance(weighting, TaskWeighting) else get_weighting(weighting, task_weights)
        )
        self.tumour_weight = float(tumour_weight)
        self.brain_masked = brain_masked
        self.adv_weight = float(adv_weight)
        self.vae_weight = float(vae_weight)
        self.adversary: AdversarialTerm | None = None
        if adversarial:
            self.adversary = AdversarialTerm(
                spatial_dims=spatial_dims, in_channels=synth_channels, **dict(adversarial_kwargs or {})
            )
        self._last: dict[str, torch.Tensor] = {}
        self._labelled_fraction: float | None = None

    # ------------------------------------------------------------------ pieces
    def _has_seg(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
        return self.l2 > 0 and "seg" in pred and "seg" in target

    def _has_gen(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
        return self.l1 > 0 and "synth" in pred and "synth" in target

    @staticmethod
    def _labelled(target: Mapping[str, Any], batch: int) -> torch.Tensor | None:
        # (B,) bool selection of the samples with a label; None when every sample has one.
        flag = target.get("has_label")
        if flag is None:
            return None
        keep = torch.as_tensor(flag).reshape(-1) > 0.5
        if keep.numel() != batch:
            raise ValueError(
                f"target['has_label'] must hold one flag per sample ({batch}), found {list(flag.shape)}"
            )
        return keep

    def _seg(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> tuple[torch.Tensor, int]:
        logits, regions = pred["seg"], target["seg"].to(pred["seg"].dtype)
        if logits.shape != regions.shape:
            raise ValueError(
                f"pred['seg'] {list(logits.shape)} and target['seg'] {list(regions.shape)} differ: expected "
                f"(B, {len(REGIONS)} regions {'/'.join(REGIONS)}, *S) for both"
            )
        ds = list(pred.get("seg_ds") or [])
        keep = self._labelled(target, logits.shape[0])
        keep = None if keep is None else keep.to(logits.device)
        n_labelled = logits.shape[0] if keep is None else int(keep.sum())
        if n_labelled == 0:
            # No sample has a label: a zero that still reaches every logit, so each rank of a
            # distributed run and every optimiser sees the same graph, with zero gradients (+ 0.0 makes
            # the -0.0 of a negative sum a plain 0 in the logs).
            return sum((t.sum() for t in ds), logits.sum()) * 0.0 + 0.0, 0
        if keep is not None and n_labelled < logits.shape[0]:
            # Select the labelled samples (rather than weighting voxels) so that batch Dice counts
            # their voxels only, and MONAI's losses stay as they are.
            logits, regions, ds = logits[keep], regions[keep], [t[keep] for t in ds]
        if not ds:
            return self.seg_loss(logits, regions), n_labelled
        # seg_ds is coarsest first; DeepSupervisionLoss wants the full resolution first.
        outputs = [logits, *reversed(ds)]
        weights = [0.5**k for k in range(len(outputs))]
        weights = [w / sum(weights) for w in weights]
        return DeepSupervisionLoss(self.seg_loss, weights=weights)(outputs, regions), n_labelled

    def voxel_weight(self, target: Mapping[str, Any]) -> torch.Tensor | None:
        """The voxel weights of the synthesis loss: brain mask times ``1 + tumour_weight * WT``, times the
        per-contrast ``target["synth_weight"]`` (B, S) when given.

        Args:
            target: the target dict (``"synth"``, optional ``"brain_mask"`` and ``"seg"``).

        Returns:
            ``(B, 1 or S, *S)`` weights, or ``None`` when every voxel counts once.
        """
        synth = target["synth"]
        weight: torch.Tensor | None = None
        if self.brain_masked:
            if "brain_mask" in target:
                mask = target["brain_mask"]
                if mask.shape[0] != synth.shape[0] or mask.shape[2:] != synth.shape[2:]:
                    raise ValueError(
                        f"target['brain_mask'] must have shape ({synth.shape[0]}, 1, "
                        f"{list(synth.shape[2:])}), found {list(mask.shape)}"
                    )
                weight = (mask[:, :1] > 0).to(synth.dtype)
            else:
                weight = (synth != 0).any(dim=1, keepdim=True).to(synth.dtype)
        if self.tumour_weight > 0 and "seg" in target:
            wt = target["seg"][:, _WT : _WT + 1].to(synth.dtype)
            boost = 1.0 + self.tumour_weight * wt
            weight = boost if weight is None else weight * boost
        if "synth_weight" in target:
            per_channel = target["synth_weight"].to(synth.dtype)
            if per_channel.shape != synth.shape[:2]:
                raise ValueError(
                    f"target['synth_weight'] must have shape {list(synth.shape[:2])}, "
                    f"found {list(per_channel.shape)}"
                )
            per_channel = per_channel.view(*synth.shape[:2], *([1] * (synth.dim() - 2)))
            weight = per_channel if weight is None else weight * per_channel
        return weight

    # ------------------------------------------------------------------ API
    def task_losses(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The unweighted task losses present in this batch.

        Args:
            pred: network output dict.
            target: ``{"seg": (B,3,...) regions, "synth": (B,S,...) contrasts, "brain_mask": (B,1,...),
                "has_label": (B,) 1 labelled / 0 unlabelled}``, each optional.

        Returns:
            ``{"seg": L_seg, "gen": L_gen}``, each only when that task is active.
        """
        return self._compute(pred, target)[0]

    def _compute(
        self, pred: Mapping[str, Any], target: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        tasks: dict[str, torch.Tensor] = {}
        parts: dict[str, torch.Tensor] = {}
        self._labelled_fraction: float | None = None
        if self._has_seg(pred, target):
            tasks["seg"], n_labelled = self._seg(pred, target)
            if "has_label" in target:
                self._labelled_fraction = n_labelled / pred["seg"].shape[0]
        if self._has_gen(pred, target):
            weight = self.voxel_weight(target)
            components = self.gen_loss.components(pred["synth"], target["synth"], weight)
            tasks["gen"] = self.gen_loss.combine(components)
            parts.update({f"gen_{k}": v for k, v in components.items()})
            if self.adversary is not None and self.adv_weight > 0:
                fake = pred["synth"] if weight is None else pred["synth"] * (weight > 0)
                parts["adv"] = self.adversary.generator_loss(fake)
        if not tasks:
            raise ValueError(
                "MultiTaskLoss: no task to compute; need pred/target 'seg' with l2 > 0 or 'synth' with "
                f"l1 > 0 (pred has {sorted(pred)}, target has {sorted(target)})"
            )
        if "vae_loss" in pred and self.vae_weight > 0:
            parts["vae"] = pred["vae_loss"]
        return tasks, parts

    def terms(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The weighted terms whose sum is the loss (what PCGrad combines).

        Args:
            pred: network output dict.
            target: target dict (see :meth:`task_losses`).

        Returns:
            ``{"seg", "gen"}`` weighted task terms (those present) and ``"vae"`` / ``"adv"`` regulariser
            terms when present.
        """
        tasks, parts = self._compute(pred, target)
        out = self.weighting(tasks)
        if self._labelled_fraction == 0.0:
            # A batch of unlabelled studies says nothing about segmentation: its weighted term is 0,
            # so a learned weight is not pushed either (uncertainty weighting adds ``+ s`` to it).
            out["seg"] = out["seg"] * 0.0
        if "vae" in parts:
            out["vae"] = self.vae_weight * parts["vae"]
        if "adv" in parts:
            out["adv"] = self.adv_weight * parts["adv"]
        weights = self.weighting.effective_weights()
        last = {f"loss_{k}": v.detach() for k, v in tasks.items()}
        last.update({f"weight_{k}": torch.tensor(weights[k]) for k in tasks})
        last.update({k if k.startswith("gen_") else f"loss_{k}": v.detach() for k, v in parts.items()})
        if self._labelled_fraction is not None:
            last["labelled"] = torch.tensor(self._labelled_fraction)
        last["total"] = sum(v.detach() for v in out.values())
        self._last = last
        return out

    def forward(self, pred: Mapping[str, Any], target: Mapping[str, Any]) -> torch.Tensor:
        """The total loss.

        Args:
            pred: network output dict.
            target: target dict (see :meth:`task_losses`).

        Returns:
            A scalar tensor.
        """
        terms = list(self.terms(pred, target).values())
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total

    def backward(
        self,
        pred: Mapping[str, Any],
        target: Mapping[str, Any],
        shared_params: Iterable[nn.Parameter],
        other_params: Iterable[nn.Parameter] = (),
    ) -> torch.Tensor:
        """Compute the loss and its gradients: PCGrad with ``weighting="pcgrad"``, else a plain backward.

        Args:
            pred: network output dict.
            target: target dict.
            shared_params: the shared encoder's parameters (``net.parameter_groups()["encoder"]``).
            other_params: every other trainable parameter (decoders, VAE branch, this loss's own).

        Returns:
            The total loss, detached.
        """
        terms = self.terms(pred, target)
        if self.weighting.gradient_surgery:
            pcgrad_backward(list(terms.values()), shared_params, other_params)
        else:
            total = sum(terms.values())
            total.backward()
        return self._last["total"]

    def discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, brain_mask: torch.Tensor | None = None
    ) -> float:
        """One optimiser step of the adversarial discriminator (call after the generator's step).

        Args:
            real: target contrasts ``(B, C, *S)``.
            fake: synthesised contrasts (detached here).
            brain_mask: optional ``(B, 1, *S)`` brain mask; both images are masked as in the generator
                term (without it, to the non-zero voxels of ``real`` when ``brain_masked``).

        Returns:
            The discriminator loss.

        Raises:
            RuntimeError: if the loss was built without ``adversarial=True``.
        """
        if self.adversary is None:
            raise RuntimeError("discriminator_step needs MultiTaskLoss(adversarial=True)")
        target: dict[str, torch.Tensor] = {"synth": real}
        if brain_mask is not None:
            target["brain_mask"] = brain_mask
        weight = self.voxel_weight(target)
        if weight is not None:
            real, fake = real * (weight > 0), fake * (weight > 0)
        return self.adversary.discriminator_step(real, fake)

    @property
    def last(self) -> dict[str, float]:
        """Values of the last call, for logging: ``loss_<task>``, ``weight_<task>``, ``gen_l1``,
        ``gen_ssim_loss``, ``loss_vae``, ``loss_adv`` (those computed), ``labelled`` (the fraction of
        labelled samples, when the target says) and ``total``."""
        return {k: float(v) for k, v in self._last.items()}

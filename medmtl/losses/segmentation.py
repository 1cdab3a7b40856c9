"""Segmentation losses on multi-label region logits (TC, WT, ET; sigmoid per channel)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.losses import DiceFocalLoss, DiceLoss

__all__ = ["SEG_LOSSES", "DiceBCELoss", "get_seg_loss"]


class DiceBCELoss(nn.Module):
    """Soft Dice (sigmoid) plus binary cross-entropy per region channel.

    MONAI's ``DiceCELoss`` applies a softmax cross-entropy whenever the input has more than one
    channel, even with ``sigmoid=True``; for overlapping BraTS regions (ET in TC in WT) each channel is
    its own binary problem, so the cross-entropy term here is ``BCEWithLogitsLoss`` beside MONAI's
    ``DiceLoss(sigmoid=True)`` (the Dice + BCE pair of the BraTS 2021 nnU-Net entry,
    Luu and Park, arXiv:2112.04653).

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the binary cross-entropy term.
        batch_dice: compute Dice over the whole batch per channel (stable on tumour-free patches).
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch_dice: bool = True) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=batch_dice)
        self.bce = nn.BCEWithLogitsLoss()
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``(B, R, *S)`` region logits.
            target: ``(B, R, *S)`` binary region targets.

        Returns:
            A scalar tensor.
        """
        target = target.to(logits.dtype)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_ce * self.bce(logits, target)


def _dicefocal(batch_dice: bool) -> nn.Module:
    return DiceFocalLoss(sigmoid=True, batch=batch_dice)


#: name -> builder taking ``batch_dice``.
SEG_LOSSES = {"dicece": lambda batch_dice: DiceBCELoss(batch_dice=batch_dice), "dicefocal": _dicefocal}


def get_seg_loss(name: str, batch_dice: bool = True) -> nn.Module:
    """Build a region segmentation loss by name.

    Args:
        name: ``"dicece"`` (Dice + binary cross-entropy) or ``"dicefocal"`` (MONAI ``DiceFocalLoss``
            with sigmoid focal term, Lin et al., ICCV 2017).
        batch_dice: compute Dice over the batch.

    Returns:
        A loss module taking ``(logits, target)``.

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower()
    if key not in SEG_LOSSES:
        raise ValueError(f"unknown seg_loss {name!r}; expected one of {sorted(SEG_LOSSES)}")
    return SEG_LOSSES[key](batch_dice)

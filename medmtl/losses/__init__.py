"""Losses: the joint multi-task loss, its parts, and task-weighting strategies."""

from __future__ import annotations

from medmtl.losses.adversarial import AdversarialTerm
from medmtl.losses.multitask import MultiTaskLoss
from medmtl.losses.segmentation import DiceBCELoss, get_seg_loss
from medmtl.losses.synthesis import MaskedL1SSIMLoss, masked_l1, masked_ssim
from medmtl.losses.weighting import (
    WEIGHTINGS,
    FixedWeighting,
    PCGradWeighting,
    TaskWeighting,
    UncertaintyWeighting,
    get_weighting,
    pcgrad_backward,
    pcgrad_project,
)

__all__ = [
    "WEIGHTINGS",
    "AdversarialTerm",
    "DiceBCELoss",
    "FixedWeighting",
    "MaskedL1SSIMLoss",
    "MultiTaskLoss",
    "PCGradWeighting",
    "TaskWeighting",
    "UncertaintyWeighting",
    "get_seg_loss",
    "get_weighting",
    "masked_l1",
    "masked_ssim",
    "pcgrad_backward",
    "pcgrad_project",
]

"""Networks: the shared-encoder multi-task U-Net, its views for export, and presets."""

from __future__ import annotations

from medmtl.networks.conditioning import ChannelMaskFiLM
from medmtl.networks.encoder_decoder import ResidualDecoder, ResidualEncoder
from medmtl.networks.factory import PRESETS, get_network
from medmtl.networks.guided import GuidedSynthesisUNet, apply_guidance
from medmtl.networks.multitask_unet import MultiTaskUNet, set_trainable
from medmtl.networks.refinement import RefinedMultiTaskUNet, RefinementHead
from medmtl.networks.vae import VAEBranch
from medmtl.networks.views import BranchView, TupleView

__all__ = [
    "PRESETS",
    "BranchView",
    "ChannelMaskFiLM",
    "GuidedSynthesisUNet",
    "MultiTaskUNet",
    "RefinedMultiTaskUNet",
    "RefinementHead",
    "ResidualDecoder",
    "ResidualEncoder",
    "TupleView",
    "VAEBranch",
    "apply_guidance",
    "get_network",
    "set_trainable",
]

"""medmtl: multi-task learning on 3D brain-tumour MRI with MONAI.

One shared 3D U-Net encoder reads the available MRI contrasts of a BraTS case; a segmentation
decoder predicts the tumour regions (TC, WT, ET) and a synthesis decoder the missing contrasts.

Submodules load on first use (``medmtl.networks``, ``medmtl.inference``, ...), so bundle configs
can ``$import medmtl`` and reference any of them without importing all of torch's users up front.
"""

from __future__ import annotations

import importlib
from typing import Any

from medmtl._version import __version__
from medmtl.contrasts import CONTRASTS, canonical

_SUBMODULES = {
    "bundle_config", "challenge_metrics", "commands", "contrasts", "conventions", "datalist", "demo",
    "engine_logs", "evaluation", "export", "inference", "intensity", "io", "labels", "lesion_augment",
    "local_synthesis", "losses", "metrics", "networks", "preprocessing", "report", "stages", "training",
    "transforms",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"medmtl.{name}")
    if name == "REGIONS":
        return importlib.import_module("medmtl.conventions").REGIONS
    if name == "load_model":
        return importlib.import_module("medmtl.inference").load_model
    raise AttributeError(f"module 'medmtl' has no attribute {name!r}")


__all__ = ["CONTRASTS", "REGIONS", "canonical", "load_model", "__version__"]

"""Whole-volume inference: both outputs from one sliding-window pass, written in the scan's own grid.

The bundle's ``configs/inference.json`` is the one description of the pipeline (preprocessing,
network, inferer, postprocessing, writer); ``medmtl infer`` and :func:`load_model` run that config,
so the CLI, the Python API and ``python -m monai.bundle run --config_file configs/inference.json``
give the same files.

Modules, in the order a case goes through them:

- :mod:`~medmtl.inference.cases`: case folders, loose files and datalists, checked up front;
- :mod:`~medmtl.inference.engine`: flip TTA, the prediction splitter, cohort progress;
- :mod:`~medmtl.inference.exported`: an exported (TorchScript / ONNX) network in place of the weights;
- :mod:`~medmtl.inference.postprocessing`: small components, the BraTS ET rule;
- :mod:`~medmtl.inference.input_checks`: inputs outside what the model knows, said per case;
- :mod:`~medmtl.inference.outputs`: the files of a case, written whole or not at all;
- :mod:`~medmtl.inference.api`: :func:`load_model` and ``predict``;
- :mod:`~medmtl.inference.cli`: ``medmtl infer``.

Names load on first use, so ``import medmtl.inference`` costs nothing until one is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "case_entry": "cases",
    "check_cases": "cases",
    "datalist_cases": "cases",
    "shard": "cases",
    "CaseProgress": "engine",
    "FlipTTAInferer": "engine",
    "SplitPredictiond": "engine",
    "remove_small_components": "postprocessing",
    "small_et_to_netc": "postprocessing",
    "WriteCaseOutputsd": "outputs",
    "case_outputs": "outputs",
    "check_output_dir": "outputs",
    "check_replaceable": "outputs",
    "written_contrasts": "outputs",
    "input_findings": "input_checks",
    "inference_overrides": "exported",
    "load_exported": "exported",
    "existing_outputs": "outputs",
    "is_done": "outputs",
    "output_paths": "outputs",
    "pending_cases": "outputs",
    "MultiTaskModel": "api",
    "Prediction": "api",
    "load_model": "api",
    "bundle_overrides": "cli",
    "check_device": "cli",
    "check_options": "cli",
    "user_error": "cli",
}
_FROM_BUNDLE_CONFIG = ("DEFAULT_BUNDLE", "check_weights", "model_info", "read_model_config", "shipped_bundle")

_SUBMODULES = ("api", "cases", "cli", "engine", "exported", "input_checks", "outputs", "postprocessing")

__all__ = sorted([*_EXPORTS, *_FROM_BUNDLE_CONFIG])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medmtl.inference.{_EXPORTS[name]}"), name)
    if name in _FROM_BUNDLE_CONFIG:
        return getattr(importlib.import_module("medmtl.bundle_config"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"medmtl.inference.{name}")
    raise AttributeError(f"module 'medmtl.inference' has no attribute {name!r}")

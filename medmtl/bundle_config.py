"""A medmtl bundle's files: where the shipped bundle is, its model config, metadata and weights.

Inference, export, training and the bundle configs read a bundle through these functions, so a
missing or broken file is reported the same way everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: the network/task description written beside trained weights
MODEL_CONFIG_FILE = "model_config.json"
#: export format -> file suffix of an exported network (``medmtl export``)
EXPORT_FORMATS: dict[str, str] = {"torchscript": ".ts", "onnx": ".onnx"}
#: the outputs of the multi-task network, in the order of an exported tuple
NETWORK_OUTPUTS: tuple[str, ...] = ("seg", "synth")


def shipped_bundle() -> Path:
    """The folder of the shipped ``brats_mtl`` bundle.

    In a source checkout it is ``bundles/brats_mtl`` beside the package; an installed package
    carries it as the package data of ``medmtl.bundles``.

    Returns:
        The bundle folder.
    """
    checkout = Path(__file__).resolve().parents[1] / "bundles" / "brats_mtl"
    if (checkout / "configs" / "inference.json").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("medmtl.bundles"))) / "brats_mtl"


#: The shipped bundle (source checkout or installed package data).
DEFAULT_BUNDLE = shipped_bundle()


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read the network/task description saved beside trained weights (``model_config.json``).

    Training writes it (see :func:`medmtl.training.write_model_config`) so that inference builds
    exactly the network, inputs and spacing the weights were trained with.

    Args:
        path: the JSON file.

    Returns:
        The configuration dict.

    Raises:
        FileNotFoundError: when the bundle holds no trained model.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: this bundle has no trained model yet (train it first, see the bundle README)"
        )
    try:
        cfg = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p} is not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{p}: expected a JSON object")
    missing = [
        k for k in ("input_contrasts", "target_contrasts", "spacing", "network_preset") if k not in cfg
    ]
    if missing:
        raise ValueError(f"{p}: missing fields {missing}")
    cfg.setdefault("network_kwargs", {})
    cfg.setdefault("input_mask", False)
    cfg.setdefault("val_roi_size", cfg.get("roi_size", [128, 128, 128]))
    from medmtl.intensity import check_landmarks

    check_landmarks(cfg.get("synth_landmarks"), f"{p}: synth_landmarks")
    from medmtl.inference.postprocessing import region_thresholds

    region_thresholds(cfg.get("thresholds"), f"{p}: thresholds")
    return cfg


def bundle_file(bundle_root: str | os.PathLike, name: str = "configs/inference.json") -> Path:
    """A file of a bundle that must be there, e.g. its inference config.

    Args:
        bundle_root: the bundle folder.
        name: the file, relative to the bundle folder.

    Returns:
        The absolute file path.

    Raises:
        FileNotFoundError: naming the file, when the folder is not a medmtl bundle.
    """
    root = Path(bundle_root).resolve()
    path = root / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {root} is not a medmtl bundle")
    return path


def read_metadata(bundle_root: str | os.PathLike) -> dict[str, Any]:
    """The bundle's ``configs/metadata.json`` (empty when the bundle has none).

    Args:
        bundle_root: the bundle folder.

    Returns:
        The metadata dict.

    Raises:
        ValueError: when the file is not a JSON object.
    """
    path = Path(bundle_root) / "configs" / "metadata.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


def read_state_dict(path: str | os.PathLike, mmap: bool = False) -> Mapping[str, Any]:
    """Read a weights file as data (``torch.load(weights_only=True)``: a checkpoint never runs code).

    Args:
        path: the ``model.pt`` file.
        mmap: map the tensors' storage instead of reading it (a check that the file is whole and a
            state dict, without reading the weights a second time).

    Returns:
        The state dict, on the CPU.

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it is truncated, corrupt or not a state dict.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights {p} not found: the bundle has no trained weights (train it first)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any failure to read means the same to the user
        raise ValueError(
            f"weights {p} cannot be read (truncated or not a PyTorch checkpoint): {err}"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"weights {p}: expected a state dict, found {type(state).__name__}")
    return state


def check_weights(path: str | os.PathLike) -> Path:
    """Check that a weights file is a readable checkpoint before any work is done.

    Args:
        path: the ``model.pt`` file.

    Returns:
        The path.

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it is truncated, corrupt or not a state dict.
    """
    try:
        read_state_dict(path, mmap=True)
    except ValueError:
        read_state_dict(path)  # the legacy (non-zip) format cannot be mapped: read it; a bad file raises
    return Path(path)


def coarse_state(weights: str | os.PathLike | None) -> Mapping[str, Any]:
    """The weights of the trained coarse model a refinement or guided stage starts from.

    Args:
        weights: the coarse model's ``model.pt`` (the stage's ``coarse_weights``).

    Returns:
        Its state dict, read as data.

    Raises:
        ValueError: without ``weights``, or when the file is not a readable state dict.
        FileNotFoundError: when it does not exist.
    """
    if not weights:
        raise ValueError(
            "this stage starts from a trained coarse model: set coarse_weights=RUN/models/model.pt"
        )
    return read_state_dict(weights)


def model_info(bundle_root: str | os.PathLike, model_path: str | os.PathLike) -> dict[str, Any]:
    """Provenance for output sidecars: bundle name and version, weights file, library versions.

    Args:
        bundle_root: the bundle folder.
        model_path: the weights file used.

    Returns:
        ``{"model", "model_version", "weights", "medmtl_version", "monai_version", "torch_version"}``.
    """
    import monai
    import torch

    from medmtl._version import __version__

    meta = read_metadata(bundle_root)
    return {
        "model": meta.get("name", "medmtl"),
        "model_version": meta.get("version"),
        "weights": Path(model_path).name,
        "medmtl_version": __version__,
        "monai_version": monai.__version__,
        "torch_version": torch.__version__,
    }

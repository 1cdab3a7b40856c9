"""Running an exported network (TorchScript or ONNX from ``medmtl export``) in the inference config.

Inference reads exported files here; :mod:`medmtl.export` writes them and builds on this module (not
the reverse). ``configs/inference.json`` runs an exported file with :func:`inference_overrides`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medmtl.bundle_config import MODEL_CONFIG_FILE, NETWORK_OUTPUTS, read_state_dict

__all__ = [
    "EXPORT_INFO_FILE",
    "OnnxNetwork",
    "inference_overrides",
    "load_exported",
    "load_network",
    "load_weights",
    "require",
]

#: model-config fields an exported file must share with the bundle it runs in
CONFIG_FIELDS = (
    "input_contrasts",
    "target_contrasts",
    "spacing",
    "network_preset",
    "network_kwargs",
    "input_mask",
)
EXPORT_INFO_FILE = "export.json"
#: the inference config's network entry that runs an exported file (see :func:`load_network`)
_LOAD_NETWORK = (
    "$medmtl.inference.exported.load_network(@network_def, @model_path, @device, @exported, @model_config)"
)


def require(module: str) -> Any:
    """Import an optional package, or say in one line which packages ONNX needs."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ONNX export and inference need the '{module}' package: pip install onnx onnxruntime onnxscript"
        ) from err


def load_weights(net: nn.Module, model_path: str | os.PathLike) -> nn.Module:
    """Load a ``state_dict`` file into ``net`` (``torch.load(weights_only=True)``, strict keys).

    Args:
        net: the network the weights were trained for.
        model_path: the weights file (``models/model.pt``).

    Returns:
        ``net`` with the weights.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when the file does not hold this network's weights.
    """
    path = Path(model_path)
    state = read_state_dict(path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path} does not hold the weights of the network that model_config.json describes: {err}"
        ) from err
    return net


class OnnxNetwork(nn.Module):
    """An exported ONNX network run by onnxruntime, called like the PyTorch network.

    Returns the dict ``{"seg", "synth"}`` (tensors on the input's device), so it can stand in for the
    network in ``monai.inferers.SlidingWindowInferer`` and the bundle's inference config. Inference
    only: there are no trainable parameters.

    Args:
        path: the ``.onnx`` file.
        device: where the outputs go; CUDA execution when ``device`` is CUDA and onnxruntime has it.
        as_tuple: return a tuple in the file's output order instead of a dict.
    """

    def __init__(
        self, path: str | os.PathLike, device: torch.device | str | None = None, as_tuple: bool = False
    ):
        super().__init__()
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {self.path} does not exist")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        props = self.session.get_modelmeta().custom_metadata_map
        self.info: dict[str, Any] = json.loads(props.get("medmtl_export", "{}"))
        self.model_config: dict[str, Any] | None = (
            json.loads(props["medmtl_model_config"]) if "medmtl_model_config" in props else None
        )
        self.as_tuple = as_tuple

    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> Any:
        """Run the exported network.

        Args:
            x: ``(B, in_channels, *S)``, each spatial size a multiple of the export's size divisor.
            channel_mask: ``(1, in_channels)`` 0/1 mask for networks exported with one (or ``(B,
                in_channels)`` with identical rows: the graph takes one mask for the whole batch).

        Returns:
            ``{"seg", "synth"}`` (or the tuple with ``as_tuple``).

        Raises:
            ValueError: for spatial sizes the exported graph does not take.
        """
        divisor = int(self.info.get("size_divisor", 1))
        sizes = list(x.shape[2:])
        if any(s % divisor or s < 2 * divisor for s in sizes):
            raise ValueError(
                f"{self.path}: spatial sizes must be multiples of {divisor} and at least {2 * divisor}, "
                f"found {sizes} (use a sliding-window ROI of such sizes)"
            )
        feeds = {self.input_names[0]: x.detach().float().cpu().contiguous().numpy()}
        if len(self.input_names) > 1:
            mask = channel_mask if channel_mask is not None else x.new_ones(1, x.shape[1])
            mask = mask.detach().float().cpu().reshape(-1, x.shape[1])
            if not bool((mask == mask[:1]).all()):
                raise ValueError(
                    f"{self.path}: the exported graph takes one channel mask for the whole batch, "
                    f"found different masks per sample: {mask.tolist()}"
                )
            feeds[self.input_names[1]] = mask[:1].contiguous().numpy()
        outs = [torch.from_numpy(o).to(x.device) for o in self.session.run(self.output_names, feeds)]
        return tuple(outs) if self.as_tuple else dict(zip(self.output_names, outs))


def load_exported(
    path: str | os.PathLike,
    device: torch.device | str | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Load an exported two-output network (``.onnx``: onnxruntime; anything else: TorchScript).

    TorchScript files from ``python -m monai.bundle ckpt_export network_def`` load too.

    Args:
        path: the exported file.
        device: device for the network and its outputs.
        model_config: the bundle's model config; when the file embeds one, the two must agree on
            inputs, targets, spacing and network, else the preprocessing would not match the network.

    Returns:
        A module in eval mode whose ``forward(image, channel_mask=None)`` returns ``{"seg", "synth"}``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: for a single-branch export or one made from another model config.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"exported network {p} does not exist")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if p.suffix == ".onnx":
        module: nn.Module = OnnxNetwork(p, dev)
        info, embedded = module.info, module.model_config
    else:
        from monai.data import load_net_with_metadata

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=DeprecationWarning)
            try:
                module, _, extra = load_net_with_metadata(
                    str(p), map_location=dev, more_extra_files=(EXPORT_INFO_FILE, MODEL_CONFIG_FILE)
                )
            except RuntimeError as err:
                raise ValueError(f"{p} is not a TorchScript file ({err})") from err
        info = json.loads(extra[EXPORT_INFO_FILE]) if extra.get(EXPORT_INFO_FILE) else {}
        embedded = json.loads(extra[MODEL_CONFIG_FILE]) if extra.get(MODEL_CONFIG_FILE) else None
    outputs = info.get("outputs", list(NETWORK_OUTPUTS))
    if list(outputs) != list(NETWORK_OUTPUTS):
        raise ValueError(
            f"{p} holds only the {outputs} output(s); inference needs the two-output network "
            "(export it without --branch)"
        )
    if model_config is not None and embedded is not None:
        differ = {
            k: (embedded.get(k), model_config.get(k))
            for k in CONFIG_FIELDS
            if k in embedded and embedded.get(k) != model_config.get(k)
        }
        if differ:
            raise ValueError(
                f"{p} was exported from another model than this bundle's model_config.json: "
                + "; ".join(f"{k}: file {a!r}, bundle {b!r}" for k, (a, b) in differ.items())
            )
    return module.eval()


def load_network(
    network_def: nn.Module,
    model_path: str | os.PathLike,
    device: torch.device | str,
    exported: str | os.PathLike | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The network an inference config runs: an exported file when given, else ``network_def`` + weights.

    For ``configs/inference.json``: ``"network": "$medmtl.inference.exported.load_network(@network_def,
    @model_path, @device, @exported, @model_config)"`` with ``"load_weights": "$None"``.

    Args:
        network_def: the eager network the config builds.
        model_path: its weights (``models/model.pt``); not read when ``exported`` is given.
        device: target device.
        exported: a TorchScript or ONNX file from :func:`medmtl.export.export_bundle` (or ``ckpt_export``).
        model_config: the bundle's model config (checked against the exported file's).

    Returns:
        The network on ``device``, returning ``{"seg", "synth"}``.
    """
    if exported:
        return load_exported(exported, device, model_config)
    return load_weights(network_def, model_path).to(device)


def inference_overrides(exported: str | os.PathLike) -> dict[str, str]:
    """Overrides of the bundle's ``configs/inference.json`` that run an exported network.

    Use with ``medmtl.load_model(bundle, **inference_overrides("model.ts"))`` or as keyword
    arguments of ``monai.bundle.run``.

    Args:
        exported: the TorchScript or ONNX file.

    Returns:
        ``{"exported", "network", "load_weights"}`` config entries.
    """
    return {
        "exported": str(Path(exported).resolve()),
        "network": _LOAD_NETWORK,
        "load_weights": "$None",
    }

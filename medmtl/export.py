"""Export a trained bundle's two-output network to TorchScript or ONNX, and run exported networks.

``medmtl export --bundle B --format torchscript|onnx`` reads ``B/models/model.pt`` and
``B/models/model_config.json``, builds the network exactly as the bundle's ``configs/inference.json``
does (its ``network_def``), and writes one file, whole or not at all:

- TorchScript (``.ts``): the scripted :class:`~medmtl.networks.MultiTaskUNet`, the same module that
  ``python -m monai.bundle ckpt_export network_def`` writes, saved with MONAI's
  ``save_net_with_metadata`` (the bundle's metadata, its ``model_config.json`` and an ``export.json``
  describing inputs and outputs are embedded). ``forward(image, channel_mask=None)`` returns the dict
  ``{"seg", "synth"}`` at any input size, like the eager network.
- ONNX (``.onnx``): the network as a tuple ``(seg, synth)`` (:class:`~medmtl.networks.TupleView`),
  exported with MONAI's ``convert_to_onnx`` through ``torch.export``; batch and spatial sizes are
  dynamic, spatial sizes multiples of ``2**(levels - 1)`` (any sliding-window ROI the bundle uses).

Each export is checked against PyTorch on a random input (both outputs) before it is kept.
``--branch seg|synth`` exports one output only (:class:`~medmtl.networks.BranchView`), for tools that
need a single tensor.

:func:`load_network` lets the bundle's inference config run an exported file instead of the eager
network, so ``medmtl infer`` and :class:`medmtl.inference.MultiTaskModel` use it with the same
preprocessing, sliding windows and writers; :func:`inference_overrides` gives the config overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from medmtl.bundle_config import (
    EXPORT_FORMATS,
    MODEL_CONFIG_FILE,
    NETWORK_OUTPUTS,
    read_metadata,
    read_model_config,
)
from medmtl.inference.exported import (
    EXPORT_INFO_FILE,
    OnnxNetwork,
    inference_overrides,
    load_exported,
    load_network,
    load_weights,
    require,
)
from medmtl.io import atomic_path
from medmtl.networks import BranchView, MultiTaskUNet, TupleView

__all__ = [
    "FORMATS",
    "ExportResult",
    "OnnxNetwork",
    "bundle_network",
    "export_bundle",
    "export_onnx",
    "export_torchscript",
    "inference_overrides",
    "load_exported",
    "load_network",
    "load_weights",
]

#: export format -> default file suffix
FORMATS: dict[str, str] = EXPORT_FORMATS
#: relative and absolute tolerance of the export check
CHECK_TOL = 1e-4


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes:
        path: the file.
        format: ``"torchscript"`` or ``"onnx"``.
        outputs: the exported outputs (``("seg", "synth")`` or one branch).
        max_abs_diff: largest absolute difference to PyTorch per output on the check input (empty when
            the check was skipped).
    """

    path: Path
    format: str
    outputs: tuple[str, ...]
    max_abs_diff: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The bundle's network


def bundle_network(bundle_root: str | os.PathLike) -> tuple[MultiTaskUNet, dict[str, Any], dict[str, Any]]:
    """The trained network of a bundle, as its inference predictor builds it (``configs/inference.json``).

    Args:
        bundle_root: bundle folder with ``configs/inference.json``, ``models/model.pt`` and
            ``models/model_config.json``.

    Returns:
        ``(network in eval mode on CPU with its weights, model config, bundle metadata)``.

    Raises:
        FileNotFoundError: when a file of the bundle is missing.
    """
    from medmtl.inference.predictor import build_predictor

    root = Path(bundle_root).resolve()
    model_config = read_model_config(root / "models" / MODEL_CONFIG_FILE)
    meta = read_metadata(root)
    # the network as inference builds and loads it: one way to load a bundle's weights
    predictor, _ = build_predictor(root, device="cpu")
    net = predictor.network
    return net.eval(), model_config, meta


# ----------------------------------------------------------------------------------------------
# Export


def _module_for(net: MultiTaskUNet, branch: str | None, as_tuple: bool) -> tuple[nn.Module, tuple[str, ...]]:
    if branch is not None:
        return BranchView(net, branch).eval(), (branch,)
    return (TupleView(net).eval() if as_tuple else net), NETWORK_OUTPUTS


def _example_inputs(net: MultiTaskUNet, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """A small valid input: two bottleneck voxels per axis, and a mask with one contrast absent."""
    gen = torch.Generator().manual_seed(0)
    size = [2 * net.divisor] * net.spatial_dims
    x = torch.randn(batch, net.in_channels, *size, generator=gen)
    if not net.input_mask:
        return (x,)
    # one mask row for the whole batch, as the sliding-window inferer passes a case's mask
    mask = torch.ones(1, net.in_channels)
    mask[:, -1] = 0
    return (x, mask)


def _as_outputs(out: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    if isinstance(out, Mapping):
        return {n: out[n] for n in names}
    if isinstance(out, torch.Tensor):
        out = (out,)
    return {n: torch.as_tensor(o) for n, o in zip(names, out)}


def _check(
    reference: nn.Module, exported: Any, inputs: Sequence[torch.Tensor], names: Sequence[str], what: str
) -> dict[str, float]:
    """Compare an exported model with PyTorch on ``inputs``; raise when an output differs."""
    with torch.no_grad():
        expected = _as_outputs(reference(*inputs), names)
        found = _as_outputs(exported(*inputs), names)
    diffs: dict[str, float] = {}
    for name in names:
        a, b = found[name].float(), expected[name].float()
        if a.shape != b.shape:
            raise RuntimeError(f"{what}: output {name!r} has shape {list(a.shape)}, PyTorch {list(b.shape)}")
        diffs[name] = float((a - b).abs().max())
        if not torch.allclose(a, b, rtol=CHECK_TOL, atol=CHECK_TOL):
            raise RuntimeError(
                f"{what}: output {name!r} differs from PyTorch by up to {diffs[name]:.3g} "
                f"(tolerance {CHECK_TOL} absolute + {CHECK_TOL} relative)"
            )
    return diffs


def _export_info(net: MultiTaskUNet, fmt: str, outputs: Sequence[str]) -> dict[str, Any]:
    from medmtl._version import __version__

    return {
        "format": fmt,
        "inputs": ["image", "channel_mask"] if net.input_mask else ["image"],
        "outputs": list(outputs),
        "in_channels": net.in_channels,
        "seg_channels": net.seg_channels,
        "synth_channels": net.synth_channels,
        "spatial_dims": net.spatial_dims,
        "size_divisor": net.divisor,
        "medmtl_version": __version__,
        "torch_version": torch.__version__,
    }


def export_torchscript(
    net: MultiTaskUNet,
    path: str | os.PathLike,
    branch: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    check: bool = True,
    overwrite: bool = True,
) -> ExportResult:
    """Script the network (``monai.networks.convert_to_torchscript``) and save it with its metadata.

    Scripting keeps the network's size handling, so the file accepts inputs of any spatial size.

    Args:
        net: the trained network.
        path: output file (``.ts``).
        branch: export one output only (``"seg"`` or ``"synth"``) as a single tensor.
        model_config: the bundle's ``model_config.json``, embedded for the consistency check of
            :func:`load_exported`.
        meta: bundle metadata (``metadata.json``), embedded as MONAI's TorchScript metadata.
        check: compare the scripted module with PyTorch on a random input before writing.
        overwrite: replace an existing file.

    Returns:
        The :class:`ExportResult`.
    """
    from monai.data import save_net_with_metadata
    from monai.networks import convert_to_torchscript

    net = net.eval()
    module, outputs = _module_for(net, branch, as_tuple=False)
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream, yet TorchScript is what MONAI bundles ship (ckpt_export).
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.", category=DeprecationWarning)
        scripted = convert_to_torchscript(module)
        diffs = (
            _check(module, scripted, _example_inputs(net), outputs, f"TorchScript export of {path}")
            if check
            else {}
        )
        extra = {EXPORT_INFO_FILE: json.dumps(_export_info(net, "torchscript", outputs)).encode()}
        if model_config is not None:
            extra[MODEL_CONFIG_FILE] = json.dumps(dict(model_config)).encode()
        with atomic_path(path, overwrite=overwrite) as tmp:
            save_net_with_metadata(
                scripted,
                str(tmp),
                include_config_vals=True,
                append_timestamp=False,
                meta_values=dict(meta or {}),
                more_extra_files=extra,
            )
    return ExportResult(Path(path), "torchscript", outputs, diffs)


def _dynamic_shapes(net: MultiTaskUNet) -> tuple[dict[int, Any], ...]:
    dim = torch.export.Dim
    batch = dim("batch", min=1)
    image = {0: batch}
    for axis, name in zip(range(net.spatial_dims), "xyz"):
        # multiples of the size divisor with two bottleneck voxels or more: sizes needing no padding
        image[2 + axis] = net.divisor * dim(f"{name}_blocks", min=2)
    return (image, None) if net.input_mask else (image,)


def export_onnx(
    net: MultiTaskUNet,
    path: str | os.PathLike,
    branch: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    opset: int | None = None,
    check: bool = True,
    overwrite: bool = True,
) -> ExportResult:
    """Export the network to ONNX with MONAI's ``convert_to_onnx`` (``torch.export`` based exporter).

    Inputs: ``image`` ``(B, in_channels, *S)`` (and ``channel_mask`` ``(1, in_channels)``, one mask for
    the batch, for networks built with ``input_mask``); outputs ``seg`` and ``synth`` (or the one
    ``branch``). The batch and spatial sizes are dynamic; each spatial size must be a multiple of
    ``2**(levels - 1)`` and at least twice that (8 and 16 for the shipped presets), which every
    sliding-window ROI of the bundle is. The bundle metadata, model config and an ``export``
    description are stored as ONNX metadata.

    Args:
        net: the trained network.
        path: output file (``.onnx``), written as one file (no external weights file).
        branch: export one output only (``"seg"`` or ``"synth"``).
        model_config: the bundle's ``model_config.json`` (embedded).
        meta: bundle metadata (embedded).
        opset: ONNX opset; the exporter's default when None.
        check: compare onnxruntime's outputs with PyTorch on a random input before writing.
        overwrite: replace an existing file.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ImportError: when ``onnx`` / ``onnxscript`` (or ``onnxruntime`` for the check) are missing.
    """
    onnx = require("onnx")
    require("onnxscript")
    from monai.networks import convert_to_onnx

    net = net.eval()
    module, outputs = _module_for(net, branch, as_tuple=True)
    inputs = _example_inputs(net)
    info = _export_info(net, "onnx", outputs)
    with atomic_path(path, overwrite=overwrite) as tmp:
        model = convert_to_onnx(
            module,
            inputs,
            input_names=info["inputs"],
            output_names=list(outputs),
            opset_version=opset,
            filename=str(tmp),
            use_trace=True,
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(net),
            external_data=False,
            verbose=False,
        )
        props = {"medmtl_export": json.dumps(info), "bundle_metadata": json.dumps(dict(meta or {}))}
        if model_config is not None:
            props["medmtl_model_config"] = json.dumps(dict(model_config))
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(tmp))
        diffs = {}
        if check:
            diffs = _check(module, OnnxNetwork(tmp, as_tuple=True), inputs, outputs, f"ONNX export of {path}")
    return ExportResult(Path(path), "onnx", outputs, diffs)


def export_bundle(
    bundle_root: str | os.PathLike,
    fmt: str = "torchscript",
    out: str | os.PathLike | None = None,
    branch: str | None = None,
    opset: int | None = None,
    check: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Export a trained bundle's network.

    Args:
        bundle_root: the bundle folder (``models/model.pt`` + ``models/model_config.json``).
        fmt: ``"torchscript"`` or ``"onnx"``.
        out: output file; ``models/model.ts`` / ``models/model.onnx`` in the bundle by default
            (``model_seg.ts`` etc. with ``branch``).
        branch: export one output only.
        opset: ONNX opset.
        check: compare with PyTorch before writing.
        overwrite: replace an existing file.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: for an unknown format or branch.
        FileExistsError: when ``out`` exists and ``overwrite`` is False.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {sorted(FORMATS)}")
    if branch is not None and branch not in NETWORK_OUTPUTS:
        raise ValueError(f"branch must be one of {NETWORK_OUTPUTS}, found {branch!r}")
    root = Path(bundle_root).resolve()
    if out is None:
        out = root / "models" / f"model{'_' + branch if branch else ''}{FORMATS[fmt]}"
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite (--overwrite) to replace it")
    net, model_config, meta = bundle_network(root)
    exporter = export_torchscript if fmt == "torchscript" else export_onnx
    kwargs: dict[str, Any] = {"opset": opset} if fmt == "onnx" else {}
    return exporter(
        net, out, branch=branch, model_config=model_config, meta=meta, check=check, overwrite=True, **kwargs
    )


# ----------------------------------------------------------------------------------------------
# Running exported files


# ----------------------------------------------------------------------------------------------
# CLI


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl export``."""
    try:
        result = export_bundle(
            args.bundle,
            args.format,
            out=args.out,
            branch=args.branch,
            opset=args.opset,
            check=not args.no_check,
            overwrite=args.overwrite,
        )
    except ImportError as err:  # a missing optional package is a user error: one line, no traceback
        print(f"medmtl export: error: {err}", file=sys.stderr)
        return 2
    checked = ", ".join(f"{k} {v:.2g}" for k, v in result.max_abs_diff.items()) or "not checked"
    print(
        f"medmtl export: wrote {result.path} ({result.format}, outputs {', '.join(result.outputs)}; "
        f"max |difference| to PyTorch: {checked})"
    )
    return 0

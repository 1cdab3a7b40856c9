"""The one inference path: a network, its transforms and inferer, run by one MONAI evaluator.

A :class:`Predictor` holds what a bundle's inference config builds (``configs/inference.json``:
network with its weights, preprocessing, sliding-window inferer, postprocessing that inverts the
preprocessing into the scan's own grid) and runs cases through MONAI's ``SupervisedEvaluator``. The
bundle's evaluator is the predictor's (``"evaluator": "$@predictor.evaluator(...)"``), so
``python -m monai.bundle run``, ``medmtl infer``, ``load_model().predict`` (one case in memory),
local synthesis and export's checks all run the same code, as nnU-Net's ``nnUNetPredictor`` serves
its CLI and its array API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose

from medmtl.contrasts import CONTRASTS, canonical


class Predictor:
    """A network ready to predict whole cases, and the evaluator that runs them.

    Args:
        network: the network, weights loaded; called as ``network(image, channel_mask=...)`` when
            ``input_mask``, else ``network(image)``.
        preprocessing: the case pipeline (entry -> ``image`` and the keys postprocessing needs).
        inferer: a MONAI inferer (sliding window, optionally with flip TTA).
        postprocessing: per-case transforms after the network (split, activation, ``Invertd``).
        device: where the network runs.
        input_mask: pass the case's ``channel_mask`` to the network.
        amp: CUDA autocast, as in training.
        num_workers: data loader workers for cohorts.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        device: str | torch.device = "cpu",
        input_mask: bool = False,
        amp: bool = False,
        num_workers: int = 0,
    ) -> None:
        self.network = network.eval()
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.input_mask = bool(input_mask)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.num_workers = int(num_workers)

    def loader(self, entries: Sequence[Mapping[str, Any]]) -> DataLoader:
        """One case at a time through the preprocessing (files or in-memory images)."""
        dataset = Dataset(data=list(entries), transform=self.preprocessing)
        return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=self.num_workers)

    def evaluator(
        self,
        data: Sequence[Mapping[str, Any]] | DataLoader,
        writer: Callable | None = None,
        handlers: Sequence[Any] | None = None,
    ) -> SupervisedEvaluator:
        """The MONAI evaluator that runs ``data`` and hands each case, back in its own grid, to ``writer``.

        Args:
            data: datalist-style entries, or a data loader over them.
            writer: a per-case transform after the postprocessing (e.g. the file writer); None keeps
                the outputs in the engine state only.
            handlers: evaluator handlers (progress, stats).

        Returns:
            A ``SupervisedEvaluator``; call ``.run()``.
        """
        from medmtl.training import MultiTaskPrepareBatch

        loader = data if isinstance(data, DataLoader) else self.loader(data)
        post = Compose([self.postprocessing, writer]) if writer is not None else self.postprocessing
        return SupervisedEvaluator(
            device=self.device,
            val_data_loader=loader,
            network=self.network,
            inferer=self.inferer,
            prepare_batch=MultiTaskPrepareBatch(use_channel_mask=self.input_mask),
            postprocessing=post,
            val_handlers=list(handlers or []),
            amp=self.amp,
        )

    def __call__(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Run one case; returns its postprocessed outputs (``seg``, ``synth``, ... in the scan's grid)."""
        engine = self.evaluator([entry])
        # one case in memory: the engine's epoch lines say nothing a caller wants
        level = engine.logger.level
        engine.logger.setLevel(logging.WARNING)
        try:
            engine.run()
        finally:
            engine.logger.setLevel(level)
        # MONAI's engines keep the keys the postprocessing made in ``output`` and the case's own
        # (the brain mask in the scan's voxels, its meta) in ``batch``: a writer sees both.
        return {**engine.state.batch[0], **engine.state.output[0]}


def build_predictor(
    bundle_dir: str | os.PathLike, device: str | None = None, **overrides: Any
) -> tuple[Predictor, Any]:
    """Parse a bundle's inference config and build its predictor (weights read once).

    Args:
        bundle_dir: the bundle folder.
        device: torch device; the config's (CUDA when available) when None.
        overrides: config overrides (``{"tta": True}``, an exported network, ...).

    Returns:
        ``(predictor, parser)``: the parser answers the config's other values (thresholds, contrasts).

    Raises:
        FileNotFoundError: when the bundle has no weights file.
        ValueError: when the weights file is truncated, corrupt or not a state dict.
    """
    from monai.bundle import ConfigParser

    from medmtl.bundle_config import bundle_file

    root = Path(bundle_dir).resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle_file(root)))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    if device is not None:
        parser["device"] = f"$torch.device('{device}')"
    for key, value in overrides.items():
        parser[key] = value
    predictor = parser.get_parsed_content("predictor")
    try:
        parser.get_parsed_content("load_weights")
    except RuntimeError as err:
        # MONAI wraps what a config expression raises; the weights' own error says what is wrong
        cause = err.__cause__
        while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (FileNotFoundError, ValueError)):
            raise cause from None
        raise
    return predictor, parser


def in_memory_image(array: np.ndarray, affine: Any, name: str) -> MetaTensor:
    """A 3D image held in memory as the pipeline's loader takes it (no channel; affine; a name).

    Args:
        array: the voxels (x, y, z).
        affine: their voxel-to-world matrix.
        name: what messages and outputs call it (a file name, or ``array t1c``).

    Returns:
        A float32 ``MetaTensor``.
    """
    meta = {"filename_or_obj": name, "original_channel_dim": "no_channel"}
    data = torch.as_tensor(np.asarray(array, dtype=np.float32))
    return MetaTensor(data, affine=torch.as_tensor(np.asarray(affine, dtype=np.float64)), meta=meta)


def array_entry(
    images: Mapping[str, Any], affine: np.ndarray | None, case_id: str = "case"
) -> dict[str, Any]:
    """A case entry holding in-memory images (one 3D array per contrast, on one grid).

    Args:
        images: ``{contrast: 3D numpy array or MetaTensor}`` (contrast names as :func:`canonical` takes).
        affine: the arrays' voxel-to-world matrix (a MetaTensor's own affine wins).
        case_id: the case's identifier.

    Returns:
        ``{"case_id", "image": [MetaTensor, ...], "contrasts"}`` in canonical contrast order.

    Raises:
        ValueError: an array that is not 3D, arrays of different shapes, or an affine that is not a
            finite 4x4 matrix, naming the array.
    """
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"affine: expected a finite 4x4 matrix, got shape {aff.shape}")
    named = {canonical(k): (k, v) for k, v in images.items()}
    order = [c for c in CONTRASTS if c in named]
    tensors, shape, first = [], None, None
    for c in order:
        key, value = named[c]
        arr = value if isinstance(value, MetaTensor) else np.asarray(value)
        if arr.ndim != 3:
            raise ValueError(f"array {key!r}: expected a 3D array, got shape {tuple(arr.shape)}")
        if shape is None:
            shape, first = tuple(arr.shape), key
        elif tuple(arr.shape) != shape:
            raise ValueError(f"array {key!r}: shape {tuple(arr.shape)} differs from array {first!r} {shape}")
        own = arr.affine if isinstance(arr, MetaTensor) else aff
        plain = arr.as_tensor().numpy() if isinstance(arr, MetaTensor) else arr
        tensors.append(in_memory_image(plain, own, f"array {key}"))
    return {"case_id": case_id, "image": tensors, "contrasts": order}

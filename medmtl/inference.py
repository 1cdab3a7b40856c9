"""Whole-volume inference: both outputs from one sliding-window pass, written in the scan's own grid.

The bundle's ``configs/inference.json`` is the one description of the pipeline (preprocessing,
network, inferer, postprocessing, writer); ``medmtl infer`` and :func:`load_model` run that config,
so the CLI, the Python API and ``python -m monai.bundle run --config_file configs/inference.json``
give the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform

from medmtl.contrasts import CONTRASTS, canonical
from medmtl.io import write_nifti_group
from medmtl.labels import OUTPUT_CONVENTIONS, REGIONS, regions_to_label
from medmtl.transforms import SOURCE_MASK_KEY


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
INTENSITY_SPACE = "zscore_nonzero"
logger = logging.getLogger("medmtl.inference")
#: What ``--section`` accepts.
DATALIST_SECTIONS: tuple[str, ...] = ("all", "training", "testing")


class SplitPredictiond(MapTransform):
    """Move the network's dict output ``pred = {"seg", "synth"}`` to top-level keys for inversion.

    Args:
        keys: the prediction key (``pred``).
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(self, keys: KeysCollection = "pred", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d.pop(key)
            if not isinstance(pred, Mapping):
                raise TypeError(
                    f"expected a dict prediction with 'seg' and 'synth', got {type(pred).__name__}"
                )
            for name, value in pred.items():
                d[name] = value
        return d


class FlipTTAInferer(SlidingWindowInferer):
    """Sliding-window inference averaged over the identity and flips along each spatial axis.

    Flip test-time augmentation is the usual cheap gain in BraTS (e.g. Isensee et al., nnU-Net,
    Nat. Methods 2021); each flip costs one more full pass.

    Args:
        flip_axes: spatial axes to flip (0-based, not counting batch and channel).
        kwargs: passed to :class:`monai.inferers.SlidingWindowInferer`.
    """

    def __init__(self, flip_axes: Sequence[int] = (0, 1, 2), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flip_axes = list(flip_axes)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        total = super().__call__(inputs, network, *args, **kwargs)
        for axis in self.flip_axes:
            dims = [axis + 2]
            out = super().__call__(torch.flip(inputs, dims), network, *args, **kwargs)
            total = {k: total[k] + torch.flip(out[k], dims) for k in total}
        n = 1 + len(self.flip_axes)
        return {k: v / n for k, v in total.items()}


def output_paths(out_dir: str | os.PathLike, case_id: str, targets: Sequence[str]) -> dict[str, Path]:
    """The files inference writes for one case.

    Args:
        out_dir: output folder.
        case_id: case identifier.
        targets: synthesised contrasts.

    Returns:
        ``{"seg": ..., "<contrast>": ..., "sidecar": ...}``; the sidecar is written last and marks a
        finished case.
    """
    out = Path(out_dir)
    paths = {"seg": out / f"{case_id}_seg.nii.gz"}
    for c in targets:
        paths[c] = out / f"{case_id}_{canonical(c)}_synth.nii.gz"
    paths["sidecar"] = out / f"{case_id}.json"
    return paths


def is_done(out_dir: str | os.PathLike, case_id: str, targets: Sequence[str]) -> bool:
    """Whether every output of a case exists (a killed cohort run resumes after these)."""
    return all(p.exists() for p in output_paths(out_dir, case_id, targets).values())


def pending_cases(
    entries: Sequence[dict], out_dir: str | os.PathLike, targets: Sequence[str], overwrite: bool = False
) -> list[dict]:
    """Datalist entries whose outputs are not all there yet (all of them when ``overwrite``).

    Args:
        entries: datalist entries with ``case_id``.
        out_dir: output folder.
        targets: synthesised contrasts.
        overwrite: redo finished cases.

    Returns:
        The entries still to run.
    """
    if overwrite:
        return list(entries)
    return [e for e in entries if not is_done(out_dir, str(e["case_id"]), targets)]


def shard(entries: Sequence[dict]) -> list[dict]:
    """This rank's share of the cases under ``torchrun`` (all of them in a single process).

    Uses MONAI's ``partition_dataset``: interleaved, non-overlapping shards, one per rank (ranks
    beyond the number of cases get none).

    Args:
        entries: all cases.

    Returns:
        The cases this process handles.
    """
    from monai.data import partition_dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1 or not entries:
        return list(entries)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    # partition_dataset refuses more partitions than items; the surplus ranks simply have nothing to do.
    parts = partition_dataset(
        list(entries), num_partitions=min(world, len(entries)), shuffle=False, even_divisible=False
    )
    return parts[rank] if rank < len(parts) else []


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    image = entry.get("image")
    return [str(f) for f in (image if isinstance(image, (list, tuple)) else [image]) if f]


def check_cases(entries: Sequence[dict], inputs: Sequence[str], input_mask: bool) -> list[dict]:
    """Check, before any work, that every case can be run by the model; return the entries unchanged.

    Cheap checks only (no voxel data are read): the image files exist, and the case holds every
    input contrast of a model trained without an input mask (with one, a missing input is allowed,
    zero-filled and flagged, but at least one input must be there).

    Args:
        entries: datalist-style entries (``case_id``, ``image``, ``contrasts``).
        inputs: the model's input contrasts.
        input_mask: whether the model was trained with an input mask.

    Returns:
        ``entries``.

    Raises:
        FileNotFoundError: when an image file does not exist, naming the case and the file.
        ValueError: when a case lacks an input contrast the model needs, naming the case's folder.
    """
    wanted = [canonical(c) for c in inputs]
    for entry in entries:
        cid = entry.get("case_id", "?")
        files = _entry_files(entry)
        if not files:
            raise ValueError(f"case {cid}: no image file in its entry {dict(entry)}")
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"case {cid}: image file {f} does not exist")
        present = [canonical(c) for c in entry.get("contrasts") or CONTRASTS]
        absent = [c for c in wanted if c not in present]
        where = Path(files[0]).parent
        if absent and (not input_mask or len(absent) == len(wanted)):
            need = "all of" if not input_mask else "at least one of"
            why = " (it was trained without an input mask)" if not input_mask else ""
            raise ValueError(
                f"case {cid} ({where}): missing input contrast(s) {', '.join(absent)} "
                f"(found {', '.join(present)}); this model needs {need} {', '.join(wanted)}{why}"
            )
    return list(entries)


def existing_outputs(
    entries: Sequence[dict], out_dir: str | os.PathLike, targets: Sequence[str]
) -> list[str]:
    """Output files of these cases that already exist in ``out_dir``.

    Args:
        entries: entries with ``case_id``.
        out_dir: output folder.
        targets: synthesised contrasts.

    Returns:
        The existing paths.
    """
    return [
        str(p)
        for e in entries
        for p in output_paths(out_dir, str(e["case_id"]), targets).values()
        if p.exists()
    ]


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Check that the output folder is, or can be created as, a writable folder (creates nothing).

    Args:
        out_dir: the output folder.

    Returns:
        The absolute folder.

    Raises:
        FileExistsError: when the path is an existing file.
        PermissionError: when the folder, or the nearest existing folder above it, is not writable.
    """
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {out} is a file; expected a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise FileExistsError(f"cannot create output folder {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "output folder" if existing == out else f"cannot create {out}: folder"
        raise PermissionError(f"{what} {existing} is not writable")
    return out


#: Errors a user can act on; the CLI reports them in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    ValueError,
)


def user_error(err: BaseException) -> BaseException | None:
    """The user error (missing file, bad case, existing output, ...) behind a wrapped exception.

    MONAI's bundle parser and ``Compose`` wrap what a config expression or a transform raises in a
    ``RuntimeError``; the cause chain still holds the original, whose message says what is wrong.

    Args:
        err: the exception caught.

    Returns:
        The first exception of a :data:`USER_ERRORS` type in the chain, or None.
    """
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, USER_ERRORS):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def _source_reference(d: Mapping[Hashable, Any]) -> str:
    meta = getattr(d.get("image"), "meta", {}) or {}
    src = meta.get("filename_or_obj")
    if isinstance(src, (list, tuple)):
        src = src[0]
    if not src:
        raise ValueError("cannot find the source scan of this case (image meta has no filename)")
    return str(src)


def _output_mask(d: Mapping[Hashable, Any]) -> np.ndarray | None:
    """The brain mask in the source grid: the scan's own non-zero voxels, else the inverted mask."""
    for key in (SOURCE_MASK_KEY, "brain_mask"):
        if d.get(key) is not None:
            return np.asarray(torch.as_tensor(d[key]).detach().cpu())[0] > 0.5
    return None


def remove_small_components(regions: np.ndarray, spacing: Sequence[float], min_ml: float) -> np.ndarray:
    """Drop connected components of the whole tumour smaller than ``min_ml`` (and TC / ET inside them).

    Scattered false-positive specks far from the tumour dominate HD95; BraTS pipelines remove them
    after thresholding (cf. Isensee et al., nnU-Net for BraTS 2020, arXiv:2011.00848). The largest
    component is always kept, so a case never loses its whole prediction.

    Args:
        regions: (3, H, W, D) uint8 region masks (TC, WT, ET).
        spacing: voxel size in mm.
        min_ml: smallest component kept, in millilitres; 0 keeps everything.

    Returns:
        The filtered region masks (a new array).
    """
    from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

    wt = regions[REGIONS.index("WT")]
    if min_ml <= 0 or not wt.any():
        return regions
    remove = RemoveSmallObjects(
        min_size=min_ml * 1000.0, connectivity=3, by_measure=True, pixdim=[float(s) for s in spacing]
    )
    with warnings.catch_warnings():
        # MONAI hands scikit-image >= 0.26 its deprecated ``min_size``: same result, one warning per case
        warnings.filterwarnings(
            "ignore", message="Parameter `min_size` is deprecated", category=FutureWarning
        )
        kept = remove(wt[None])
    kept = np.asarray(kept)[0] > 0
    if not kept.any():
        kept = np.asarray(KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(wt[None]))[0] > 0
    return (regions & kept[None]).astype(regions.dtype)


def small_et_to_netc(regions: np.ndarray, spacing: Sequence[float], et_min_ml: float) -> np.ndarray:
    """The BraTS ET rule: a predicted enhancing tumour smaller than ``et_min_ml`` becomes NETC.

    Cases without enhancement (low-grade gliomas) are scored with an empty ET, where any false-positive
    ET voxel costs the whole Dice (0 instead of 1); Isensee et al. ("nnU-Net for Brain Tumor
    Segmentation", BraTS 2020, arXiv:2011.00848) replace a small predicted ET by necrosis, with the
    threshold chosen on validation cases. The voxels stay in TC and WT.

    Args:
        regions: (3, H, W, D) uint8 region masks (TC, WT, ET).
        spacing: voxel size in mm.
        et_min_ml: smallest ET kept, in millilitres; 0 keeps every ET.

    Returns:
        The region masks (a new array when ET was removed).
    """
    et = REGIONS.index("ET")
    if et_min_ml <= 0 or not regions[et].any():
        return regions
    volume_ml = float(regions[et].sum()) * float(np.prod([float(s) for s in spacing])) / 1000.0
    if volume_ml >= et_min_ml:
        return regions
    out = regions.copy()
    out[REGIONS.index("TC")] |= out[et]
    out[et] = 0
    return out


def case_outputs(
    d: Mapping[Hashable, Any],
    targets: Sequence[str],
    threshold: float = 0.5,
    min_component_ml: float = 0.0,
    spacing: Sequence[float] | None = None,
    et_min_ml: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Turn one case's inverted predictions into output arrays in the source grid.

    Regions and synthesised images are set to zero outside the brain (the voxels where any contrast
    of the source scan is non-zero), where BraTS scans are skull-stripped to exact zeros.

    Args:
        d: a case after postprocessing: ``seg`` (3, H, W, D) probabilities, optional ``synth``
            (len(targets), H, W, D), and ``source_brain_mask`` or ``brain_mask`` (1, H, W, D).
        targets: names of the synthesised contrasts, in the order of the ``synth`` channels.
        threshold: probability threshold for the regions.
        min_component_ml: remove whole-tumour components smaller than this (see
            :func:`remove_small_components`); 0 keeps all.
        spacing: voxel size in mm of the source grid (for ``min_component_ml``; 1 mm when None).
        et_min_ml: a predicted ET smaller than this becomes NETC (see :func:`small_et_to_netc`).

    Returns:
        ``(probabilities float32 (3, H, W, D), regions uint8 (3, H, W, D), {contrast: float32 image})``.
    """
    prob = np.asarray(torch.as_tensor(d["seg"]).detach().cpu(), dtype=np.float32)
    regions = (prob > threshold).astype(np.uint8)
    brain = _output_mask(d)
    if brain is not None:
        if brain.shape != prob.shape[1:]:
            raise ValueError(f"brain mask grid {brain.shape} != prediction grid {prob.shape[1:]}")
        regions &= brain[None].astype(np.uint8)
    regions = remove_small_components(regions, spacing or (1.0, 1.0, 1.0), min_component_ml)
    regions = small_et_to_netc(regions, spacing or (1.0, 1.0, 1.0), et_min_ml)
    synth: dict[str, np.ndarray] = {}
    if d.get("synth") is not None:
        images = np.asarray(torch.as_tensor(d["synth"]).detach().cpu(), dtype=np.float32)
        for i, c in enumerate(targets):
            synth[c] = np.where(brain, images[i], np.float32(0)) if brain is not None else images[i]
    return prob, regions, synth


class WriteCaseOutputsd(MapTransform):
    """Write one case's outputs in the source scan's grid: label map, synthesised contrasts, sidecar.

    Every file of a case goes to a temporary name first; the files are renamed into place only when
    all were written, sidecar last, so a case is complete or absent.

    Args:
        out_dir: output folder.
        targets: names of the synthesised contrasts, in the order of the ``synth`` channels.
        inputs: the model's input contrasts (recorded in the sidecar with which were real).
        default_convention: label convention for cases whose datalist declares none.
        output_convention: force this convention (``brats2021``/``brats2023``) instead of the input's.
        write_probabilities: also write ``<case>_prob.nii.gz`` (TC, WT, ET probabilities, float32).
        write_regions: write the seg as region masks (TC, WT, ET as a 4D uint8) instead of a label map.
        overwrite: replace existing outputs.
        model_info: extra fields for the sidecar (model name, version, ...).
        threshold: probability threshold for the regions.
        min_component_ml: remove whole-tumour components smaller than this many ml (0: keep all).
        et_min_ml: a predicted ET smaller than this many ml becomes NETC (0: keep every ET).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        targets: Sequence[str] = ("t1c",),
        inputs: Sequence[str] = ("t1n", "t2w", "t2f"),
        default_convention: str = "brats2023",
        output_convention: str | None = None,
        write_probabilities: bool = False,
        write_regions: bool = False,
        overwrite: bool = False,
        model_info: Mapping[str, Any] | None = None,
        threshold: float = 0.5,
        min_component_ml: float = 0.0,
        et_min_ml: float = 0.0,
    ) -> None:
        super().__init__(keys=["seg"], allow_missing_keys=True)
        self.min_component_ml = float(min_component_ml)
        self.et_min_ml = float(et_min_ml)
        self.out_dir = Path(out_dir)
        self.targets = [canonical(t) for t in targets]
        self.inputs = [canonical(c) for c in inputs]
        self.default_convention = default_convention
        self.output_convention = output_convention
        self.write_probabilities, self.write_regions = write_probabilities, write_regions
        self.overwrite, self.threshold = overwrite, threshold
        self.model_info = dict(model_info or {})

    def _case_id(self, d: Mapping[Hashable, Any], source: str) -> str:
        if d.get("case_id"):
            return str(d["case_id"])
        name = Path(source).name
        for ext in (".nii.gz", ".nii"):
            name = name.removesuffix(ext)
        return name.rsplit("_", 1)[0] if "_" in name else name.rsplit("-", 1)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = _source_reference(d)
        ref = nib.load(source)
        case_id = self._case_id(d, source)
        paths = output_paths(self.out_dir, case_id, self.targets if "synth" in d else [])
        if not self.overwrite:
            existing = [str(p) for p in paths.values() if p.exists()]
            if existing:
                raise FileExistsError(
                    f"outputs exist for case {case_id}: {existing}; use overwrite to replace"
                )
        conv = self.output_convention or d.get("convention") or self.default_convention
        conv = conv if conv in OUTPUT_CONVENTIONS else "brats2023"
        shape = tuple(ref.shape[:3])
        if tuple(d["seg"].shape[1:]) != shape:
            raise ValueError(
                f"case {case_id}: prediction grid {tuple(d['seg'].shape[1:])} != source {source} grid {shape}"
            )
        zooms = ref.header.get_zooms()[:3]
        prob, regions, synth = case_outputs(
            d, self.targets, self.threshold, self.min_component_ml, zooms, self.et_min_ml
        )

        arrays: dict[str, tuple[np.ndarray, Any]] = {}
        if self.write_regions:
            arrays["seg"] = (np.moveaxis(regions, 0, -1), np.uint8)
        else:
            arrays["seg"] = (regions_to_label(regions, conv)[0], np.uint8)
        for c, img in synth.items():
            arrays[c] = (img, np.float32)
        if self.write_probabilities:
            paths["prob"] = self.out_dir / f"{case_id}_prob.nii.gz"
            arrays["prob"] = (np.moveaxis(prob, 0, -1), np.float32)

        if d.get("unusable"):
            logger.warning(
                "case %s: contrast(s) %s are constant images (empty or blank): treated as missing",
                case_id,
                d["unusable"],
            )
        sidecar = {
            "case_id": case_id,
            "source": source,
            "label_convention": conv,
            "seg_format": "regions TC,WT,ET (4D)" if self.write_regions else "BraTS label map",
            "regions": list(REGIONS),
            "contrasts_used": [
                c for c, a in zip(self.inputs, _as_list(d.get("channel_mask"), len(self.inputs))) if a
            ],
            "contrasts_missing": [
                c for c, a in zip(self.inputs, _as_list(d.get("channel_mask"), len(self.inputs))) if not a
            ],
            "contrasts_unusable": [c for c in str(d.get("unusable") or "").split(",") if c],
            "synthesised": self.targets if "synth" in d else [],
            "intensity_space": INTENSITY_SPACE,
            "intensity_note": "synthesised images: z-scores over the brain's non-zero voxels; 0 outside",
            "shape": list(shape),
            "affine": np.asarray(ref.affine).round(6).tolist(),
            **self.model_info,
        }
        self._write_case(paths, arrays, ref, sidecar)
        d["written"] = {k: str(v) for k, v in paths.items()}
        return d

    def _write_case(self, paths: dict[str, Path], arrays: dict, ref: Any, sidecar: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, (arr, dtype) in arrays.items():
            descrip = None if name in ("seg", "prob") else f"medmtl synth {name} {INTENSITY_SPACE}"
            files[paths[name]] = (arr, dtype, descrip)
        write_nifti_group(files, ref, paths["sidecar"], sidecar)


class CaseProgress:
    """A per-case progress bar with an ETA (tqdm) and a closing summary for cohort inference.

    An ignite handler for the inference evaluator: one tick per case, the case id beside the bar,
    then one line saying how many cases were written and where.

    Args:
        total: number of cases to run.
        out_dir: the output folder, named in the summary.
        disable: no bar: one line per case on stdout instead (what a log file wants); None shows the
            bar only when stderr is a terminal.
    """

    def __init__(self, total: int, out_dir: str | os.PathLike, disable: bool | None = None) -> None:
        import sys
        import time

        self.total, self.out_dir = int(total), Path(out_dir)
        self.disable = disable if disable is not None else not sys.stderr.isatty()
        self.bar: Any = None
        self.done = 0
        self._clock = time.perf_counter
        self._t0 = self._clock()

    def attach(self, engine: Any) -> None:
        """Register with an ignite engine."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._tick)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Any) -> None:
        from tqdm.auto import tqdm

        self.done = 0
        self._t0 = self._clock()
        if not self.disable:
            self.bar = tqdm(total=self.total, unit="case", desc="medmtl infer")

    def _tick(self, engine: Any) -> None:
        self.done += 1
        out = engine.state.output
        first = out[0] if isinstance(out, list) and out else out
        case = first.get("written", {}).get("sidecar", "") if isinstance(first, Mapping) else ""
        name = Path(str(case)).stem if case else ""
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)
        else:
            elapsed = self._clock() - self._t0
            eta = elapsed / self.done * (self.total - self.done)
            print(
                f"  case {self.done}/{self.total} {name}: {elapsed:.0f} s, about {eta:.0f} s left", flush=True
            )

    def _finish(self, engine: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"medmtl infer: {self.done} of {self.total} case(s) written to {self.out_dir}", flush=True)


def _as_list(x: Any, n: int) -> list[float]:
    if x is None:
        return [1.0] * n
    return [float(v) for v in torch.as_tensor(x).flatten()]


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
    return cfg


def model_info(bundle_root: str | os.PathLike, model_path: str | os.PathLike) -> dict[str, Any]:
    """Provenance for output sidecars: bundle name and version, weights file, library versions."""
    import monai

    import medmtl

    meta_path = Path(bundle_root) / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {
        "model": meta.get("name", "medmtl"),
        "model_version": meta.get("version"),
        "weights": Path(model_path).name,
        "medmtl_version": medmtl.__version__,
        "monai_version": monai.__version__,
        "torch_version": torch.__version__,
    }


def datalist_cases(
    datalist: str | os.PathLike | None, dataset_dir: str | os.PathLike | None, section: str = "all"
) -> list[dict]:
    """Cases of a medmtl datalist for inference: ``training``, ``testing`` or ``all`` of them.

    Args:
        datalist: the datalist JSON.
        dataset_dir: root its paths are relative to (the datalist's own record when None).
        section: which section(s).

    Returns:
        Entries with absolute paths.
    """
    from medmtl.datalist import load_datalist, read_datalist

    if not datalist:
        raise ValueError("no cases: give case folders or a datalist")
    if section not in DATALIST_SECTIONS:
        raise ValueError(f"unknown datalist section {section!r}; expected one of {list(DATALIST_SECTIONS)}")
    sections = ["training", "testing"] if section == "all" else [section]
    raw = read_datalist(datalist)
    out: list[dict] = []
    for sec in sections:
        if raw.get(sec):
            out += load_datalist(datalist, dataset_dir, section=sec)
    return out


# ----------------------------------------------------------------------------------------------
# Case inputs


def case_entry(case: str | os.PathLike | Mapping[str, Any], case_id: str | None = None) -> dict[str, Any]:
    """Turn what a user hands in into a validated, datalist-style entry with absolute paths.

    The case is checked as ``medmtl prepare`` checks it (readable files, 3D, one grid, finite values),
    with missing contrasts allowed: the model is told which inputs are absent.

    Args:
        case: a case folder in any supported layout, or a mapping ``{contrast: path}`` with any
            contrast spelling (a subset of contrasts is allowed).
        case_id: identifier; derived from the folder name or first file when omitted.

    Returns:
        ``{"case_id", "image": [paths], "contrasts": [names], "label_convention", ...}``.

    Raises:
        FileNotFoundError: for a missing folder or file.
        ValueError: when nothing usable is found, naming the file and the problem.
    """
    from data_prep.datalist import case_entry as datalist_entry
    from data_prep.layouts import Case, discover
    from data_prep.validate import validate_case

    if isinstance(case, Mapping):
        images = {}
        for key, path in case.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{key} file {path} does not exist")
            images[canonical(key)] = str(Path(path).resolve())
        if not images:
            raise ValueError(f"no contrast files given in {dict(case)}")
        first = next(iter(images.values()))
        cid = case_id or _stem_id(first)
        # Loose files name no release: their outputs use BraTS 2023 label values unless asked otherwise.
        found = Case(
            case_id=cid,
            patient_id=cid,
            dataset="files",
            layout="brats2023",
            root=Path("/"),
            images=images,
            convention="brats2023",
        )
        root = Path("/")
    else:
        folder = Path(case)
        if not folder.exists():
            raise FileNotFoundError(f"case folder {folder} does not exist")
        cases = discover(folder).cases
        if not cases:
            raise ValueError(
                f"{folder}: no case in a known layout (BraTS 2018-21 _t1/_t1ce/_t2/_flair, BraTS 2023 "
                "-t1n/-t1c/-t2w/-t2f, UPENN-GBM _T1/_T1GD/_T2/_FLAIR, MSD imagesTr)"
            )
        if len(cases) > 1:
            raise ValueError(f"{folder} holds {len(cases)} cases; give one case folder or a datalist")
        found, root = cases[0], Path(cases[0].root)
    report = validate_case(found, allow_missing=True)
    if not report.ok and found.label is not None:
        # Inference never reads the ground truth: a bad label file must not block it. The output
        # convention then comes from the layout alone (and the sidecar says which it is).
        without_label = dataclasses.replace(found, label=None)
        retry = validate_case(without_label, allow_missing=True)
        if retry.ok:
            bad = [str(p) for p in report.problems if str(found.label) in str(p)]
            warnings.warn(
                f"case {found.case_id}: ignoring its label file {found.label} "
                f"({'; '.join(bad) or 'unusable'}); inference does not need it",
                stacklevel=2,
            )
            found, report = without_label, retry
    if not report.ok:
        where = "" if isinstance(case, Mapping) else f" ({root.resolve()})"  # loose files are named in full
        raise ValueError(f"case {found.case_id}{where}: {report.reason()}")
    entry = datalist_entry(found, report)
    entry.pop("missing", None)
    absolute = lambda p: str((root / p).resolve())  # noqa: E731
    entry["image"] = (
        [absolute(p) for p in entry["image"]]
        if isinstance(entry["image"], list)
        else absolute(entry["image"])
    )
    for key in ("label", *CONTRASTS):
        if entry.get(key):
            entry[key] = absolute(entry[key])
    if case_id:
        entry["case_id"] = case_id
    return entry


def _stem_id(path: str) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        name = name.removesuffix(ext)
    for sep in ("_", "-"):
        if sep in name:
            return name.rsplit(sep, 1)[0]
    return name


# ----------------------------------------------------------------------------------------------
# Python API


@dataclass
class Prediction:
    """Outputs for one case, in the source scan's grid.

    Attributes:
        case_id: case identifier.
        seg: label map (uint8) in ``convention``.
        probabilities: region probabilities (3, H, W, D), channel order TC, WT, ET.
        synth: synthesised contrasts by canonical name (float32, nonzero z-score space).
        affine: the source scan's voxel-to-world matrix.
        convention: label convention of ``seg``.
    """

    case_id: str
    seg: np.ndarray
    probabilities: np.ndarray
    synth: dict[str, np.ndarray] = field(default_factory=dict)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    convention: str = "brats2023"


class MultiTaskModel:
    """A trained bundle ready to predict, built from its ``configs/inference.json``.

    Args:
        bundle_dir: the bundle folder.
        device: torch device; CUDA when available by default.
        overrides: config overrides (e.g. ``{"sw_batch_size": 2, "tta": True}``).
    """

    def __init__(
        self, bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, device: str | None = None, **overrides
    ):
        from monai.bundle import ConfigParser

        self.bundle_dir = Path(bundle_dir).resolve()
        cfg = self.bundle_dir / "configs" / "inference.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{cfg} not found: {self.bundle_dir} is not a medmtl bundle")
        parser = ConfigParser()
        parser.read_config(str(cfg))
        parser.read_meta(str(self.bundle_dir / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.bundle_dir)
        if device is not None:
            parser["device"] = f"$torch.device('{device}')"
        for k, v in overrides.items():
            parser[k] = v
        self.parser = parser
        self.network = parser.get_parsed_content("network")
        self.inferer = parser.get_parsed_content("inferer")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.device = parser.get_parsed_content("device")
        self.targets = list(parser.get_parsed_content("target_contrasts"))
        self.inputs = list(parser.get_parsed_content("input_contrasts"))
        self.use_mask = bool(parser.get_parsed_content("input_mask"))
        # The bundle's evaluator runs the network under CUDA autocast when ``amp``; so does predict.
        self.amp = bool(parser.get_parsed_content("amp"))
        self.min_component_ml = float(parser.get_parsed_content("min_component_ml"))
        parser.get_parsed_content("load_weights")
        self.network.eval()

    def predict(
        self,
        case: str | os.PathLike | Mapping[str, Any],
        affine: np.ndarray | None = None,
        convention: str | None = None,
    ) -> Prediction:
        """Segment and synthesise one case without writing files.

        Runs the bundle's preprocessing, inferer and postprocessing, and turns the result into arrays
        exactly as ``medmtl infer`` writes them.

        Args:
            case: a case folder, a mapping ``{contrast: path}``, or ``{contrast: array}`` (3D arrays
                on one grid; then ``affine`` gives that grid, identity when omitted).
            affine: voxel-to-world matrix for array input.
            convention: label convention of the returned map (``brats2021`` or ``brats2023``); by
                default the input's (from its layout or label map), BraTS 2023 for arrays.

        Returns:
            A :class:`Prediction` in the input's grid.

        Raises:
            FileNotFoundError: for a missing folder or file.
            ValueError: for an unusable case (unreadable or non-3D file, grids that differ, a missing
                input contrast the model cannot do without), naming the file.
        """
        if convention is not None and convention not in OUTPUT_CONVENTIONS:
            raise ValueError(f"convention must be one of {list(OUTPUT_CONVENTIONS)}, got {convention!r}")
        with tempfile.TemporaryDirectory(prefix="medmtl_") as tmp:
            if isinstance(case, Mapping) and any(isinstance(v, np.ndarray) for v in case.values()):
                case = _arrays_to_files(case, affine, Path(tmp))
            entry = case_entry(case)
            check_cases([entry], self.inputs, self.use_mask)
            conv = convention or entry.get("label_convention") or "brats2023"
            conv = conv if conv in OUTPUT_CONVENTIONS else "brats2023"
            entry["label_convention"] = conv
            entry.pop("label", None)
            data = self.preprocessing(entry)
            batch = {
                k: (v.unsqueeze(0).to(self.device) if isinstance(v, torch.Tensor) else v)
                for k, v in data.items()
            }
            kwargs = {"channel_mask": batch["channel_mask"]} if self.use_mask else {}
            with (
                torch.inference_mode(),
                torch.autocast("cuda", enabled=self.amp and self.device.type == "cuda"),
            ):
                pred = self.inferer(batch["image"], self.network, **kwargs)
            out = dict(data)
            out["pred"] = {k: v[0].cpu() for k, v in pred.items()}
            out = self.postprocessing(out)
            ref = nib.load(_source_reference(out))
            zooms = ref.header.get_zooms()[:3]
            prob, regions, synth = case_outputs(out, self.targets, 0.5, self.min_component_ml, zooms)
            return Prediction(
                case_id=str(entry["case_id"]),
                seg=regions_to_label(regions, conv)[0],
                probabilities=prob,
                synth=synth,
                affine=np.asarray(ref.affine),
                convention=conv,
            )


def _arrays_to_files(case: Mapping[str, Any], affine: np.ndarray | None, folder: Path) -> dict[str, str]:
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    files: dict[str, str] = {}
    for key, arr in case.items():
        a = np.asarray(arr)
        if a.ndim != 3:
            raise ValueError(f"{key}: expected a 3D array, got shape {a.shape}")
        path = folder / f"case_{canonical(key)}.nii"
        nib.save(nib.Nifti1Image(a.astype(np.float32), aff), str(path))
        files[key] = str(path)
    return files


def load_model(
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, device: str | None = None, **overrides
) -> MultiTaskModel:
    """Load a trained medmtl bundle for in-process prediction.

    Args:
        bundle_dir: the bundle folder (the shipped ``bundles/brats_mtl`` by default).
        device: torch device; CUDA when available by default.
        overrides: inference config overrides.

    Returns:
        A :class:`MultiTaskModel`; call ``.predict(case)``.
    """
    return MultiTaskModel(bundle_dir, device=device, **overrides)


# ----------------------------------------------------------------------------------------------
# CLI


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl infer``."""
    parser.add_argument("cases", nargs="*", help="case folders (any supported layout)")
    parser.add_argument("--datalist", help="a medmtl datalist; all its cases (training + testing) are run")
    parser.add_argument("--dataset-dir", help="root the datalist's paths are relative to")
    parser.add_argument(
        "--section",
        default="all",
        choices=list(DATALIST_SECTIONS),
        help="datalist section to run (default: all)",
    )
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle folder (default: shipped)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    parser.add_argument("--probabilities", action="store_true", help="also write region probabilities")
    parser.add_argument("--regions", action="store_true", help="write TC/WT/ET region masks, not a label map")
    parser.add_argument("--convention", choices=list(OUTPUT_CONVENTIONS), help="force the output convention")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--sw-device", help="device for the sliding windows' stitching (e.g. cpu for huge volumes)"
    )
    parser.add_argument("--overlap", type=float, help="sliding-window overlap")
    parser.add_argument(
        "--min-component-ml",
        type=float,
        help="drop whole-tumour components smaller than this (ml; 0 keeps all)",
    )
    parser.add_argument(
        "--et-min-ml",
        type=float,
        help="a predicted enhancing tumour smaller than this (ml) becomes NETC (BraTS ET rule; 0: off)",
    )
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass")
    parser.add_argument("--exported", help="run a TorchScript/ONNX file from `medmtl export`, not model.pt")
    for c in CONTRASTS:
        parser.add_argument(f"--{c}", help=f"explicit {c} file (instead of a case folder)")


def check_device(name: str, option: str = "--device") -> str:
    """Check a torch device name a user gave, before any work is done.

    Args:
        name: e.g. ``cpu``, ``cuda``, ``cuda:1``.
        option: the option's name, for the message.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: for a name torch does not know, or a CUDA device this machine does not have.
    """
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {name!r}: expected a torch device such as cpu, cuda or cuda:0") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {name!r}: this machine has no CUDA device (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type != "cpu":
        raise ValueError(f"{option} {name!r}: expected cpu or cuda[:N]")
    return name


def check_weights(path: str | os.PathLike) -> Path:
    """Check that a weights file is a readable checkpoint (data only, never code).

    Args:
        path: the ``model.pt`` file.

    Returns:
        The path.

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it is truncated, corrupt or not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means the same to the user
        raise ValueError(
            f"weights {p} cannot be read (truncated or not a PyTorch checkpoint): {err}"
        ) from None
    if not isinstance(state, Mapping):
        raise ValueError(f"weights {p}: expected a state dict, found {type(state).__name__}")
    return p


def check_options(args: argparse.Namespace) -> None:
    """Check the numeric and device options of ``medmtl infer`` before any work is done.

    Args:
        args: the parsed arguments.

    Raises:
        ValueError: naming the option, the value and what was expected.
    """
    for opt in ("device", "sw_device"):
        if getattr(args, opt, None):
            check_device(getattr(args, opt), "--" + opt.replace("_", "-"))
    overlap = getattr(args, "overlap", None)
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap {overlap}: expected a fraction in [0, 1)")
    sw = getattr(args, "sw_batch_size", None)
    if sw is not None and sw < 1:
        raise ValueError(f"--sw-batch-size {sw}: expected a positive integer")
    for opt in ("min_component_ml", "et_min_ml"):
        ml = getattr(args, opt, None)
        if ml is not None and ml < 0:
            raise ValueError(f"--{opt.replace('_', '-')} {ml}: expected a volume >= 0 (ml)")


def bundle_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from CLI arguments (shared by ``medmtl infer`` and the demo)."""
    ov: dict[str, Any] = {"output_dir": str(Path(args.out).resolve())}
    if getattr(args, "exported", None):
        from medmtl.export import inference_overrides

        if not Path(args.exported).is_file():
            raise FileNotFoundError(f"exported model {args.exported} does not exist")
        ov.update(inference_overrides(args.exported))
    if getattr(args, "overwrite", False):
        ov["overwrite"] = True
    if getattr(args, "tta", False):
        ov["tta"] = True
    if getattr(args, "probabilities", False):
        ov["write_probabilities"] = True
    if getattr(args, "regions", False):
        ov["write_regions"] = True
    if getattr(args, "convention", None):
        ov["output_convention"] = args.convention
    if getattr(args, "device", None):
        ov["device"] = f"$torch.device('{args.device}')"
    if getattr(args, "sw_device", None):
        ov["sw_device"] = f"$torch.device('{args.sw_device}')"
    if getattr(args, "overlap", None) is not None:
        ov["overlap"] = args.overlap
    if getattr(args, "min_component_ml", None) is not None:
        ov["min_component_ml"] = args.min_component_ml
    if getattr(args, "et_min_ml", None) is not None:
        ov["et_min_ml"] = args.et_min_ml
    if getattr(args, "sw_batch_size", None):
        ov["sw_batch_size"] = args.sw_batch_size
    return ov


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl infer``: check cases and output folder up front, then run the bundle's inference config.

    Everything a user can get wrong (a missing, unreadable, 2D/4D or corrupt file, contrasts on
    different grids, a missing input contrast, an existing output without ``--overwrite``, an
    unwritable output folder) is reported before any output is written.
    """
    from monai.bundle import run

    explicit = {c: getattr(args, c) for c in CONTRASTS if getattr(args, c, None)}
    if not (args.cases or args.datalist or explicit):
        raise ValueError("give case folders, --datalist, or explicit --t1n/--t1c/--t2w/--t2f files")
    check_options(args)
    bundle = Path(args.bundle).resolve()
    config = bundle / "configs" / "inference.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: {bundle} is not a medmtl bundle")
    model = read_model_config(bundle / "models" / "model_config.json")
    if not getattr(args, "exported", None):
        check_weights(bundle / "models" / "model.pt")
    targets = [canonical(c) for c in model["target_contrasts"]]
    out = check_output_dir(args.out)
    ov = bundle_overrides(args)
    if args.datalist:
        entries = datalist_cases(args.datalist, args.dataset_dir, args.section)
        ov["datalist"] = str(Path(args.datalist).resolve())
        # The root the datalist records (else its own folder) unless given: never the bundle's default.
        from medmtl.datalist import datalist_root

        ov["dataset_dir"] = str(datalist_root(args.datalist, args.dataset_dir))
        ov["section"] = args.section
        # Finished cases are skipped (a cohort run resumes); only the rest is checked.
        entries = pending_cases(shard(entries), out, targets, args.overwrite)
    else:
        entries = [case_entry(c) for c in args.cases]
        if explicit:
            entries.append(case_entry(explicit))
        ids = [e["case_id"] for e in entries]
        if len(set(ids)) != len(ids):
            raise ValueError(f"two inputs share a case id: {ids}")
        ov["cases"] = entries
    check_cases(entries, model["input_contrasts"], bool(model["input_mask"]))
    if not args.overwrite:
        existing = existing_outputs(entries, out, targets)
        if existing:
            raise FileExistsError(
                f"{len(existing)} output file(s) exist, e.g. {existing[0]}; use --overwrite to replace them"
            )
    try:
        run(
            config_file=str(config),
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            bundle_root=str(bundle),
            **ov,
        )
    except RuntimeError as err:
        cause = user_error(err)
        if cause is None:
            raise
        raise cause from None
    return 0

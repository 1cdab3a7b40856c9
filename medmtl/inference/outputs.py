"""What inference writes: one case's files in the source scan's grid, whole or not at all."""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapTransform

from medmtl.contrasts import CONTRASTS, canonical
from medmtl.inference.input_checks import input_findings
from medmtl.inference.postprocessing import region_thresholds, remove_small_components, small_et_to_netc
from medmtl.intensity import check_landmarks, standardise_synth
from medmtl.io import (
    SIDECAR_OUTPUTS,
    medmtl_outputs,
    output_description,
    output_paths,
    probability_path,
    strip_nifti_suffix,
    write_nifti_group,
    written_by_medmtl,
)
from medmtl.labels import REGIONS, regions_to_label, writable_convention
from medmtl.transforms import SOURCE_MASK_KEY

INTENSITY_SPACE = "zscore_nonzero"
INTENSITY_NOTE = "synthesised images: z-scores over the brain's non-zero voxels; 0 outside"
INTENSITY_NOTE_STANDARDISED = (
    "synthesised images: z-score units over the brain's non-zero voxels, histogram-standardised to the "
    "training cases' percentile landmarks of each contrast (Nyul et al. 2000); 0 outside"
)
logger = logging.getLogger("medmtl.inference")


def written_contrasts(
    targets: Sequence[str], acquired: Sequence[str] | None, restorations: bool = False
) -> list[str]:
    """The synthesised contrasts written for a case: those it lacks, or every target with ``restorations``.

    Args:
        targets: the model's synthesised contrasts.
        acquired: the contrasts the case has (None: unknown, every target is written).
        restorations: also write the synthesised versions of the acquired contrasts.

    Returns:
        Canonical names, in the order of ``targets``.
    """
    have = set() if restorations or acquired is None else {canonical(c) for c in acquired}
    return [canonical(c) for c in targets if canonical(c) not in have]


def entry_output_paths(
    entry: Mapping[str, Any],
    out_dir: str | os.PathLike,
    targets: Sequence[str],
    restorations: bool = False,
    inputs: Sequence[str] | None = None,
) -> dict[str, Path]:
    """The files inference writes for one case entry (see :func:`output_paths`, :func:`written_contrasts`).

    Args:
        entry: the case's entry (``case_id``, ``contrasts``).
        out_dir: output folder.
        targets: the model's synthesised contrasts.
        restorations: the run writes the synthesised acquired contrasts too.
        inputs: the model's input contrasts (a contrast the model does not read counts as lacking).
    """
    # an entry that names no contrasts holds all four, in canonical order (as the transforms read it)
    acquired = list(entry.get("contrasts") or CONTRASTS)
    if inputs is not None:
        model_inputs = {canonical(c) for c in inputs}
        acquired = [c for c in acquired if canonical(c) in model_inputs]
    written = written_contrasts(targets, acquired, restorations)
    return output_paths(out_dir, str(entry["case_id"]), written)


def is_done(
    out_dir: str | os.PathLike,
    case_id: str,
    targets: Sequence[str],
    entry: Mapping[str, Any] | None = None,
    restorations: bool = False,
    inputs: Sequence[str] | None = None,
) -> bool:
    """Whether every output of a case exists (a killed cohort run resumes after these).

    Args:
        out_dir: output folder.
        case_id: case identifier.
        targets: the model's synthesised contrasts.
        entry: the case's entry; its ``contrasts`` decide which synthesised files are expected.
        restorations: whether the run writes the synthesised acquired contrasts too.
        inputs: the model's input contrasts.
    """
    paths = (
        entry_output_paths({**entry, "case_id": case_id}, out_dir, targets, restorations, inputs)
        if entry is not None
        else output_paths(out_dir, case_id, targets)
    )
    return all(p.exists() for p in paths.values())


def pending_cases(
    entries: Sequence[dict],
    out_dir: str | os.PathLike,
    targets: Sequence[str],
    overwrite: bool = False,
    restorations: bool = False,
    inputs: Sequence[str] | None = None,
) -> list[dict]:
    """Entries whose outputs are not all there yet (all of them when ``overwrite``).

    Case folders and datalists alike: a rerun of the same command resumes after the finished cases.

    Args:
        entries: entries with ``case_id`` (and ``contrasts``).
        out_dir: output folder.
        targets: the model's synthesised contrasts.
        overwrite: redo finished cases.
        restorations: the run writes the synthesised acquired contrasts too.
        inputs: the model's input contrasts.

    Returns:
        The entries still to run.
    """
    if overwrite:
        return list(entries)
    return [e for e in entries if not is_done(out_dir, str(e["case_id"]), targets, e, restorations, inputs)]


def existing_outputs(
    entries: Sequence[dict],
    out_dir: str | os.PathLike,
    targets: Sequence[str],
    restorations: bool = False,
    inputs: Sequence[str] | None = None,
) -> list[str]:
    """Output files of these cases that already exist in ``out_dir``.

    Args:
        entries: entries with ``case_id`` (and ``contrasts``).
        out_dir: output folder.
        targets: the model's synthesised contrasts.
        restorations: the run writes the synthesised acquired contrasts too.
        inputs: the model's input contrasts.

    Returns:
        The existing paths.
    """
    return [
        str(p)
        for e in entries
        for p in entry_output_paths(e, out_dir, targets, restorations, inputs).values()
        if p.exists()
    ]


def check_replaceable(existing: Sequence[str], out_dir: str | os.PathLike) -> None:
    """Refuse to replace an existing file that medmtl did not write.

    A file is medmtl's when a medmtl sidecar in ``out_dir`` lists it (:func:`medmtl.io.medmtl_outputs`)
    or its NIfTI header marks it as a medmtl output (:func:`medmtl.io.written_by_medmtl`): the outputs
    of an unfinished case (one interrupted between its files and its sidecar) are redone, finished
    cases are skipped unless ``--overwrite`` (see :func:`pending_cases`). Anything else (a case's own
    label map, another tool's output) is never replaced.

    Args:
        existing: output paths of the cases about to be written that exist already.
        out_dir: the output folder.

    Raises:
        FileExistsError: naming the first file in the way and what to do.
    """
    if not existing:
        return
    own = medmtl_outputs(out_dir)
    foreign = [p for p in existing if Path(p).name not in own and not written_by_medmtl(p)]
    if foreign:
        raise FileExistsError(
            f"{foreign[0]} exists and medmtl did not write it (no medmtl sidecar lists it); medmtl never "
            "replaces such files: choose another --out"
        )


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


#: key of the contrasts the ``synth`` channels hold once :class:`SelectSynthd` kept the written ones
SYNTH_CONTRASTS_KEY = "synth_contrasts"


class SelectSynthd(MapTransform):
    """Keep the synthesised channels a case will write (:func:`written_contrasts`), before inversion.

    Bringing a channel back to the scan's grid costs a full-resolution resampling; a case with all
    four contrasts writes none by default, so its restorations are dropped here rather than after.
    The kept names go to ``d["synth_contrasts"]``; ``synth`` is removed when none is kept.

    Args:
        targets: the model's synthesised contrasts, in the order of the ``synth`` channels.
        inputs: the model's input contrasts, in the order of ``channel_mask``.
        restorations: keep the synthesised versions of the acquired contrasts as well.
    """

    def __init__(self, targets: Sequence[str], inputs: Sequence[str], restorations: bool = False) -> None:
        super().__init__(keys=["synth"], allow_missing_keys=True)
        self.targets = [canonical(t) for t in targets]
        self.inputs = [canonical(c) for c in inputs]
        self.restorations = bool(restorations)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get("synth") is None:
            return d
        mask = _as_list(d.get("channel_mask"), len(self.inputs))
        acquired = [c for c, a in zip(self.inputs, mask) if a]
        kept = written_contrasts(self.targets, acquired, self.restorations)
        d[SYNTH_CONTRASTS_KEY] = kept
        if not kept:
            d.pop("synth")
        elif len(kept) < len(self.targets):
            d["synth"] = d["synth"][[self.targets.index(c) for c in kept]]
        return d


def case_outputs(
    d: Mapping[Hashable, Any],
    targets: Sequence[str],
    threshold: float | Sequence[float] | Mapping[str, float] | None = 0.5,
    min_component_ml: float = 0.0,
    spacing: Sequence[float] | None = None,
    et_min_ml: float = 0.0,
    synth_landmarks: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Turn one case's inverted predictions into output arrays in the source grid.

    Regions and synthesised images are set to zero outside the brain (the voxels where any contrast
    of the source scan is non-zero), where BraTS scans are skull-stripped to exact zeros.

    Args:
        d: a case after postprocessing: ``seg`` (3, H, W, D) probabilities, optional ``synth``
            (len(targets), H, W, D), and ``source_brain_mask`` or ``brain_mask`` (1, H, W, D).
        targets: names of the synthesised contrasts, in the order of the ``synth`` channels (unless
            :class:`SelectSynthd` kept some of them: ``d["synth_contrasts"]`` names those).
        threshold: probability threshold of the regions: one for all, or one per region (TC, WT,
            ET; a sequence or a mapping, see :func:`region_thresholds`).
        min_component_ml: remove whole-tumour components smaller than this (see
            :func:`remove_small_components`); 0 keeps all.
        spacing: voxel size in mm of the source grid (for ``min_component_ml``; 1 mm when None).
        et_min_ml: a predicted ET smaller than this becomes NETC (see :func:`small_et_to_netc`).
        synth_landmarks: the model's intensity landmarks (``model_config.json``); each synthesised
            contrast that has some is standardised to them in the brain (see
            :func:`medmtl.intensity.standardise_synth`). None leaves the network's z-scores as they are.

    Returns:
        ``(probabilities float32 (3, H, W, D), regions uint8 (3, H, W, D), {contrast: float32 image})``.
    """
    prob = np.asarray(torch.as_tensor(d["seg"]).detach().cpu(), dtype=np.float32)
    regions = (prob > region_thresholds(threshold)).astype(np.uint8)
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
        for i, c in enumerate(d.get(SYNTH_CONTRASTS_KEY, targets)):
            synth[c] = np.where(brain, images[i], np.float32(0)) if brain is not None else images[i]
        synth = standardise_synth(synth, brain, synth_landmarks)
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
        overwrite: the run redoes finished cases (which cases run is decided by :func:`pending_cases`;
            the writer replaces only files medmtl wrote, see :func:`check_replaceable`).
        model_info: extra fields for the sidecar (model name, version, ...).
        threshold: probability threshold of the regions: one for all, or one per region (TC, WT, ET;
            the model config's ``thresholds``, chosen on validation cases).
        min_component_ml: remove whole-tumour components smaller than this many ml (0: keep all).
        et_min_ml: a predicted ET smaller than this many ml becomes NETC (0: keep every ET).
        synth_landmarks: intensity landmarks the synthesised contrasts are standardised to (the
            model config's ``synth_landmarks``); None writes the network's z-scores unchanged.
        restorations: also write the synthesised versions of the contrasts a case has (by default
            only the contrasts it lacks are written).
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
        threshold: float | Sequence[float] | Mapping[str, float] | None = 0.5,
        min_component_ml: float = 0.0,
        et_min_ml: float = 0.0,
        synth_landmarks: Mapping[str, Any] | None = None,
        restorations: bool = False,
    ) -> None:
        super().__init__(keys=["seg"], allow_missing_keys=True)
        self.restorations = bool(restorations)
        check_landmarks(synth_landmarks)
        self.thresholds = region_thresholds(threshold).ravel().tolist()
        self.synth_landmarks = synth_landmarks
        self.min_component_ml = float(min_component_ml)
        self.et_min_ml = float(et_min_ml)
        self.out_dir = Path(out_dir)
        self.targets = [canonical(t) for t in targets]
        self.inputs = [canonical(c) for c in inputs]
        self.default_convention = default_convention
        self.output_convention = output_convention
        self.write_probabilities, self.write_regions = write_probabilities, write_regions
        self.overwrite = overwrite
        self.model_info = dict(model_info or {})

    def _case_id(self, d: Mapping[Hashable, Any], source: str) -> str:
        if d.get("case_id"):
            return str(d["case_id"])
        name = strip_nifti_suffix(Path(source).name) or Path(source).name
        return name.rsplit("_", 1)[0] if "_" in name else name.rsplit("-", 1)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = _source_reference(d)
        ref = nib.load(source)
        case_id = self._case_id(d, source)
        mask = _as_list(d.get("channel_mask"), len(self.inputs))
        acquired = [c for c, a in zip(self.inputs, mask) if a]
        if SYNTH_CONTRASTS_KEY in d:
            written = list(d[SYNTH_CONTRASTS_KEY]) if "synth" in d else []
        else:
            written = written_contrasts(self.targets, acquired, self.restorations) if "synth" in d else []
        paths = output_paths(self.out_dir, case_id, written)
        if self.write_probabilities:
            paths["prob"] = probability_path(self.out_dir, case_id)
        check_replaceable([str(p) for p in paths.values() if p.exists()], self.out_dir)
        conv = writable_convention(self.output_convention or d.get("convention") or self.default_convention)
        shape = tuple(ref.shape[:3])
        if tuple(d["seg"].shape[1:]) != shape:
            raise ValueError(
                f"case {case_id}: prediction grid {tuple(d['seg'].shape[1:])} != source {source} grid {shape}"
            )
        zooms = ref.header.get_zooms()[:3]
        prob, regions, synth = case_outputs(
            d,
            self.targets,
            self.thresholds,
            self.min_component_ml,
            zooms,
            self.et_min_ml,
            self.synth_landmarks,
        )

        arrays: dict[str, tuple[np.ndarray, Any]] = {}
        if self.write_regions:
            arrays["seg"] = (np.moveaxis(regions, 0, -1), np.uint8)
        else:
            arrays["seg"] = (regions_to_label(regions, conv)[0], np.uint8)
        for c in written:
            arrays[c] = (synth[c], np.float32)
        if self.write_probabilities:
            arrays["prob"] = (np.moveaxis(prob, 0, -1), np.float32)

        if d.get("unusable"):
            logger.warning(
                "case %s: contrast(s) %s are constant images (empty or blank): treated as missing",
                case_id,
                d["unusable"],
            )
        findings, lines = input_findings(case_id, _output_mask(d), acquired)
        for line in lines:
            logger.warning(line)
        sidecar = {
            "case_id": case_id,
            "source": source,
            "label_convention": conv,
            "label_convention_source": (
                "requested" if self.output_convention else d.get("convention_source") or "input"
            ),
            "seg_format": "regions TC,WT,ET (4D)" if self.write_regions else "BraTS label map",
            "regions": list(REGIONS),
            "thresholds": dict(zip(REGIONS, (round(t, 4) for t in self.thresholds))),
            "contrasts_used": acquired,
            "contrasts_missing": [c for c in self.inputs if c not in acquired],
            "contrasts_unusable": [c for c in str(d.get("unusable") or "").split(",") if c],
            "synthesised": written,
            "restorations": [c for c in written if c in acquired],
            **findings,
            SIDECAR_OUTPUTS: {k: v.name for k, v in paths.items() if k != "sidecar"},
            "intensity_space": INTENSITY_SPACE,
            "intensity_note": INTENSITY_NOTE_STANDARDISED if self.synth_landmarks else INTENSITY_NOTE,
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
            detail = "" if name in ("seg", "prob") else f"synth {INTENSITY_SPACE}"
            descrip = output_description(name, detail)
            files[paths[name]] = (arr, dtype, descrip)
        write_nifti_group(files, ref, paths["sidecar"], sidecar)


def _as_list(x: Any, n: int) -> list[float]:
    if x is None:
        return [1.0] * n
    return [float(v) for v in torch.as_tensor(x).flatten()]

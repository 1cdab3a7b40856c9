"""Score a folder of predictions against a datalist: ``medmtl evaluate``.

For every case of the datalist section that has predictions in ``PRED_DIR``, the segmentation
(``<case>_seg.nii.gz``) is scored against the label map per BraTS region, and every synthesised
contrast (``<case>_<contrast>_synth.nii.gz``) against the acquired one, beside a naive baseline
(the nearest acquired contrast copied). Segmentations get voxel-wise scores (:mod:`medmtl.metrics`)
and, where the official ``brats-evaluation`` package is installed, the BraTS 2023+ lesion-wise ones
(:mod:`medmtl.challenge_metrics`); the report says which definition each column uses and whether the
lesion-wise scores could be computed. Results go to ``metrics.csv`` (one row per case),
``summary.json`` (mean, std, median, n per metric), ``report.md`` and ``figures/``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

import medmtl.report as report
from medmtl.challenge_metrics import (
    BRASYN_METRICS,
    HD95_PENALTY,
    LESIONWISE_METRICS,
    brasyn_metrics,
    brats_evaluation_status,
    lesionwise_metrics,
)
from medmtl.contrasts import CONTRASTS, canonical, canonical_list
from medmtl.datalist import load_datalist
from medmtl.io import (
    AFFINE_ATOL_MM,
    SEG_OUTPUT,
    SYNTH_OUTPUT,
    atomic_path,
    grid_mismatch,
    output_paths,
    write_json,
)
from medmtl.labels import REGIONS, check_convention, resolve_convention
from medmtl.metrics import (
    BRATS_MAX_HD95,
    NEAREST,
    SEGMENTATION_METRICS,
    SYNTHESIS_METRICS,
    SYNTHESIS_REGIONS,
    baseline_source,
    region_masks,
    segmentation_metrics,
    synthesis_metrics,
)

#: Largest affine difference (mm) tolerated between a prediction's grid and its reference's.
AFFINE_TOLERANCE: float = AFFINE_ATOL_MM

#: What each segmentation column measures, written to summary.json and report.md: voxel-wise scores
#: (BraTS 2018-2021 tables) and lesion-wise scores (BraTS 2023+ leaderboards) are not comparable.
METRIC_DEFINITIONS: dict[str, str] = {
    "Dice": "voxel-wise Dice of the whole region (BraTS 2018-2021 definition; 1 when both are empty)",
    "HD95": "voxel-wise 95th-percentile Hausdorff distance of the region surfaces, mm (BraTS 2018-2021 "
    "definition; 373.13 when exactly one is empty)",
    "VolDiff_ml": "predicted minus reference region volume, ml",
    "VolDiff_rel": "volume difference over the reference volume",
    "Sens": "voxel-wise sensitivity",
    "Spec": "voxel-wise specificity",
    "LesionDice": "lesion-wise Dice, BraTS 2023+ definition, computed by the official brats-evaluation "
    "package (panoptica; its lesionwise_dsc_mean): mean Dice of matched lesions, 0 when none is matched",
    "LesionHD95": "lesion-wise HD95 (mm), BraTS 2023+ definition, computed by the official brats-evaluation "
    f"package (its lesionwise_hd95_mean); infinite per case when no lesion is matched, counted as "
    f"{HD95_PENALTY:g} mm in the summary statistics",
    "LesionTP": "matched lesions (official brats-evaluation)",
    "LesionFP": "predicted lesions matching no reference lesion (official brats-evaluation)",
    "LesionFN": "reference lesions matching no predicted lesion (official brats-evaluation)",
    "BraSynSSIM_tumour": "BraSyn challenge SSIM of the tumour: each image clipped at the 0.5/99.5 "
    "percentiles of its whole volume (lower one floored at 0), scaled to [0, 1], cut to the tumour "
    "(label > 0); torchmetrics' SSIM map (window 11, sigma 1.5) averaged over the tumour voxels",
    "BraSynSSIM_nontumour": "BraSyn challenge SSIM of the non-tumour part: as BraSynSSIM_tumour, over every "
    "voxel outside the tumour, background included (higher than a brain-only SSIM)",
    "BraSynPSNR": "PSNR (dB, peak 1) of the whole volume after the BraSyn normalisation",
}

# ---------------------------------------------------------------------------------------------------------
# Reading volumes
# ---------------------------------------------------------------------------------------------------------


def _load(path: str | os.PathLike, what: str) -> nib.Nifti1Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    try:
        return nib.load(str(p))
    except Exception as err:  # nibabel raises several unrelated types for unreadable files
        raise ValueError(f"{what} {p} is not a readable NIfTI file: {err}") from err


def _check_grid(img: nib.Nifti1Image, path: Path, ref: nib.Nifti1Image, ref_path: Path) -> None:
    mismatch = grid_mismatch(img.shape, img.affine, ref.shape, ref.affine, AFFINE_TOLERANCE)
    if mismatch:
        raise ValueError(
            f"{path}: grid differs from the reference {ref_path}: {mismatch}\nfound:\n"
            f"{np.round(img.affine, 4)}\nexpected:\n{np.round(ref.affine, 4)}"
        )


def _volume(img: nib.Nifti1Image, path: Path, channel: int | None = None) -> np.ndarray:
    if channel is None:
        if len(img.shape) == 4 and img.shape[3] == 1:
            channel = 0
        elif len(img.shape) != 3:
            raise ValueError(f"{path}: expected a 3D volume, found shape {img.shape}")
    if channel is not None:
        if len(img.shape) != 4 or channel >= img.shape[3]:
            raise ValueError(f"{path}: expected a 4D volume with channel {channel}, found shape {img.shape}")
        return np.asarray(img.dataobj[..., channel], dtype=np.float32)
    return np.asarray(img.dataobj, dtype=np.float32)


class _Case:
    """Reference files of one datalist entry, loaded on demand."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.case_id = str(entry["case_id"])
        self.sources: dict[str, tuple[Path, int | None]] = {}
        image = entry.get("image")
        order = canonical_list(entry["contrasts"]) if entry.get("contrasts") else list(CONTRASTS)
        if isinstance(image, str):
            self.sources = {c: (Path(image), k) for k, c in enumerate(order)}
        elif isinstance(image, list):
            self.sources = {c: (Path(p), None) for c, p in zip(order, image) if p}
        for c in CONTRASTS:
            if entry.get(c):
                self.sources[c] = (Path(entry[c]), None)
        self.label_path = Path(entry["label"]) if entry.get("label") else None
        conv = entry.get("label_convention")
        self.convention = check_convention(conv) if conv else None
        self._images: dict[str, tuple[nib.Nifti1Image, np.ndarray]] = {}

    def image(self, contrast: str) -> tuple[nib.Nifti1Image, np.ndarray, Path]:
        """(NIfTI header, data, path) of an acquired contrast."""
        if contrast not in self.sources:
            raise ValueError(f"case {self.case_id}: the datalist gives no {contrast} image to compare with")
        path, channel = self.sources[contrast]
        if contrast not in self._images:
            img = _load(path, f"{contrast} image of case {self.case_id}")
            self._images[contrast] = (img, _volume(img, path, channel))
        img, data = self._images[contrast]
        return img, data, path


# ---------------------------------------------------------------------------------------------------------
# Per-case scoring
# ---------------------------------------------------------------------------------------------------------


def _sidecar(pred_dir: Path, case_id: str) -> dict[str, Any]:
    path = pred_dir / f"{case_id}.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"prediction sidecar {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise ValueError(f"prediction sidecar {path}: expected a JSON object, found {type(doc).__name__}")
    return doc


def _synth_files(pred_dir: Path, case_id: str, sidecar: Mapping[str, Any]) -> dict[str, Path]:
    if "synthesised" in sidecar:
        names = canonical_list(sidecar["synthesised"] or [])
    else:
        prefix, suffix = f"{case_id}_", f"_{SYNTH_OUTPUT}.nii.gz"
        names = []
        for p in sorted(pred_dir.glob(f"{case_id}_*{suffix}")):
            middle = p.name[len(prefix) : -len(suffix)]
            if "_" not in middle:  # another case's id may extend this one's ("case_1" vs "case_1_b")
                try:
                    names.append(canonical(middle))
                except ValueError as err:
                    raise ValueError(f"{p}: not a <case>_<contrast>_synth.nii.gz name: {err}") from err
    files = {c: p for c, p in output_paths(pred_dir, case_id, names).items() if c in names}
    for c, p in files.items():
        if not p.is_file():
            raise FileNotFoundError(
                f"{pred_dir / f'{case_id}.json'} lists {c} as synthesised but {p} is missing"
            )
    return files


def _predicted_case_ids(pred_dir: Path) -> set[str]:
    seg, synth = f"_{SEG_OUTPUT}.nii.gz", f"_{SYNTH_OUTPUT}.nii.gz"
    ids = {p.name[: -len(seg)] for p in pred_dir.glob(f"*{seg}")}
    ids |= {p.name[: -len(synth)].rsplit("_", 1)[0] for p in pred_dir.glob(f"*_*{synth}")}
    return ids


def _prediction_convention(pred: np.ndarray, path: Path, declared: str | None, default: str) -> str:
    try:
        return resolve_convention(np.unique(pred).tolist(), declared, default)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def _reference_label(case: _Case) -> tuple[nib.Nifti1Image, np.ndarray, str]:
    assert case.label_path is not None
    img = _load(case.label_path, f"label map of case {case.case_id}")
    lab = np.rint(_volume(img, case.label_path)).astype(np.int16)
    try:
        conv = resolve_convention(np.unique(lab).tolist(), case.convention)
    except ValueError as err:
        raise ValueError(f"{case.label_path}: {err}") from err
    return img, lab, conv


def _evaluate_case(
    case: _Case, pred_dir: Path, figure_path: Path | None, lesionwise: bool = False
) -> tuple[dict[str, Any], list[str]] | None:
    sidecar = _sidecar(pred_dir, case.case_id)
    seg_path = output_paths(pred_dir, case.case_id)["seg"]
    synth_paths = _synth_files(pred_dir, case.case_id, sidecar)
    has_seg = seg_path.is_file()
    if not has_seg and not synth_paths:
        return None
    notes: list[str] = []
    row: dict[str, Any] = {"case_id": case.case_id}
    label = tumour = pred_lab = None
    true_conv = pred_conv = None
    if case.label_path is not None:
        label_img, label, true_conv = _reference_label(case)
        tumour = region_masks(label, true_conv)[REGIONS.index("WT")]
    if has_seg:
        seg_img = _load(seg_path, "predicted segmentation")
        pred_lab = np.rint(_volume(seg_img, seg_path)).astype(np.int16)
        declared = sidecar.get("label_convention")
        pred_conv = _prediction_convention(pred_lab, seg_path, declared, true_conv or "brats2023")
        if label is None:
            notes.append("no label map: segmentation not scored")
        else:
            _check_grid(seg_img, seg_path, label_img, case.label_path)
            spacing = label_img.header.get_zooms()[:3]
            row.update(segmentation_metrics(pred_lab, label, pred_conv, true_conv, spacing))
            if lesionwise:
                names = {"pred_name": str(seg_path), "true_name": str(case.label_path)}
                row.update(lesionwise_metrics(pred_lab, label, pred_conv, true_conv, spacing, **names))
    used = sidecar.get("contrasts_used")
    synth_pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ref_affine = None
    for contrast, path in synth_paths.items():
        ref_img, ref, ref_path = case.image(contrast)
        syn_img = _load(path, f"synthesised {contrast}")
        _check_grid(syn_img, path, ref_img, ref_path)
        if tumour is not None and tumour.shape != ref.shape:
            raise ValueError(f"{case.label_path}: shape {tumour.shape} differs from {ref_path} {ref.shape}")
        syn = _volume(syn_img, path)
        spacing = ref_img.header.get_zooms()[:3]
        for key, value in synthesis_metrics(syn, ref, None, tumour, spacing).items():
            row[f"{contrast}_{key}"] = value
        if tumour is not None:
            for key, value in brasyn_metrics(syn, ref, tumour).items():
                row[f"{contrast}_{key}"] = value
        acquired = [canonical(c) for c in used] if used is not None else list(case.sources)
        # 1: the model had this contrast as an input (a restoration); 0: it was missing (synthesised).
        row[f"{contrast}_input"] = 1.0 if contrast in acquired else 0.0
        others = [c for c in acquired if c in case.sources and c != contrast]
        # A case with one contrast, reconstructed from itself, has no other image to copy: no baseline.
        if others:
            source = baseline_source(contrast, others)
            _, base, base_path = case.image(source)
            if base.shape != ref.shape:
                raise ValueError(f"{base_path}: shape {base.shape} differs from {ref_path} {ref.shape}")
            for key, value in synthesis_metrics(base, ref, None, tumour, spacing).items():
                if not key.startswith("Vol_ml"):
                    row[f"{contrast}_baseline_{key}"] = value
            if tumour is not None:
                for key, value in brasyn_metrics(base, ref, tumour).items():
                    row[f"{contrast}_baseline_{key}"] = value
            row[f"{contrast}_baseline_source"] = source
        synth_pairs[contrast] = (ref, syn)
        ref_affine = ref_img.affine
    if figure_path is not None:
        inputs = [canonical(c) for c in used] if used else [c for c in case.sources if c not in synth_paths]
        affine = ref_affine if ref_affine is not None else (label_img.affine if label is not None else None)
        images = {c: case.image(c) for c in inputs if c in case.sources}
        if affine is None and images:
            affine = next(iter(images.values()))[0].affine
        if affine is not None:
            report.case_figure(
                figure_path,
                affine=affine,
                inputs={c: v[1] for c, v in images.items()},
                true_label=label,
                pred_label=pred_lab,
                true_convention=true_conv,
                pred_convention=pred_conv,
                synth=synth_pairs,
                title=case.case_id,
                scores=report.scores_line(row),
            )
    return row, notes


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = {k for r in rows for k in r}
    seg = [f"{m}_{r}" for r in REGIONS for m in (*SEGMENTATION_METRICS, *LESIONWISE_METRICS)]
    synth: list[str] = []
    for c in CONTRASTS:
        for who in ("", "baseline_"):
            synth += [f"{c}_{who}{m}_{reg}" for reg in SYNTHESIS_REGIONS for m in SYNTHESIS_METRICS]
            synth += [f"{c}_{who}{m}" for m in BRASYN_METRICS]
        synth += [f"{c}_Vol_ml_{reg}" for reg in SYNTHESIS_REGIONS] + [f"{c}_baseline_source"]
    ordered = ["case_id", *seg, *synth]
    extra = sorted(present - set(ordered))
    return [k for k in ordered if k in present] + extra


def _stats(values: Iterable[Any]) -> dict[str, float | int | None]:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "median": None, "n": 0}
    arr = np.asarray(finite)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "n": int(arr.size),
    }


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, sample standard deviation, median and count of every numeric metric over cases.

    Non-finite values (a PSNR of identical images, a relative volume difference against an empty
    reference, a score over an empty region) are left out, so ``n`` counts the values behind each
    statistic; except an infinite lesion-wise HD95 (no lesion matched), which counts as
    :data:`~medmtl.challenge_metrics.HD95_PENALTY`, the penalty of the official BraTS parser.

    Args:
        rows: one mapping per case, metric name -> value.

    Returns:
        metric name -> ``{"mean", "std", "median", "n"}`` (None where ``n`` is 0).
    """
    out = {}
    for col in _columns(rows):
        vals = [r.get(col) for r in rows]
        if col == "case_id" or not any(isinstance(v, (int, float)) for v in vals):
            continue
        if col.startswith("LesionHD95_"):
            # Leaving out a missed region would make a model that misses more look better.
            vals = [HD95_PENALTY if isinstance(v, float) and v == math.inf else v for v in vals]
        out[col] = _stats(vals)
    return out


def _fmt(stats: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} ({stats['median']:.{digits}f})"


def _fmt_n(stats: Mapping[str, Any] | None, digits: int = 3) -> str:
    return "-" if not stats or not stats.get("n") else f"{_fmt(stats, digits)}, {stats['n']}"


def _markdown(
    pred_dir: Path, summary: Mapping[str, Any], lists: Mapping[str, Sequence[str]], figures: Sequence[str]
) -> str:
    m = summary["metrics"]
    lines = [f"# Evaluation of `{pred_dir}`", ""]
    lines.append(f"Cases scored: {summary['n_cases']}. Values are mean ± std (median) over cases.")
    for title, key in (
        ("Cases in the datalist without predictions", "missing_predictions"),
        ("Predictions for cases absent from the datalist", "predictions_without_datalist_entry"),
        ("Segmentations not scored (no label map)", "cases_without_label"),
    ):
        if lists.get(key):
            lines += ["", f"{title} ({len(lists[key])}): " + ", ".join(f"`{c}`" for c in lists[key])]
    if any(f"Dice_{r}" in m for r in REGIONS):
        n = m.get(f"Dice_{REGIONS[0]}", {}).get("n", 0)
        lesion = summary.get("lesionwise_evaluation") or {}
        lines += ["", f"## Segmentation ({n} cases)", ""]
        package = f"`brats-evaluation` {lesion.get('version')}, configuration `{lesion.get('config')}`"
        lines += [
            "Voxel-wise: each region scored as a whole (the BraTS 2018-2021 definition, comparable with "
            "tables of those years). Lesion-wise: each connected lesion matched and scored on its own "
            "(the BraTS 2023+ definition), computed by the official package "
            f"({package if lesion.get('available') else '`brats-evaluation`'}); a region with no matched "
            f"lesion counts as HD95 {HD95_PENALTY:g} mm. Each cell: mean ± std (median), number of cases.",
            "",
            f"Empty masks, as BraTS scores them: when prediction and reference of a region are both empty, "
            f"Dice is 1 and HD95 0; when exactly one is empty, Dice is 0 and voxel-wise HD95 is "
            f"{BRATS_MAX_HD95:g} mm (the diagonal of the 240 × 240 × 155 mm BraTS field of view), so a "
            f"few such cases dominate the mean HD95: read the median beside it.",
        ]
        if not lesion.get("available"):
            lines += ["", f"**Lesion-wise scores not computed**: {lesion.get('reason')}."]
        lines += [
            "",
            "| Region | Dice (voxel-wise) | Dice (lesion-wise) | HD95 voxel-wise (mm) "
            "| HD95 lesion-wise (mm) | Sensitivity (voxel-wise) | Specificity (voxel-wise) "
            "| Volume difference (ml) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in REGIONS:
            cells = [_fmt_n(m.get(f"{k}_{r}"), d) for k, d in (
                ("Dice", 3), ("LesionDice", 3), ("HD95", 2), ("LesionHD95", 2), ("Sens", 3), ("Spec", 4),
                ("VolDiff_ml", 2))]  # fmt: skip
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
    contrasts = [c for c in CONTRASTS if f"{c}_SSIM_brain" in m]
    if contrasts:
        lines += ["", "## Synthesis", ""]
        lines += [
            "Both images clipped at the 0.5 and 99.5 percentiles of the brain and scaled to [0, 1]; "
            "scores are averaged over the voxels of each region only (brain: nonzero voxels of the "
            "acquired image; tumour: WT of the label map). Baseline: the nearest acquired contrast copied ("
            + ", ".join(f"{k} ← {v}" for k, v in NEAREST.items())
            + ").",
            "",
            "| Contrast | Region | SSIM | SSIM baseline | PSNR (dB) | PSNR baseline | MAE | MAE baseline |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in contrasts:
            for reg in SYNTHESIS_REGIONS:
                cells = []
                for k, d in (("SSIM", 3), ("PSNR", 2), ("MAE", 4)):
                    cells += [_fmt(m.get(f"{c}_{k}_{reg}"), d), _fmt(m.get(f"{c}_baseline_{k}_{reg}"), d)]
                lines.append(f"| {_role(c, m)} | {reg} | " + " | ".join(cells) + " |")
        brasyn = [c for c in contrasts if f"{c}_{BRASYN_METRICS[0]}" in m]
        if brasyn:
            lines += [
                "",
                "BraSyn challenge scores (its evaluation script's definition: each image clipped at the "
                "0.5/99.5 percentiles of its whole volume and scaled to [0, 1]; SSIM map of torchmetrics "
                "over the tumour, and over everything outside it, background included; PSNR of the whole "
                "volume). Not comparable with the brain-region scores above.",
                "",
                "| Contrast | SSIM tumour | baseline | SSIM non-tumour | baseline | PSNR (dB) | baseline |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for c in brasyn:
                cells = []
                for k in BRASYN_METRICS:
                    d = 2 if k.endswith("PSNR") else 3
                    cells += [_fmt(m.get(f"{c}_{k}"), d), _fmt(m.get(f"{c}_baseline_{k}"), d)]
                lines.append(f"| {_role(c, m)} | " + " | ".join(cells) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _role(contrast: str, m: Mapping[str, Any]) -> str:
    """The contrast's cell in the synthesis table: synthesised (missing from the inputs) or restored."""
    share = (m.get(f"{contrast}_input") or {}).get("mean")
    if share is None:
        return contrast
    if share == 0:
        return f"{contrast} (synthesised: not an input)"
    if share == 1:
        return f"{contrast} (restoration: an input)"
    return f"{contrast} (an input in {share:.0%} of cases)"


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    cols = _columns(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, restval="", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})


# ---------------------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------------------


def evaluate(
    pred_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    section: str = "training",
    cases: Sequence[str] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Score the predictions in a folder against the reference data of a datalist.

    Args:
        pred_dir: folder with ``<case>_seg.nii.gz``, ``<case>_<contrast>_synth.nii.gz`` and
            ``<case>.json`` files, as written by inference.
        datalist: medmtl datalist JSON (``medmtl prepare``).
        dataset_dir: folder that the datalist's relative paths start from (by default the one the
            datalist records, else the datalist's own folder); see :func:`medmtl.datalist.load_datalist`.
        out_dir: where to write ``metrics.csv``, ``summary.json``, ``report.md`` and ``figures/``;
            nothing is written when None.
        section: datalist section holding the cases (``training`` holds the labelled ones).
        cases: restrict to these case ids.
        figures: draw a figure per case and a summary figure (only with ``out_dir``).

    Lesion-wise columns (``LesionDice_<region>``, ``LesionHD95_<region>``, ...) are added when
    ``brats-evaluation`` is installed; ``summary["lesionwise_evaluation"]`` says whether it was, and
    ``summary["metric_definitions"]`` what each segmentation column measures.

    Returns:
        ``{"rows": [per-case metrics], "summary": {...}, "missing_predictions": [...],
        "predictions_without_datalist_entry": [...], "cases_without_label": [...]}``.

    Raises:
        ValueError: when a prediction's grid differs from its reference (shape, or affine beyond
            :data:`AFFINE_TOLERANCE`), a label map fits no convention, or no case has predictions.
        FileNotFoundError: for a missing datalist, prediction folder or reference image.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} not found")
    entries = load_datalist(datalist, dataset_dir=dataset_dir, section=section)
    known = {str(e["case_id"]) for e in entries}
    if cases is not None:
        wanted = set(cases)
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"cases {unknown} are not in section {section!r} of {datalist}")
        entries = [e for e in entries if str(e["case_id"]) in wanted]
    out = Path(out_dir) if out_dir is not None else None
    fig_dir = out / "figures" if (out is not None and figures) else None

    lesion_status = brats_evaluation_status()
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    no_label: list[str] = []
    fig_files: list[str] = []
    for entry in entries:
        case = _Case(entry)
        fig_path = fig_dir / f"{case.case_id}.png" if fig_dir is not None else None
        result = _evaluate_case(case, pred_dir, fig_path, lesionwise=lesion_status["available"])
        if result is None:
            missing.append(case.case_id)
            continue
        row, notes = result
        rows.append(row)
        if notes:
            no_label.append(case.case_id)
        if fig_path is not None and fig_path.is_file():
            fig_files.append(f"figures/{fig_path.name}")
    stray = sorted(_predicted_case_ids(pred_dir) - known)
    if not rows:
        raise ValueError(
            f"no predictions in {pred_dir} for the {len(entries)} cases of section {section!r} of {datalist} "
            f"(expected files named <case_id>_seg.nii.gz or <case_id>_<contrast>_synth.nii.gz)"
        )
    lists = {
        "missing_predictions": missing,
        "predictions_without_datalist_entry": stray,
        "cases_without_label": no_label,
    }
    summary = {
        "n_cases": len(rows),
        **lists,
        "lesionwise_evaluation": lesion_status,
        "metric_definitions": METRIC_DEFINITIONS,
        "metrics": summarise(rows),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(out / "metrics.csv", rows)
        write_json(out / "summary.json", summary)
        if fig_dir is not None:
            report.summary_figure(rows, fig_dir / "summary.png")
            fig_files.insert(0, "figures/summary.png")
        text = _markdown(pred_dir, summary, lists, fig_files)
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(text)
    return {"rows": rows, "summary": summary, **lists}


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl evaluate`` and print the headline numbers.

    Args:
        args: parsed arguments from :func:`add_cli_arguments`.

    Returns:
        0 on success.
    """
    out = args.out if args.out is not None else args.pred_dir / "evaluation"
    result = evaluate(
        args.pred_dir,
        args.datalist,
        dataset_dir=args.dataset_dir,
        out_dir=out,
        section=args.section,
        cases=args.cases,
        figures=not args.no_figures,
    )
    summary = result["summary"]
    print(f"scored {summary['n_cases']} cases -> {out}")
    if not summary["lesionwise_evaluation"]["available"]:
        print(f"  lesion-wise scores not computed: {summary['lesionwise_evaluation']['reason']}")
    keys = [f"{m}_{r}" for m in ("Dice", "LesionDice") for r in REGIONS]
    for key in keys + [k for k in summary["metrics"] if k.endswith("SSIM_brain")]:
        if key in summary["metrics"]:
            print(f"  {key:28s} {_fmt(summary['metrics'][key])}")
    if result["missing_predictions"]:
        missing = result["missing_predictions"]
        print(f"  no predictions for {len(missing)} cases: {', '.join(missing)}")
    return 0


__all__: Sequence[str] = (
    "AFFINE_TOLERANCE",
    "METRIC_DEFINITIONS",
    "evaluate",
    "summarise",
    "cli_main",
)

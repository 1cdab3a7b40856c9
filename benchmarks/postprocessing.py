"""Choose the post-processing thresholds of ``medmtl infer`` on validation predictions.

Two rules, both applied by ``medmtl infer`` after thresholding (``--min-component-ml``,
``--et-min-ml``): whole-tumour components smaller than a volume are dropped (false-positive specks
dominate HD95), and a predicted enhancing tumour smaller than a volume becomes necrosis (the BraTS
ET rule of Isensee et al., "nnU-Net for Brain Tumor Segmentation", BraTS 2020, arXiv:2011.00848: a
case without enhancement scores ET Dice 0 for a single false-positive voxel, 1 for none).

Input: a folder ``medmtl infer`` wrote with both rules off, and the datalist holding the reference
labels. Each threshold is applied to the written label maps exactly as inference applies it
(:func:`medmtl.inference.postprocessing.remove_small_components`, then ``small_et_to_netc``).
``min_component_ml`` is chosen by the mean HD95 over the three regions, ``et_min_ml`` by the mean ET
Dice (ties go to the smaller threshold). Because the choice is made on the scored cases themselves,
a leave-one-case-out estimate is reported beside it: each case is scored with the thresholds chosen
on the other cases.

    python benchmarks/postprocessing.py --pred runs/heldout/all/pred --datalist runs/datalist.json \
        --fold 0 --out runs/postprocessing
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medmtl.datalist import load_datalist
from medmtl.inference.postprocessing import remove_small_components, small_et_to_netc
from medmtl.labels import REGIONS, label_to_regions
from medmtl.metrics import dice_hd95, region_masks

COMPONENT_ML = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)
ET_ML = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two binary masks with MONAI's metric; both empty scores 1 (the BraTS rule)."""
    import torch
    from monai.metrics import compute_dice

    p, t = (torch.as_tensor(np.asarray(m, bool))[None, None] for m in (pred, true))
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def case_scores(
    pred_dir: Path, entry: dict[str, Any], component_ml: Sequence[float], et_ml: Sequence[float]
) -> dict[str, Any]:
    """Dice and HD95 of one case under every threshold.

    Args:
        pred_dir: ``medmtl infer`` output folder (post-processing off).
        entry: the case's datalist entry (absolute paths; ``label`` and ``label_convention``).
        component_ml: whole-tumour component thresholds tried (ml).
        et_ml: ET thresholds tried (ml), each with ``min_component_ml`` 0.

    Returns:
        ``{"component": {ml: {"Dice_WT": ..., "HD95_WT": ..., ...}}, "et": {ml: {"Dice_ET": ...}}}``.
    """
    cid = entry["case_id"]
    sidecar = json.loads((pred_dir / f"{cid}.json").read_text())
    img = nib.load(pred_dir / f"{cid}_seg.nii.gz")
    spacing = [float(z) for z in img.header.get_zooms()[:3]]
    pred = np.asarray(label_to_regions(np.asarray(img.dataobj).astype(np.int16), sidecar["label_convention"]))
    pred = pred.astype(np.uint8)
    ref_img = nib.load(entry["label"])
    ref = region_masks(
        np.asarray(ref_img.dataobj), entry.get("label_convention") or sidecar["label_convention"]
    )
    if ref.shape != pred.shape:
        raise ValueError(
            f"{pred_dir / (cid + '_seg.nii.gz')}: grid {pred.shape[1:]} != reference {ref.shape[1:]}"
        )

    def scores(regions: np.ndarray, names: Sequence[str], hd: bool) -> dict[str, float]:
        out = {}
        for r in names:
            i = REGIONS.index(r)
            if hd:
                out[f"Dice_{r}"], out[f"HD95_{r}"] = dice_hd95(regions[i], ref[i], spacing)
            else:
                out[f"Dice_{r}"] = dice(regions[i], ref[i])
        return out

    return {
        "component": {
            ml: scores(remove_small_components(pred, spacing, ml), REGIONS, hd=True) for ml in component_ml
        },
        "et": {ml: scores(small_et_to_netc(pred, spacing, ml), ("ET",), hd=False) for ml in et_ml},
    }


def _best(per_case: dict[str, Any], cases: Sequence[str], rule: str) -> float:
    if rule == "component":
        key, sign = (lambda m: np.mean([m[f"HD95_{r}"] for r in REGIONS])), 1.0
    else:
        key, sign = (lambda m: m["Dice_ET"]), -1.0
    options = per_case[cases[0]][rule]
    means = {ml: float(np.mean([key(per_case[c][rule][ml]) for c in cases])) for ml in options}
    return min(options, key=lambda ml: (sign * round(means[ml], 6), ml))


def mean_std_table(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{row: [per-case metrics]}`` -> ``{row: {metric: (mean, sample std)}}``."""
    return {
        row: {
            k: (
                float(np.mean([m[k] for m in ms])),
                float(np.std([m[k] for m in ms], ddof=1 if len(ms) > 1 else 0)),
            )
            for k in ms[0]
        }
        for row, ms in rows.items()
    }


def choose(per_case: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The thresholds chosen on all cases, and the leave-one-case-out scores.

    Args:
        per_case: ``{case_id: case_scores(...)}``.

    Returns:
        ``{"min_component_ml", "et_min_ml", "table": {row: {metric: (mean, std)}}}``.
    """
    ids = sorted(per_case)
    chosen = {"min_component_ml": _best(per_case, ids, "component"), "et_min_ml": _best(per_case, ids, "et")}
    rows: dict[str, list[dict[str, float]]] = {"off": [], "chosen on all cases": [], "leave one case out": []}
    for c in ids:
        rest = [o for o in ids if o != c] or ids
        for row, mc, et in (
            ("off", 0.0, 0.0),
            ("chosen on all cases", chosen["min_component_ml"], chosen["et_min_ml"]),
            ("leave one case out", _best(per_case, rest, "component"), _best(per_case, rest, "et")),
        ):
            m = dict(per_case[c]["component"][mc])
            m["Dice_ET"] = per_case[c]["et"][et]["Dice_ET"]  # the ET rule leaves TC and WT as they are
            rows[row].append(m)
    return {**chosen, "table": mean_std_table(rows)}


def markdown(result: dict[str, Any]) -> str:
    """The post-processing table."""
    keys = [f"Dice_{r}" for r in ("WT", "TC", "ET")] + [f"HD95_{r}" for r in ("WT", "TC", "ET")]
    lines = [
        "| post-processing | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
        "| --- " * 7 + "|",
    ]
    for row, m in result["table"].items():
        cells = [
            f"{m[k][0]:.3f} ± {m[k][1]:.3f}" if k.startswith("Dice") else f"{m[k][0]:.1f} ± {m[k][1]:.1f}"
            for k in keys
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append(
        f"\nChosen: `--min-component-ml {result['min_component_ml']}`, `--et-min-ml {result['et_min_ml']}`.\n"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every threshold, choose, and write ``OUT/postprocessing.json`` / ``.md``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pred", type=Path, required=True, help="`medmtl infer` output, post-processing off")
    p.add_argument("--datalist", type=Path, required=True, help="datalist with the reference labels")
    p.add_argument("--fold", type=int, default=0, help="fold of the scored cases")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    args = p.parse_args(argv)
    entries = load_datalist(args.datalist, section="training", folds=[args.fold], labelled_only=True)
    missing = [e["case_id"] for e in entries if not (args.pred / f"{e['case_id']}_seg.nii.gz").is_file()]
    if missing:
        p.error(f"{args.pred}: no prediction for {missing}")
    per_case = {e["case_id"]: case_scores(args.pred, e, COMPONENT_ML, ET_ML) for e in entries}
    result = choose(per_case)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "postprocessing.json").write_text(json.dumps({**result, "per_case": per_case}, indent=1))
    (args.out / "postprocessing.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

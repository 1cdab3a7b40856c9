"""Choose the region probability thresholds of ``medmtl infer`` on validation predictions.

The segmentation heads are sigmoids per nested region (TC, WT, ET) thresholded at 0.5. A model
trained on few cases is often under- or over-confident on unseen ones (held out, the shipped
model's whole tumour came out about 18 % too small), and a threshold chosen on validation cases is
the cheapest correction (nnU-Net, Isensee et al. 2021, likewise picks its post-processing on
cross-validation predictions). Each region's threshold is chosen by its mean Dice with the other
two at 0.5, every candidate turned into a label map and back exactly as inference writes it (ET
wins over TC over WT); of the candidates within ``--tolerance`` (0.005) of the best mean Dice, the
one nearest 0.5 is taken. Because the choice is made on the scored cases, a leave-one-case-out
estimate is reported beside it: each case is scored with the thresholds chosen on the others.
The model serves any subset of the contrasts, so several prediction folders of the same cases (e.g.
all four contrasts in, and t1c absent) can be given: the thresholds are then chosen on all of them
pooled, a case's scenarios left out together in the leave-one-case-out estimate.

Input: a ``medmtl infer --probabilities`` folder (post-processing off) and the datalist with the
reference labels. With ``--apply BUNDLE`` the chosen thresholds are written into the bundle's
``models/model_config.json`` (key ``thresholds``), which ``medmtl infer`` and ``load_model`` then use.

    python benchmarks/thresholds.py --pred runs/heldout/all/pred [runs/heldout/no_t1c/pred ...] \
        --datalist runs/datalist.json --fold 0 --out runs/thresholds [--apply bundles/brats_mtl]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from postprocessing import dice, mean_std_table

from medmtl.bundle_config import MODEL_CONFIG_FILE, read_model_config
from medmtl.datalist import load_datalist
from medmtl.inference.postprocessing import region_thresholds
from medmtl.io import write_json
from medmtl.labels import REGIONS, label_to_regions, regions_to_label
from medmtl.metrics import region_masks

CANDIDATES = (0.02, *(round(0.05 * k, 2) for k in range(1, 19)))  # 0.02, 0.05, 0.1, ..., 0.9


def written_regions(prob: np.ndarray, brain: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Regions as ``medmtl infer`` writes them: thresholded, masked to the brain, label map and back.

    Args:
        prob: (3, H, W, D) region probabilities, channel order :data:`REGIONS`.
        brain: (H, W, D) boolean brain mask.
        thresholds: one threshold per region.

    Returns:
        (3, H, W, D) boolean nested regions.
    """
    regions = (prob > region_thresholds(thresholds)) & brain[None]
    label = regions_to_label(regions.astype(np.uint8), "brats2021")[0]
    return np.asarray(label_to_regions(label, "brats2021"), dtype=bool)


def case_scores(pred_dir: Path, entry: dict[str, Any], candidates: Sequence[float]) -> dict[str, Any]:
    """Dice of each region at each candidate threshold (the other regions at 0.5), one case.

    Args:
        pred_dir: ``medmtl infer --probabilities`` output folder.
        entry: the case's datalist entry (absolute paths; ``label``).
        candidates: thresholds tried.

    Returns:
        ``{region: {threshold: Dice}}`` and, under ``"_arrays"``, what :func:`joint` needs.
    """
    cid = entry["case_id"]
    prob_path = pred_dir / f"{cid}_prob.nii.gz"
    if not prob_path.is_file():
        raise FileNotFoundError(f"{prob_path}: no probabilities (run `medmtl infer --probabilities`)")
    prob = np.moveaxis(np.asarray(nib.load(prob_path).dataobj, dtype=np.float32), -1, 0)
    brain = np.zeros(prob.shape[1:], bool)
    for path in entry["image"]:
        brain |= np.asarray(nib.load(path).dataobj) != 0
    ref = region_masks(
        np.asarray(nib.load(entry["label"]).dataobj), entry.get("label_convention") or "brats2021"
    )
    if ref.shape != prob.shape:
        raise ValueError(f"{prob_path}: grid {prob.shape[1:]} != reference {ref.shape[1:]}")
    # Dice only sees voxels predicted at some candidate or in the reference: crop to their box.
    box = np.argwhere((prob.max(0) > min(candidates)) | ref.any(0))
    if len(box):
        lo, hi = box.min(0), box.max(0) + 1
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        prob, brain, ref = prob[(slice(None), *sl)], brain[sl], ref[(slice(None), *sl)]
    out: dict[str, Any] = {}
    for i, r in enumerate(REGIONS):
        out[r] = {}
        for t in candidates:
            thr = [0.5, 0.5, 0.5]
            thr[i] = t
            out[r][t] = dice(written_regions(prob, brain, thr)[i], ref[i])
    out["_arrays"] = (prob, brain, ref)
    return out


#: A candidate within this much mean Dice of the best counts as as good; of those, the one nearest
#: 0.5 is taken. The optimum is flat (held out, WT Dice 0.890-0.894 from 0.05 to 0.2), and the
#: smallest change from the trained operating point is the one least likely to over-correct a case
#: the model is sure of.
TOLERANCE = 0.005


def _best(per_case: dict[str, Any], cases: Sequence[str], tolerance: float = TOLERANCE) -> list[float]:
    """Per region, the candidate nearest 0.5 among those within ``tolerance`` of the best mean Dice."""
    chosen = []
    for r in REGIONS:
        options = per_case[cases[0]][r]
        means = {t: float(np.mean([per_case[c][r][t] for c in cases])) for t in options}
        top = max(means.values())
        good = [t for t in options if means[t] >= top - tolerance - 1e-9]
        chosen.append(min(good, key=lambda t: (abs(t - 0.5), -means[t])))
    return chosen


def joint(per_case: dict[str, Any], case: str, thresholds: Sequence[float]) -> dict[str, float]:
    """Dice of all three regions of one case with the three thresholds applied together."""
    prob, brain, ref = per_case[case]["_arrays"]
    regions = written_regions(prob, brain, thresholds)
    return {f"Dice_{r}": dice(regions[i], ref[i]) for i, r in enumerate(REGIONS)}


def _case_of(key: str) -> str:
    """The case id of a ``[scenario/]case_id`` key."""
    return key.rsplit("/", 1)[-1]


def _scenario_of(key: str) -> str:
    return key.rsplit("/", 1)[0] if "/" in key else ""


def choose(per_case: dict[str, Any], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Thresholds chosen on all cases and the leave-one-case-out table.

    Args:
        per_case: ``{key: case_scores(...)}``, the key a case id or ``scenario/case_id`` (several
            predictions of one case: pooled for the choice, left out together).
        tolerance: mean-Dice margin within which a threshold nearer 0.5 is preferred.

    Returns:
        ``{"thresholds": [TC, WT, ET], "table": {row: {metric: (mean, std)}}, "per_case": {...}}`` and,
        with scenarios, ``"by_scenario": {scenario: table}``.
    """
    ids = sorted(per_case)
    chosen = _best(per_case, ids, tolerance)
    names = ("0.5", "chosen on all cases", "leave one case out")
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    by: dict[str, dict[str, list[dict[str, float]]]] = {}
    loo = {}
    for c in ids:
        rest = [o for o in ids if _case_of(o) != _case_of(c)] or ids
        loo[c] = _best(per_case, rest, tolerance)
        for name, thr in zip(names, ([0.5, 0.5, 0.5], chosen, loo[c])):
            m = joint(per_case, c, thr)
            rows[name].append(m)
            by.setdefault(_scenario_of(c), {n: [] for n in names})[name].append(m)
    out = {
        "thresholds": chosen,
        "table": mean_std_table(rows),
        "per_case": {
            c: {**rows["leave one case out"][i], "loo_thresholds": loo[c]} for i, c in enumerate(ids)
        },
    }
    if len(by) > 1:
        out["by_scenario"] = {sc: mean_std_table(r) for sc, r in by.items()}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The threshold table."""
    keys = [f"Dice_{r}" for r in ("WT", "TC", "ET")]
    lines = ["| thresholds | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "| --- " * 4 + "|"]
    tables = {"": result["table"]}
    tables.update({f"{sc}: ": t for sc, t in result.get("by_scenario", {}).items()})
    for prefix, table in tables.items():
        for row, m in table.items():
            cells = " | ".join(f"{m[k][0]:.3f} ± {m[k][1]:.3f}" for k in keys)
            lines.append(f"| {prefix}{row} | {cells} |")
    tc, wt, et = result["thresholds"]
    lines.append(f"\nChosen (TC, WT, ET): {tc}, {wt}, {et}.\n")
    return "\n".join(lines)


def apply(bundle: Path, chosen: Sequence[float], source: str) -> Path:
    """Store thresholds in a bundle's ``models/model_config.json`` (atomically), with where they came from.

    Args:
        bundle: the bundle folder.
        chosen: thresholds in the order of :data:`REGIONS`.
        source: a line saying on which cases they were chosen.

    Returns:
        The model config file written.
    """
    path = bundle / "models" / MODEL_CONFIG_FILE
    cfg = read_model_config(path)
    cfg["thresholds"] = {r: float(t) for r, t in zip(REGIONS, chosen)}
    cfg["thresholds_source"] = source
    read_model_config(write_json(path, cfg))  # what inference will read must still be valid
    return path


def _scenario_name(pred: Path) -> str:
    """``runs/heldout/no_t1c/pred`` -> ``no_t1c`` (the folder itself unless it is called ``pred``)."""
    return pred.parent.name if pred.name == "pred" else pred.name


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every threshold, choose, and write ``OUT/thresholds.json`` / ``.md``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--pred",
        type=Path,
        nargs="+",
        required=True,
        help="`medmtl infer --probabilities` output(s) of the fold; several: scenarios pooled",
    )
    p.add_argument("--datalist", type=Path, required=True, help="datalist with the reference labels")
    p.add_argument("--fold", type=int, default=0, help="fold of the scored cases")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"mean-Dice margin within which the threshold nearest 0.5 is taken (default {TOLERANCE})",
    )
    p.add_argument(
        "--apply", type=Path, metavar="BUNDLE", help="write the chosen thresholds into this bundle"
    )
    args = p.parse_args(argv)
    entries = load_datalist(args.datalist, section="training", folds=[args.fold], labelled_only=True)
    scenarios = {_scenario_name(d): d for d in args.pred}
    if len(scenarios) != len(args.pred):
        p.error(f"--pred folders must have distinct names, got {[str(d) for d in args.pred]}")
    try:
        per_case = {
            (f"{sc}/" if len(scenarios) > 1 else "") + e["case_id"]: case_scores(d, e, CANDIDATES)
            for sc, d in scenarios.items()
            for e in entries
        }
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    result = choose(per_case, args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    sweeps = {c: {r: per_case[c][r] for r in REGIONS} for c in per_case}
    (args.out / "thresholds.json").write_text(json.dumps({**result, "sweeps": sweeps}, indent=1))
    (args.out / "thresholds.md").write_text(markdown(result))
    print(markdown(result))
    if args.apply:
        ids = ", ".join(sorted({_case_of(k) for k in per_case}))
        where = f"chosen on fold {args.fold} ({', '.join(scenarios)}): {ids}"
        print(f"written to {apply(args.apply, result['thresholds'], where)}")
    return result


if __name__ == "__main__":
    main()

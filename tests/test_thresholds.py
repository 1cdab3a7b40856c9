"""Region probability thresholds: stored with a model, applied by inference, chosen on validation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medmtl
from medmtl.bundle_config import read_model_config
from medmtl.inference.outputs import case_outputs
from medmtl.inference.postprocessing import region_thresholds
from medmtl.labels import regions_to_label

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import paired  # noqa: E402
import thresholds  # noqa: E402


def test_region_thresholds_forms_and_errors():
    assert region_thresholds(None).ravel().tolist() == [0.5, 0.5, 0.5]
    assert region_thresholds(0.4).shape == (3, 1, 1, 1)
    assert region_thresholds({"TC": 0.5, "WT": 0.3, "ET": 0.45}).ravel().tolist() == pytest.approx(
        [0.5, 0.3, 0.45]
    )
    assert region_thresholds([0.5, 0.3, 0.45]).ravel().tolist() == pytest.approx([0.5, 0.3, 0.45])
    assert region_thresholds(region_thresholds([0.5, 0.3, 0.45])).ravel().tolist() == pytest.approx(
        [0.5, 0.3, 0.45]
    )
    for bad, match in (
        ([0.5, 0.5], "expected 3 thresholds"),
        ([0.5, 1.0, 0.5], r"in \(0, 1\)"),
        ([0.5, True, 0.5], r"in \(0, 1\)"),
        ({"TC": 0.5, "WT": 0.5}, "expected the regions"),
        (["a", 0.5, 0.5], r"in \(0, 1\)"),
    ):
        with pytest.raises(ValueError, match=match):
            region_thresholds(bad, "model_config.json: thresholds")


def test_case_outputs_cut_each_region_at_its_threshold():
    prob = np.zeros((3, 8, 8, 8), np.float32)
    prob[1, 2:6, 2:6, 2:6] = 0.4  # whole tumour, under-confident
    prob[0, 3:5, 3:5, 3:5] = 0.6  # core
    prob[2, 3, 3, 3] = 0.45  # enhancing voxel
    d = {"seg": prob, "source_brain_mask": np.ones((1, 8, 8, 8), np.float32)}
    _, at_half, _ = case_outputs(d, [], 0.5)
    assert at_half[1].sum() == 0 and at_half[0].sum() == 8 and at_half[2].sum() == 0
    _, tuned, _ = case_outputs(d, [], {"TC": 0.5, "WT": 0.3, "ET": 0.4})
    assert tuned[1].sum() == 64 and tuned[0].sum() == 8 and tuned[2].sum() == 1


def test_model_config_thresholds_are_checked(tmp_path):
    cfg = {"input_contrasts": ["t1n"], "target_contrasts": [], "spacing": [2, 2, 2], "network_preset": "cpu"}
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**cfg, "thresholds": {"TC": 0.5, "WT": 1.5, "ET": 0.5}}))
    with pytest.raises(ValueError, match=r"model_config\.json: thresholds"):
        read_model_config(path)
    path.write_text(json.dumps({**cfg, "thresholds": {"TC": 0.5, "WT": 0.3, "ET": 0.5}}))
    assert read_model_config(path)["thresholds"]["WT"] == 0.3


def test_model_thresholds_reach_predict(tiny_bundle, phantom_cases, tmp_path):
    case = phantom_cases["brats2021"]
    base = medmtl.load_model(tiny_bundle, device="cpu").predict(case)
    low = medmtl.load_model(tiny_bundle, device="cpu", thresholds=[0.5, 0.2, 0.5]).predict(case)
    assert np.array_equal(base.probabilities, low.probabilities)
    brain = base.seg > 0
    wt_half = (base.probabilities[1] > 0.5).sum()
    regions = (low.probabilities > np.array([0.5, 0.2, 0.5]).reshape(3, 1, 1, 1)).astype(np.uint8)
    inside = regions & (np.asarray(nib.load(next(case.glob("*t1.nii.gz"))).dataobj) != 0)[None].astype(
        np.uint8
    )
    assert np.array_equal(low.seg, regions_to_label(inside, "brats2021")[0])
    assert (low.seg > 0).sum() >= brain.sum() and (low.probabilities[1] > 0.2).sum() >= wt_half


def _prob_case(tmp: Path, cid: str, wt_prob: float) -> dict:
    """A 1 mm case whose whole tumour is predicted at ``wt_prob`` and its core at 0.9."""
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[4:16, 4:16, 4:16] = 2
    ref[8:12, 8:12, 8:12] = 1
    prob = np.zeros((24, 24, 24, 3), np.float32)
    prob[4:16, 4:16, 4:16, 1] = wt_prob
    prob[8:12, 8:12, 8:12, 0] = 0.9
    prob[8:12, 8:12, 8:12, 1] = 0.9
    image = np.ones((24, 24, 24), np.float32)
    (tmp / "pred").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(prob, np.eye(4)), tmp / "pred" / f"{cid}_prob.nii.gz")
    nib.save(nib.Nifti1Image(ref, np.eye(4)), tmp / f"{cid}_ref.nii.gz")
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp / f"{cid}_t1.nii.gz")
    return {
        "case_id": cid,
        "label": str(tmp / f"{cid}_ref.nii.gz"),
        "label_convention": "brats2021",
        "image": [str(tmp / f"{cid}_t1.nii.gz")],
    }


def test_threshold_choice_and_leave_one_out(tmp_path):
    # Three cases under-confident on the whole tumour (0.35), one confident (0.8).
    entries = [_prob_case(tmp_path, f"c{i}", 0.35 if i < 3 else 0.8) for i in range(4)]
    per_case = {e["case_id"]: thresholds.case_scores(tmp_path / "pred", e, (0.3, 0.5)) for e in entries}
    assert per_case["c0"]["WT"][0.5] == pytest.approx(2 * 64 / (64 + 1728))  # only the core survives
    assert per_case["c0"]["WT"][0.3] == 1.0 and per_case["c3"]["WT"][0.3] == 1.0
    result = thresholds.choose(per_case)
    assert result["thresholds"] == [0.5, 0.3, 0.5]  # ties keep 0.5 for TC and ET
    table = result["table"]
    assert table["0.5"]["Dice_WT"][0] == pytest.approx((3 * 2 * 64 / 1792 + 1) / 4)
    assert table["chosen on all cases"]["Dice_WT"][0] == 1.0
    assert table["leave one case out"]["Dice_WT"][0] == 1.0
    assert "0.5, 0.3, 0.5" in thresholds.markdown(result)
    with pytest.raises(FileNotFoundError, match="c9_prob"):
        thresholds.case_scores(tmp_path / "pred", {**entries[0], "case_id": "c9"}, (0.5,))


def test_paired_differences_known_answer(tmp_path):
    for name, dice in (("a", (0.9, 0.8, 0.7)), ("b", (0.8, 0.8, 0.5))):
        (tmp_path / name).mkdir()
        rows = ["case_id,Dice_WT,HD95_WT"] + [f"c{i},{d},{10 - 10 * d}" for i, d in enumerate(dice)]
        (tmp_path / name / "metrics.csv").write_text("\n".join(rows) + "\n")
    a, b = paired.read_metrics(tmp_path / "a"), paired.read_metrics(tmp_path / "b")
    s = paired.paired(a, b, "Dice_WT")
    assert s["n"] == 3 and s["diff_mean"] == pytest.approx(0.1) and s["a_wins"] == 2
    assert s["mean_a"] == pytest.approx(0.8) and 0 < s["p"] <= 1
    assert paired.paired(a, b, "HD95_WT")["a_wins"] == 2  # lower distance wins
    assert paired.paired(a, b, "t1c_SSIM_brain") is None
    assert "+0.100" in paired.markdown("a", "b", {"Dice_WT": s})


def test_scenarios_are_pooled_and_left_out_together(tmp_path):
    # Two scenarios of the same three cases: under-confident in "a", confident in "b" for c0 only.
    per_case = {}
    for sc, probs in (("a", (0.35, 0.35, 0.35)), ("b", (0.8, 0.35, 0.35))):
        (tmp_path / sc).mkdir()
        for i, wt in enumerate(probs):
            e = _prob_case(tmp_path / sc, f"c{i}", wt)
            per_case[f"{sc}/c{i}"] = thresholds.case_scores(tmp_path / sc / "pred", e, (0.3, 0.5, 0.85))
    result = thresholds.choose(per_case)
    assert result["thresholds"][1] == 0.3
    others = [k for k in per_case if not k.endswith("/c0")]
    assert result["per_case"]["b/c0"]["loo_thresholds"] == thresholds._best(per_case, others)
    assert set(result["by_scenario"]) == {"a", "b"}
    assert result["by_scenario"]["a"]["0.5"]["Dice_WT"][0] == pytest.approx(2 * 64 / 1792)
    assert result["by_scenario"]["b"]["leave one case out"]["Dice_WT"][0] == 1.0
    assert "| b: 0.5 |" in thresholds.markdown(result)


def test_a_flat_optimum_keeps_the_threshold_nearest_half():
    # Mean WT Dice 0.900 at 0.1, 0.898 at 0.3, 0.850 at 0.5: 0.3 is within the tolerance and nearer 0.5.
    per_case = {
        "c0": {"TC": {0.1: 0.5, 0.5: 0.5}, "WT": {0.1: 0.900, 0.3: 0.898, 0.5: 0.850}, "ET": {0.5: 0.7}}
    }
    per_case["c0"]["TC"] = {0.1: 0.5, 0.3: 0.5, 0.5: 0.5}
    per_case["c0"]["ET"] = {0.1: 0.7, 0.3: 0.7, 0.5: 0.7}
    assert thresholds._best(per_case, ["c0"]) == [0.5, 0.3, 0.5]
    assert thresholds._best(per_case, ["c0"], tolerance=0.0) == [0.5, 0.1, 0.5]

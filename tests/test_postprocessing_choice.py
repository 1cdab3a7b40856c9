"""Choosing the post-processing thresholds: the rules as inference applies them, and a fair estimate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import postprocessing  # noqa: E402


def _case(tmp: Path, cid: str, speck: bool, et_fp: bool) -> dict:
    """A 1 mm case: reference tumour (BraTS 2021 labels, no ET); the prediction adds what is asked."""
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[10:20, 10:20, 10:20] = 2  # oedema
    ref[13:17, 13:17, 13:17] = 1  # necrosis: TC without enhancement
    pred = ref.copy()
    if speck:
        pred[34:38, 34:38, 34:38] = 2  # 64 voxels (0.064 ml) far away: over 5 % of the surface
    if et_fp:
        pred[14, 14, 14] = 4  # one false-positive ET voxel
    (tmp / "pred").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp / "pred" / f"{cid}_seg.nii.gz")
    (tmp / "pred" / f"{cid}.json").write_text(json.dumps({"label_convention": "brats2021"}))
    nib.save(nib.Nifti1Image(ref, np.eye(4)), tmp / f"{cid}_ref.nii.gz")
    return {"case_id": cid, "label": str(tmp / f"{cid}_ref.nii.gz"), "label_convention": "brats2021"}


def test_thresholds_fix_specks_and_false_enhancement(tmp_path):
    entries = [_case(tmp_path, f"c{i}", speck=i % 2 == 0, et_fp=i < 3) for i in range(4)]
    per_case = {
        e["case_id"]: postprocessing.case_scores(tmp_path / "pred", e, (0.0, 0.1), (0.0, 0.1))
        for e in entries
    }
    off = per_case["c0"]["component"][0.0]
    assert (
        off["Dice_ET"] == 0.0 and off["HD95_WT"] > 20
    )  # the speck sets WT's HD95, one ET voxel costs ET Dice
    assert per_case["c0"]["component"][0.1]["HD95_WT"] < 1.5 and per_case["c0"]["et"][0.1]["Dice_ET"] == 1.0
    assert per_case["c3"]["et"][0.0]["Dice_ET"] == 1.0  # both empty: BraTS scores 1
    result = postprocessing.choose(per_case)
    assert result["min_component_ml"] == 0.1 and result["et_min_ml"] == 0.1
    table = result["table"]
    assert table["off"]["Dice_ET"][0] == pytest.approx(0.25)
    assert table["chosen on all cases"]["Dice_ET"][0] == 1.0
    assert table["leave one case out"]["Dice_ET"][0] == 1.0  # every subset of three still has a false ET
    assert "--et-min-ml 0.1" in postprocessing.markdown(result)

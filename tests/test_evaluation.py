"""Tests of medmtl.evaluation: end to end on tiny NIfTI cases, grid checks, CLI."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from medmtl.commands.evaluate import add_arguments, main
from medmtl.evaluation import evaluate, summarise
from medmtl.io import write_json, write_nifti

BRATS_DIR = Path(
    os.environ.get(
        "MEDMTL_BRATS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"
    )
)

SHAPE = (20, 20, 16)
# LPS on disk with 1.5 mm slices, as BraTS-like data may come.
AFFINE = np.array([[-1.0, 0, 0, 10.0], [0, -1.0, 0, 12.0], [0, 0, 1.5, -8.0], [0, 0, 0, 1]])
FILES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}


def _label_2021():
    # Nested cubes: WT side 6 (oedema), TC side 4 (necrosis), ET side 2.
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[6:12, 6:12, 5:11] = 2
    lab[7:11, 7:11, 6:10] = 1
    lab[8:10, 8:10, 7:9] = 4
    return lab


def _images(seed):
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    brain = (grid**2).sum(0) <= 7.5**2
    out = {}
    for k, c in enumerate(FILES):
        img = np.zeros(SHAPE, dtype=np.float32)
        img[brain] = 200 + 40 * rng.standard_normal(brain.sum()) + (k + 1) * 10 * grid[k % 3][brain]
        out[c] = img
    return out, brain


@pytest.fixture
def dataset(tmp_path):
    """Two labelled cases (A with predictions, B without) and a datalist with relative paths."""
    root = tmp_path / "data"
    entries = []
    for n, cid in enumerate(("caseA", "caseB")):
        imgs, _ = _images(n)
        entry = {"case_id": cid, "label_convention": "brats2021"}
        for c, suffix in FILES.items():
            write_nifti(root / cid / f"{cid}_{suffix}.nii.gz", imgs[c], AFFINE)
            entry[c] = f"{cid}/{cid}_{suffix}.nii.gz"
        write_nifti(root / cid / f"{cid}_seg.nii.gz", _label_2021(), AFFINE, dtype=np.uint8)
        entry["label"] = f"{cid}/{cid}_seg.nii.gz"
        entry["image"] = [entry[c] for c in FILES]
        entries.append(entry)
    datalist = tmp_path / "datalist.json"
    write_json(datalist, {"training": entries})
    return root, datalist


def _predict_case_a(pred_dir, affine=AFFINE, seg_shape=SHAPE):
    """Segmentation shifted by one voxel (BraTS 2023 values); t1c synthesised as an affine copy of t1c."""
    imgs, _ = _images(0)
    seg = np.roll(_label_2021(), 1, axis=0)
    seg[seg == 4] = 3
    if seg_shape != SHAPE:
        seg = np.zeros(seg_shape, np.uint8)
    write_nifti(pred_dir / "caseA_seg.nii.gz", seg, affine, dtype=np.uint8)
    synth = np.where(imgs["t1c"] != 0, (imgs["t1c"] - 200) / 40, 0).astype(np.float32)
    write_nifti(pred_dir / "caseA_t1c_synth.nii.gz", synth, AFFINE, dtype=np.float32)
    write_json(
        pred_dir / "caseA.json",
        {
            "case_id": "caseA",
            "label_convention": "brats2023",
            "contrasts_used": ["t1n", "t2w", "t2f"],
            "synthesised": ["t1c"],
            "intensity_space": "zscore_nonzero",
        },
    )


def test_evaluate_end_to_end(tmp_path, dataset):
    root, datalist = dataset
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    write_nifti(pred / "stray_seg.nii.gz", _label_2021(), AFFINE, dtype=np.uint8)
    out = tmp_path / "eval"
    result = evaluate(pred, datalist, dataset_dir=root, out_dir=out)

    assert result["missing_predictions"] == ["caseB"]
    assert result["predictions_without_datalist_entry"] == ["stray"]
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["caseA"]
    row = rows[0]
    # Nested cubes of side 6, 4, 2 shifted by one voxel; BraTS 2023 prediction vs BraTS 2021 truth.
    assert float(row["Dice_WT"]) == pytest.approx(5 / 6, abs=1e-6)
    assert float(row["Dice_TC"]) == pytest.approx(3 / 4, abs=1e-6)
    assert float(row["Dice_ET"]) == pytest.approx(1 / 2, abs=1e-6)
    assert float(row["VolDiff_ml_WT"]) == 0.0
    # The synthesis is an affine copy of the real t1c: perfect after clipping and rescaling.
    assert float(row["t1c_SSIM_brain"]) == pytest.approx(1.0)
    assert float(row["t1c_SSIM_tumour"]) == pytest.approx(1.0)
    assert row["t1c_baseline_source"] == "t1n"
    assert float(row["t1c_baseline_SSIM_brain"]) < 0.9
    # Brain volume: nonzero voxels of the reference t1c times 1.5 mm^3.
    imgs, brain = _images(0)
    assert float(row["t1c_Vol_ml_brain"]) == pytest.approx(brain.sum() * 1.5 / 1000)
    assert float(row["t1c_Vol_ml_tumour"]) == pytest.approx(216 * 1.5 / 1000)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 1
    assert summary["missing_predictions"] == ["caseB"]
    assert summary["metrics"]["Dice_WT"]["mean"] == pytest.approx(5 / 6, abs=1e-6)
    assert summary["metrics"]["Dice_WT"]["n"] == 1
    assert summary["metrics"]["t1c_PSNR_brain"]["mean"] > 60.0

    report = (out / "report.md").read_text()
    assert "| WT | 0.833" in report
    assert "| t1c (synthesised: not an input) | brain | 1.000" in report
    assert "`caseB`" in report
    assert "373.13 mm (the diagonal" in report  # the empty-mask HD95 is explained where it is shown
    for name in ("summary.png", "caseA.png"):
        img = imread(out / "figures" / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0.01
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["caseA.png", "summary.png"]


def test_a_one_contrast_case_has_no_copy_baseline(tmp_path, dataset):
    """Only t1n acquired: its reconstruction is scored; there is no other contrast to copy for it."""
    root, datalist = dataset
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    imgs, _ = _images(0)
    synth = np.where(imgs["t1n"] != 0, (imgs["t1n"] - 200) / 40, 0).astype(np.float32)
    write_nifti(pred / "caseA_t1n_synth.nii.gz", synth, AFFINE, dtype=np.float32)
    sidecar = json.loads((pred / "caseA.json").read_text())
    write_json(pred / "caseA.json", {**sidecar, "contrasts_used": ["t1n"], "synthesised": ["t1n", "t1c"]})
    out = tmp_path / "eval"
    evaluate(pred, datalist, dataset_dir=root, out_dir=out, figures=False)
    with open(out / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["t1n_SSIM_brain"]) == pytest.approx(1.0)
    assert not row.get("t1n_baseline_source") and not row.get("t1n_baseline_SSIM_brain")
    assert row["t1c_baseline_source"] == "t1n"  # the missing t1c still has T1 to copy


def test_two_cases_summary_statistics(tmp_path, dataset):
    root, datalist = dataset
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    seg_b = _label_2021()  # a perfect prediction, no sidecar: the convention is detected from values
    write_nifti(pred / "caseB_seg.nii.gz", seg_b, AFFINE, dtype=np.uint8)
    result = evaluate(pred, datalist, dataset_dir=root, out_dir=None)
    dice = [r["Dice_WT"] for r in result["rows"]]
    assert dice == pytest.approx([5 / 6, 1.0])
    stats = result["summary"]["metrics"]["Dice_WT"]
    assert stats["mean"] == pytest.approx(np.mean(dice))
    assert stats["std"] == pytest.approx(np.std(dice, ddof=1))
    assert stats["median"] == pytest.approx(np.median(dice))
    assert stats["n"] == 2
    assert "t1c_SSIM_brain" not in result["rows"][1]
    assert result["summary"]["metrics"]["t1c_SSIM_brain"]["n"] == 1


def test_summarise_leaves_out_non_finite_values():
    rows = [{"case_id": "a", "PSNR": math.inf, "Dice": 0.5}, {"case_id": "b", "PSNR": 30.0, "Dice": math.nan}]
    stats = summarise(rows)
    assert stats["PSNR"] == {"mean": 30.0, "std": 0.0, "median": 30.0, "n": 1}
    assert stats["Dice"]["n"] == 1
    assert "case_id" not in stats
    assert summarise([{"x": math.nan}])["x"] == {"mean": None, "std": None, "median": None, "n": 0}


def test_grid_mismatch_names_the_file(tmp_path, dataset):
    root, datalist = dataset
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    pred = tmp_path / "pred"
    _predict_case_a(pred, affine=shifted)
    with pytest.raises(ValueError, match=r"caseA_seg\.nii\.gz.*affine"):
        evaluate(pred, datalist, dataset_dir=root)
    pred2 = tmp_path / "pred2"
    _predict_case_a(pred2, seg_shape=(20, 20, 15))
    with pytest.raises(
        ValueError, match=r"caseA_seg\.nii\.gz.*shape \(20, 20, 15\) differs from \(20, 20, 16\)"
    ):
        evaluate(pred2, datalist, dataset_dir=root)


def test_affine_within_tolerance_is_accepted(tmp_path, dataset):
    root, datalist = dataset
    nudged = AFFINE.copy()
    nudged[0, 3] += 5e-4
    pred = tmp_path / "pred"
    _predict_case_a(pred, affine=nudged)
    assert evaluate(pred, datalist, dataset_dir=root)["summary"]["n_cases"] == 1


def test_prediction_values_contradicting_the_sidecar_convention(tmp_path, dataset):
    root, datalist = dataset
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    write_nifti(pred / "caseA_seg.nii.gz", _label_2021(), AFFINE, dtype=np.uint8)  # ET = 4, sidecar says 2023
    with pytest.raises(ValueError, match=r"caseA_seg\.nii\.gz.*brats2023"):
        evaluate(pred, datalist, dataset_dir=root)


def test_no_predictions_is_an_error(tmp_path, dataset):
    root, datalist = dataset
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no predictions"):
        evaluate(tmp_path / "empty", datalist, dataset_dir=root)


def test_4d_image_entries_and_relative_paths_from_the_datalist_folder(tmp_path):
    # An MSD-style entry: one 4D image in its own channel order, paths relative to the datalist's folder.
    imgs, _ = _images(0)
    order = ["t2f", "t1n", "t1c", "t2w"]
    vol = np.stack([imgs[c] for c in order], axis=-1)
    nib.save(nib.Nifti1Image(vol, AFFINE), str(tmp_path / "img4d.nii.gz"))
    write_nifti(tmp_path / "lab.nii.gz", _label_2021(), AFFINE, dtype=np.uint8)
    entry = {"case_id": "caseA", "image": "img4d.nii.gz", "contrasts": order, "label": "lab.nii.gz"}
    write_json(tmp_path / "dl.json", {"testing": [entry]})
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    result = evaluate(pred, tmp_path / "dl.json", section="testing")
    row = result["rows"][0]
    assert row["t1c_SSIM_brain"] == pytest.approx(1.0)
    assert row["Dice_ET"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="'training'"):
        evaluate(pred, tmp_path / "dl.json")


def test_unlabelled_case_scores_synthesis_only(tmp_path, dataset):
    root, _ = dataset
    entry = {"case_id": "caseA", "image": [f"caseA/caseA_{s}.nii.gz" for s in FILES.values()]}
    write_json(tmp_path / "dl.json", {"testing": [entry]})
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    result = evaluate(pred, tmp_path / "dl.json", dataset_dir=root, section="testing")
    row = result["rows"][0]
    assert result["cases_without_label"] == ["caseA"]
    assert not any(k.startswith("Dice") for k in row)
    assert row["t1c_SSIM_brain"] == pytest.approx(1.0)
    assert math.isnan(row["t1c_SSIM_tumour"]) and math.isnan(row["t1c_baseline_SSIM_tumour"])


def test_cli(tmp_path, dataset, capsys):
    root, datalist = dataset
    pred = tmp_path / "pred"
    _predict_case_a(pred)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(pred), "--datalist", str(datalist), "--dataset-dir", str(root), "--no-figures"]
    )
    assert main(args) == 0
    out = pred / "evaluation"
    assert (
        (out / "metrics.csv").is_file() and (out / "summary.json").is_file() and (out / "report.md").is_file()
    )
    assert not (out / "figures").exists()
    printed = capsys.readouterr().out
    assert "scored 1 cases" in printed and "caseB" in printed


@pytest.mark.realdata
def test_evaluate_real_case(tmp_path):
    case = BRATS_DIR / "brats2018" / "Brats18_2013_11_1"
    if not case.is_dir():
        pytest.skip(f"real BraTS data not found at {case}")
    cid = case.name
    entry = {c: f"brats2018/{cid}/{cid}_{s}.nii.gz" for c, s in FILES.items()}
    entry.update(case_id=cid, label=f"brats2018/{cid}/{cid}_seg.nii.gz", label_convention="brats2021")
    write_json(tmp_path / "dl.json", {"training": [entry]})
    pred = tmp_path / "pred"
    lab = nib.load(case / f"{cid}_seg.nii.gz")
    seg = np.asarray(lab.dataobj).astype(np.uint8)
    seg[seg == 4] = 3
    write_nifti(pred / f"{cid}_seg.nii.gz", seg, lab.affine, dtype=np.uint8)
    t1 = nib.load(case / f"{cid}_t1.nii.gz")
    a = np.asarray(t1.dataobj, dtype=np.float32)
    z = np.where(a != 0, (a - a[a != 0].mean()) / a[a != 0].std(), 0).astype(np.float32)
    write_nifti(pred / f"{cid}_t1c_synth.nii.gz", z, t1.affine)
    write_json(
        pred / f"{cid}.json", {"case_id": cid, "label_convention": "brats2023", "synthesised": ["t1c"]}
    )
    out = tmp_path / "eval"
    row = evaluate(pred, tmp_path / "dl.json", dataset_dir=BRATS_DIR, out_dir=out)["rows"][0]
    assert all(row[f"Dice_{r}"] == 1.0 and row[f"HD95_{r}"] == 0.0 for r in ("TC", "WT", "ET"))
    # A z-scored T1 is the T1 baseline up to an affine map (but for the T1's own zero voxels inside the
    # T1c brain): nearly the same scores.
    assert row["t1c_SSIM_brain"] == pytest.approx(row["t1c_baseline_SSIM_brain"], abs=0.01)
    assert 0.40 < row["t1c_SSIM_brain"] < 0.55
    assert not math.isnan(row["t1c_SSIM_tumour"])
    assert imread(out / "figures" / f"{cid}.png").shape[0] > 500

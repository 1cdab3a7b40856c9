"""BraTS challenge scores: the official lesion-wise evaluation, label conventions, voxel-wise cross-checks.

Predictions are made from the real shared references by perturbing them (erosion, dilation, an empty
enhancing tumour, false-positive blobs far from the tumour) in the case's own label convention, so
BraTS 2018-2021 cases (ET = 4) go through the conversion the official configurations need.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from scipy import ndimage

from medmtl import challenge_metrics
from medmtl.evaluation import evaluate
from medmtl.io import write_json, write_nifti
from medmtl.labels import CONVENTIONS, REGIONS, convert_convention, label_to_regions
from medmtl.metrics import segmentation_metrics

#: Voxels kept around the whole tumour when cropping the real cases (keeps the tests fast; false
#: positives are put in this margin, far from the tumour).
MARGIN = 16

RELEASES = {"brats2023": ("*/*-seg.nii.gz", "brats2023"), "brats2018": ("*/*_seg.nii.gz", "brats2021")}

NEEDS_BRATS = "the official BraTS evaluation is an optional extra: pip install 'medmtl[brats]'"


def _real_cases(root: Path) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(case id, cropped label, affine, convention) for the first labelled case of each release."""
    out = []
    for release, (pattern, conv) in RELEASES.items():
        files = sorted((root / release).glob(pattern))
        if not files:
            continue
        img = nib.load(files[0])
        lab = np.rint(np.asarray(img.dataobj)).astype(np.uint8)
        lo = np.maximum(np.argwhere(lab > 0).min(0) - MARGIN, 0)
        hi = np.minimum(np.argwhere(lab > 0).max(0) + MARGIN + 1, lab.shape)
        affine = img.affine.copy()
        affine[:3, 3] = img.affine[:3, :3] @ lo + img.affine[:3, 3]
        out.append((files[0].parent.name, lab[tuple(slice(a, b) for a, b in zip(lo, hi))], affine, conv))
    if not out:
        pytest.skip(f"no labelled BraTS 2023 or 2018 case under {root}")
    return out


def _perturbations(lab: np.ndarray, conv: str) -> dict[str, np.ndarray]:
    """Predictions made from a reference label map, in its own convention."""
    v = CONVENTIONS[conv]
    wt, et = lab > 0, lab == v["ET"]
    eroded = np.where(ndimage.binary_erosion(wt, iterations=2), lab, 0).astype(np.uint8)
    dilated = lab.copy()
    dilated[ndimage.binary_dilation(et, iterations=2) & ~et] = v["ET"]
    no_et = lab.copy()
    no_et[et] = v["NETC"]  # the tumour core stays, the enhancing tumour is gone: an empty ET prediction
    blobs = lab.copy()
    for corner in ((2, 2, 2), (2, -6, 2), (-6, 2, -6)):
        sl = tuple(slice(c, c + 4) for c in corner)
        blobs[sl] = v["ET"] if corner[0] > 0 else v["SNFH"]
    return {"eroded": eroded, "dilated_et": dilated, "no_et": no_et, "fp_blobs": blobs}


@pytest.fixture(scope="module")
def pairs(brats_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Prediction / reference files of the perturbed real cases, and a datalist of them."""
    root = tmp_path_factory.mktemp("challenge")
    entries, items = [], []
    for cid, lab, affine, conv in _real_cases(brats_dir):
        for name, pred in _perturbations(lab, conv).items():
            case_id = f"{cid}_{name}"
            ref_path = root / "data" / f"{case_id}_seg.nii.gz"
            write_nifti(ref_path, lab, affine, dtype=np.uint8)
            write_nifti(root / "pred" / f"{case_id}_seg.nii.gz", pred, affine, dtype=np.uint8)
            entries.append({"case_id": case_id, "label": f"data/{ref_path.name}", "label_convention": conv})
            items.append(
                (case_id, pred, lab, conv, tuple(float(z) for z in nib.load(ref_path).header.get_zooms()))
            )
    write_json(root / "datalist.json", {"training": entries})
    return {"root": root, "items": items}


def _same(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol


def test_official_package_agrees_with_medmtl_evaluate(pairs, tmp_path):
    pytest.importorskip("brats_evaluation", reason=NEEDS_BRATS)
    from brats_evaluation import config_path, evaluate_single_exam, parse_seg_results
    from panoptica import Panoptica_Evaluator

    root = pairs["root"]
    result = evaluate(root / "pred", root / "datalist.json", out_dir=tmp_path / "eval", figures=False)
    ours = {r["case_id"]: r for r in result["rows"]}
    assert result["summary"]["lesionwise_evaluation"]["available"] is True

    # The official pipeline, as its two commands run it, on files in its own (BraTS 2023) labels.
    evaluator = Panoptica_Evaluator.load_from_config(config_path("gli"))
    metrics = []
    for case_id, pred, lab, conv, _ in pairs["items"]:
        img = nib.load(root / "data" / f"{case_id}_seg.nii.gz")
        paths = []
        for what, arr in (("pred", pred), ("ref", lab)):
            p = tmp_path / "official" / what / f"{case_id}.nii.gz"
            write_nifti(p, convert_convention(arr, conv, "brats2023"), img.affine, dtype=np.uint8)
            paths.append(p)
        metrics.append(evaluate_single_exam(str(paths[0]), str(paths[1]), case_id, evaluator))
    (tmp_path / "official.json").write_text(json.dumps({"metrics": metrics, "missings": []}))
    parse_seg_results(str(tmp_path / "official.json"), str(tmp_path / "official.csv"))
    with open(tmp_path / "official.csv") as fh:
        official = {r["subject_id"]: r for r in csv.DictReader(fh) if r["subject_id"] in ours}
    assert set(official) == set(ours)

    seen_empty_et = seen_fp = False
    for case_id, row in ours.items():
        for region in REGIONS:
            group = challenge_metrics.CONFIG_GROUPS[region]
            dice = float(official[case_id][f"lesionwise_dsc_mean_{group}"])
            hd95 = float(official[case_id][f"lesionwise_hd95_mean_{group}"])
            assert _same(row[f"LesionDice_{region}"], dice, 1e-6), (
                case_id,
                region,
                row[f"LesionDice_{region}"],
                dice,
            )
            assert _same(row[f"LesionHD95_{region}"], hd95, 0.01), (
                case_id,
                region,
                row[f"LesionHD95_{region}"],
                hd95,
            )
        seen_empty_et |= case_id.endswith("no_et") and row["LesionDice_ET"] == 0.0
        seen_fp |= case_id.endswith("fp_blobs") and row["LesionFP_ET"] > 0
    assert seen_empty_et and seen_fp
    # An empty ET prediction: no lesion matched, the official parser's infinity counts as the penalty.
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["metrics"]["LesionHD95_ET"]["mean"] <= challenge_metrics.HD95_PENALTY
    assert "lesion-wise" in summary["metric_definitions"]["LesionDice"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Dice (voxel-wise) | Dice (lesion-wise)" in report and "not computed" not in report


def test_brats2021_labels_are_converted_not_scored_as_resection_cavity(pairs):
    pytest.importorskip("brats_evaluation", reason=NEEDS_BRATS)
    old = [it for it in pairs["items"] if it[3] == "brats2021" and it[0].endswith("dilated_et")]
    if not old:
        pytest.skip("no BraTS 2018-2021 case in the shared data")
    _, pred, lab, conv, spacing = old[0]
    ours = challenge_metrics.lesionwise_metrics(pred, lab, conv, conv, spacing)
    assert 0.0 < ours["LesionDice_ET"] < 1.0
    # Fed as they are, the ET = 4 voxels would be the post-treatment configuration's resection cavity.
    raw = challenge_metrics.load_evaluator().evaluate(pred, lab, voxelspacing=spacing)
    assert math.isnan(raw["et"].to_dict()["sq_dsc"])
    # The converted prediction scored as BraTS 2023 gives the same answer.
    new = convert_convention(pred, conv, "brats2023")
    assert challenge_metrics.lesionwise_metrics(new, lab, "brats2023", conv, spacing) == ours
    with pytest.raises(ValueError, match="pred.nii.gz"):
        challenge_metrics.lesionwise_metrics(pred, lab, "brats2023", conv, spacing, pred_name="pred.nii.gz")


def _independent_dice_hd95(p: np.ndarray, t: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """Dice by SimpleITK's overlap filter, HD95 from scipy distance transforms (medmtl.metrics: MONAI)."""
    if not p.any() and not t.any():
        return 1.0, 0.0
    if not p.any() or not t.any():
        return 0.0, 373.13
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(*(sitk.GetImageFromArray(m.astype(np.uint8)) for m in (t, p)))
    dice = overlap.GetDiceCoefficient()
    edge_p, edge_t = p ^ ndimage.binary_erosion(p), t ^ ndimage.binary_erosion(t)
    d_to_t = ndimage.distance_transform_edt(~edge_t, sampling=spacing)[edge_p]
    d_to_p = ndimage.distance_transform_edt(~edge_p, sampling=spacing)[edge_t]
    return float(dice), float(max(np.percentile(d_to_t, 95), np.percentile(d_to_p, 95)))


def test_voxelwise_scores_match_an_independent_implementation(pairs):
    for case_id, pred, lab, conv, spacing in pairs["items"]:
        ours = segmentation_metrics(pred, lab, conv, conv, spacing)
        p_r = np.asarray(label_to_regions(pred, conv), dtype=bool)
        t_r = np.asarray(label_to_regions(lab, conv), dtype=bool)
        for i, region in enumerate(REGIONS):
            dice, hd95 = _independent_dice_hd95(p_r[i], t_r[i], spacing)
            assert ours[f"Dice_{region}"] == pytest.approx(dice, abs=1e-9), (case_id, region)
            assert ours[f"HD95_{region}"] == pytest.approx(hd95, abs=0.01), (case_id, region)


def test_report_says_when_the_official_package_is_missing(tmp_path, monkeypatch):
    lab = np.zeros((12, 12, 10), np.uint8)
    lab[3:9, 3:9, 3:7] = 2
    lab[4:7, 4:7, 4:6] = 4
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    write_nifti(tmp_path / "ref.nii.gz", lab, affine, dtype=np.uint8)
    write_nifti(tmp_path / "pred" / "c_seg.nii.gz", lab, affine, dtype=np.uint8)
    entry = {"case_id": "c", "label": "ref.nii.gz", "label_convention": "brats2021"}
    write_json(tmp_path / "dl.json", {"training": [entry]})
    missing = {"available": False, "package": "brats-evaluation", "version": None, "config": "gli"}
    missing["reason"] = "the official BraTS evaluation package is not installed"
    monkeypatch.setattr("medmtl.evaluation.brats_evaluation_status", lambda: missing)
    result = evaluate(tmp_path / "pred", tmp_path / "dl.json", out_dir=tmp_path / "eval", figures=False)
    assert "LesionDice_ET" not in result["rows"][0] and result["rows"][0]["Dice_ET"] == 1.0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["lesionwise_evaluation"]["available"] is False
    report = (tmp_path / "eval" / "report.md").read_text()
    assert (
        "**Lesion-wise scores not computed**: the official BraTS evaluation package is not installed"
        in report
    )
    assert "| ET | 1.000 ± 0.000 (1.000), 1 | - |" in report


def test_status_and_clear_import_error_without_the_package(monkeypatch):
    status = challenge_metrics.brats_evaluation_status()
    assert set(status) >= {"available", "package", "version", "reason"}
    if status["available"]:
        assert status["reason"] is None and status["version"]
    monkeypatch.setattr(
        challenge_metrics, "brats_evaluation_status", lambda: {"available": False, "reason": "x"}
    )
    challenge_metrics.load_evaluator.cache_clear()
    with pytest.raises(ImportError, match="x"):
        challenge_metrics.load_evaluator()
    challenge_metrics.load_evaluator.cache_clear()


def test_inpainting_metrics_of_the_official_package(brats_dir):
    pytest.importorskip("inpainting", reason=NEEDS_BRATS)
    files = sorted((brats_dir / "brats2023").glob("*/*-t1n.nii.gz"))
    if not files:
        pytest.skip("no BraTS 2023 case in the shared data")
    t1n = np.asarray(nib.load(files[0]).dataobj, dtype=np.float32)[60:180, 60:180, 40:120]
    region = np.zeros(t1n.shape, bool)
    region[50:70, 50:70, 30:50] = True
    region &= t1n > 0
    voided = np.where(region, 0.0, t1n)
    perfect = challenge_metrics.inpainting_metrics(t1n, t1n, voided, region)
    assert perfect["InpaintSSIM"] == pytest.approx(1.0) and perfect["InpaintMSE"] == 0.0
    blurred = np.where(region, ndimage.uniform_filter(t1n, 5), t1n)
    worse = challenge_metrics.inpainting_metrics(blurred, t1n, voided, region)
    assert worse["InpaintSSIM"] < 0.99 and worse["InpaintMSE"] > 0.0 and math.isfinite(worse["InpaintPSNR"])


def _torchmetrics_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    image = pytest.importorskip("torchmetrics.image")
    as5d = [torch.from_numpy(a).float()[None, None] for a in (pred, target)]
    return image.StructuralSimilarityIndexMeasure(return_full_image=True)(*as5d)[1][0, 0].double().numpy()


def _head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = np.zeros((40, 36, 30))
    ref[8:30, 6:30, 5:25] = 100 * rng.random((22, 24, 20))
    pred = ref.copy()
    pred[8:30, 6:30, 5:25] = 0.7 * ref[8:30, 6:30, 5:25] + 30 * rng.random((22, 24, 20))
    tumour = np.zeros(ref.shape, np.uint8)
    tumour[12:20, 10:18, 8:14] = 2
    return pred, ref, tumour


def test_brasyn_ssim_map_is_the_torchmetrics_map():
    pred, ref, _ = _head(np.random.default_rng(0))
    pred, ref = pred / 100, ref / 100
    np.testing.assert_allclose(
        challenge_metrics.brasyn_ssim_map(pred, ref), _torchmetrics_map(pred, ref), atol=1e-4
    )


def test_brasyn_scores_follow_the_challenge_script():
    pred, ref, tumour = _head(np.random.default_rng(1))
    scores = challenge_metrics.brasyn_metrics(pred, ref, tumour)

    # the challenge script, on the whole volume: percentile clip, cut to each part, torchmetrics map
    def norm(a):
        lo, hi = np.percentile(a, [0.5, 99.5])
        lo = max(lo, 0.0)
        return (np.clip(a, lo, hi) - lo) / (hi - lo)

    p, r, m = norm(pred), norm(ref), tumour > 0
    expected_tumour = _torchmetrics_map(p * m, r * m)[m].mean()
    expected_rest = _torchmetrics_map(p * ~m, r * ~m)[~m].mean()
    assert scores["BraSynSSIM_tumour"] == pytest.approx(expected_tumour, abs=1e-4)
    assert scores["BraSynSSIM_nontumour"] == pytest.approx(expected_rest, abs=1e-4)
    assert scores["BraSynPSNR"] == pytest.approx(10 * np.log10(1 / np.mean((p - r) ** 2)))
    perfect = challenge_metrics.brasyn_metrics(ref, ref, tumour)
    assert perfect["BraSynSSIM_tumour"] == pytest.approx(1.0) and perfect["BraSynPSNR"] == float("inf")
    assert np.isnan(challenge_metrics.brasyn_metrics(pred, ref, np.zeros_like(tumour))["BraSynSSIM_tumour"])


def test_brasyn_scores_a_z_scored_synthesis_as_its_shifted_copy():
    pred, ref, tumour = _head(np.random.default_rng(2))
    brain = pred != 0
    z = np.where(brain, (pred - pred[brain].mean()) / pred[brain].std(), 0.0)  # negative inside the brain
    shifted = np.where(brain, z - z[brain].min(), 0.0)
    assert challenge_metrics.brasyn_metrics(z, ref, tumour) == pytest.approx(
        challenge_metrics.brasyn_metrics(shifted, ref, tumour)
    )
    assert challenge_metrics.brasyn_metrics(z, ref, tumour)["BraSynSSIM_tumour"] > 0.3

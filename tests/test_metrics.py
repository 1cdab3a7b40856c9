"""Tests of medmtl.metrics: hand-computed Dice/HD95, BraTS empty rules, conventions, synthesis scores."""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from medmtl.metrics import (
    BRATS_MAX_HD95,
    NEAREST,
    baseline_source,
    dice_hd95,
    normalise_intensity,
    segmentation_metrics,
    sensitivity_specificity,
    synthesis_metrics,
)

BRATS_DIR = Path(
    os.environ.get(
        "MEDMTL_BRATS_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"
    )
)


def _cube(shape, start, side):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


# --------------------------------------------------------------------------------------------- segmentation


def test_dice_of_overlapping_cubes_matches_hand_value():
    # Cubes of side 4 shifted by 1 voxel share 3 x 4 x 4 voxels: Dice = 2*48 / (64+64) = 0.75.
    a = _cube((12, 12, 12), (2, 2, 2), 4)
    b = _cube((12, 12, 12), (3, 2, 2), 4)
    dice, _ = dice_hd95(a, b, (1, 1, 1))
    assert dice == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"),
    [
        (0, (1.0, 1.0, 1.0), 5.0),
        (2, (1.0, 1.0, 3.0), 15.0),  # shift along the 3 mm axis: 5 voxels = 15 mm
        (0, (1.0, 1.0, 3.0), 5.0),  # shift across it: spacing of the other axes does not matter
        (1, (2.0, 0.5, 3.0), 2.5),
    ],
)
def test_hd95_of_separate_cubes_is_their_offset_in_mm(axis, spacing, expected):
    # Side-3 cubes 5 voxels apart: surface voxels lie 3, 4 or 5 voxels from the other cube's facing
    # surface (9, 8 and 9 of them); the 95th percentile of those 26 distances is 5 voxels.
    start_b = [1, 1, 1]
    start_b[axis] += 5
    a = _cube((14, 14, 14), (1, 1, 1), 3)
    b = _cube((14, 14, 14), tuple(start_b), 3)
    dice, hd95 = dice_hd95(a, b, spacing)
    assert dice == 0.0
    assert hd95 == pytest.approx(expected)


def test_hd95_ignores_a_few_outlying_voxels():
    truth = _cube((40, 40, 40), (5, 5, 5), 12)
    pred = truth.copy()
    pred[38, 38, 38] = True  # one stray voxel about 40 voxels away
    dice, hd95 = dice_hd95(pred, truth, (1, 1, 1))
    assert hd95 == 0.0
    assert dice == pytest.approx(2 * 1728 / (1728 + 1729))


def test_empty_mask_rules():
    empty = np.zeros((8, 8, 8), dtype=bool)
    full = _cube((8, 8, 8), (2, 2, 2), 3)
    assert dice_hd95(empty, empty, (1, 1, 1)) == (1.0, 0.0)
    assert dice_hd95(empty, full, (1, 1, 1)) == (0.0, BRATS_MAX_HD95)
    assert dice_hd95(full, empty, (1, 1, 1)) == (0.0, BRATS_MAX_HD95)
    assert sensitivity_specificity(empty, empty) == (1.0, 1.0)
    assert sensitivity_specificity(empty, full)[0] == 0.0
    sens, spec = sensitivity_specificity(full, empty)
    assert sens == 0.0
    assert spec == pytest.approx((512 - 27) / 512)


def test_sensitivity_specificity_hand_values():
    truth = _cube((10, 10, 10), (2, 2, 2), 3)  # 27 voxels
    pred = truth.copy()
    pred[2, 2, 2] = False  # one miss
    pred[8, 8, 8] = pred[8, 8, 7] = True  # two false alarms
    sens, spec = sensitivity_specificity(pred, truth)
    assert sens == pytest.approx(26 / 27)
    assert spec == pytest.approx((1000 - 27 - 2) / (1000 - 27))


def _label_2021(shape=(16, 16, 16), corner=(3, 3, 3)):
    # WT: side-6 cube of oedema, NETC side 4 inside it, ET side 2 inside that.
    lab = np.zeros(shape, dtype=np.uint8)
    x, y, z = corner
    lab[x : x + 6, y : y + 6, z : z + 6] = 2
    lab[x + 1 : x + 5, y + 1 : y + 5, z + 1 : z + 5] = 1
    lab[x + 2 : x + 4, y + 2 : y + 4, z + 2 : z + 4] = 4
    return lab


def test_segmentation_metrics_keys_and_shifted_regions():
    truth = _label_2021()
    pred = np.roll(truth, 1, axis=2)
    m = segmentation_metrics(pred, truth, "brats2021", "brats2021", spacing=(1, 1, 2))
    for region in ("TC", "WT", "ET"):
        for name in ("Dice", "HD95", "VolDiff_ml", "VolDiff_rel", "Sens", "Spec"):
            assert f"{name}_{region}" in m
    # Regions are cubes of side 4 (TC), 6 (WT), 2 (ET) shifted by 1 voxel: Dice = (s - 1) / s.
    assert m["Dice_WT"] == pytest.approx(5 / 6)
    assert m["Dice_TC"] == pytest.approx(3 / 4)
    assert m["Dice_ET"] == pytest.approx(1 / 2)
    assert m["Sens_ET"] == pytest.approx(1 / 2)
    assert m["VolDiff_ml_WT"] == 0.0


def test_volume_difference_in_ml_respects_spacing():
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:4, 2:4, 2:4] = 2  # 8 voxels
    pred = np.zeros_like(truth)
    pred[2:5, 2:5, 2:5] = 2  # 27 voxels
    m = segmentation_metrics(pred, truth, "brats2023", "brats2023", spacing=(1.0, 1.0, 2.0))
    assert m["VolDiff_ml_WT"] == pytest.approx((27 - 8) * 2.0 / 1000)
    assert m["VolDiff_rel_WT"] == pytest.approx(19 / 8)
    # No core anywhere: both empty, so Dice 1, HD95 0, volume difference 0.
    assert (m["Dice_TC"], m["HD95_TC"], m["VolDiff_rel_TC"]) == (1.0, 0.0, 0.0)


def test_segmentation_one_empty_region_uses_brats_rules():
    truth = _label_2021()
    truth[truth == 4] = 1  # the reference has no enhancing tumour
    pred = _label_2021()  # the prediction has some
    m = segmentation_metrics(pred, truth, "brats2021", "brats2021", spacing=(1, 1, 1))
    assert m["Dice_ET"] == 0.0
    assert m["HD95_ET"] == BRATS_MAX_HD95
    assert math.isnan(m["VolDiff_rel_ET"])
    assert m["Dice_WT"] == 1.0 and m["Dice_TC"] == 1.0
    m = segmentation_metrics(truth, pred, "brats2021", "brats2021", spacing=(1, 1, 1))
    assert (m["Dice_ET"], m["HD95_ET"], m["Sens_ET"], m["VolDiff_rel_ET"]) == (0.0, BRATS_MAX_HD95, 0.0, -1.0)


def test_conventions_are_compared_by_region():
    truth = _label_2021()  # ET = 4
    pred = truth.copy()
    pred[pred == 4] = 3  # the same segmentation written in BraTS 2023 values
    m = segmentation_metrics(pred, truth, "brats2023", "brats2021", spacing=(1, 1, 1))
    assert all(m[f"Dice_{r}"] == 1.0 and m[f"HD95_{r}"] == 0.0 for r in ("TC", "WT", "ET"))
    # Declaring the wrong convention loses ET (3 is no label in BraTS 2021): the regions matter.
    wrong = segmentation_metrics(pred, truth, "brats2021", "brats2021", spacing=(1, 1, 1))
    assert wrong["Dice_ET"] == 0.0


def test_segmentation_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        segmentation_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), "brats2021", "brats2021")


# ---------------------------------------------------------------------------------------------- synthesis


def _brain_volume(shape=(24, 24, 24), radius=8, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    brain = (grid**2).sum(0) <= radius**2
    img = np.zeros(shape, dtype=np.float32)
    img[brain] = 100 + 20 * rng.standard_normal(brain.sum()) + 5 * grid[0][brain]
    return img, brain


def test_normalise_intensity_clips_at_brain_percentiles():
    img = np.zeros((10, 10, 10), dtype=np.float32)
    brain = np.zeros(img.shape, dtype=bool)
    brain[:, :, :] = True
    brain[0] = False
    img[brain] = np.arange(900, dtype=np.float32)
    out = normalise_intensity(img, brain)
    lo, hi = np.percentile(np.arange(900), [0.5, 99.5])
    assert out[~brain].max() == 0.0
    assert out.min() == 0.0 and out.max() == 1.0
    k = np.flatnonzero(img.ravel() == 450)[0]
    assert out.ravel()[k] == pytest.approx((450 - lo) / (hi - lo))


def test_identical_images_score_perfectly_in_every_region():
    img, brain = _brain_volume()
    tumour = np.zeros_like(brain)
    tumour[10:14, 10:14, 10:14] = True
    m = synthesis_metrics(img, img, brain, tumour)
    for region in ("brain", "tumour", "nontumour"):
        assert m[f"SSIM_{region}"] == pytest.approx(1.0)
        assert m[f"MAE_{region}"] == 0.0 and m[f"MSE_{region}"] == 0.0
        assert m[f"PSNR_{region}"] == math.inf


def test_synthesis_scores_ignore_intensity_space():
    # A z-scored synthesis of the exact image scores as the image itself: scores are taken after clipping
    # and rescaling each image within the brain.
    img, brain = _brain_volume()
    z = np.where(brain, (img - img[brain].mean()) / img[brain].std(), 0).astype(np.float32)
    m = synthesis_metrics(z, img)
    assert m["SSIM_brain"] == pytest.approx(1.0)
    assert m["MAE_brain"] == pytest.approx(0.0, abs=1e-6)


def test_psnr_mae_mse_known_values():
    # Brain values 1 and 2 (half each) normalise to 0 and 1; swapping 10% of them gives an error of 1 on
    # 10% of the brain: MAE = MSE = 0.1, PSNR = 10 log10(1 / 0.1) = 10 dB.
    shape = (20, 20, 20)
    brain = np.zeros(shape, dtype=bool)
    brain[5:15, 5:15, 5:15] = True  # 1000 voxels
    ref = np.zeros(shape, dtype=np.float32)
    values = np.tile([1.0, 2.0], 500)
    ref[brain] = values
    swapped = values.copy()
    swapped[:100] = 3.0 - swapped[:100]  # 50 ones -> 2, 50 twos -> 1
    pred = np.zeros_like(ref)
    pred[brain] = swapped
    m = synthesis_metrics(pred, ref)
    assert m["MAE_brain"] == pytest.approx(0.1)
    assert m["MSE_brain"] == pytest.approx(0.1)
    assert m["PSNR_brain"] == pytest.approx(10.0)


def test_region_average_differs_from_whole_volume_average():
    # A small brain in a large empty volume: the background is matched perfectly and inflates SSIM.
    ref, brain = _brain_volume(shape=(32, 32, 32), radius=7, seed=1)
    noisy = ref + np.where(brain, 100 * np.random.default_rng(2).standard_normal(ref.shape), 0)
    m = synthesis_metrics(noisy.astype(np.float32), ref)
    whole = structural_similarity(
        normalise_intensity(ref, brain), normalise_intensity(noisy, brain), data_range=1.0
    )
    assert whole > 0.9
    assert m["SSIM_brain"] < whole - 0.2


def test_default_brain_mask_is_the_reference_nonzero_and_regions_split_the_brain():
    ref, brain = _brain_volume()
    pred, _ = _brain_volume(seed=3)
    tumour = np.zeros_like(brain)
    tumour[8:13, 8:13, 8:13] = True
    np.testing.assert_equal(synthesis_metrics(pred, ref), synthesis_metrics(pred, ref, ref != 0))
    other_mask = synthesis_metrics(pred, ref, brain & (np.indices(brain.shape)[0] < 12))
    assert other_mask["SSIM_brain"] != pytest.approx(synthesis_metrics(pred, ref)["SSIM_brain"])
    m = synthesis_metrics(pred, ref, None, tumour, spacing=(1.0, 1.0, 2.0))
    assert m["Vol_ml_brain"] == pytest.approx(brain.sum() * 2 / 1000)
    assert m["Vol_ml_tumour"] + m["Vol_ml_nontumour"] == pytest.approx(m["Vol_ml_brain"])
    assert m["SSIM_tumour"] != pytest.approx(m["SSIM_nontumour"])
    no_tumour = synthesis_metrics(pred, ref)
    assert math.isnan(no_tumour["SSIM_tumour"]) and math.isnan(no_tumour["SSIM_nontumour"])


def test_synthesis_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        synthesis_metrics(np.ones((8, 8, 8)), np.ones((8, 8, 9)))
    with pytest.raises(ValueError, match="empty"):
        synthesis_metrics(np.ones((8, 8, 8)), np.zeros((8, 8, 8)))


def test_baseline_source():
    assert {c: baseline_source(c) for c in NEAREST} == NEAREST
    assert baseline_source("T1GD") == "t1n"
    assert baseline_source("t1c", ["t2", "flair"]) == "t2w"
    assert baseline_source("flair", ["t2w", "t1n"]) == "t2w"
    with pytest.raises(ValueError, match="no acquired contrast"):
        baseline_source("t1c", ["t1c"])


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_t1_copied_as_t1c_scores_far_lower_in_the_brain_than_over_the_volume():
    case = BRATS_DIR / "brats2018" / "Brats18_2013_11_1"
    if not case.is_dir():
        pytest.skip(f"real BraTS data not found at {case}")
    t1 = np.asarray(nib.load(case / f"{case.name}_t1.nii.gz").dataobj, dtype=np.float32)
    t1c = np.asarray(nib.load(case / f"{case.name}_t1ce.nii.gz").dataobj, dtype=np.float32)
    brain = t1c != 0
    m = synthesis_metrics(t1, t1c)
    whole = structural_similarity(
        normalise_intensity(t1c, brain), normalise_intensity(t1, brain), data_range=1.0
    )
    assert 0.85 < whole < 0.95
    assert 0.40 < m["SSIM_brain"] < 0.55
    assert m["SSIM_brain"] < whole - 0.3

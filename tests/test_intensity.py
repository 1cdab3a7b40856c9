"""Histogram standardisation of synthesised contrasts (Nyúl et al. 2000)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medmtl.bundle_config import read_model_config
from medmtl.intensity import (
    LANDMARK_PERCENTILES,
    check_landmarks,
    image_landmarks,
    learn_landmarks,
    standardise,
    standardise_synth,
)
from medmtl.metrics import synthesis_metrics


def _brain(shape=(24, 24, 16)) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return zz**2 + yy**2 + xx**2 < 0.8


def test_landmarks_are_z_score_percentiles_of_the_brain():
    rng = np.random.default_rng(0)
    brain = _brain()
    img = np.zeros(brain.shape)
    img[brain] = rng.uniform(100, 300, brain.sum())  # any scanner units, zero outside
    marks = image_landmarks(img)
    # a uniform distribution in z units spans +-sqrt(3), median 0
    assert marks[0] == pytest.approx(-np.sqrt(3), abs=0.02)
    assert marks[-1] == pytest.approx(np.sqrt(3), abs=0.02)
    assert marks[LANDMARK_PERCENTILES.index(50.0)] == pytest.approx(0.0, abs=0.03)
    # scale and offset of the scanner do not change them
    np.testing.assert_allclose(image_landmarks(np.where(brain, 3 * img + 50, 0)), marks, atol=1e-9)
    with pytest.raises(ValueError, match="empty"):
        image_landmarks(np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="constant"):
        image_landmarks(np.ones((4, 4, 4)))


def test_standardise_maps_onto_the_landmarks_and_keeps_ranks():
    rng = np.random.default_rng(1)
    brain = _brain()
    img = np.where(brain, rng.normal(0, 0.3, brain.shape), 0).astype(np.float32)  # compressed, no tail
    target = np.where(brain, rng.gamma(2.0, 1.0, brain.shape), 0)  # skewed, a long bright tail
    marks = image_landmarks(target)
    out = standardise(img, brain, marks, LANDMARK_PERCENTILES)
    np.testing.assert_allclose(image_landmarks(out, brain), marks, atol=0.02)
    # monotone: the order of the brain voxels is unchanged, the background untouched
    order = np.argsort(img[brain], kind="stable")
    assert np.all(np.diff(out[brain][order]) >= -1e-6)
    assert np.all(out[~brain] == 0)
    # already on the landmarks: (nearly) the identity
    z = np.where(brain, (target - target[brain].mean()) / target[brain].std(), 0)
    np.testing.assert_allclose(standardise(z, brain, marks, LANDMARK_PERCENTILES)[brain], z[brain], atol=0.05)
    # a constant brain has no histogram to map
    flat = np.where(brain, 2.0, 0).astype(np.float32)
    np.testing.assert_array_equal(standardise(flat, brain, marks, LANDMARK_PERCENTILES), flat)


def test_standardising_a_tail_less_synthesis_raises_its_percentile_scores():
    """The failure it fixes: a prediction without the reference's bright tail scores badly after the
    per-image percentile rescaling of the synthesis scorers, though its structure is right."""
    rng = np.random.default_rng(2)
    brain = _brain((32, 32, 24))
    smooth = np.cumsum(rng.normal(size=brain.shape), axis=0) / 6.0
    ref = np.where(brain, 1.0 + 0.2 * smooth + (rng.random(brain.shape) > 0.97) * 3.0, 0)  # vessels
    pred = np.where(brain, 0.2 * smooth, 0)  # right structure, no vessels
    before = synthesis_metrics(pred, ref)["MAE_brain"]
    fixed = standardise(pred, brain, image_landmarks(ref), LANDMARK_PERCENTILES)
    after = synthesis_metrics(fixed, ref)["MAE_brain"]
    assert after < 0.5 * before


def test_learn_landmarks_averages_cases_and_skips_missing_contrasts(tmp_path):
    rng = np.random.default_rng(3)
    brain = _brain()
    entries, each = [], []
    for i in range(2):
        img = np.where(brain, rng.gamma(2.0 + i, 1.0, brain.shape) + 1.0, 0).astype(np.float32)
        path = tmp_path / f"case{i}_t1c.nii.gz"
        nib.save(nib.Nifti1Image(img, np.eye(4)), path)
        entries.append({"case_id": f"c{i}", "t1c": str(path)})
        each.append(image_landmarks(img))
    entries.append({"case_id": "no_t1c"})
    out = learn_landmarks(entries, ["t1c", "t2f"])
    assert out["percentiles"] == list(LANDMARK_PERCENTILES)
    np.testing.assert_allclose(out["t1c"], np.mean(each, axis=0), atol=1e-4)
    assert "t2f" not in out  # no case has it
    check_landmarks(out)


def test_bad_landmarks_are_reported_with_the_file(tmp_path):
    with pytest.raises(ValueError, match="increase"):
        check_landmarks({"percentiles": [50, 10], "t1c": [0, 1]})
    with pytest.raises(ValueError, match="'t1c'"):
        check_landmarks({"percentiles": [0, 50, 100], "t1c": [0, 1]})
    with pytest.raises(ValueError, match="'t1c'"):
        check_landmarks({"percentiles": [0, 50, 100], "t1c": [2, 1, 3]})
    cfg = {
        "input_contrasts": ["t1n"],
        "target_contrasts": ["t1c"],
        "spacing": [2, 2, 2],
        "network_preset": "cpu",
        "synth_landmarks": {"percentiles": [0, 100], "t1c": ["a", 1]},
    }
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_config\.json: synth_landmarks"):
        read_model_config(path)


def test_standardise_synth_only_touches_contrasts_with_landmarks():
    brain = _brain()
    rng = np.random.default_rng(4)
    img = np.where(brain, rng.normal(size=brain.shape), 0).astype(np.float32)
    marks = {"percentiles": [0.0, 50.0, 100.0], "t1c": [-1.0, 0.5, 9.0]}
    out = standardise_synth({"t1c": img, "t2f": img}, brain, marks)
    assert out["t1c"][brain].max() == pytest.approx(9.0) and out["t1c"][brain].min() == pytest.approx(-1.0)
    np.testing.assert_array_equal(out["t2f"], img)
    np.testing.assert_array_equal(standardise_synth({"t1c": img}, brain, None)["t1c"], img)

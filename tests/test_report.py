"""Tests of medmtl.report: orientation of displayed slices, overlays, figure files."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from medmtl.labels import COLOURS
from medmtl.report import (
    case_figure,
    label_overlay,
    scores_line,
    slice_centre,
    summary_figure,
    to_ras,
    view_slice,
)

# LPS on disk (BraTS): voxel index i runs to the patient's left, j to posterior, k to superior.
LPS = np.diag([-1.0, -1.0, 2.0, 1.0])


def test_to_ras_reorients_an_lps_volume():
    vol = np.zeros((6, 7, 5), dtype=np.float32)
    vol[0, 0, 4] = 1  # patient's far right, anterior, superior
    ras, zooms = to_ras(vol, LPS)
    assert ras.shape == (6, 7, 5)
    assert zooms == (1.0, 1.0, 2.0)
    assert ras[5, 6, 4] == 1  # RAS: largest x (right), largest y (anterior)


def test_view_slices_follow_the_radiological_convention():
    ras = np.zeros((6, 7, 5), dtype=np.float32)
    ras[5, 6, 4] = 1  # right, anterior, superior
    axial = view_slice(ras, "axial", 4)
    assert axial.shape == (7, 6)
    assert axial[0, 0] == 1  # anterior at the top, patient's right on the image left
    assert view_slice(ras, "axial", 4, radiological=False)[0, -1] == 1
    coronal = view_slice(ras, "coronal", 6)
    assert coronal.shape == (5, 6) and coronal[0, 0] == 1  # superior at the top, right on the left
    sagittal = view_slice(ras, "sagittal", 5)
    assert sagittal.shape == (5, 7) and sagittal[0, 0] == 1  # superior at the top, anterior on the left
    with pytest.raises(ValueError, match="unknown view"):
        view_slice(ras, "oblique", 0)


def test_slice_centre_uses_the_tumour_then_the_brain():
    brain = np.zeros((20, 20, 20), dtype=bool)
    brain[2:12, 4:10, 6:8] = True
    tumour = np.zeros_like(brain)
    tumour[14:17, 1:4, 10:13] = True
    assert slice_centre(tumour, brain) == (15, 2, 11)
    assert slice_centre(np.zeros_like(brain), brain) == (6, 6, 6)  # centroid 6.5 rounds to even
    assert slice_centre(None, brain) == (6, 6, 6)


def test_label_overlay_uses_brats_colours_per_convention():
    lab = np.array([[0, 1, 2, 3, 4]])
    over_2021 = label_overlay(lab, "brats2021", alpha=0.5)
    assert over_2021[0, 0, 3] == 0.0  # background transparent
    assert tuple(over_2021[0, 1, :3]) == COLOURS["NETC"]
    assert tuple(over_2021[0, 2, :3]) == pytest.approx(COLOURS["SNFH"])
    assert tuple(over_2021[0, 4, :3]) == COLOURS["ET"] and over_2021[0, 4, 3] == 0.5
    assert over_2021[0, 3, 3] == 0.0  # 3 is no label in BraTS 2021
    over_2023 = label_overlay(lab, "brats2023")
    assert tuple(over_2023[0, 3, :3]) == COLOURS["ET"] and over_2023[0, 4, 3] == 0.0


def _case(shape=(24, 24, 12)):
    rng = np.random.default_rng(0)
    grid = np.indices(shape) - (np.array(shape)[:, None, None, None] - 1) / 2
    brain = (grid**2).sum(0) <= 9**2
    img = np.where(brain, 100 + 10 * rng.standard_normal(shape), 0).astype(np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:10, 5:11, 3:7] = 2
    lab[5:8, 6:9, 4:6] = 4
    return img, lab


def test_case_figure_writes_a_loadable_png(tmp_path):
    img, lab = _case()
    out = tmp_path / "figs" / "case.png"
    path = case_figure(
        out,
        LPS,
        inputs={"t1n": img, "t2f": img * 1.5},
        true_label=lab,
        pred_label=np.roll(lab, 1, axis=0),
        true_convention="brats2021",
        pred_convention="brats2021",
        synth={
            "t1c": (img, img + 5 * np.random.default_rng(1).standard_normal(img.shape).astype(np.float32))
        },
        title="case",
    )
    assert path == out
    png = imread(out)
    # 2 inputs + 2 label rows + 3 synthesis rows, three views each: a tall colour image.
    assert png.ndim == 3 and png.shape[0] > 2 * png.shape[1]
    assert png[..., :3].std() > 0.05
    assert [p.name for p in out.parent.iterdir()] == ["case.png"]  # no temporary file left behind


def _yellow_pixels(png):
    rgb = png[..., :3]
    return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.8) & (rgb[..., 2] < 0.4)).sum())


def test_case_figure_draws_the_label_overlay(tmp_path):
    # The same figure with the enhancing tumour relabelled as necrosis loses its yellow overlay pixels
    # (the legend, drawn in both, keeps a few).
    img, lab = _case()
    no_et = np.where(lab == 4, 1, lab).astype(np.uint8)
    counts = []
    for name, label in (("et", lab), ("no_et", no_et)):
        out = case_figure(tmp_path / f"{name}.png", LPS, {"t2f": img}, label, label, "brats2021", "brats2021")
        counts.append(_yellow_pixels(imread(out)))
    assert counts[0] > counts[1] + 50


def test_case_figure_needs_a_convention_and_an_image(tmp_path):
    img, lab = _case()
    with pytest.raises(ValueError, match="convention"):
        case_figure(tmp_path / "a.png", LPS, {"t1n": img}, true_label=lab)
    with pytest.raises(ValueError, match="nothing to draw"):
        case_figure(tmp_path / "b.png", LPS, {})
    assert not any(tmp_path.iterdir())


def test_summary_figure(tmp_path):
    rows = [
        {"case_id": f"c{i}", "Dice_TC": 0.7 + 0.05 * i, "Dice_WT": 0.9, "Dice_ET": np.nan,
         "t1c_SSIM_brain": 0.6 + 0.05 * i, "t1c_baseline_SSIM_brain": 0.45,
         "t1c_SSIM_tumour": 0.5, "t1c_baseline_SSIM_tumour": 0.3}
        for i in range(4)
    ]  # fmt: skip
    out = summary_figure(rows, tmp_path / "summary.png")
    png = imread(out)
    assert png.ndim == 3 and png.shape[1] > png.shape[0]  # three panels side by side
    with pytest.raises(ValueError, match="no finite"):
        summary_figure([{"case_id": "x", "Dice_WT": np.nan}], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_scores_line_names_each_score_and_skips_missing_ones():
    row = {"Dice_TC": 0.812, "Dice_WT": 0.9, "Dice_ET": float("nan"), "t1c_SSIM_brain": 0.625,
           "t1c_baseline_SSIM_brain": 0.371, "case_id": "x"}  # fmt: skip
    assert scores_line(row) == "Dice TC 0.81 WT 0.90 | t1c SSIM 0.62 (copy 0.37)"
    assert scores_line({"case_id": "x"}) == ""


def test_case_figure_prints_the_scores_under_the_case_id(tmp_path):
    img, lab = _case()
    kw = {"inputs": {"t2f": img}, "true_label": lab, "true_convention": "brats2021", "title": "case-7"}
    plain = imread(case_figure(tmp_path / "a.png", LPS, **kw))
    scored = imread(case_figure(tmp_path / "b.png", LPS, scores="Dice TC 0.81 WT 0.90", **kw))
    # The score line takes a second title line: the figure grows and its top differs.
    assert scored.shape[0] > plain.shape[0] or not np.array_equal(scored[:40], plain[:40])


def test_a_long_case_figure_title_wraps_instead_of_being_cut():
    from medmtl.report import TITLE_WIDTH, figure_title

    scores = (
        "Dice TC 0.81 WT 0.90 ET 0.70 | t1n SSIM 0.62 (copy 0.37) | t1c SSIM 0.55 (copy 0.40) | t2w SSIM 0.7"
    )
    text = figure_title("BraTS-GLI-00000-000-with-a-very-long-name-that-goes-on-and-on-and-on-and-on", scores)
    lines = text.splitlines()
    assert len(lines) > 2 and all(len(line) <= TITLE_WIDTH for line in lines), lines
    assert "t1n SSIM 0.62 (copy 0.37)" in text  # score parts kept whole
    assert figure_title("case", "Dice TC 0.81") == "case\nDice TC 0.81"


def test_summary_figure_shows_negative_scores():
    from medmtl.report import score_range

    assert score_range([[0.2, 0.9], [0.5]]) == (0.0, 1.02)
    bottom, top = score_range([[0.3, -0.2], []])
    assert bottom < -0.2 and top == 1.02


def test_the_synthesis_table_says_which_contrasts_were_inputs():
    from medmtl.evaluation import _role

    assert _role("t1c", {"t1c_input": {"mean": 0.0}}) == "t1c (synthesised: not an input)"
    assert _role("t1n", {"t1n_input": {"mean": 1.0}}) == "t1n (restoration: an input)"
    assert "50%" in _role("t2w", {"t2w_input": {"mean": 0.5}})

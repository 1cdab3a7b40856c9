"""The demo tells the user plainly what its short run did not learn."""

from __future__ import annotations

from medmtl.demo import scores_text, shortfalls


def _m(**means: float) -> dict:
    return {k: {"mean": v, "std": 0.0} for k, v in means.items()}


def test_shortfalls_name_missing_et_and_synthesis_below_the_copy_baseline():
    bad = _m(Dice_ET=0.0, Dice_WT=0.7, t1c_SSIM_brain=0.60, t1c_baseline_SSIM_brain=0.73)
    notes = shortfalls(bad, steps=96)
    assert len(notes) == 2
    assert "ET is not found" in notes[0] and "96 training steps" in notes[0]
    assert "0.600" in notes[1] and "0.730" in notes[1]
    good = _m(Dice_ET=0.5, t1c_SSIM_brain=0.80, t1c_baseline_SSIM_brain=0.73)
    assert shortfalls(good, steps=96) == []


def test_scores_text_prints_dice_and_synthesis_beside_the_baseline():
    text = scores_text(
        _m(Dice_WT=0.71, Dice_TC=0.46, Dice_ET=0.0, t1c_SSIM_brain=0.6, t1c_baseline_SSIM_brain=0.73)
    )
    assert "WT 0.710, TC 0.460, ET 0.000" in text and "0.600" in text and "0.730" in text
    assert "TC -" not in scores_text(_m(Dice_TC=0.5)) and "ET -" in scores_text(_m(Dice_TC=0.5))

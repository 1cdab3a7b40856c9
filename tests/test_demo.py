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


def test_demo_refuses_a_folder_that_holds_no_demo_run(tmp_path, capsys):
    from medmtl.cli import main

    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "scan.nii.gz").write_bytes(b"not yours")
    rc = main(["demo", "--out", str(mine)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds no demo run" in err[0], err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "scan.nii.gz"]
    assert (mine / "notes.txt").read_text() == "my notes"


def test_demo_replaces_only_its_own_files_when_settings_change(tmp_path):
    import json

    from medmtl.demo import DEMO_STAMP, prepare_demo_folder

    out = tmp_path / "demo"
    prepare_demo_folder(out / "new", {"n_cases": 3})  # a new folder is made, ready to be written
    assert (out / "new").is_dir()
    (out / "new").rmdir()
    (out / "data").mkdir(parents=True)
    (out / "data" / "case.nii.gz").write_bytes(b"phantom")
    (out / DEMO_STAMP).write_text(json.dumps({"n_cases": 3}))
    (out / "mine.txt").write_text("keep")
    prepare_demo_folder(out, {"n_cases": 3})  # same settings: resumed, nothing removed
    assert (out / "data" / "case.nii.gz").is_file()
    prepare_demo_folder(out, {"n_cases": 4})  # other settings: the demo's files go, the user's stay
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / DEMO_STAMP).write_text(json.dumps({"n_cases": 4}))
    prepare_demo_folder(out, {"n_cases": 4}, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]

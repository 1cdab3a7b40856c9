"""The ablation script's bookkeeping: row configs, low-data datalists, tables, and one tiny end-to-end row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ablation  # noqa: E402


def test_rows_name_real_stages_and_configs():
    from medmtl.training import ABLATIONS, STAGES

    configs = Path(__file__).resolve().parents[1] / "bundles" / "brats_mtl" / "configs"
    for name, (stage, overrides, _, n_train) in ablation.ROWS.items():
        assert stage in ("plain", "all", *STAGES, *ABLATIONS), name
        assert n_train is None or n_train > 0
        # every override is a key of the bundle's training config (no silently ignored typo)
        train = json.loads((configs / "train.json").read_text())
        assert set(overrides) <= set(train), (name, set(overrides) - set(train))


def test_subset_datalist_keeps_heldout_and_first_training_cases(tmp_path):
    doc = {"training": [{"case_id": f"c{i}", "fold": i % 3} for i in range(12)]}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    sub = json.loads(ablation.subset_datalist(path, tmp_path, val_fold=0, n_train=3).read_text())
    held = [e["case_id"] for e in sub["training"] if e["fold"] == 0]
    train = [e["case_id"] for e in sub["training"] if e["fold"] != 0]
    assert held == ["c0", "c3", "c6", "c9"] and train == ["c1", "c2", "c4"]


def test_without_drops_a_flag_and_its_values():
    argv = ["--out", "o", "--rows", "a", "b", "--epochs", "3"]
    assert ablation._without(argv, "--rows") == ["--out", "o", "--epochs", "3"]


def test_markdown_tables_hold_every_row_and_scenario():
    stat = {"mean": 0.5, "std": 0.1}
    scores = {f"Dice_{r}": stat for r in ("TC", "WT", "ET")} | {f"HD95_{r}": stat for r in ("TC", "WT", "ET")}
    for part in ("brain", "tumour", "nontumour"):
        scores |= {f"t1c_SSIM_{part}": stat, f"t1c_PSNR_{part}": stat, f"t1c_baseline_SSIM_{part}": stat}
    missing = {"all": {"Dice_WT": stat}, "no_t1c": {"Dice_WT": stat, "SSIM_brain": stat}}
    meta = {
        "n_train": 10,
        "n_heldout": 5,
        "heldout": ["x"],
        "preset": "cpu",
        "epochs": 4,
        "seed": 0,
        "overrides": {},
    }
    results = {
        "meta": meta,
        "rows": {
            "seg_only": {"scores": scores, "train_s": 10.0},
            "mtl_missing": {"scores": scores, "train_s": 12.0, "missing": missing},
        },
    }
    text = ablation.markdown(results)
    assert "| seg_only |" in text and "| mtl_missing |" in text
    assert "without t1c" in text and "all four" in text
    assert "0.500 ± 0.100" in text


@pytest.mark.slow
def test_one_row_end_to_end_on_phantoms(tmp_path, write_phantom_case):
    data = tmp_path / "data"
    for i in range(3):
        write_phantom_case(data, i)
    out = tmp_path / "abl"
    res = ablation.main(
        ["--dataset-dir", str(data), "--out", str(out), "--epochs", "1", "--rows", "seg_only", "--folds", "3",
         "--set", "roi_size=[32,32,32]", "val_roi_size=[64,64,64]"]
    )  # fmt: skip
    row = res["rows"]["seg_only"]
    assert 0.0 <= row["scores"]["Dice_WT"]["mean"] <= 1.0
    assert (out / "ablation.md").is_file() and (out / "seg_only" / "models" / "model.pt").is_file()

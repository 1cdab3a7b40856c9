"""The held-out benchmark's scenarios: every non-empty subset of the four contrasts, once each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import heldout  # noqa: E402


def test_subsets_are_the_fifteen_non_empty_subsets_once_each():
    present = heldout.scenarios(subsets=True)
    combos = [frozenset(c) for c in present.values()]
    assert len(combos) == len(set(combos)) == 15 and all(combos)
    assert present["all"] == heldout.FOUR and set(present["no_t1c"]) == {"t1n", "t2w", "t2f"}
    assert set(heldout.scenarios(subsets=False)) == {"all", "no_t1c"}


def test_fold_datalist_leaves_out_absent_contrasts_and_other_folds(tmp_path):
    entry = {c: f"case/{c}.nii.gz" for c in heldout.FOUR}
    doc = {
        "dataset_dir": str(tmp_path),
        "training": [
            {
                "case_id": "a",
                "fold": 0,
                "contrasts": list(heldout.FOUR),
                "image": list(entry.values()),
                **entry,
            },
            {
                "case_id": "b",
                "fold": 1,
                "contrasts": list(heldout.FOUR),
                "image": list(entry.values()),
                **entry,
            },
        ],
    }
    (tmp_path / "d.json").write_text(json.dumps(doc))
    out = heldout.fold_datalist(tmp_path / "d.json", 0, ("t1c", "t2f"), tmp_path / "o" / "d.json")
    cases = json.loads(out.read_text())["training"]
    assert [e["case_id"] for e in cases] == ["a"]
    assert cases[0]["contrasts"] == ["t1c", "t2f"] and cases[0]["image"] == [
        "case/t1c.nii.gz",
        "case/t2f.nii.gz",
    ]
    assert "t1n" not in cases[0] and "t2w" not in cases[0]

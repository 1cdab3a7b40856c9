"""Datalist writing (data_prep.datalist: prepare, folds, CLI) and reading (medmtl.datalist)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import nonconstant_image as _image
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from data_prep.datalist import DatasetValidationError, assign_folds, prepare, report_path
from medmtl.commands.prepare import add_arguments, main
from medmtl.datalist import canonical_channel_order, load_datalist

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (6, 5, 4)
#: Each contrast is written as a constant volume of its own value, so channel order can be checked.
VALUE = {"t1n": 1, "t1c": 2, "t2w": 3, "t2f": 4}


def _brats_dir() -> Path:
    env = os.environ.get("MEDMTL_BRATS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"


def _write(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))


def _seg(et: int = 3) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[1:4, 1:4, 1:3] = 2
    seg[2, 2, 1:3] = 1
    seg[2, 3, 2] = et
    return seg


def _case2023(root: Path, case_id: str, seg: bool = True, skip: tuple[str, ...] = (), shape=SHAPE) -> None:
    for c, v in VALUE.items():
        if c not in skip:
            _write(root / case_id / f"{case_id}-{c}.nii.gz", _image(shape, v, np.int16))
    if seg:
        _write(root / case_id / f"{case_id}-seg.nii.gz", _seg())


def _msd(task: Path, train: int, test: int) -> None:
    # MSD channel order FLAIR, T1w, T1gd, T2w.
    image = np.stack([_image(SHAPE, VALUE[c], np.float32) for c in ("t2f", "t1n", "t1c", "t2w")], axis=-1)
    for i in range(train):
        _write(task / "imagesTr" / f"BRATS_{i + 1:03d}.nii.gz", image)
        _write(task / "labelsTr" / f"BRATS_{i + 1:03d}.nii.gz", _seg(et=3))
    for i in range(test):
        _write(task / "imagesTs" / f"BRATS_{i + 401:03d}.nii.gz", image)


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """7 labelled BraTS 2023 studies of 6 patients, 1 inference-only, 1 with a wrong shape."""
    root = tmp_path / "data"
    for p in range(6):
        _case2023(root / "train", f"BraTS-GLI-{p:05d}-000")
    _case2023(root / "train", "BraTS-GLI-00002-001")  # second time point of patient 2
    _case2023(root / "val", "BraTS-GLI-00100-000", seg=False)
    _case2023(root / "train", "BraTS-GLI-00050-000")
    _write(
        root / "train" / "BraTS-GLI-00050-000" / "BraTS-GLI-00050-000-t2w.nii.gz",
        _image((6, 5, 3), 1, np.int16),
    )
    return root


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return main(parser.parse_args(list(argv)))


def test_prepare_writes_relative_datalist_report_and_skips_bad_cases(dataset, tmp_path, capsys):
    out = tmp_path / "lists" / "datalist.json"
    assert _run_cli(str(dataset), "--out", str(out), "--folds", "3") == 0
    doc = json.loads(out.read_text())
    assert doc["dataset_dir"] == str(dataset.resolve())
    assert doc["contrasts"] == ["t1n", "t1c", "t2w", "t2f"] and doc["regions"] == ["TC", "WT", "ET"]
    assert (doc["folds"], doc["seed"]) == (3, 0)
    assert len(doc["training"]) == 7 and len(doc["testing"]) == 1
    entry = next(e for e in doc["training"] if e["case_id"] == "BraTS-GLI-00002-001")
    assert entry["patient_id"] == "BraTS-GLI-00002" and entry["dataset"] == "brats2023"
    assert entry["contrasts"] == ["t1n", "t1c", "t2w", "t2f"]
    assert entry["image"] == [f"train/BraTS-GLI-00002-001/BraTS-GLI-00002-001-{c}.nii.gz" for c in VALUE]
    assert entry["t1c"] == entry["image"][1] and entry["label"].endswith("-seg.nii.gz")
    assert entry["label_convention"] == "brats2023" and entry["fold"] in (0, 1, 2)
    for e in doc["training"] + doc["testing"]:
        assert all(not Path(p).is_absolute() and (dataset / p).is_file() for p in e["image"])
    (test_entry,) = doc["testing"]
    assert "label" not in test_entry and "fold" not in test_entry
    (skipped,) = doc["skipped"]
    assert skipped["case_id"] == "BraTS-GLI-00050-000"
    assert "BraTS-GLI-00050-000-t2w.nii.gz: shape (6, 5, 3) differs" in skipped["reason"]
    assert len(skipped["files"]) == 5
    report = json.loads((tmp_path / "lists" / "datalist.report.json").read_text())
    assert report["datasets"] == {
        "brats2023": {"labelled": 7, "unlabelled": 0, "inference_only": 1, "skipped": 1}
    }
    assert report["conventions"] == {"brats2023": 7}
    assert sum(report["fold_sizes"].values()) == 7
    printed = capsys.readouterr().out
    assert "skipped BraTS-GLI-00050-000" in printed and "7 labelled" in printed


def test_strict_exits_1_and_writes_nothing(dataset, tmp_path, capsys):
    out = tmp_path / "datalist.json"
    assert _run_cli(str(dataset), "--out", str(out), "--strict") == 1
    assert "BraTS-GLI-00050-000" in capsys.readouterr().err
    assert list(tmp_path.glob("*.json")) == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    with pytest.raises(DatasetValidationError) as err:
        prepare(dataset, out, strict=True)
    assert err.value.report["skipped"] == 1 and not out.exists()


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no cases found"):
        _run_cli(str(tmp_path / "empty"), "--out", str(tmp_path / "d.json"))
    assert not (tmp_path / "d.json").exists()


def test_declared_convention_contradicted_skips_the_case(dataset, tmp_path):
    report = prepare(dataset, tmp_path / "d.json", folds=2, convention="brats2021")
    # Every seg holds ET = 3, which BraTS 2018-21 labels do not have.
    assert (report["training"], report["testing"], report["skipped"]) == (0, 1, 8)
    assert all("contradict the declared convention brats2021" in s["reason"] for s in report["skipped_cases"])


def test_duplicate_case_ids_keep_the_first_copy(tmp_path):
    for copy in ("a", "b"):
        _case2023(tmp_path / copy, "BraTS-GLI-00001-000")
    _case2023(tmp_path / "a", "BraTS-GLI-00002-000")
    report = prepare(tmp_path, tmp_path / "d.json", folds=2)
    assert report["training"] == 2
    (skipped,) = report["skipped_cases"]
    assert skipped["files"][0].startswith("b/") and "also found in a/BraTS-GLI-00001-000" in skipped["reason"]


def test_no_usable_case_is_an_error(tmp_path):
    _case2023(tmp_path / "data", "BraTS-GLI-00001-000", skip=("t1n", "t2w"))
    with pytest.raises(ValueError, match="none of the 1 cases"):
        prepare(tmp_path / "data", tmp_path / "d.json")
    assert not (tmp_path / "d.json").exists()


def test_allow_missing_keeps_the_present_contrasts(tmp_path):
    root = tmp_path / "data"
    for p in range(2):
        _case2023(root, f"BraTS-GLI-{p:05d}-000")
    _case2023(root, "BraTS-GLI-00009-000", skip=("t1c",))
    plain = prepare(root, tmp_path / "a.json", folds=2)
    assert plain["training"] == 2 and "missing contrast(s) t1c" in plain["skipped_cases"][0]["reason"]
    prepare(root, tmp_path / "b.json", folds=2, allow_missing=True)
    entry = next(e for e in json.loads((tmp_path / "b.json").read_text())["training"] if "missing" in e)
    assert entry["missing"] == ["t1c"] and entry["contrasts"] == ["t1n", "t2w", "t2f"]
    assert len(entry["image"]) == 3 and "t1c" not in entry
    with pytest.raises(DatasetValidationError):
        prepare(root, tmp_path / "c.json", folds=2, strict=True)


def test_msd_datalist_entries_keep_the_4d_file_and_its_channel_order(tmp_path):
    _msd(tmp_path / "Task01_BrainTumour", train=3, test=1)
    report = prepare(tmp_path, tmp_path / "msd.json", folds=3)
    assert report["conventions"] == {"msd": 3}
    doc = json.loads((tmp_path / "msd.json").read_text())
    entry = doc["training"][0]
    assert entry["image"] == "Task01_BrainTumour/imagesTr/BRATS_001.nii.gz"
    assert entry["contrasts"] == ["t2f", "t1n", "t1c", "t2w"] and entry["label_convention"] == "msd"
    assert not {"t1n", "t1c", "t2w", "t2f"} & set(entry)
    assert doc["testing"][0]["image"].startswith("Task01_BrainTumour/imagesTs/")


def test_loaded_channels_reorder_to_canonical(tmp_path):
    _msd(tmp_path / "msd", train=2, test=0)
    _case2023(tmp_path / "b23", "BraTS-GLI-00001-000")
    _case2023(tmp_path / "b23", "BraTS-GLI-00002-000", skip=("t2w",))
    loader = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")])
    for folder, allow in (("msd", False), ("b23", True)):
        prepare(tmp_path / folder, tmp_path / f"{folder}.json", folds=1, allow_missing=allow)
        for entry in load_datalist(tmp_path / f"{folder}.json"):
            image = loader(entry)["image"]
            order = canonical_channel_order(entry)
            values = [float(image[i].mean()) for i in order]
            assert values == [VALUE[c] for c in VALUE if c not in entry.get("missing", [])]


def test_canonical_channel_order():
    assert canonical_channel_order({"contrasts": ["t2f", "t1n", "t1c", "t2w"]}) == [1, 2, 3, 0]
    assert canonical_channel_order({"contrasts": ["FLAIR", "T1"]}) == [1, 0]
    assert canonical_channel_order({}) == [0, 1, 2, 3]


def test_folds_deterministic_balanced_grouped_and_seeded():
    patients = [f"P{i}" for i in range(20) for _ in range(1 + i % 3)]  # 40 studies, 1-3 per patient
    folds = assign_folds(patients, 5, seed=3)
    assert folds == assign_folds(patients, 5, seed=3)
    assert folds != assign_folds(patients, 5, seed=4)
    for pid in set(patients):
        assert len({f for p, f in zip(patients, folds) if p == pid}) == 1
    sizes = Counter(folds)
    assert sorted(sizes) == [0, 1, 2, 3, 4] and max(sizes.values()) - min(sizes.values()) <= 3
    # Input order does not change which fold a patient lands in.
    order = np.random.default_rng(0).permutation(len(patients))
    shuffled = assign_folds([patients[i] for i in order], 5, seed=3)
    assert all(shuffled[k] == folds[i] for k, i in enumerate(order))


def test_folds_need_enough_patients():
    with pytest.raises(ValueError, match="cannot make 5 folds from 3 patients"):
        assign_folds(["a", "a", "b", "c"], 5)
    assert assign_folds([], 5) == []


def test_too_few_folds_says_what_was_skipped_first(dataset, tmp_path):
    # 6 patients are usable and one case is broken: 9 folds cannot be made, and the error says why
    # the count is what it is before it says so.
    with pytest.raises(ValueError) as info:
        prepare(dataset, tmp_path / "d.json", folds=9)
    msg = str(info.value)
    assert "1 skipped" in msg and "skipped BraTS-GLI-00050-000" in msg and "t2w" in msg, msg
    assert msg.index("1 skipped") < msg.index("cannot make 9 folds from 6 patients"), msg
    assert not (tmp_path / "d.json").exists()


def test_prepare_folds_group_patients_and_depend_on_seed(dataset, tmp_path):
    per_seed = []
    for seed in (0, 1, 0):
        prepare(dataset, tmp_path / f"s{seed}.json", folds=3, seed=seed)
        train = json.loads((tmp_path / f"s{seed}.json").read_text())["training"]
        by_case = {e["case_id"]: e["fold"] for e in train}
        assert by_case["BraTS-GLI-00002-000"] == by_case["BraTS-GLI-00002-001"]
        per_seed.append(by_case)
    assert per_seed[0] == per_seed[2] and per_seed[0] != per_seed[1]


def test_load_datalist_fold_selection_and_base_folder(dataset, tmp_path):
    out = tmp_path / "d.json"
    prepare(dataset, out, folds=3)
    val = load_datalist(out, folds=[0])
    train = load_datalist(out, exclude_folds=[0])
    assert {e["fold"] for e in val} == {0} and 0 not in {e["fold"] for e in train}
    assert len(val) + len(train) == 7
    assert all(
        Path(p).is_absolute() and Path(p).is_file() for e in val + train for p in e["image"] + [e["label"]]
    )
    assert all(e["t1c"] == e["image"][1] for e in train)
    assert [e["case_id"] for e in load_datalist(out, section="testing")] == ["BraTS-GLI-00100-000"]
    # The dataset folder moves: an explicit dataset_dir resolves the same relative paths.
    moved = tmp_path / "moved"
    dataset.rename(moved)
    with pytest.raises(FileNotFoundError, match="dataset_dir"):
        load_datalist(out)
    assert load_datalist(out, dataset_dir=moved, folds=0)[0]["label"].startswith(str(moved))
    with pytest.raises(ValueError, match="no training case left"):
        load_datalist(out, dataset_dir=moved, folds=[7])
    with pytest.raises(ValueError, match="not both"):
        load_datalist(out, dataset_dir=moved, folds=[0], exclude_folds=[1])
    with pytest.raises(ValueError, match="without a fold"):
        load_datalist(out, dataset_dir=moved, section="testing", folds=[0])
    with pytest.raises(ValueError, match="no section 'validation'"):
        load_datalist(out, dataset_dir=moved, section="validation")


def test_prepare_unlabelled_train_puts_unlabelled_studies_in_training_folds(
    dataset, tmp_path, capsys, caplog
):
    # labelled and unlabelled folders under one dataset folder; one unlabelled study is a later time
    # point of labelled patient 3, one is a patient of its own (BraTS-GLI-00100 in val/)
    _case2023(dataset / "unlabelled", "BraTS-GLI-00003-001", seg=False)
    _case2023(dataset / "unlabelled", "BraTS-GLI-00200-000", seg=False)
    default = tmp_path / "default.json"
    prepare(dataset, default, folds=3)
    assert {e["case_id"] for e in json.loads(default.read_text())["testing"]} == {
        "BraTS-GLI-00100-000", "BraTS-GLI-00003-001", "BraTS-GLI-00200-000"
    }  # fmt: skip

    out = tmp_path / "with_unlabelled.json"
    assert _run_cli(str(dataset), "--out", str(out), "--folds", "3", "--unlabelled", "train") == 0
    doc = json.loads(out.read_text())
    assert doc["testing"] == []
    unlabelled = {e["case_id"]: e for e in doc["training"] if "label" not in e}
    assert set(unlabelled) == {"BraTS-GLI-00100-000", "BraTS-GLI-00003-001", "BraTS-GLI-00200-000"}
    folds = {e["case_id"]: e["fold"] for e in doc["training"]}
    assert folds["BraTS-GLI-00003-001"] == folds["BraTS-GLI-00003-000"]  # grouped by patient
    assert all(f in (0, 1, 2) for f in folds.values())
    # the labelled cases keep the folds they have without the unlabelled studies
    labelled = {e["case_id"]: e["fold"] for e in json.loads(default.read_text())["training"]}
    assert {c: f for c, f in folds.items() if c not in unlabelled} == labelled
    report = json.loads(report_path(out).read_text())
    assert (report["training"], report["unlabelled_training"], report["testing"]) == (10, 3, 0)
    counts = {"labelled": 7, "unlabelled": 3, "inference_only": 0, "skipped": 1}
    assert report["datasets"]["brats2023"] == counts
    assert sum(report["unlabelled_fold_sizes"].values()) == 3
    printed = capsys.readouterr().out
    assert "7 labelled (training), 3 unlabelled (training, synthesis loss only)" in printed, printed
    assert "0 inference-only" in printed

    # validation and model selection read the labelled cases of a fold only, and say what was left out
    fold = folds["BraTS-GLI-00003-001"]
    every = load_datalist(out, folds=[fold])
    with caplog.at_level(logging.INFO, logger="medmtl.datalist"):
        val = load_datalist(out, folds=[fold], labelled_only=True)
    assert val and all(e.get("label") for e in val) and len(val) < len(every)
    assert f"{len(every) - len(val)} of {len(every)} training cases in folds [{fold}]" in caplog.text
    assert "have no label and are left out" in caplog.text
    doc["training"] = [e for e in doc["training"] if "label" not in e]
    out.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="no labelled training cases"):
        load_datalist(out, labelled_only=True)


@pytest.mark.parametrize(
    ("key", "path", "words"),
    [
        ("label", "/etc/passwd", "absolute path"),
        ("image", ["a/t1n.nii.gz", "../../secret.nii.gz"], "image[1]"),
        ("t2f", "a/../../x.nii.gz", "outside the dataset folder"),
    ],
)
def test_load_datalist_refuses_paths_outside_the_dataset(tmp_path, key, path, words):
    base = tmp_path / "ds"
    (base / "a").mkdir(parents=True)
    (tmp_path / "secret.nii.gz").write_bytes(b"")
    (base / "a" / "link.nii.gz").symlink_to(tmp_path / "secret.nii.gz")
    (base / "a" / "inside.nii.gz").symlink_to(base / "a" / "t1n.nii.gz")
    entry = {"case_id": "C1", "image": ["a/t1n.nii.gz"], "label": "a/inside.nii.gz", "fold": 0}
    out = tmp_path / "d.json"
    out.write_text(json.dumps({"dataset_dir": str(base), "training": [entry]}))
    assert load_datalist(out)[0]["label"] == str(base / "a" / "inside.nii.gz")  # a link inside is fine
    linked = {**entry, "label": "a/link.nii.gz"}  # ... wherever it points: the user laid it out so
    out.write_text(json.dumps({"dataset_dir": str(base), "training": [linked]}))
    assert load_datalist(out)[0]["label"] == str(base / "a" / "link.nii.gz")
    out.write_text(json.dumps({"dataset_dir": str(base), "training": [{**entry, key: path}]}))
    with pytest.raises(ValueError, match="case C1") as err:
        load_datalist(out)
    assert words in str(err.value)


def test_load_datalist_defaults_to_its_own_folder_and_reports_bad_json(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    (tmp_path / "d.json").write_text(json.dumps({"testing": [{"case_id": "c", "image": "x.nii.gz"}]}))
    assert load_datalist(tmp_path / "d.json", section="testing")[0]["image"] == str(tmp_path / "x.nii.gz")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(tmp_path / "bad.json")


@pytest.mark.realdata
def test_prepare_real_brats_cases(tmp_path):
    root = _brats_dir()
    if not root.is_dir():
        pytest.skip(f"real BraTS sample cases not found at {root} (set MEDMTL_BRATS_DIR)")
    start = time.perf_counter()
    report = prepare(root, tmp_path / "datalist.json", folds=5, seed=0)
    elapsed = time.perf_counter() - start
    print(f"prepare on {report['found']} real cases: {elapsed:.1f} s")
    case_dirs = [d for d in root.glob("*/*") if d.is_dir() and any(d.glob("*.nii*"))]
    labelled = [d for d in case_dirs if any("seg" in f.name.lower() for f in d.glob("*.nii*"))]
    assert (report["training"], report["testing"], report["skipped"]) == (
        len(labelled),
        len(case_dirs) - len(labelled),
        0,
    )
    doc = json.loads((tmp_path / "datalist.json").read_text())
    conventions = {}
    for e in doc["training"]:
        conventions.setdefault(e["dataset"], set()).add(e["label_convention"])
    assert conventions == {
        "brats2018": {"brats2021"},
        "brats2021": {"brats2021"},
        "upenn_gbm": {"brats2021"},
        "brats2023": {"brats2023"},
    }
    per_release = Counter(d.parent.name for d in labelled)
    assert Counter(e["dataset"] for e in doc["training"]) == per_release
    assert {e["case_id"] for e in doc["testing"]} == {d.name for d in case_dirs if d not in labelled}
    sizes = sorted(report["fold_sizes"].values())
    assert sum(sizes) == len(labelled) and sizes[-1] - sizes[0] <= 1  # patient-grouped, balanced
    val = load_datalist(tmp_path / "datalist.json", folds=[0])
    assert len(val) == sum(e["fold"] == 0 for e in doc["training"]) and all(
        Path(p).is_file() for e in val for p in e["image"]
    )

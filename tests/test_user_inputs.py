"""What a careless user hands in: one clear error or the right answer, never a traceback or a silent no-op."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data_prep.datalist import prepare
from medmtl.cli import main
from medmtl.datalist import load_datalist
from medmtl.inference import case_entry
from medmtl.transforms import infer_transforms

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refuses a bad choice
        rc = int(exc.code)
    return rc, capsys.readouterr().err


def one_error_line(rc: int, err: str, command: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"medmtl {command}: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def file_of(case: Path, token: str) -> Path:
    return next(p for p in case.glob("*.nii.gz") if p.name.split(".")[0].endswith(("_" + token, "-" + token)))


def blank(path: Path, value: float = 0.0) -> None:
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.full(img.shape, value, np.float32), img.affine), str(path))


@pytest.mark.parametrize(
    ("option", "fragments"),
    [
        (["--device", "gpu"], ["--device", "gpu", "cpu"]),
        (["--overlap", "1.5"], ["--overlap", "1.5", "[0, 1)"]),
        (["--sw-batch-size", "0"], ["--sw-batch-size", "0", "positive"]),
        (["--min-component-ml", "-1"], ["--min-component-ml", "-1", ">= 0"]),
        (["--et-min-ml", "nan"], ["--et-min-ml", "nan", ">= 0"]),
        (["--thresholds", "0.5", "1.5", "0.5"], ["--thresholds", "1.5", "(0, 1)"]),
    ],
)
def test_bad_options_are_one_line_errors(capsys, tiny_bundle, phantom_cases, tmp_path, option, fragments):
    case = phantom_cases["brats2023"]
    rc, err = run(capsys, "infer", case, "--bundle", tiny_bundle, "--out", tmp_path / "p", *option)
    one_error_line(rc, err, "infer", *fragments)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["infer", "--help"],
        ["infer", "case", "--out", "o", "--overlap", "2"],
        ["train", "--stage", "nonsense", "--dataset-dir", "d", "--datalist", "l", "--out", "o"],
        ["prepare", "data", "--out", "d.json", "--folds", "0"],
        ["evaluate", "pred", "--datalist", "d.json", "--section", "test"],
        ["export", "--bundle", "b", "--format", "tflite"],
        ["phantoms", "out", "--layout", "nifti"],
        ["demo", "--epochs", "-1"],
        ["inpaint", "case", "--mask", "m", "--out", "o", "--device", "tpu"],
    ],
)
def test_help_and_argument_errors_import_no_torch(argv):
    # torch and MONAI take seconds to import: help and a mistyped argument must not wait for them.
    code = (
        "import sys\n"
        "from medmtl.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'nibabel', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'CODE', code)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", timeout=120
    )
    assert "HEAVY [] CODE" in res.stdout, res.stdout + res.stderr
    code = int(res.stdout.rsplit("CODE", 1)[1])
    if "--help" in argv:
        assert code == 0 and "usage: medmtl" in res.stdout
    else:
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and ": error: argument" in lines[0], res.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys, tiny_bundle, phantom_cases, tmp_path):
    case = phantom_cases["brats2023"]
    rc, err = run(capsys, "infer", case, "--bundle", tiny_bundle, "--out", tmp_path / "p", "--device", "cuda")
    one_error_line(rc, err, "infer", "--device 'cuda'", "no CUDA")


def test_truncated_weights_name_the_file(capsys, tiny_bundle, phantom_cases, tmp_path):
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    weights = bundle / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, err = run(capsys, "infer", phantom_cases["brats2023"], "--bundle", bundle, "--out", tmp_path / "p")
    one_error_line(rc, err, "infer", str(weights), "cannot be read")


def test_unknown_section_is_refused_and_bad_json_names_the_file(capsys, tiny_bundle, tmp_path):
    rc, err = run(capsys, "infer", "--datalist", tmp_path / "d.json", "--section", "test", "--bundle",
                  tiny_bundle, "--out", tmp_path / "p")  # fmt: skip
    assert rc == 2 and "invalid choice: 'test'" in err and "training" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc, err = run(capsys, "infer", "--datalist", bad, "--bundle", tiny_bundle, "--out", tmp_path / "p")
    one_error_line(rc, err, "infer", str(bad), "not valid JSON")


def test_datalist_root_is_used_without_dataset_dir(capsys, tiny_bundle, phantom_cases, tmp_path, monkeypatch):
    data = tmp_path / "data"
    case = Path(shutil.copytree(phantom_cases["brats2023"], data / phantom_cases["brats2023"].name))
    datalist = tmp_path / "lists" / "datalist.json"
    datalist.parent.mkdir()
    prepare(data, datalist, folds=1)
    monkeypatch.chdir(tmp_path / "lists")  # neither the data nor the bundle's default root
    rc, err = run(
        capsys, "infer", "--datalist", datalist, "--bundle", tiny_bundle, "--out", tmp_path / "pred"
    )
    assert rc == 0, err
    assert (tmp_path / "pred" / f"{case.name}_seg.nii.gz").is_file()


def test_constant_contrast_counts_as_missing(phantom_cases, tmp_path):
    case = Path(shutil.copytree(phantom_cases["brats2023"], tmp_path / phantom_cases["brats2023"].name))
    blank(file_of(case, "t2f"))
    blank(file_of(case, "t1c"), 5.0)
    four = ["t1n", "t1c", "t2w", "t2f"]
    d = infer_transforms(inputs=four, targets=four, spacing=(2.0, 2.0, 2.0), allow_missing_inputs=True)(
        case_entry(case)
    )
    assert d["channel_mask"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert d["unusable"] == "t1c,t2f"
    # the brain in the scan's own voxels ignores the constant t1c (it would be the whole volume)
    t1n = np.asanyarray(nib.load(str(file_of(case, "t1n"))).dataobj)
    assert float(d["source_brain_mask"].sum()) < t1n.size


def test_prepare_skips_a_constant_contrast_unless_missing_is_allowed(phantom_cases, tmp_path):
    data = tmp_path / "data"
    for c in phantom_cases.values():
        shutil.copytree(c, data / c.name)
    blank(file_of(data / phantom_cases["brats2023"].name, "t2f"))
    strict = prepare(data, tmp_path / "a.json", folds=1)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [e["case_id"] for e in doc["training"]] == [phantom_cases["brats2021"].name], strict
    assert any("constant" in json.dumps(s) for s in doc["skipped"])
    prepare(data, tmp_path / "b.json", folds=1, allow_missing=True)
    assert len(json.loads((tmp_path / "b.json").read_text())["training"]) == 2


def test_symlinked_files_inside_the_root_are_followed_and_dotdot_refused(phantom_cases, tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    src = Path(shutil.copytree(phantom_cases["brats2023"], store / phantom_cases["brats2023"].name))
    (data / src.name).mkdir(parents=True)
    for f in src.iterdir():
        os.symlink(f, data / src.name / f.name)
    prepare(data, tmp_path / "d.json", folds=1)
    entries = load_datalist(tmp_path / "d.json")
    assert len(entries) == 1 and Path(entries[0]["label"]).is_relative_to(data)
    doc = json.loads((tmp_path / "d.json").read_text())
    doc["training"][0]["label"] = "../store/" + src.name + "/" + Path(entries[0]["label"]).name
    (tmp_path / "e.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="outside the dataset folder"):
        load_datalist(tmp_path / "e.json")


def test_a_bad_label_file_does_not_block_inference(phantom_cases, tmp_path):
    case = Path(shutil.copytree(phantom_cases["brats2021"], tmp_path / phantom_cases["brats2021"].name))
    file_of(case, "seg").write_bytes(b"not a nifti at all")
    with pytest.warns(UserWarning, match="ignoring its label file"):
        entry = case_entry(case)
    assert "label" not in entry and len(entry["image"]) == 4
    assert entry["label_convention"] == "brats2021"  # from the layout


def test_weights_are_checked_without_reading_them_twice(tmp_path, monkeypatch):
    """The up-front check maps the weights file (zip format) instead of loading it a second time."""
    from medmtl.bundle_config import check_weights

    torch.save({"w": torch.zeros(4)}, tmp_path / "model.pt")
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw.get("mmap")) or real(*a, **kw))
    check_weights(tmp_path / "model.pt")
    assert seen == [True]

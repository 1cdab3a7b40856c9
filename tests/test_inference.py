"""Whole-volume inference: outputs in the source grid, CLI = bundle run = Python API, cohorts, bad inputs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medmtl
from data_prep.datalist import prepare
from medmtl.cli import main
from medmtl.inference import output_paths, shard, user_error
from medmtl.labels import regions_to_label

pytestmark = pytest.mark.usefixtures("one_thread")


def infer(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``medmtl infer ARGS`` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["infer", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *fragments: str) -> str:
    """One ``medmtl infer: error: ...`` line (no traceback) holding every fragment."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("medmtl infer: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def assert_no_output(out_dir: Path) -> None:
    """Nothing written: no output folder, or an empty one (no temporary files either)."""
    if out_dir.exists():
        assert sorted(p.name for p in out_dir.iterdir()) == []


def image_files(case: Path) -> list[Path]:
    """The contrast files of a case folder (every NIfTI but the label map)."""
    return sorted(p for p in case.glob("*.nii.gz") if not p.name.split(".")[0].lower().endswith("seg"))


def source_brain(case: Path) -> np.ndarray:
    """Voxels where any contrast of the case is non-zero (BraTS scans are skull-stripped to zeros)."""
    return np.any([np.asanyarray(nib.load(str(f)).dataobj) != 0 for f in image_files(case)], axis=0)


def read(path: Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def copy_case(case: Path, dest: Path) -> Path:
    return Path(shutil.copytree(case, dest / case.name))


def phantom_datalist(cases: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """Copies of the phantom cases in ``tmp_path/data`` and their one-fold datalist."""
    data, datalist = tmp_path / "data", tmp_path / "datalist.json"
    for case in cases.values():
        copy_case(case, data)
    prepare(data, datalist, folds=1)
    return data, datalist


def file_of(case: Path, token: str) -> Path:
    return next(p for p in case.glob("*.nii.gz") if p.name.split(".")[0].endswith(("_" + token, "-" + token)))


# ---------------------------------------------------------------------------------------------
# outputs of `medmtl infer` on phantom cases


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory, tiny_bundle, phantom_cases) -> Path:
    """``medmtl infer`` on the two phantom cases (BraTS 2023 and BraTS 2018-21 layouts)."""
    out = tmp_path_factory.mktemp("cli") / "pred"
    rc = main(["infer", *map(str, phantom_cases.values()), "--bundle", str(tiny_bundle), "--out", str(out)])
    assert rc == 0
    return out


@pytest.mark.parametrize(
    ("layout", "convention", "values"),
    [("brats2023", "brats2023", {0, 1, 2, 3}), ("brats2021", "brats2021", {0, 1, 2, 4})],
)
def test_outputs_in_the_source_grid(cli_out, phantom_cases, layout, convention, values) -> None:
    case = phantom_cases[layout]
    cid = case.name
    src_arr, src_affine, src = read(image_files(case)[0])
    paths = output_paths(cli_out, cid, ["t1c"])
    seg, seg_affine, seg_img = read(paths["seg"])
    synth, synth_affine, synth_img = read(paths["t1c"])
    brain = source_brain(case)
    for arr, affine in ((seg, seg_affine), (synth, synth_affine)):
        assert arr.shape == src.shape == (40, 40, 26)
        assert np.allclose(affine, src_affine)
        assert nib.aff2axcodes(affine) == nib.aff2axcodes(src_affine) == ("L", "P", "S")
    assert seg_img.get_data_dtype() == np.uint8 and synth_img.get_data_dtype() == np.float32
    assert set(np.unique(seg).tolist()) <= values
    assert not seg[~brain].any(), "tumour labels outside the brain"
    assert np.all(synth[~brain] == 0) and np.count_nonzero(synth[brain]) > 0.9 * brain.sum()
    sidecar = json.loads(paths["sidecar"].read_text())
    assert sidecar["case_id"] == cid and sidecar["label_convention"] == convention
    assert sidecar["contrasts_used"] == ["t1n", "t2w", "t2f"] and sidecar["contrasts_missing"] == []
    assert sidecar["synthesised"] == ["t1c"] and sidecar["intensity_space"] == "zscore_nonzero"
    assert sidecar["thresholds"] == {"TC": 0.5, "WT": 0.5, "ET": 0.5}  # none stored with this model
    assert sidecar["shape"] == [40, 40, 26] and np.allclose(sidecar["affine"], src_affine, atol=1e-5)
    assert Path(sidecar["source"]).parent == case.resolve()
    assert sidecar["regions"] == ["TC", "WT", "ET"] and sidecar["weights"] == "model.pt"
    assert "zscore_nonzero" in synth_img.header["descrip"].tobytes().decode(errors="ignore")


def test_other_orientation_on_disk_gives_the_same_prediction(
    capsys, cli_out, tiny_bundle, phantom_cases, tmp_path
):
    # The same case stored P-I-R instead of L-P-S: outputs follow the file's own grid, and, put back in
    # L-P-S, equal the outputs for the L-P-S files (the model sees the same RAS volume either way).
    case = phantom_cases["brats2023"]
    moved = tmp_path / case.name
    moved.mkdir()
    target = nib.orientations.axcodes2ornt(("P", "I", "R"))
    for f in case.glob("*.nii.gz"):
        img = nib.load(str(f))
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine), target)
        nib.save(img.as_reoriented(ornt), str(moved / f.name))
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, moved, "--bundle", tiny_bundle, "--out", out)
    assert rc == 0, err
    src = nib.load(str(image_files(moved)[0]))
    for key in ("seg", "t1c"):
        img = nib.load(str(output_paths(out, case.name, ["t1c"])[key]))
        assert img.shape == src.shape == (40, 26, 40)
        assert np.allclose(img.affine, src.affine) and nib.aff2axcodes(img.affine) == ("P", "I", "R")
        back = img.as_reoriented(
            nib.orientations.ornt_transform(
                nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
            )
        )
        ref = nib.load(str(output_paths(cli_out, case.name, ["t1c"])[key]))
        assert np.allclose(back.affine, ref.affine)
        assert np.allclose(np.asanyarray(back.dataobj), np.asanyarray(ref.dataobj), atol=1e-4), key


def test_only_finished_files_in_output_folder(cli_out, phantom_cases) -> None:
    expected = {
        p.name for case in phantom_cases.values() for p in output_paths(cli_out, case.name, ["t1c"]).values()
    }
    assert {p.name for p in cli_out.iterdir()} == expected  # no temporary files left behind


def test_python_api_matches_cli_files(cli_out, tiny_bundle, phantom_cases) -> None:
    model = medmtl.load_model(tiny_bundle, device="cpu")
    case = phantom_cases["brats2021"]
    paths = output_paths(cli_out, case.name, ["t1c"])
    seg, affine, _ = read(paths["seg"])
    synth, _, _ = read(paths["t1c"])
    files = {
        name: str(file_of(case, token)) for name, token in (("t1", "t1"), ("T2", "t2"), ("flair", "flair"))
    }
    arrays = {c: np.asanyarray(nib.load(p).dataobj) for c, p in files.items()}
    for given in (case, files, arrays):
        pred = model.predict(
            given,
            affine=affine if given is arrays else None,
            convention="brats2021" if given is arrays else None,  # arrays name no release
        )
        assert np.array_equal(pred.seg, seg)
        assert np.array_equal(pred.synth["t1c"], synth)
        assert np.allclose(pred.affine, affine) and pred.convention == "brats2021"
        assert pred.probabilities.shape == (3, *seg.shape)
    # The label map is the thresholded regions, inside the brain, in the input's convention.
    regions = ((pred.probabilities > 0.5) & source_brain(case)[None]).astype(np.uint8)
    assert np.array_equal(pred.seg, regions_to_label(regions, "brats2021")[0])
    assert np.array_equal(
        model.predict(case, convention="brats2023").seg, regions_to_label(regions, "brats2023")[0]
    )
    # One input, one answer: the case's own files give its folder's ET = 4; arrays name no release.
    assert model.predict(files).convention == "brats2021"
    assert model.predict(arrays, affine=affine).convention == "brats2023"


def test_loose_files_without_release_names_and_arrays_without_affine_warn(
    tiny_bundle, phantom_cases, tmp_path
):
    model = medmtl.load_model(tiny_bundle, device="cpu")
    case = phantom_cases["brats2021"]
    files = {}
    for name, token in (("t1n", "t1"), ("t2w", "t2"), ("t2f", "flair")):
        files[name] = str(tmp_path / f"scan{len(files)}.nii.gz")
        shutil.copy(file_of(case, token), files[name])
    with pytest.warns(UserWarning, match="name no BraTS release"):
        assert model.predict(files).convention == "brats2023"
    arrays = {c: np.asanyarray(nib.load(p).dataobj) for c, p in files.items()}
    with pytest.warns(UserWarning, match="without affine"):
        model.predict(arrays)
    # An error about arrays names the arrays, never the temporary files they were written to.
    arrays["t2w"] = arrays["t2w"][:-2]
    with pytest.raises(ValueError) as info:
        model.predict(arrays, affine=np.eye(4))
    assert "array 't2w'" in str(info.value) and "medmtl_" not in str(info.value), info.value


def test_explicit_contrast_files_and_forced_convention(capsys, cli_out, tiny_bundle, phantom_cases, tmp_path):
    case = phantom_cases["brats2021"]
    out = tmp_path / "pred"
    files = ("--t1n", file_of(case, "t1"), "--t2w", file_of(case, "t2"), "--t2f", file_of(case, "flair"))
    rc, stdout, err = infer(
        capsys, *files, "--convention", "brats2021", "--bundle", tiny_bundle, "--out", out
    )
    assert rc == 0, err
    # quiet by default: the per-case progress, not the engine's "resuming from iteration 0" lines
    assert "1 of 1 case(s) written" in stdout and "Engine run" not in stdout + err, stdout + err
    mine, theirs = output_paths(out, case.name, ["t1c"]), output_paths(cli_out, case.name, ["t1c"])
    for key in ("seg", "t1c"):
        assert np.array_equal(read(mine[key])[0], read(theirs[key])[0]), key
    # Forcing BraTS 2023 values relabels ET 4 -> 3 and nothing else.
    out23 = tmp_path / "pred23"
    rc, _, err = infer(capsys, case, "--convention", "brats2023", "--bundle", tiny_bundle, "--out", out23)
    assert rc == 0, err
    seg21, seg23 = read(theirs["seg"])[0], read(output_paths(out23, case.name, ["t1c"])["seg"])[0]
    expected = seg21.copy()
    expected[seg21 == 4] = 3
    assert np.array_equal(seg23, expected)
    assert (
        json.loads(output_paths(out23, case.name, ["t1c"])["sidecar"].read_text())["label_convention"]
        == "brats2023"
    )


def test_bundle_run_gives_the_same_files_as_the_cli(cli_out, tiny_bundle, phantom_cases, tmp_path) -> None:
    data, datalist = phantom_datalist(phantom_cases, tmp_path)
    out = tmp_path / "bundle_out"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(tiny_bundle / "configs" / "inference.json"),
        "--meta_file", str(tiny_bundle / "configs" / "metadata.json"),
        "--bundle_root", str(tiny_bundle),
        "--datalist", str(datalist), "--dataset_dir", str(data), "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for case in phantom_cases.values():
        mine, theirs = output_paths(out, case.name, ["t1c"]), output_paths(cli_out, case.name, ["t1c"])
        for key in ("seg", "t1c"):
            a, a_aff, _ = read(mine[key])
            b, b_aff, _ = read(theirs[key])
            assert a.dtype == b.dtype and np.array_equal(a, b), (case.name, key)
            assert np.array_equal(a_aff, b_aff)


# ---------------------------------------------------------------------------------------------
# cohorts


def test_cohort_resumes_and_redoes_only_missing_cases(capsys, tiny_bundle, phantom_cases, tmp_path) -> None:
    data, datalist = phantom_datalist(phantom_cases, tmp_path)
    out = tmp_path / "pred"
    args = ("--datalist", datalist, "--dataset-dir", data, "--bundle", tiny_bundle, "--out", out)
    rc, stdout, _ = infer(capsys, *args)
    assert rc == 0 and "2 case(s) to run" in stdout
    # per-case progress with an ETA, then a summary
    assert "case 1/2 " in stdout and "case 2/2 " in stdout and "s left" in stdout
    assert f"2 of 2 case(s) written to {out.resolve()}" in stdout
    first = mtimes(out)
    assert len(first) == 6
    time.sleep(0.01)
    rc, stdout, _ = infer(capsys, *args)
    assert rc == 0 and "0 case(s) to run" in stdout
    assert mtimes(out) == first  # nothing rewritten
    redo = phantom_cases["brats2021"].name
    for p in output_paths(out, redo, ["t1c"]).values():
        p.unlink()
    rc, stdout, _ = infer(capsys, *args)
    assert rc == 0 and "1 case(s) to run" in stdout
    now = mtimes(out)
    assert set(now) == set(first)
    changed = {name for name in now if now[name] != first[name]}
    assert changed == {p.name for p in output_paths(out, redo, ["t1c"]).values()}


def test_shard_splits_cases_without_overlap_or_loss(monkeypatch) -> None:
    cases = [{"case_id": f"c{i}"} for i in range(7)]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert shard(cases) == cases
    for world in (2, 3, 7, 10):
        parts = []
        for rank in range(world):
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("RANK", str(rank))
            parts.append([c["case_id"] for c in shard(cases)])
        flat = [c for part in parts for c in part]
        assert sorted(flat) == sorted(c["case_id"] for c in cases), world  # nothing lost
        assert len(flat) == len(set(flat)), world  # nothing twice
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1, (world, sizes)


# ---------------------------------------------------------------------------------------------
# bad inputs: one clear error, nothing written


def test_synthesis_is_standardised_to_the_landmarks_of_the_model(
    capsys, cli_out, tiny_bundle, phantom_cases, tmp_path
) -> None:
    from medmtl.inference.outputs import INTENSITY_NOTE, INTENSITY_NOTE_STANDARDISED
    from medmtl.intensity import LANDMARK_PERCENTILES

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    config_path = bundle / "models" / "model_config.json"
    config = json.loads(config_path.read_text())
    # a skewed target histogram, unlike anything a random network writes
    landmarks = [float(v) for v in np.linspace(-1.5, 1.0, len(LANDMARK_PERCENTILES)) ** 3]
    config["synth_landmarks"] = {"percentiles": list(LANDMARK_PERCENTILES), "t1c": landmarks}
    config_path.write_text(json.dumps(config))
    case = phantom_cases["brats2023"]
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", bundle, "--out", out)
    assert rc == 0, err
    paths = output_paths(out, case.name, ["t1c"])
    synth, _, _ = read(paths["t1c"])
    plain, _, _ = read(output_paths(cli_out, case.name, ["t1c"])["t1c"])
    brain = source_brain(case)
    # the brain's percentiles sit on the landmarks, voxel ranks are those of the unstandardised output
    assert np.allclose(np.percentile(synth[brain], LANDMARK_PERCENTILES), landmarks, atol=0.05)
    order = np.argsort(plain[brain], kind="stable")
    assert np.all(np.diff(synth[brain][order]) >= -1e-5) and np.all(synth[~brain] == 0)
    assert json.loads(paths["sidecar"].read_text())["intensity_note"] == INTENSITY_NOTE_STANDARDISED
    assert (
        json.loads(output_paths(cli_out, case.name, ["t1c"])["sidecar"].read_text())["intensity_note"]
        == INTENSITY_NOTE
    )
    assert np.array_equal(medmtl.load_model(bundle, device="cpu").predict(case).synth["t1c"], synth)
    # landmarks that cannot be used are refused with the file named, not applied
    config["synth_landmarks"]["t1c"] = landmarks[::-1]
    config_path.write_text(json.dumps(config))
    rc, _, err = infer(capsys, case, "--bundle", bundle, "--out", tmp_path / "pred2", "--overwrite")
    assert_user_error(rc, err, "model_config.json", "synth_landmarks")


def test_missing_input_contrast_is_an_error_without_input_mask(
    capsys, tiny_bundle, phantom_cases, tmp_path
) -> None:
    case = copy_case(phantom_cases["brats2023"], tmp_path)
    file_of(case, "t2f").unlink()
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    assert_user_error(rc, err, case.name, "missing input contrast(s) t2f", "input mask")
    assert_no_output(out)
    with pytest.raises(ValueError, match="missing input contrast"):
        medmtl.load_model(tiny_bundle, device="cpu").predict(case)


def test_missing_input_contrast_is_flagged_with_input_mask(
    capsys, masked_bundle, phantom_cases, tmp_path
) -> None:
    case = copy_case(phantom_cases["brats2023"], tmp_path)
    file_of(case, "t2f").unlink()
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", masked_bundle, "--out", out)
    assert rc == 0, err
    sidecar = json.loads(output_paths(out, case.name, ["t1c"])["sidecar"].read_text())
    assert sidecar["contrasts_used"] == ["t1n", "t2w"] and sidecar["contrasts_missing"] == ["t2f"]
    seg, affine, _ = read(output_paths(out, case.name, ["t1c"])["seg"])
    assert seg.shape == (40, 40, 26)
    # With no input at all (only the target t1c) even a masked model cannot run.
    for token in ("t1n", "t2w"):
        file_of(case, token).unlink()
    out2 = tmp_path / "pred2"
    rc, _, err = infer(capsys, case, "--bundle", masked_bundle, "--out", out2)
    assert_user_error(rc, err, case.name, "at least one of t1n, t2w, t2f")
    assert_no_output(out2)


def _rewrite(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize("problem", ["shape", "affine", "4d", "2d", "truncated", "not_nifti"])
def test_bad_files_are_reported_by_name(capsys, tiny_bundle, phantom_cases, tmp_path, problem) -> None:
    case = copy_case(phantom_cases["brats2023"], tmp_path)
    bad = file_of(case, "t2w")
    arr, affine, _ = read(bad)
    expect = {
        "shape": "differs from",
        "affine": "affine differs",
        "4d": "expected a 3D volume, found a 4D array",
        "2d": "expected a 3D volume, found a 2D array",
        "truncated": "truncated",
        "not_nifti": "cannot read the NIfTI header",
    }[problem]
    if problem == "shape":
        _rewrite(bad, arr[:, :, :-2], affine)
    elif problem == "affine":
        shifted = affine.copy()
        shifted[:3, 3] += 5.0
        _rewrite(bad, arr, shifted)
    elif problem == "4d":
        _rewrite(bad, np.stack([arr, arr], axis=-1), affine)
    elif problem == "2d":
        _rewrite(bad, arr[:, :, 10], affine)
    elif problem == "truncated":
        raw = bad.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    else:
        bad.write_bytes(gzip.compress(b"this is not a NIfTI file"))
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    assert_user_error(rc, err, bad.name, expect)
    assert_no_output(out)


def test_rerun_over_case_folders_skips_finished_cases(
    capsys, cli_out, tiny_bundle, phantom_cases, tmp_path
) -> None:
    # As for a datalist: an interrupted cohort of case folders resumes, --overwrite redoes the cases.
    out = Path(shutil.copytree(cli_out, tmp_path / "pred"))
    before = mtimes(out)
    cases = list(phantom_cases.values())
    rc, stdout, err = infer(capsys, *cases, "--bundle", tiny_bundle, "--out", out)
    assert rc == 0 and "0 case(s) to run" in stdout, err
    assert mtimes(out) == before
    time.sleep(0.01)
    rc, stdout, _ = infer(capsys, cases[0], "--bundle", tiny_bundle, "--out", out, "--overwrite")
    assert rc == 0 and "1 case(s) to run" in stdout
    changed = {name for name, t in mtimes(out).items() if t != before[name]}
    assert changed == {p.name for p in output_paths(out, cases[0].name, ["t1c"]).values()}


def test_an_interrupted_case_is_redone_on_the_rerun(
    capsys, cli_out, tiny_bundle, phantom_cases, tmp_path
) -> None:
    # Interrupted between its images and its sidecar: medmtl's own leftovers, redone without --overwrite.
    out = Path(shutil.copytree(cli_out, tmp_path / "pred"))
    case = phantom_cases["brats2023"]
    (out / f"{case.name}.json").unlink()
    before = mtimes(out)
    time.sleep(0.01)
    rc, stdout, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    assert rc == 0 and "1 case(s) to run" in stdout, err
    now = mtimes(out)
    assert (out / f"{case.name}.json").is_file()
    assert {name for name in before if now[name] != before[name]} == {
        p.name for p in output_paths(out, case.name, ["t1c"]).values() if p.name in before
    }


def _assert_unwritable_output_refused(capsys, bundle: Path, case: Path, out: Path) -> None:
    rc, _, err = infer(capsys, case, "--bundle", bundle, "--out", out)
    assert_user_error(rc, err, str(out), "not writable")
    assert sorted(out.iterdir()) == []


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders; the os.access check is tested below"
)
def test_unwritable_output_folder(capsys, tiny_bundle, phantom_cases, tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        _assert_unwritable_output_refused(capsys, tiny_bundle, phantom_cases["brats2023"], out)
        _assert_unwritable_output_refused(capsys, tiny_bundle, phantom_cases["brats2023"], out / "sub")
    finally:
        out.chmod(0o755)


def test_unwritable_output_folder_as_reported_by_os_access(
    capsys, tiny_bundle, phantom_cases, tmp_path, monkeypatch
) -> None:
    # Tests may run as root, for whom every folder is writable: make the OS say "not writable".
    out = tmp_path / "ro"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == out else real_access(p, mode, **kw)
    )
    _assert_unwritable_output_refused(capsys, tiny_bundle, phantom_cases["brats2023"], out)


def test_other_user_errors(capsys, tiny_bundle, phantom_cases, tmp_path) -> None:
    case = phantom_cases["brats2023"]
    rc, _, err = infer(capsys, tmp_path / "nowhere", "--bundle", tiny_bundle, "--out", tmp_path / "p1")
    assert_user_error(rc, err, "nowhere", "does not exist")
    rc, _, err = infer(capsys, case, "--bundle", tmp_path, "--out", tmp_path / "p2")
    assert_user_error(rc, err, "inference.json", "not a medmtl bundle")
    untrained = Path(shutil.copytree(tiny_bundle / "configs", tmp_path / "untrained" / "configs")).parent
    rc, _, err = infer(capsys, case, "--bundle", untrained, "--out", tmp_path / "p3")
    assert_user_error(rc, err, "model_config.json", "no trained model")
    rc, _, err = infer(capsys, case, case, "--bundle", tiny_bundle, "--out", tmp_path / "p4")
    assert_user_error(rc, err, "share a case id")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", a_file)
    assert_user_error(rc, err, "is a file")
    for p in ("p1", "p2", "p3", "p4"):
        assert_no_output(tmp_path / p)


def test_datalist_case_missing_an_input_is_reported(capsys, tiny_bundle, phantom_cases, tmp_path) -> None:
    data = tmp_path / "data"
    case = copy_case(phantom_cases["brats2023"], data)
    file_of(case, "t2w").unlink()
    datalist = tmp_path / "datalist.json"
    prepare(data, datalist, folds=1, allow_missing=True)
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, "--datalist", datalist, "--bundle", tiny_bundle, "--out", out)
    assert_user_error(rc, err, case.name, "missing input contrast(s) t2w")
    assert_no_output(out)


def test_user_error_is_found_behind_wrapping_runtime_errors() -> None:
    original = FileExistsError("outputs exist for case X")
    try:
        try:
            try:
                raise original
            except FileExistsError as e:
                raise RuntimeError("applying transform <WriteCaseOutputsd>") from e
        except RuntimeError as e:
            raise RuntimeError("Failed to evaluate ...") from e
    except RuntimeError as wrapped:
        assert user_error(wrapped) is original
    assert user_error(RuntimeError("CUDA out of memory")) is None


# ---------------------------------------------------------------------------------------------
# real cases


@pytest.mark.realdata
def test_truncated_real_file_is_reported(capsys, tiny_bundle, brats_dir, tmp_path) -> None:
    case = copy_case(brats_dir / "brats2023_noseg" / "BraTS-GLI-00001-000", tmp_path)
    bad = file_of(case, "t2f")
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    assert_user_error(rc, err, bad.name, "truncated")
    assert_no_output(out)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cases_of_each_layout(capsys, tiny_bundle, brats_dir, tmp_path) -> None:
    cases = {
        "brats2021": (brats_dir / "brats2021" / "BraTS2021_00006", {0, 1, 2, 4}),
        "brats2023": (brats_dir / "brats2023" / "BraTS-GLI-00000-000", {0, 1, 2, 3}),
        "brats2021_upenn": (brats_dir / "upenn_gbm" / "UPENN-GBM-00006_11", {0, 1, 2, 4}),
    }
    out = tmp_path / "pred"
    start = time.perf_counter()
    rc, _, err = infer(capsys, *(c for c, _ in cases.values()), "--bundle", tiny_bundle, "--out", out)
    seconds = time.perf_counter() - start
    assert rc == 0, err
    per_case = seconds / len(cases)
    print(f"\n2 mm cpu-preset inference of {len(cases)} real cases: {seconds:.1f} s ({per_case:.1f} s/case)")
    for name, (case, values) in cases.items():
        src_arr, src_affine, src = read(image_files(case)[0])
        paths = output_paths(out, case.name, ["t1c"])
        seg, seg_affine, _ = read(paths["seg"])
        synth, synth_affine, _ = read(paths["t1c"])
        brain = source_brain(case)
        for affine, arr in ((seg_affine, seg), (synth_affine, synth)):
            assert arr.shape == src.shape == (240, 240, 155), name
            assert np.allclose(affine, src_affine), name
            assert nib.aff2axcodes(affine) == nib.aff2axcodes(src_affine) == ("L", "P", "S"), name
        assert set(np.unique(seg).tolist()) <= values, name
        assert np.all(synth[~brain] == 0) and synth.dtype == np.float32, name
        sidecar = json.loads(paths["sidecar"].read_text())
        assert sidecar["label_convention"] == name.split("_")[0]


def test_remove_small_components_drops_specks_and_keeps_the_largest():
    from medmtl.inference import remove_small_components

    regions = np.zeros((3, 20, 20, 20), np.uint8)
    regions[:, 2:8, 2:8, 2:8] = 1  # 216 voxels of 1 mm: 0.216 ml, with TC and ET inside
    regions[1, 15, 15, 15:17] = 1  # a two-voxel speck of WT far away
    regions[0, 15, 15, 15] = 1
    out = remove_small_components(regions, (1.0, 1.0, 1.0), 0.005)
    assert out[:, 15, 15, 15:17].sum() == 0 and out[:, 2:8, 2:8, 2:8].all()
    # spacing is respected: at 2 mm the speck is 16 mm^3, kept by a 0.005 ml (5 mm^3) threshold
    assert remove_small_components(regions, (2.0, 2.0, 2.0), 0.005)[1, 15, 15, 15:17].all()
    # a threshold above every component keeps the largest one, never an empty prediction
    big = remove_small_components(regions, (1.0, 1.0, 1.0), 10.0)
    assert big[1].sum() == 216 and big[1, 15, 15, 15:17].sum() == 0
    np.testing.assert_array_equal(remove_small_components(regions, (1, 1, 1), 0.0), regions)


@pytest.mark.slow
def test_shipped_weights_segment_every_labelled_shared_case(brats_dir):
    """The shipped bundle, as ``medmtl infer`` runs it, finds the whole tumour (WT Dice > 0.7) everywhere."""
    from data_prep.layouts import discover
    from medmtl.metrics import segmentation_metrics

    model = medmtl.load_model(device="cpu")
    cases = [c for c in discover(brats_dir).cases if c.label]
    assert len(cases) >= 15
    for case in cases:
        pred = model.predict(Path(case.root) / Path(case.label).parent)
        ref = nib.load(Path(case.root) / case.label)
        scores = segmentation_metrics(
            pred.seg, np.asarray(ref.dataobj), pred.convention, case.convention, ref.header.get_zooms()[:3]
        )
        assert scores["Dice_WT"] > 0.7, (case.case_id, scores["Dice_WT"])


def test_small_et_becomes_netc_and_large_et_stays():
    from medmtl.inference import small_et_to_netc

    regions = np.zeros((3, 20, 20, 20), np.uint8)
    regions[1, 2:12, 2:12, 2:12] = 1  # WT 1000 voxels
    regions[0, 4:10, 4:10, 4:10] = 1  # TC 216 voxels
    regions[2, 5:7, 5:7, 5:7] = 1  # ET 8 voxels = 0.064 ml at 2 mm
    out = small_et_to_netc(regions, (2.0, 2.0, 2.0), et_min_ml=0.1)
    assert out[2].sum() == 0 and np.array_equal(out[0], regions[0]) and np.array_equal(out[1], regions[1])
    kept = small_et_to_netc(regions, (2.0, 2.0, 2.0), et_min_ml=0.05)
    assert np.array_equal(kept, regions)
    assert small_et_to_netc(regions, (2.0, 2.0, 2.0), et_min_ml=0.0) is regions
    assert regions[2].sum() == 8  # the input is left as it was


def test_the_run_summary_of_case_dicts_is_dropped():
    import logging

    from medmtl.engine_logs import _RunSummaryFilter

    keep = _RunSummaryFilter().filter
    record = lambda msg: logging.LogRecord("monai.bundle.scripts", logging.INFO, "", 0, msg, None, None)  # noqa: E731
    summary = ("--- input summary of monai.bundle.scripts.run ---", "> cases: [{'case_id': 'x'}]", "---\n\n")
    for msg in summary:
        assert not keep(record(msg)), msg
    assert keep(record("medmtl infer: 1 of 1 case(s) written to out"))


# ----------------------------------------------------------------------------------------------
# one predictor: each volume read once, arrays in memory


def test_predict_reads_each_volume_once(tiny_bundle, phantom_cases, monkeypatch) -> None:
    import nibabel.arrayproxy as arrayproxy

    reads: dict[str, int] = {}
    original = arrayproxy.ArrayProxy.__array__

    def counting(self, *args, **kwargs):
        name = str(getattr(self.file_like, "name", self.file_like))
        reads[name] = reads.get(name, 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(arrayproxy.ArrayProxy, "__array__", counting)
    model = medmtl.load_model(tiny_bundle, device="cpu", num_workers=0)  # reads in this process
    case = phantom_cases["brats2023"]
    model.predict(case)
    counts = {f.name: reads.get(str(f.resolve()), 0) for f in image_files(case)}
    assert counts and set(counts.values()) == {1}, (counts, reads)


def test_predict_on_arrays_writes_no_file(tiny_bundle, phantom_cases, monkeypatch, tmp_path) -> None:
    import tempfile

    from monai.data import MetaTensor

    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spare))
    model = medmtl.load_model(tiny_bundle, device="cpu", num_workers=0)
    case = phantom_cases["brats2023"]
    files = {"t1n": file_of(case, "t1n"), "t2w": file_of(case, "t2w"), "t2f": file_of(case, "t2f")}
    from_files = model.predict({k: str(v) for k, v in files.items()})
    images = {k: nib.load(v) for k, v in files.items()}
    arrays = {k: np.asanyarray(img.dataobj) for k, img in images.items()}
    affine = images["t1n"].affine
    from_arrays = model.predict(arrays, affine=affine)
    # MetaTensors carry their own affine
    metas = {k: MetaTensor(np.asarray(a, np.float32), affine=affine) for k, a in arrays.items()}
    from_metas = model.predict(metas)
    for pred in (from_arrays, from_metas):
        assert np.array_equal(pred.seg, from_files.seg)
        assert np.allclose(pred.synth["t1c"], from_files.synth["t1c"])
        assert np.allclose(pred.affine, affine)
    assert list(spare.iterdir()) == []


def test_non_finite_voxels_are_reported_by_name(capsys, tiny_bundle, phantom_cases, tmp_path) -> None:
    case = copy_case(phantom_cases["brats2023"], tmp_path)
    bad = file_of(case, "t2f")
    arr, affine, _ = read(bad)
    arr = arr.astype(np.float32)
    arr[5, 5, 5] = np.nan
    _rewrite(bad, arr, affine)
    out = tmp_path / "pred"
    rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    assert_user_error(rc, err, bad.name, "NaN or infinite")
    assert_no_output(out)


@pytest.mark.parametrize(
    "mask, restorations, kept",
    [
        ([1, 1, 1, 1], False, []),
        ([1, 0, 1, 0], False, ["t1c", "t2f"]),
        ([1, 1, 1, 1], True, ["t1n", "t1c", "t2w", "t2f"]),
    ],
)
def test_only_written_synthesis_is_brought_back(mask, restorations, kept):
    """Channels a case will not write are dropped before inversion; the kept ones keep their names."""
    import torch

    from medmtl.inference.outputs import SelectSynthd, case_outputs

    targets = ["t1n", "t1c", "t2w", "t2f"]
    synth = torch.stack([torch.full((4, 4, 4), float(i)) for i in range(4)])
    channel_mask = torch.tensor(mask, dtype=torch.float32)
    d = {"seg": torch.zeros(3, 4, 4, 4), "synth": synth, "channel_mask": channel_mask}
    out = SelectSynthd(targets, targets, restorations)(d)
    assert out["synth_contrasts"] == kept
    assert ("synth" in out) == bool(kept)
    _, _, images = case_outputs(out, targets, threshold=0.5)
    assert sorted(images) == sorted(kept)
    for name, image in images.items():
        assert np.all(image == targets.index(name))

"""`medmtl infer` at the edges: a full disk, a read-only folder, Ctrl-C, inputs outside what the model
knows, and which synthesised contrasts are written."""

from __future__ import annotations

import errno
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmtl.cli import main
from medmtl.contrasts import CONTRASTS

pytestmark = pytest.mark.usefixtures("one_thread")


def infer(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["infer", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden temporary files included)."""
    return (
        sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if folder.exists()
        else []
    )


@pytest.fixture(scope="module")
def any_subset_bundle(tmp_path_factory, bundle_factory) -> Path:
    """A bundle shaped as the shipped one: every contrast in, every contrast out, with an input mask."""
    return bundle_factory(
        tmp_path_factory.mktemp("any") / "bundle", inputs=CONTRASTS, targets=CONTRASTS, input_mask=True
    )


def case_copy(case: Path, dest: Path, drop: tuple[str, ...] = (), edit=None) -> Path:
    """A copy of a phantom case without the ``drop`` contrasts, each image passed through ``edit``."""
    out = Path(shutil.copytree(case, dest / case.name))
    for p in sorted(out.glob("*.nii.gz")):
        token = p.name[: -len(".nii.gz")].rsplit("-", 1)[-1].rsplit("_", 1)[-1].lower()
        if token in drop:
            p.unlink()
        elif edit is not None and token != "seg":
            img = nib.load(str(p))
            arr = edit(np.asanyarray(img.dataobj).astype(np.float32))
            nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(p))
    return out


# ---------------------------------------------------------------------------------------------
# nothing of the user's lost


@pytest.mark.parametrize(
    ("code", "fragment"),
    [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system")],
)
def test_a_failed_write_is_one_line_naming_the_file_and_leaves_nothing(
    capsys, monkeypatch, tiny_bundle, phantom_cases, tmp_path, code, fragment
) -> None:
    def refuse(img, filename, *args, **kwargs):
        raise OSError(code, "the system says no")

    monkeypatch.setattr(nib, "save", refuse)
    case, out = phantom_cases["brats2023"], tmp_path / "pred"
    rc, stdout, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", out)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("medmtl: warning:")]
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith("medmtl infer: error: cannot write ") and fragment in lines[0], lines[0]
    assert f"{out.resolve()}/{case.name}_seg.nii.gz" in lines[0] and "output folder" in lines[0]
    assert "Traceback" not in stdout + err and "ConfigExpression" not in stdout + err
    assert files_in(out) == []


def test_ctrl_c_is_one_line_and_leaves_no_partial_file(
    capsys, monkeypatch, tiny_bundle, phantom_cases, tmp_path
) -> None:
    real_save = nib.save
    calls = []

    def interrupted(img, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the first file is on disk (under a temporary name), then Ctrl-C
            raise KeyboardInterrupt
        return real_save(img, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", interrupted)
    out = tmp_path / "pred"
    rc, stdout, err = infer(capsys, phantom_cases["brats2023"], "--bundle", tiny_bundle, "--out", out)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("medmtl: warning:")]
    assert rc == 130 and len(lines) == 1 and "interrupted" in lines[0] and "again" in lines[0], err
    assert "Traceback" not in stdout + err
    assert files_in(out) == []


# ---------------------------------------------------------------------------------------------
# outputs people asked for


def test_only_missing_contrasts_are_written_unless_restorations_are_asked_for(
    capsys, any_subset_bundle, phantom_cases, tmp_path
) -> None:
    full = phantom_cases["brats2023"]
    cid = full.name
    rc, _, err = infer(capsys, full, "--bundle", any_subset_bundle, "--out", tmp_path / "full")
    assert rc == 0, err
    assert files_in(tmp_path / "full") == [f"{cid}.json", f"{cid}_seg.nii.gz"]
    side = json.loads((tmp_path / "full" / f"{cid}.json").read_text())
    assert side["synthesised"] == [] and side["restorations"] == []

    no_t1c = case_copy(full, tmp_path / "in", drop=("t1c",))
    rc, _, err = infer(capsys, no_t1c, "--bundle", any_subset_bundle, "--out", tmp_path / "missing")
    assert rc == 0, err
    assert files_in(tmp_path / "missing") == [f"{cid}.json", f"{cid}_seg.nii.gz", f"{cid}_t1c_synth.nii.gz"]

    out = tmp_path / "restored"
    rc, _, err = infer(capsys, no_t1c, "--bundle", any_subset_bundle, "--out", out, "--restorations")
    assert rc == 0, err
    assert files_in(out) == sorted(
        [f"{cid}.json", f"{cid}_seg.nii.gz", *(f"{cid}_{c}_synth.nii.gz" for c in CONTRASTS)]
    )
    side = json.loads((out / f"{cid}.json").read_text())
    assert side["synthesised"] == list(CONTRASTS) and side["restorations"] == ["t1n", "t2w", "t2f"]
    # a rerun of the same command finds the case finished
    rc, stdout, _ = infer(capsys, no_t1c, "--bundle", any_subset_bundle, "--out", out, "--restorations")
    assert rc == 0 and "0 case(s) to run" in stdout


# ---------------------------------------------------------------------------------------------
# honest about inputs


def _sidecar(out: Path, case: Path) -> dict:
    return json.loads((out / f"{case.name}.json").read_text())


def test_a_case_without_t1c_says_et_and_tc_are_estimates(capsys, any_subset_bundle, phantom_cases, tmp_path):
    full = phantom_cases["brats2023"]
    rc, stdout, err = infer(capsys, full, "--bundle", any_subset_bundle, "--out", tmp_path / "full")
    assert rc == 0 and "estimate" not in stdout + err
    side = _sidecar(tmp_path / "full", full)
    assert side["input_warnings"] == [] and set(side["region_confidence"].values()) == {"as validated"}

    case = case_copy(full, tmp_path / "in", drop=("t1c",))
    rc, stdout, err = infer(capsys, case, "--bundle", any_subset_bundle, "--out", tmp_path / "pred")
    assert rc == 0, err
    warned = [line for line in (stdout + err).splitlines() if "no t1c" in line]
    assert len(warned) == 1 and "TC and ET are estimates" in warned[0], stdout + err
    assert warned[0].startswith("medmtl: warning: case ") and warned[0] in err
    side = _sidecar(tmp_path / "pred", case)
    assert side["input_warnings"] == ["no_t1c"]
    assert side["region_confidence"]["WT"] == "as validated"
    assert side["region_confidence"]["ET"].startswith("estimate") and side["region_confidence"][
        "TC"
    ].startswith("estimate")


def test_a_scan_that_is_not_skull_stripped_is_flagged(capsys, any_subset_bundle, phantom_cases, tmp_path):
    rng = np.random.default_rng(0)
    case = case_copy(
        phantom_cases["brats2023"],
        tmp_path / "in",
        edit=lambda a: np.where(a == 0, rng.uniform(5, 20, a.shape), a).astype(np.float32),
    )
    rc, stdout, err = infer(capsys, case, "--bundle", any_subset_bundle, "--out", tmp_path / "pred")
    assert rc == 0, err
    assert any("background is not zero" in line for line in (stdout + err).splitlines()), stdout + err
    assert _sidecar(tmp_path / "pred", case)["input_warnings"] == ["background_not_zero"]


def test_a_field_of_view_that_cuts_the_brain_is_flagged(capsys, any_subset_bundle, phantom_cases, tmp_path):
    src = phantom_cases["brats2023"]
    case = case_copy(src, tmp_path / "in")
    for p in case.glob("*.nii.gz"):
        img = nib.load(str(p))
        arr = np.asanyarray(img.dataobj)
        half = arr.shape[2] // 2
        nib.save(nib.Nifti1Image(arr[:, :, :half].copy(), img.affine, img.header), str(p))
    rc, stdout, err = infer(capsys, case, "--bundle", any_subset_bundle, "--out", tmp_path / "pred")
    assert rc == 0, err
    assert any("touches the edge of the field of view" in line for line in (stdout + err).splitlines()), (
        stdout
    )
    assert _sidecar(tmp_path / "pred", case)["input_warnings"] == ["brain_touches_fov_edge"]


# ---------------------------------------------------------------------------------------------
# the console


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["--verbose", "infer", "c", "--out", "o"], True),
        (["infer", "c", "--out", "o", "--verbose"], True),
        (["infer", "--verbose", "c", "--out", "o"], True),
        (["infer", "c", "--out", "o"], False),
    ],
)
def test_verbose_is_read_anywhere_on_the_line(argv, verbose) -> None:
    from medmtl.cli import build_parser

    assert build_parser("infer").parse_args(argv).verbose is verbose


def test_a_warning_is_one_line_and_the_logging_setup_is_not_announced(
    capsys, tiny_bundle, phantom_cases, tmp_path
) -> None:
    case = phantom_cases["brats2023"]
    loose = {}
    for c in ("t1n", "t2w", "t2f"):  # file names that name no BraTS release: a warning
        loose[c] = tmp_path / f"{c}_scan.nii.gz"
        shutil.copy(next(case.glob(f"*-{c}.nii.gz")), loose[c])
    args = [f"--{c}={p}" for c, p in loose.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)  # as a user's Python shows it (pytest -W may hide it)
        rc, stdout, err = infer(capsys, *args, "--bundle", tiny_bundle, "--out", tmp_path / "pred")
    assert rc == 0, err
    warned = [line for line in err.splitlines() if "name no BraTS release" in line]
    assert len(warned) == 1 and warned[0].startswith("medmtl: warning: "), err
    assert "UserWarning" not in err and "warnings.warn(" not in err
    assert "Setting logging properties" not in stdout + err


# ---------------------------------------------------------------------------------------------
# discovery


def test_outputs_written_into_the_case_folder_leave_it_usable(capsys, tiny_bundle, phantom_cases, tmp_path):
    case = Path(shutil.copytree(phantom_cases["brats2023"], tmp_path / "BraTS-PHA-00000-000"))
    rc, stdout, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", case)
    assert rc == 0, err
    assert f"case {case.name}: {case}" in stdout  # where the case was found
    rc, stdout, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", case)
    assert rc == 0 and "0 case(s) to run" in stdout, err
    rc, stdout, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", case, "--overwrite")
    assert rc == 0 and "1 case(s) to run" in stdout, err


def test_a_file_medmtl_did_not_write_is_never_replaced(capsys, tiny_bundle, phantom_cases, tmp_path):
    # BraTS 2018-21 names its label map <case>_seg.nii.gz: the name of medmtl's segmentation output.
    case = Path(shutil.copytree(phantom_cases["brats2021"], tmp_path / phantom_cases["brats2021"].name))
    label = case / f"{case.name}_seg.nii.gz"
    before = label.read_bytes()
    for extra in ([], ["--overwrite"]):
        rc, _, err = infer(capsys, case, "--bundle", tiny_bundle, "--out", case, *extra)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and len(lines) == 1 and "medmtl did not write it" in lines[0], err
        assert str(label) in lines[0]
    assert label.read_bytes() == before


def test_bids_case_folder_is_one_case(capsys, tiny_bundle, phantom_cases, tmp_path):
    src = phantom_cases["brats2023"]
    bids = {"t1n": "T1w", "t1c": "ce-gadolinium_T1w", "t2w": "T2w", "t2f": "FLAIR"}
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for c, token in bids.items():
        shutil.copy(next(src.glob(f"*-{c}.nii.gz")), anat / f"sub-01_{token}.nii.gz")
    rc, stdout, err = infer(capsys, anat, "--bundle", tiny_bundle, "--out", tmp_path / "pred")
    assert rc == 0, err
    side = json.loads((tmp_path / "pred" / "sub-01.json").read_text())
    assert side["source"].endswith("sub-01_T1w.nii.gz")  # native T1 is t1n, not the post-contrast image

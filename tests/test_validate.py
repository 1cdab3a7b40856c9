"""Validation of discovered cases (data_prep.validate): every problem names its file and reason."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import nonconstant_image as _image

from data_prep.layouts import discover
from data_prep.validate import CaseReport, resolve_convention, validate_case

AFFINE = np.array([[-1.0, 0, 0, 7], [0, -1.0, 0, 6], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SHAPE = (8, 7, 6)
CID = "BraTS-GLI-00007-000"
NAMES = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f", "seg": "seg"}


def _seg(values=(0, 1, 2, 3), dtype=np.uint8, shape=SHAPE) -> np.ndarray:
    seg = np.zeros(shape, dtype)
    for i, v in enumerate(values):
        seg[2 + i % 4, 2:5, 1 + i // 4] = v
    return seg


def _write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _brats2023(
    root: Path, seg: np.ndarray | None = None, skip: tuple[str, ...] = (), shape: tuple[int, ...] = SHAPE
) -> dict[str, Path]:
    """Write a valid BraTS 2023 case (random int16 images, seg {0,1,2,3}); return key -> path."""
    rng = np.random.default_rng(0)
    paths = {}
    for key in ("t1n", "t1c", "t2w", "t2f", "seg"):
        if key in skip:
            continue
        if key == "seg":
            data = _seg(shape=shape) if seg is None else seg
        else:
            data = rng.integers(0, 900, shape).astype(np.int16)
        paths[key] = _write(root / CID / f"{CID}-{key}.nii.gz", data)
    return paths


def _check(root: Path, **kwargs) -> CaseReport:
    (case,) = discover(root).cases
    return validate_case(case, **kwargs)


def _only_problem(report: CaseReport, file_name: str, *words: str) -> str:
    assert len(report.problems) == 1, report.problems
    (problem,) = report.problems
    assert Path(problem.file).name == file_name, problem
    for word in words:
        assert word in problem.reason, problem
    return problem.reason


def test_valid_case(tmp_path):
    _brats2023(tmp_path)
    report = _check(tmp_path)
    assert report.ok and report.problems == [] and report.warnings == []
    assert (report.convention, report.convention_source) == ("brats2023", "detected")
    assert report.label_values == [0, 1, 2, 3]
    assert report.shape == SHAPE and report.spacing == (1.0, 1.0, 1.0)


def test_missing_contrast_is_a_problem_or_with_allow_missing_a_warning(tmp_path):
    _brats2023(tmp_path, skip=("t1c",))
    report = _check(tmp_path)
    assert not report.ok
    _only_problem(report, CID, "missing contrast(s) t1c", "found t1n, t2w, t2f")
    tolerant = _check(tmp_path, allow_missing=True)
    assert tolerant.ok and "t1c" in tolerant.warnings[0].reason


def test_mismatched_shape(tmp_path):
    paths = _brats2023(tmp_path)
    _write(paths["t2w"], _image((8, 7, 5), 0, np.int16))
    _only_problem(_check(tmp_path), paths["t2w"].name, "shape (8, 7, 5) differs", "(8, 7, 6)")


def test_mismatched_affine_but_signed_zero_and_float_noise_are_tolerated(tmp_path):
    paths = _brats2023(tmp_path)
    noisy = AFFINE.copy()
    noisy[0, 1] = -0.0
    noisy[:3, 3] += 2e-4
    _write(paths["t2f"], _image(SHAPE, 1, np.int16), noisy)
    assert _check(tmp_path).ok
    shifted = AFFINE.copy()
    shifted[1, 3] += 1.0  # one voxel off
    _write(paths["seg"], _seg(), shifted)
    _only_problem(_check(tmp_path), paths["seg"].name, "affine differs", "by up to 1 mm")


@pytest.mark.parametrize("keep_bytes", [40, -3000])
def test_truncated_gz_gives_a_clear_problem_not_a_traceback(tmp_path, keep_bytes):
    paths = _brats2023(tmp_path, shape=(40, 40, 24))  # large enough that the header is well before the cut
    raw = paths["t1c"].read_bytes()
    paths["t1c"].write_bytes(raw[:keep_bytes])  # 40: header cut; -3000: voxel data and gzip trailer cut
    reason = _only_problem(_check(tmp_path), paths["t1c"].name, "cannot read")
    assert "truncated" in reason.split(" (")[0]
    assert ("voxel data" in reason) == (keep_bytes < 0)


def test_truncated_uncompressed_nii(tmp_path):
    path = _write(tmp_path / "Brats18_2013_2_1" / "Brats18_2013_2_1_t1.nii", _image(SHAPE, 1, np.int16))
    for token in ("t1ce", "t2", "flair"):
        _write(tmp_path / "Brats18_2013_2_1" / f"Brats18_2013_2_1_{token}.nii", _image(SHAPE, 1, np.int16))
    path.write_bytes(path.read_bytes()[:-100])
    _only_problem(_check(tmp_path), path.name, "cannot read")


def test_nan_voxels(tmp_path):
    paths = _brats2023(tmp_path)
    data = _image(SHAPE, 1, np.float32)
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    _write(paths["t2w"], data)
    _only_problem(_check(tmp_path), paths["t2w"].name, "2 voxels are NaN or infinite")


@pytest.mark.parametrize("shape", [SHAPE + (2,), SHAPE[:2]])
def test_4d_or_2d_where_3d_expected(tmp_path, shape):
    paths = _brats2023(tmp_path)
    _write(paths["t1n"], _image(shape, 1, np.int16))
    _only_problem(_check(tmp_path), paths["t1n"].name, "expected a 3D volume", f"{len(shape)}D array")


@pytest.mark.parametrize(
    ("values", "words"),
    [((0, 1, 2, 5), ("fit no BraTS convention", "5")), ((0, 1, 3, 4), ("fit no BraTS convention",))],
)
def test_bad_label_values(tmp_path, values, words):
    paths = _brats2023(tmp_path, seg=_seg(values))
    _only_problem(_check(tmp_path), paths["seg"].name, *words)


def test_float_label_map_integral_is_fine_non_integral_is_not(tmp_path):
    paths = _brats2023(tmp_path, seg=_seg().astype(np.float32))
    assert _check(tmp_path).label_values == [0, 1, 2, 3]
    seg = _seg().astype(np.float32)
    seg[0, 0, 0] = 1.5
    _write(paths["seg"], seg)
    _only_problem(_check(tmp_path), paths["seg"].name, "non-integral", "1.5")


def test_declared_convention_must_fit_the_values(tmp_path):
    paths = _brats2023(tmp_path)
    _only_problem(_check(tmp_path, declared_convention="brats2021"), paths["seg"].name, "contradict", "[3]")
    report = _check(tmp_path, declared_convention="brats2023")
    assert report.ok and report.convention_source == "declared"


def test_label_without_enhancing_tumour_falls_back_to_the_layout(tmp_path):
    _brats2023(tmp_path / "a", seg=_seg((0, 1, 2)))
    r2023 = _check(tmp_path / "a")
    assert (r2023.convention, r2023.convention_source) == ("brats2023", "layout default")
    for token in ("t1", "t1ce", "t2", "flair"):
        _write(tmp_path / "b" / "Brats18_X_1" / f"Brats18_X_1_{token}.nii.gz", _image(SHAPE, 1, np.int16))
    _write(tmp_path / "b" / "Brats18_X_1" / "Brats18_X_1_seg.nii.gz", _seg((0, 2)))
    r2018 = _check(tmp_path / "b")
    assert (r2018.convention, r2018.convention_source) == ("brats2021", "layout default")


def test_msd_images_must_be_4d_with_4_channels_and_labels_msd(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    image = _write(task / "imagesTr" / "BRATS_001.nii.gz", _image(SHAPE + (4,), 1, np.float32))
    label = _write(task / "labelsTr" / "BRATS_001.nii.gz", _seg((0, 1, 2, 3)))
    report = _check(tmp_path)
    assert report.ok and (report.convention, report.convention_source) == ("msd", "layout default")
    _write(label, _seg((0, 1, 4)))
    _only_problem(_check(tmp_path), label.name, "msd convention")
    _write(label, _seg())
    _write(image, _image(SHAPE + (3,), 1, np.float32))
    _only_problem(_check(tmp_path), image.name, "4D image with 4 channels", "(8, 7, 6, 3)")


def test_symlink_inside_the_dataset_is_followed_wherever_it_points(tmp_path):
    # Case folders of symlinks are a common way to lay out a dataset: the user's choice.
    paths = _brats2023(tmp_path / "data")
    outside = _write(tmp_path / "elsewhere.nii.gz", _image(SHAPE, 1, np.int16))
    paths["t2w"].unlink()
    paths["t2w"].symlink_to(outside)
    report = _check(tmp_path / "data")
    assert report.ok, report.problems


def test_several_problems_are_all_reported(tmp_path):
    paths = _brats2023(tmp_path, skip=("t2f",))
    _write(paths["t1c"], _image(SHAPE + (1,), 1, np.int16))
    paths["seg"].write_bytes(b"not a nifti")
    files = sorted(Path(p.file).name for p in _check(tmp_path).problems)
    assert files == sorted([CID, paths["t1c"].name, paths["seg"].name])


@pytest.mark.parametrize(
    ("values", "layout", "declared", "expected"),
    [
        ({0, 1, 2, 4}, "brats2023", None, ("brats2021", "detected")),
        ({0, 1, 2, 3}, "brats2021", None, ("brats2023", "detected")),
        ({0, 2}, "brats2021", None, ("brats2021", "layout default")),
        ({0, 1, 2, 3}, "msd", None, ("msd", "layout default")),
        ({0, 1, 2, 3}, "msd", "brats2023", ("brats2023", "declared")),
    ],
)
def test_resolve_convention(values, layout, declared, expected):
    assert resolve_convention(values, layout, declared) == expected


def test_one_grid_tolerance_everywhere(tmp_path):
    """A case's files, a prediction and a local-synthesis mask are held to the same affine tolerance."""
    from medmtl.io import AFFINE_ATOL_MM, grid_mismatch
    from medmtl.local_synthesis import _check_mask

    ref_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ref_affine[:3, 3] = 120.0  # far from the origin: a relative tolerance would widen the check here
    off = ref_affine.copy()
    off[0, 3] += 2 * AFFINE_ATOL_MM
    assert grid_mismatch((4, 4, 4), ref_affine, (4, 4, 4), ref_affine) is None
    assert "affine differs by up to 0.002 mm" in grid_mismatch((4, 4, 4), off, (4, 4, 4), ref_affine)
    assert "shape (4, 4, 3) differs from (4, 4, 4)" == grid_mismatch(
        (4, 4, 3), ref_affine, (4, 4, 4), ref_affine
    )
    ref = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), ref_affine)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), off), str(tmp_path / "mask.nii.gz"))
    with pytest.raises(ValueError, match="affine differs by up to"):
        _check_mask(tmp_path / "mask.nii.gz", ref, "region mask")


def test_both_nifti_writers_keep_the_reference_codes(tmp_path):
    from medmtl.io import write_nifti, write_nifti_group

    ref = nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4))
    ref.header.set_qform(np.eye(4), code=2)
    ref.header.set_sform(np.eye(4), code=2)
    write_nifti(tmp_path / "one.nii.gz", np.zeros((3, 3, 3)), np.eye(4), np.uint8, header=ref.header)
    write_nifti_group(
        {tmp_path / "two.nii.gz": (np.zeros((3, 3, 3)), np.uint8, None)}, ref, tmp_path / "two.json", {}
    )
    for name in ("one.nii.gz", "two.nii.gz"):
        hdr = nib.load(str(tmp_path / name)).header
        assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (2, 2), name
    plain = write_nifti(tmp_path / "three.nii.gz", np.zeros((3, 3, 3)), np.eye(4), np.uint8)
    assert int(nib.load(str(plain)).header["sform_code"]) == 1

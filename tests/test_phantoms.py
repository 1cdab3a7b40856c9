"""Tests of the synthetic BraTS-like phantoms (data_prep.phantoms)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from data_prep import phantoms
from data_prep.phantoms import (
    LAYOUTS,
    TISSUES,
    case_seed,
    default_spacing,
    lps_affine,
    make_phantom,
    write_case,
    write_phantoms,
)
from medmtl.commands.phantoms import add_arguments, main
from medmtl.contrasts import CONTRASTS, canonical
from medmtl.labels import CONVENTIONS

SHAPE = (64, 64, 40)  # 3.75 mm voxels: the whole head, big enough for a necrotic core
SMALL = (48, 48, 32)
CUBE = np.ones((3, 3, 3), dtype=bool)

# The real releases' naming, written out literally (independently of the code under test).
RELEASE_FILES = {
    "brats2023": ("-", {"t1n", "t1c", "t2w", "t2f", "seg"}),
    "brats2021": ("_", {"flair", "t1", "t1ce", "t2", "seg"}),
    "upenn": ("_", {"FLAIR", "T1", "T1GD", "T2", "SEG"}),
}
RELEASE_PATTERNS = {
    name: re.compile(r"(?P<id>[^/]+)/(?P=id)" + re.escape(sep) + "(" + "|".join(tokens) + r")\.nii\.gz")
    for name, (sep, tokens) in RELEASE_FILES.items()
}


def brats_dir() -> Path:
    """The shared real BraTS samples (../shared/data/brats), or MEDMTL_BRATS_DIR."""
    env = os.environ.get("MEDMTL_BRATS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"


@pytest.fixture(scope="module")
def full_cases() -> list[phantoms.Phantom]:
    """Three phantoms with necrosis, enhancing rim and oedema."""
    return [make_phantom(SHAPE, seed=s, tumour_kind="full") for s in (0, 1, 3)]


def region_mean(image: np.ndarray, mask: np.ndarray) -> float:
    assert mask.any(), "empty mask"
    return float(image[mask].astype(np.float64).mean())


# -- grid, dtypes, orientation -------------------------------------------------------------------------


def test_default_spacing_fills_brats_field_of_view():
    assert default_spacing((240, 240, 155)) == (1.0, 1.0, 1.0)
    assert default_spacing((96, 96, 64)) == (2.5, 2.5, 2.5)
    sx, sy, sz = default_spacing(SMALL)
    assert sx * SMALL[0] >= 240 and sy * SMALL[1] >= 240 and sz * SMALL[2] >= 155


def test_arrays_dtypes_and_lps_affine(full_cases):
    p = full_cases[0]
    assert p.images.shape == (4, *SHAPE) and p.images.dtype == np.int16
    assert p.label.shape == SHAPE and p.label.dtype == np.uint8
    assert p.brain_mask.dtype == bool and p.tissue.dtype == np.uint8
    assert p.contrasts == CONTRASTS
    assert nib.aff2axcodes(p.affine) == ("L", "P", "S")
    s = default_spacing(SHAPE)
    np.testing.assert_allclose(np.diag(p.affine)[:3], [-s[0], -s[1], s[2]])
    centre = np.append((np.asarray(SHAPE) - 1) / 2.0, 1.0)
    np.testing.assert_allclose(p.affine @ centre, [0, 0, 0, 1], atol=1e-9)
    np.testing.assert_array_equal(lps_affine(SHAPE, s), p.affine)
    # image(name) accepts any spelling of a contrast
    np.testing.assert_array_equal(p.image("FLAIR"), p.images[CONTRASTS.index("t2f")])


def test_skull_stripped_images_zero_outside_brain(full_cases):
    for p in full_cases:
        assert (p.images[:, ~p.brain_mask] == 0).all()
        assert (p.images[:, p.brain_mask] > 0).all()  # nonzero inside, as the z-scoring expects
        assert (p.label[~p.brain_mask] == 0).all()
        assert ((p.tissue > 0) == p.brain_mask).all()
        # the head sits inside the field of view, away from the borders in x and y
        idx = np.argwhere(p.brain_mask)
        assert idx[:, :2].min() > 0 and (idx[:, :2].max(0) < np.asarray(SHAPE[:2]) - 1).all()


def test_brain_size_and_tissue_classes_plausible(full_cases):
    for p in full_cases:
        ml = np.prod(p.spacing) / 1000.0
        assert 900 < p.brain_mask.sum() * ml < 1600  # adult brain + CSF, in ml
        counts = {name: int((p.tissue == v).sum()) for name, v in TISSUES.items()}
        assert min(counts.values()) > 0
        assert counts["wm"] > counts["ventricle"] and counts["gm"] > counts["ventricle"]


# -- contrast per sequence -----------------------------------------------------------------------------


def test_healthy_tissue_contrast_per_sequence(full_cases):
    for p in full_cases:
        healthy = p.label == 0
        mean = {
            (c, t): region_mean(p.image(c), (p.tissue == TISSUES[t]) & healthy)
            for c in CONTRASTS
            for t in ("csf", "gm", "wm")
        }
        assert mean["t1n", "wm"] > mean["t1n", "gm"] > mean["t1n", "csf"]
        assert mean["t2w", "csf"] > mean["t2w", "gm"] > mean["t2w", "wm"]
        assert mean["t2f", "csf"] < mean["t2f", "gm"] and mean["t2f", "csf"] < mean["t2f", "wm"]
        ventricles = (p.tissue == TISSUES["ventricle"]) & healthy
        assert region_mean(p.image("t2w"), ventricles) > mean["t2w", "gm"]
        assert region_mean(p.image("t2f"), ventricles) < mean["t2f", "wm"]


def test_flair_grey_slightly_brighter_than_white_at_1mm():
    # At 3.75 mm the cortical ribbon is mostly partial volume with dark CSF; at 1 mm (a 64 mm patch
    # of the centre of the head) grey matter away from CSF is measurably brighter than white matter.
    for seed in (0, 1):
        p = make_phantom(SHAPE, spacing=1.0, seed=seed)
        fluid = ndi.binary_dilation((p.tissue == TISSUES["csf"]) | (p.tissue == TISSUES["ventricle"]), CUBE)
        gm, wm = ((p.tissue == TISSUES[t]) & (p.label == 0) & ~fluid for t in ("gm", "wm"))
        flair = p.image("t2f")
        assert 1.0 < region_mean(flair, gm) / region_mean(flair, wm) < 1.4
        t2w, t1n = p.image("t2w"), p.image("t1n")
        assert region_mean(t2w, gm) > region_mean(t2w, wm) and region_mean(t1n, gm) < region_mean(t1n, wm)


def test_tumour_contrast_per_sequence(full_cases):
    v = CONVENTIONS["brats2023"]
    for p in full_cases:
        netc, snfh, et = (p.label == v[k] for k in ("NETC", "SNFH", "ET"))
        wm = (p.tissue == TISSUES["wm"]) & (p.label == 0)
        assert region_mean(p.image("t2f"), snfh) > 1.2 * region_mean(p.image("t2f"), wm)
        assert region_mean(p.image("t2w"), snfh) > region_mean(p.image("t2w"), wm)
        t1c = p.image("t1c")
        assert region_mean(t1c, et) > region_mean(t1c, netc)
        assert region_mean(t1c, et) > 1.2 * region_mean(t1c, wm)
        # gadolinium: the rim enhances on T1c relative to the same voxels before contrast
        t1n = p.image("t1n")
        assert region_mean(t1c, et) / region_mean(t1c, wm) > region_mean(t1n, et) / region_mean(t1n, wm)


# -- tumour geometry -----------------------------------------------------------------------------------


def test_label_geometry(full_cases):
    v = CONVENTIONS["brats2023"]
    for p in full_cases:
        netc, snfh, et = (p.label == v[k] for k in ("NETC", "SNFH", "ET"))
        assert netc.any() and snfh.any() and et.any()
        # ET is a shell around the necrosis: NETC touches ET and never the background / oedema
        grown = ndi.binary_dilation(netc, CUBE)
        assert (grown & et).any()
        assert set(np.unique(p.label[grown])) <= {v["NETC"], v["ET"]}
        # oedema surrounds the core: the outer boundary of the whole tumour is mostly oedema
        wt = p.label > 0
        boundary = wt & ~ndi.binary_erosion(wt, CUBE)
        assert (p.label[boundary] == v["SNFH"]).mean() > 0.8
        # one tumour: the whole tumour is one connected piece, within one hemisphere's half of the grid
        _, pieces = ndi.label(wt, CUBE)
        assert pieces == 1
        tc = np.argwhere(netc | et)[:, 0]
        mid = (SHAPE[0] - 1) / 2.0
        assert (tc < mid).all() or (tc > mid).all()


def test_oedema_prefers_white_matter(full_cases):
    v = CONVENTIONS["brats2023"]
    for p in full_cases:
        tc = (p.label == v["NETC"]) | (p.label == v["ET"])
        near = ndi.binary_dilation(tc, CUBE, iterations=4) & ~tc
        frac = {
            t: (p.label[near & (p.tissue == TISSUES[t])] == v["SNFH"]).mean() for t in ("wm", "gm", "csf")
        }
        assert frac["wm"] > frac["gm"] > frac["csf"]


def test_mass_effect_pushes_tissue_away(full_cases):
    # The ventricle on the tumour's side is pushed: the tumour-side ventricle is further from the
    # tumour than the mirrored position of the other side's would be (midline shift).
    shifts = []
    for p in full_cases:
        vent = p.tissue == TISSUES["ventricle"]
        x = np.argwhere(vent)[:, 0].mean()
        tumour_x = np.argwhere(p.label > 0)[:, 0].mean()
        mid = (SHAPE[0] - 1) / 2.0
        shifts.append((x - mid) * np.sign(mid - tumour_x))
    assert np.mean(shifts) > 0


def test_tumour_kinds():
    v = CONVENTIONS["brats2023"]
    solid = make_phantom(SHAPE, seed=2, tumour_kind="no_necrosis")
    assert (solid.label == v["ET"]).any() and not (solid.label == v["NETC"]).any()
    quiet = make_phantom(SHAPE, seed=2, tumour_kind="no_enhancement")
    assert (quiet.label == v["NETC"]).any() and not (quiet.label == v["ET"]).any()
    wm = (quiet.tissue == TISSUES["wm"]) & (quiet.label == 0)
    assert region_mean(quiet.image("t1c"), quiet.label == v["NETC"]) < region_mean(quiet.image("t1c"), wm)
    kinds = {make_phantom(SMALL, seed=s).info["tumour_kind"] for s in range(12)}
    assert "full" in kinds and kinds <= set(phantoms.KINDS)


def test_label_values_follow_convention():
    a = make_phantom(SMALL, seed=4, convention="brats2023", tumour_kind="full")
    b = make_phantom(SMALL, seed=4, convention="brats2021", tumour_kind="full")
    assert set(np.unique(a.label)) == {0, 1, 2, 3}
    assert set(np.unique(b.label)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(a.label == 3, b.label == 4)
    np.testing.assert_array_equal(a.images, b.images)


# -- determinism ---------------------------------------------------------------------------------------


def test_same_seed_same_case_different_seed_different_case():
    a, b, c = (make_phantom(SMALL, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.tissue, b.tissue)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.brain_mask, c.brain_mask)


def test_anatomy_of_a_seed_does_not_depend_on_the_grid():
    coarse, fine = make_phantom(SMALL, seed=5), make_phantom(SHAPE, seed=5)
    assert coarse.info["tumour_radius_mm"] == fine.info["tumour_radius_mm"]
    centre_mm = [
        lps_affine(p.images.shape[1:], p.spacing) @ np.append(p.info["tumour_centre_voxel"], 1.0)
        for p in (coarse, fine)
    ]
    np.testing.assert_allclose(centre_mm[0], centre_mm[1], atol=0.05)  # info rounds to 0.01 voxel
    ml = [p.brain_mask.sum() * np.prod(p.spacing) / 1000 for p in (coarse, fine)]
    assert abs(ml[0] - ml[1]) / ml[1] < 0.05


def test_case_seeds_are_distinct_and_stable():
    seeds = [case_seed(0, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert case_seed(0, 3) == case_seed(0, 3) != case_seed(1, 3)


# -- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(RELEASE_FILES))
def test_written_case_follows_release_layout(tmp_path, layout):
    folders = write_phantoms(tmp_path, n=2, shape=SMALL, layout=layout, seed=0)
    assert [f.parent for f in folders] == [tmp_path, tmp_path]
    sep, tokens = RELEASE_FILES[layout]
    for folder in folders:
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(f"{folder.name}{sep}{t}.nii.gz" for t in tokens)
        for name in names:
            rel = f"{folder.name}/{name}"
            matches = [k for k, pat in RELEASE_PATTERNS.items() if pat.fullmatch(rel)]
            assert matches == [layout], rel
    # nothing else beside the cases but the manifest: no temporary folders left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f.name for f in folders] + ["phantoms.json"])


@pytest.mark.parametrize("layout", sorted(RELEASE_FILES))
def test_written_files_match_the_phantom(tmp_path, layout):
    naming = LAYOUTS[layout]
    folder = write_phantoms(tmp_path, n=1, shape=SMALL, layout=layout, seed=3)[0]
    p = make_phantom(SMALL, seed=case_seed(3, 0), convention=naming.convention)
    for c, contrast in enumerate(CONTRASTS):
        (path,) = [f for f in folder.iterdir() if f.name.endswith(f"{naming.files[contrast]}.nii.gz")]
        assert canonical(naming.files[contrast]) == contrast
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        np.testing.assert_allclose(img.affine, p.affine)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), p.images[c])
    seg = nib.load(folder / naming.file_name(folder.name, naming.label))
    assert seg.get_data_dtype() == np.uint8
    labels = np.asanyarray(seg.dataobj)
    np.testing.assert_array_equal(labels, p.label)
    assert set(np.unique(labels)) <= {0, *CONVENTIONS[naming.convention].values()}


def test_written_files_are_bit_identical_for_the_same_seed(tmp_path):
    a = write_phantoms(tmp_path / "a", n=2, shape=SMALL, seed=11)
    b = write_phantoms(tmp_path / "b", n=2, shape=SMALL, seed=11)
    c = write_phantoms(tmp_path / "c", n=1, shape=SMALL, seed=12)
    for fa, fb in zip(a, b):
        for f in sorted(fa.iterdir()):
            assert f.read_bytes() == (fb / f.name).read_bytes(), f.name
    t1 = LAYOUTS["brats2023"].file_name(a[0].name, "t1n")
    assert (a[0] / t1).read_bytes() != (c[0] / t1).read_bytes()


def test_float32_label_maps_as_in_brats2023(tmp_path):
    folder = write_phantoms(tmp_path, n=1, shape=SMALL, seed=0, seg_dtype="float32")[0]
    seg = nib.load(folder / f"{folder.name}-seg.nii.gz")
    assert seg.get_data_dtype() == np.float32
    assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0.0, 1.0, 2.0, 3.0}


def test_discovered_by_the_layout_importer(tmp_path):
    layouts = pytest.importorskip("data_prep.layouts")
    expected = {"brats2023": "brats2023", "brats2021": "brats2018-2021", "upenn": "upenn_gbm"}
    for layout, name in expected.items():
        write_phantoms(tmp_path / layout, n=1, shape=SMALL, layout=layout, seed=0)
        (case,) = layouts.discover(tmp_path / layout).cases
        assert case.layout == name
        assert case.convention == LAYOUTS[layout].convention
        assert set(case.images) == set(CONTRASTS) and case.label is not None


def test_case_folder_is_complete_or_absent(tmp_path, monkeypatch):
    from data_prep.phantoms import writer

    p = make_phantom(SMALL, seed=0)
    calls = []

    def failing_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write(path, *args, **kwargs)

    real_write = writer.write_nifti
    monkeypatch.setattr(writer, "write_nifti", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_case(p, tmp_path, "BraTS-PHA-00000-000")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(writer, "write_nifti", real_write)

    folder = write_case(p, tmp_path, "BraTS-PHA-00000-000")
    assert len(list(folder.iterdir())) == 5
    with pytest.raises(FileExistsError, match="BraTS-PHA-00000-000"):
        write_case(p, tmp_path, "BraTS-PHA-00000-000")
    other = make_phantom(SMALL, seed=1)
    write_case(other, tmp_path, "BraTS-PHA-00000-000", overwrite=True)
    t1n = nib.load(folder / "BraTS-PHA-00000-000-t1n.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(t1n.dataobj), other.images[0])
    assert [f.name for f in tmp_path.iterdir()] == ["BraTS-PHA-00000-000"]


def test_write_phantoms_refuses_to_overwrite_before_writing(tmp_path):
    write_phantoms(tmp_path, n=1, shape=SMALL, seed=0)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_phantoms(tmp_path, n=2, shape=SMALL, seed=0)
    assert sorted(tmp_path.rglob("*")) == before


# -- errors and command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (8, 64, 64)}, "at least 16"),
        ({"shape": (64, 64)}, "3 sizes"),
        ({"spacing": (1.0, -1.0, 1.0)}, "positive"),
        ({"seed": -1}, "non-negative"),
        ({"convention": "brats2019"}, "unknown label convention"),
        ({"tumour_kind": "cyst"}, "unknown tumour kind"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_phantom(**{"shape": SMALL, **kwargs})


def test_layout_mismatch_and_unknown_layout(tmp_path):
    p = make_phantom(SMALL, seed=0, convention="brats2023")
    with pytest.raises(ValueError, match="brats2021 convention"):
        write_case(p, tmp_path, "x", layout="upenn")
    with pytest.raises(ValueError, match="unknown layout"):
        write_phantoms(tmp_path, n=1, shape=SMALL, layout="msd")


def test_cli_writes_the_requested_cases(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            str(tmp_path),
            "--n",
            "2",
            "--shape",
            *map(str, SMALL),
            "--layout",
            "upenn_gbm",
            "--spacing",
            "5",
            "--seed",
            "3",
        ]
    )
    assert main(args) == 0
    folders = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [f.name for f in folders] == ["UPENN-PHA-00000_11", "UPENN-PHA-00001_11"]
    img = nib.load(folders[0] / "UPENN-PHA-00000_11_T1GD.nii.gz")
    assert img.shape == SMALL and img.header.get_zooms() == (5.0, 5.0, 5.0)
    seg = np.asanyarray(nib.load(folders[0] / "UPENN-PHA-00000_11_SEG.nii.gz").dataobj)
    assert set(np.unique(seg)) <= {0, 1, 2, 4}
    assert "2 upenn phantom case(s)" in capsys.readouterr().out


# -- against real data ---------------------------------------------------------------------------------


@pytest.mark.realdata
def test_tumour_signal_within_range_of_real_cases():
    """Mean signal of each tumour compartment relative to healthy brain, per sequence, falls in the
    range spanned by real labelled BraTS cases, one per release (with a margin for the few cases)."""
    root = brats_dir()
    if not root.is_dir():
        pytest.skip(f"real BraTS samples not found at {root}")
    layouts = pytest.importorskip("data_prep.layouts")
    labelled = [c for c in layouts.discover(root).cases if c.label is not None and len(c.images) == 4]
    cases = list({c.dataset: c for c in reversed(labelled)}.values())  # one case per release
    if len(cases) < 2:
        pytest.skip("fewer than two labelled real cases")

    def ratios(images: dict[str, np.ndarray], label: np.ndarray, brain: np.ndarray) -> np.ndarray:
        et = 3 if (label == 3).any() else 4
        healthy = brain & (label == 0)
        return np.array(
            [
                [region_mean(images[c], label == v) / np.median(images[c][healthy]) for v in (1, 2, et)]
                for c in CONTRASTS
            ]
        )

    real = []
    for case in cases:
        images = {
            c: np.asanyarray(nib.load(case.root / p).dataobj).astype(np.float32)
            for c, p in case.images.items()
        }
        label = np.asanyarray(nib.load(case.root / case.label).dataobj).astype(np.int16)
        if not all((label == v).any() for v in (1, 2)):
            continue
        real.append(ratios(images, label, images["t1n"] > 0))
    real = np.array(real)
    lo, hi = real.min(0) - 0.3, real.max(0) + 0.3
    for seed in range(3):
        p = make_phantom((96, 96, 64), seed=seed, tumour_kind="full")
        got = ratios({c: p.image(c).astype(np.float32) for c in CONTRASTS}, p.label, p.brain_mask)
        assert ((got >= lo) & (got <= hi)).all(), (
            f"seed {seed}: {got.round(2)} outside [{lo.round(2)}, {hi.round(2)}]"
        )

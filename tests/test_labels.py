"""Label conventions, label <-> region conversion, and their dict transforms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from data_prep.layouts import discover
from medmtl.labels import (
    LabelToRegionsd,
    RegionsToLabeld,
    allowed_values,
    check_label_values,
    convert_convention,
    detect_convention,
    label_to_regions,
    regions_to_label,
    resolve_convention,
)

# Label values written out literally (independently of the tables under test).
VALUES = {
    "brats2021": {"NETC": 1, "SNFH": 2, "ET": 4},
    "brats2023": {"NETC": 1, "SNFH": 2, "ET": 3},
    "msd": {"NETC": 2, "SNFH": 1, "ET": 3},
}


def hand_regions(label: np.ndarray, convention: str) -> np.ndarray:
    """(TC, WT, ET) from a label map, written from the BraTS definitions."""
    v = VALUES[convention]
    netc, snfh, et = (label == v["NETC"]), (label == v["SNFH"]), (label == v["ET"])
    return np.stack([netc | et, netc | snfh | et, et])


def random_label(convention: str, shape=(9, 8, 7), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = [0, *VALUES[convention].values()]
    return rng.choice(values, size=shape).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# detect_convention


@pytest.mark.parametrize(
    ("values", "default", "expected"),
    [
        ([0, 1, 2, 4], None, "brats2021"),
        ([0, 1, 2, 3], None, "brats2023"),
        ([0, 4], "brats2023", "brats2021"),  # ET alone decides, whatever the default
        ([3], "brats2021", "brats2023"),
        ([0, 1, 2], "brats2021", "brats2021"),  # no ET: cannot tell, the default is used
        ([0, 1, 2], None, None),
        ([0], "brats2023", "brats2023"),  # empty map
        ([], None, None),
        (np.array([0.0, 1.0, 4.0], dtype=np.float32), None, "brats2021"),  # BraTS 2023 ships float maps
        (np.array([0, 3], dtype=np.int16), None, "brats2023"),
    ],
)
def test_detect_convention(values, default, expected) -> None:
    assert detect_convention(values, default=default) == expected


@pytest.mark.parametrize("values", [[0, 3, 4], [0, 1, 5], [-1, 0], [0, 2.5], [0, float("nan")]])
def test_detect_convention_rejects_values_of_no_convention(values) -> None:
    with pytest.raises(ValueError, match="label values"):
        detect_convention(values, default="brats2023")


@pytest.mark.parametrize(
    ("values", "declared", "default", "expected"),
    [
        ([0, 1, 2, 4], None, "brats2023", "brats2021"),  # the values decide
        ([0, 1, 2, 3], None, "brats2021", "brats2023"),
        ([0, 1, 2], None, "brats2021", "brats2021"),  # no ET: the default names it
        ([0, 1, 2], None, "brats2023", "brats2023"),
        ([0, 1, 2, 3], "msd", "brats2023", "msd"),  # declared wins where the values cannot tell
        ([0, 1, 2], "brats2021", "brats2023", "brats2021"),
        (np.array([0.0, 2.0, 4.0], dtype=np.float32), None, "brats2023", "brats2021"),
    ],
)
def test_resolve_convention(values, declared, default, expected) -> None:
    assert resolve_convention(values, declared, default) == expected


@pytest.mark.parametrize(
    ("values", "declared", "message"),
    [
        ([0, 1, 2, 3], "brats2021", "do not fit the convention brats2021"),  # declared, contradicted
        ([0, 4], "brats2023", "do not fit the convention brats2023"),
        ([0, 3, 4], None, "fit no BraTS convention"),
        ([0, 2.5], "brats2021", "not integers"),
        ([0, 1], "brats2019", "unknown label convention"),
    ],
)
def test_resolve_convention_refuses_values_that_do_not_fit(values, declared, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_convention(values, declared)


def test_allowed_values() -> None:
    assert allowed_values("brats2021") == {0, 1, 2, 4}
    assert allowed_values("brats2023") == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        allowed_values("brats2019")


# ---------------------------------------------------------------------------------------------
# label <-> regions on small arrays


def test_msd_labels_give_brats_regions() -> None:
    # MSD Task01: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
    label = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)  # (1, 1, 4)
    regions = np.asarray(label_to_regions(label, "msd"))
    assert regions.shape == (3, 1, 1, 4)
    tc, wt, et = regions[:, 0, 0, :]
    assert tc.tolist() == [False, False, True, True]  # TC = non-enhancing + enhancing
    assert wt.tolist() == [False, True, True, True]  # WT = every tumour label
    assert et.tolist() == [False, False, False, True]
    # Written back in BraTS 2023 values: oedema 2, non-enhancing 1, enhancing 3.
    assert regions_to_label(regions, "brats2023")[0].tolist() == [[[0, 2, 1, 3]]]
    assert np.array_equal(convert_convention(label, "msd", "brats2023"), [[[0, 2, 1, 3]]])


@pytest.mark.parametrize("convention", ["brats2021", "brats2023", "msd"])
def test_regions_match_definition_and_round_trip(convention: str) -> None:
    label = random_label(convention)
    regions = np.asarray(label_to_regions(label[None], convention))
    assert regions.shape == (3, *label.shape)
    assert np.array_equal(regions.astype(bool), hand_regions(label, convention))
    back = regions_to_label(regions, convention)
    assert back.shape == (1, *label.shape) and back.dtype == np.uint8
    assert np.array_equal(back[0], label)


def test_round_trip_torch_keeps_type_and_device() -> None:
    label = torch.as_tensor(random_label("brats2023", seed=1))
    regions = label_to_regions(label, "brats2023")
    assert isinstance(regions, torch.Tensor)
    back = regions_to_label(regions, "brats2023")
    assert isinstance(back, torch.Tensor) and back.dtype == torch.uint8
    assert torch.equal(back[0], label)


@pytest.mark.parametrize(("src", "dst"), [("brats2021", "brats2023"), ("brats2023", "brats2021")])
def test_convert_between_brats_conventions(src: str, dst: str) -> None:
    label = random_label(src, seed=2)
    converted = np.asarray(convert_convention(label, src, dst))
    expected = label.copy()
    expected[label == VALUES[src]["ET"]] = VALUES[dst]["ET"]
    assert np.array_equal(converted, expected)
    # Same regions either way, and regions written in the other convention give the converted map.
    regions = np.asarray(label_to_regions(label, src))
    assert np.array_equal(np.asarray(label_to_regions(converted, dst)), regions)
    assert np.array_equal(regions_to_label(regions, dst)[0], converted)


def test_regions_to_label_resolves_overlaps_inside_out() -> None:
    # Non-nested predictions: ET wins over TC, TC over WT; TC or ET outside WT still count.
    regions = np.zeros((3, 1, 1, 5), dtype=np.float32)
    regions[:, 0, 0, 0] = [0, 0, 0]
    regions[:, 0, 0, 1] = [0, 1, 0]  # oedema
    regions[:, 0, 0, 2] = [1, 1, 0]  # necrosis
    regions[:, 0, 0, 3] = [1, 1, 1]  # enhancing
    regions[:, 0, 0, 4] = [0, 0, 0.9]  # ET alone (probability above 0.5)
    assert regions_to_label(regions, "brats2021")[0, 0, 0].tolist() == [0, 2, 1, 4, 4]
    with pytest.raises(ValueError, match="expected 3 region channels"):
        regions_to_label(regions[:2], "brats2021")


# ---------------------------------------------------------------------------------------------
# dict transforms


def test_label_to_regionsd_reads_convention_per_case_and_keeps_meta() -> None:
    label = random_label("brats2021", seed=3)
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    item = {"label": MetaTensor(torch.as_tensor(label[None]), affine=affine), "convention": "brats2021"}
    out = LabelToRegionsd(keys="label", convention="brats2023")(item)  # the case's own convention wins
    assert out["label"].dtype == torch.float32
    assert np.array_equal(out["label"].numpy().astype(bool), hand_regions(label, "brats2021"))
    assert isinstance(out["label"], MetaTensor) and torch.equal(out["label"].affine, affine)
    # Without a per-case convention the default is used; without both it is an error.
    label23 = random_label("brats2023", seed=3)
    out = LabelToRegionsd(keys="label", convention="brats2023")({"label": label23[None]})
    assert np.array_equal(out["label"].astype(bool), hand_regions(label23, "brats2023"))
    with pytest.raises(ValueError, match="no label convention"):
        LabelToRegionsd(keys="label")({"label": label23[None]})


@pytest.mark.parametrize(
    ("values", "convention"), [([0, 1, 4], "brats2023"), ([0, 3], "brats2021"), ([5], "msd")]
)
def test_values_outside_the_convention_are_an_error(values, convention) -> None:
    # ET = 4 read as BraTS 2023 (or 3 as 2018-21) must not silently become ET or background.
    label = np.array(values, dtype=np.float32).reshape(1, 1, -1)
    with pytest.raises(ValueError, match=f"do not belong to the {convention} convention"):
        label_to_regions(label, convention, strict=True)
    with pytest.raises(ValueError, match="do not belong"):
        LabelToRegionsd(keys="label")({"label": torch.as_tensor(label[None]), "convention": convention})
    with pytest.raises(ValueError, match="do not belong"):
        check_label_values(torch.as_tensor(label), convention)
    check_label_values(np.array([0.0, 1.0, 2.0]), convention)  # values every convention has


def test_non_strict_regions_ignore_foreign_values() -> None:
    # Without strict, a 3 in a BraTS 2018-21 map belongs to no region (metrics rely on this).
    regions = np.asarray(label_to_regions(np.array([[[0, 3, 1]]]), "brats2021"))
    assert regions[:, 0, 0].tolist() == [[False, False, True], [False, False, True], [False, False, False]]


def test_regions_to_labeld_uses_input_convention_and_answers_msd_in_brats2023() -> None:
    label = random_label("brats2023", seed=4)
    regions = MetaTensor(torch.as_tensor(hand_regions(label, "brats2023")).float())
    for conv, et in (("brats2021", 4), ("brats2023", 3), ("msd", 3)):
        out = RegionsToLabeld(keys="seg")({"seg": regions, "convention": conv})["seg"]
        assert isinstance(out, MetaTensor)
        expected = label.copy()
        expected[label == 3] = et
        assert np.array_equal(out.numpy()[0], expected), conv


# ---------------------------------------------------------------------------------------------
# every labelled real case


def _real_labelled_cases(root):
    return [c for c in discover(root).cases if c.label is not None]


@pytest.mark.realdata
def test_real_label_maps_regions_and_round_trip(brats_dir) -> None:
    cases = _real_labelled_cases(brats_dir)
    assert len(cases) >= 4, f"expected the labelled real cases under {brats_dir}, found {len(cases)}"
    seen = set()
    for case in cases:
        raw = np.asanyarray(nib.load(str(case.root / case.label)).dataobj)
        values = set(np.unique(raw).tolist())
        convention = detect_convention(values, default=case.convention)
        seen.add(convention)
        assert values <= {0, *VALUES[convention].values()}, (case.case_id, values)
        label = raw.astype(np.uint8)
        counts = {name: int((label == v).sum()) for name, v in VALUES[convention].items()}
        out = LabelToRegionsd(keys="label")({"label": torch.as_tensor(label[None]), "convention": convention})
        regions = out["label"]
        assert tuple(regions.shape) == (3, *label.shape), case.case_id
        tc, wt, et = (int(regions[i].sum()) for i in range(3))
        assert tc == counts["NETC"] + counts["ET"], case.case_id
        assert wt == counts["NETC"] + counts["SNFH"] + counts["ET"], case.case_id
        assert et == counts["ET"], case.case_id
        assert wt > 0, f"{case.case_id}: empty tumour"
        back = regions_to_label(regions, convention)
        assert torch.equal(back[0], torch.as_tensor(label)), case.case_id
        # The same map in the other BraTS convention gives the same regions and converts back.
        other = "brats2023" if convention == "brats2021" else "brats2021"
        converted = convert_convention(label, convention, other)
        assert np.array_equal(np.asarray(label_to_regions(converted, other)), regions.numpy().astype(bool))
        assert np.array_equal(np.asarray(convert_convention(converted, other, convention)), label)
    assert seen == {"brats2021", "brats2023"}, f"real cases cover {seen}"


def test_the_output_convention_fallback_is_one_rule():
    from medmtl.conventions import writable_convention

    assert writable_convention("brats2021") == "brats2021"
    assert writable_convention("msd") == "brats2023" and writable_convention(None) == "brats2023"

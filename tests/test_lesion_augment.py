"""Synthetic-lesion augmentation (RandSyntheticLesiond) on tiny synthetic cases and one phantom pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd
from scipy import ndimage

from medmtl.inference import case_entry
from medmtl.lesion_augment import RandSyntheticLesiond, donor_compartments, make_procedural_lesion
from medmtl.transforms import SplitTaskd, train_transforms

T1N, T1C, T2W, T2F = range(4)
# Small lesions that fit the tiny brains below at 1 mm.
SMALL = {"core_radius_mm": (4.0, 6.0), "rim_mm": (1.5, 2.0), "oedema_mm": (2.0, 4.0)}


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) - c for n, c in zip(shape, centre)], indexing="ij")
    return sum(g.astype(float) ** 2 for g in grids) <= radius**2


def make_case(size: int = 40, spacing: float = 1.0, seed: int = 0, tumour: bool = True) -> dict:
    """A z-scored 4-contrast case: noisy spherical brain (0 outside), optional nested tumour at one side."""
    shape = (size,) * 3
    rng = np.random.default_rng(seed)
    brain = _ball(shape, (size / 2 - 0.5,) * 3, size / 2 - 2)
    image = (rng.normal(0.0, 0.4, (4, *shape)) * brain).astype(np.float32)
    label = np.zeros((3, *shape), dtype=np.float32)
    if tumour:
        centre = (size / 2, size / 4, size / 2)
        label[1] = _ball(shape, centre, 5) & brain  # WT
        label[0] = _ball(shape, centre, 3)  # TC
        label[2] = _ball(shape, centre, 3) & ~_ball(shape, centre, 1.5)  # ET
    affine = torch.diag(torch.tensor([spacing, spacing, spacing, 1.0], dtype=torch.float64))
    return {
        "image": MetaTensor(image, affine=affine),
        "label": MetaTensor(label, affine=affine),
        "brain_mask": MetaTensor(brain[None].astype(np.float32), affine=affine),
    }


def pasted(before: dict, after: dict) -> dict[str, torch.Tensor]:
    """Masks of the voxels the transform labelled: the new WT and its compartments."""
    old, new = before["label"] > 0.5, after["label"] > 0.5
    wt = new[1] & ~old[1]
    return {"wt": wt, "et": wt & new[2], "netc": wt & new[0] & ~new[2], "snfh": wt & ~new[0]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_only_lesion_voxels_change_and_nothing_outside_the_brain(seed: int) -> None:
    case = make_case(seed=seed)
    out = RandSyntheticLesiond(prob=1.0, **SMALL).set_random_state(seed)(dict(case))
    img_in, img_out = case["image"], out["image"]
    assert isinstance(img_out, MetaTensor) and img_out.dtype == torch.float32
    assert torch.equal(img_out.affine, img_in.affine) and out["label"].dtype == torch.float32
    lesion = pasted(case, out)["wt"]
    brain = case["brain_mask"][0] > 0
    assert lesion.sum() > 0, "no lesion pasted"
    changed = (img_out != img_in).any(dim=0)
    assert not torch.any(changed & ~lesion), "a voxel outside the lesion changed"
    assert torch.equal(img_out[:, ~lesion], img_in[:, ~lesion])  # bit-identical
    assert not torch.any(lesion & ~brain)
    assert torch.equal(img_out[:, ~brain], img_in[:, ~brain]) and torch.all(img_out[:, ~brain] == 0)
    assert torch.equal(out["label"][:, ~brain], case["label"][:, ~brain])
    assert changed[lesion].float().mean() > 0.99  # the lesion is painted, not only labelled
    assert torch.equal(case["image"], img_in)  # the input was not modified in place


@pytest.mark.parametrize("seed", [0, 3])
def test_label_gains_the_lesion_nested_and_old_tumour_untouched(seed: int) -> None:
    case = make_case(seed=seed)
    out = RandSyntheticLesiond(prob=1.0, **SMALL).set_random_state(seed)(dict(case))
    old, new = case["label"], out["label"]
    assert set(torch.unique(new).tolist()) == {0.0, 1.0}
    tc, wt, et = (new[i] > 0.5 for i in range(3))
    assert torch.all(et <= tc) and torch.all(tc <= wt)
    lesion = pasted(case, out)
    # The label only gains voxels (a union), all of them in the new WT; the old tumour stays as it was.
    assert torch.all(new >= old)
    assert torch.equal(new[:, ~lesion["wt"]], old[:, ~lesion["wt"]])
    old_wt = old[1] > 0.5
    assert not torch.any(lesion["wt"] & old_wt)
    assert torch.equal(out["image"][:, old_wt], case["image"][:, old_wt])
    assert lesion["et"].sum() > 0 and lesion["snfh"].sum() > 0


def test_no_room_leaves_the_case_unchanged() -> None:
    case = make_case(tumour=False)
    case["label"][1] = case["brain_mask"][0]  # the whole brain is tumour already
    out = RandSyntheticLesiond(prob=1.0, **SMALL).set_random_state(0)(dict(case))
    assert torch.equal(out["image"], case["image"]) and torch.equal(out["label"], case["label"])
    # Allowed to overlap, it pastes, and the union keeps the regions nested.
    out = RandSyntheticLesiond(prob=1.0, avoid_existing=False, **SMALL).set_random_state(0)(dict(case))
    assert not torch.equal(out["image"], case["image"])
    tc, wt, et = (out["label"][i] > 0.5 for i in range(3))
    assert torch.all(et <= tc) and torch.all(tc <= wt) and tc.sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_contrast_directions_follow_glioma_appearance(seed: int) -> None:
    case = make_case(size=48, seed=seed, tumour=False)
    xform = RandSyntheticLesiond(
        prob=1.0, core_radius_mm=(7.0, 9.0), rim_mm=(1.5, 2.5), oedema_mm=(3.0, 5.0), irregularity=0.2
    )
    out = xform.set_random_state(seed)(dict(case))
    img = out["image"]
    m = pasted(case, out)
    assert all(m[k].sum() > 20 for k in ("et", "netc", "snfh")), {k: int(v.sum()) for k, v in m.items()}
    brain = case["brain_mask"][0] > 0
    ring = torch.as_tensor(ndimage.binary_dilation(m["wt"].numpy(), iterations=3)) & ~m["wt"] & brain
    assert ring.sum() > 100

    def mean(channel: int, mask: torch.Tensor) -> float:
        return float(img[channel][mask].mean())

    assert mean(T1C, m["et"]) > mean(T1C, ring) + 0.8
    assert mean(T1C, m["netc"]) < mean(T1C, m["et"]) - 1.0
    assert mean(T1C, m["netc"]) < mean(T1C, ring)
    assert mean(T1N, m["netc"]) < mean(T1N, ring)
    assert mean(T2W, m["netc"]) > mean(T2W, ring)
    assert mean(T2F, m["snfh"]) > mean(T2F, ring) + 0.3
    assert mean(T2W, m["snfh"]) > mean(T2W, ring)
    assert mean(T1N, m["snfh"]) < mean(T1N, ring)


def test_a_missing_contrast_stays_zero_and_ranges_are_configurable() -> None:
    case = make_case(tumour=False)
    case["image"][T2W] = 0
    ranges = {"ET": {"t1ce": (-3.0, -2.0)}}  # any spelling; here enhancement made dark on purpose
    out = RandSyntheticLesiond(prob=1.0, intensity_ranges=ranges, **SMALL).set_random_state(0)(dict(case))
    assert torch.all(out["image"][T2W] == 0)
    et = pasted(case, out)["et"]
    assert et.sum() > 0 and float(out["image"][T1C][et].mean()) < -1.0
    with pytest.raises(ValueError, match="unknown lesion compartment"):
        RandSyntheticLesiond(intensity_ranges={"necrosis": {"t1c": (0, 1)}})


def _donor_label(size: int = 20) -> np.ndarray:
    """A BraTS 2023 label map: necrotic centre, enhancing shell, oedema; elongated so rotation matters."""
    shape = (size, size, size)
    c = (size / 2,) * 3
    label = np.zeros(shape, dtype=np.uint8)
    stretch = np.meshgrid(*[np.arange(n) - cc for n, cc in zip(shape, c)], indexing="ij")
    dist = np.sqrt((stretch[0] / 1.6) ** 2 + stretch[1] ** 2 + stretch[2] ** 2)
    label[dist <= 6] = 2
    label[dist <= 4] = 3
    label[dist <= 2] = 1
    return label


def test_procedural_and_donor_maps_are_nested_compartments() -> None:
    lesion = make_procedural_lesion(
        (1.0, 1.0, 2.0), np.random.RandomState(0), (5.0, 6.0), (1.5, 2.0), (3.0, 4.0)
    )
    assert set(np.unique(lesion).tolist()) <= {0, 1, 2, 3} and (lesion == 3).any() and (lesion == 2).any()
    assert lesion[tuple(n // 2 for n in lesion.shape)] in (1, 3)  # centred on the core
    label = _donor_label()
    comp = donor_compartments(label)
    assert comp.shape == tuple(int(v) for v in np.ptp(np.argwhere(label), axis=0) + 1)
    regions = torch.stack([torch.as_tensor(np.isin(label, v)) for v in ((1, 3), (1, 2, 3), (3,))]).float()
    assert np.array_equal(donor_compartments(regions), comp)
    assert np.array_equal(donor_compartments(np.where(label == 3, 4, label)), comp)  # BraTS 2021 values


def test_donor_volume_is_preserved_within_the_scaling_range() -> None:
    donor = _donor_label()
    counts = {k: int((donor == v).sum()) for k, v in (("netc", 1), ("snfh", 2), ("et", 3))}
    n_wt = sum(counts.values())
    case = make_case(size=48, tumour=False)

    def paste(donors: list, seed: int = 0, **kwargs) -> dict[str, int]:
        xform = RandSyntheticLesiond(prob=1.0, donors=donors, min_inside_fraction=1.0, **kwargs)
        m = pasted(case, xform.set_random_state(seed)(dict(case)))
        return {k: int(v.sum()) for k, v in m.items()}

    exact = paste([donor], rotate_range=0.0, scale_range=0.0)
    assert exact == {"wt": n_wt, **counts}
    # A region-mask torch donor is the same tumour.
    regions = torch.stack([torch.as_tensor(np.isin(donor, v)) for v in ((1, 3), (1, 2, 3), (3,))]).float()
    assert paste([regions], rotate_range=0.0, scale_range=0.0) == exact
    for seed in range(3):
        # Rotation with nearest interpolation keeps the volume up to the voxels of the surface.
        assert abs(paste([donor], seed, scale_range=0.0)["wt"] - n_wt) < 0.08 * n_wt
        zoomed = paste([donor], seed, rotate_range=0.0, scale_range=(0.25, 0.25))["wt"]
        assert abs(zoomed - 1.25**3 * n_wt) < 0.1 * 1.25**3 * n_wt
        within = paste([donor], seed, scale_range=0.2)["wt"]
        assert 0.8**3 * 0.9 * n_wt <= within <= 1.2**3 * 1.1 * n_wt


def test_prob_zero_is_identity_and_the_seed_fixes_the_result() -> None:
    case = make_case()
    out = RandSyntheticLesiond(prob=0.0)(dict(case))
    assert out["image"] is case["image"] and out["label"] is case["label"]

    def run(seed: int) -> dict:
        return RandSyntheticLesiond(prob=1.0, **SMALL).set_random_state(seed)(dict(case))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_plain_tensors_and_arrays_keep_their_type() -> None:
    case = make_case(tumour=False)
    plain = {k: v.as_tensor().clone() for k, v in case.items()}
    xform = RandSyntheticLesiond(prob=1.0, pixdim=(1.0, 1.0, 1.0), brain_mask_key=None, **SMALL)
    out = xform.set_random_state(0)(dict(plain))
    assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
    assert out["label"][1].sum() > 0
    arrays = {k: v.numpy() for k, v in plain.items()}
    out_np = xform.set_random_state(0)(dict(arrays))
    assert isinstance(out_np["image"], np.ndarray) and out_np["image"].dtype == np.float32
    assert np.array_equal(out_np["image"], out["image"].numpy())
    assert np.array_equal(out_np["label"], out["label"].numpy())


# ---------------------------------------------------------------------------------------------
# in the training pipeline


@pytest.fixture(scope="module")
def phantom(tmp_path_factory, write_phantom_case) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("lesion_phantom"), 0, "brats2023")


def test_train_pipeline_places_the_transform_only_when_asked() -> None:
    assert not any(isinstance(t, RandSyntheticLesiond) for t in train_transforms().transforms)
    kinds = [type(t) for t in train_transforms(synthetic_lesion_prob=0.3).transforms]
    at = kinds.index(RandSyntheticLesiond)
    assert kinds[at - 1] is CropForegroundd and kinds[at + 1] is SplitTaskd


def test_train_pipeline_with_synthetic_lesions_adds_tumour(phantom: Path) -> None:
    entry = case_entry(phantom)

    def patch(prob: float) -> dict:
        # A 64^3 patch holds the whole padded 2 mm brain, so both runs see the same voxels.
        pipe = train_transforms(
            roi_size=(64, 64, 64),
            spacing=(2.0, 2.0, 2.0),
            num_samples=1,
            flip_prob=0.0,
            intensity_prob=0.0,
            synthetic_lesion_prob=prob,
        )
        pipe.set_random_state(seed=0)
        return pipe(dict(entry))[0]

    plain, augmented = patch(0.0), patch(1.0)
    wt0, wt1 = plain["label"][1] > 0.5, augmented["label"][1] > 0.5
    assert wt1.sum() > wt0.sum() and torch.all(wt1 >= wt0)
    tc, wt, et = (augmented["label"][i] > 0.5 for i in range(3))
    assert torch.all(et <= tc) and torch.all(tc <= wt)
    new = wt1 & ~wt0
    assert torch.equal(augmented["image"][:, ~new], plain["image"][:, ~new])
    new_et = new & et
    # The synthesis target (t1c) enhances in the pasted ET.
    assert float(augmented["synth_target"][0][new_et].mean()) > float(plain["synth_target"][0][new_et].mean())

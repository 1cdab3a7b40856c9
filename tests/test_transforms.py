"""Dictionary transforms and the train / validation / inference pipelines, on tiny arrays and phantoms."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.inference import case_entry
from medmtl.transforms import (
    BrainMaskd,
    RandDropContrastsd,
    RegionClassesd,
    ReorderContrastsd,
    SplitTaskd,
    SynthWeightd,
    infer_transforms,
    train_transforms,
    val_transforms,
)

SHAPE = (3, 4, 5)
# One code per canonical contrast, so every channel can be recognised after reordering; each channel
# is its code times a ramp (a constant channel would count as an unusable contrast).
CODE = {"t1n": 1.0, "t1c": 2.0, "t2w": 3.0, "t2f": 4.0}
RAMP = 1.0 + torch.arange(float(np.prod(SHAPE))).reshape(SHAPE) / float(np.prod(SHAPE))


def coded_image(order: list[str]) -> MetaTensor:
    affine = torch.diag(torch.tensor([-2.0, -2.0, 2.0, 1.0]))
    data = torch.stack([CODE[c] * RAMP for c in order])
    return MetaTensor(data, affine=affine)


def channel_codes(image: torch.Tensor) -> list[float]:
    """The code of each channel (asserting the channel is its code times the ramp)."""
    out = []
    for ch in image:
        code = ch.flatten()[0]
        assert torch.allclose(torch.as_tensor(ch), code * RAMP), "channel is not a coded ramp"
        out.append(float(code))
    return out


# ---------------------------------------------------------------------------------------------
# ReorderContrastsd


def test_reorder_msd_order_to_canonical() -> None:
    # MSD Task01 stores FLAIR, T1w, T1gd, T2w in one 4D file.
    img = coded_image(["t2f", "t1n", "t1c", "t2w"])
    out = ReorderContrastsd()({"image": img, "contrasts": ["FLAIR", "T1w", "T1gd", "T2w"]})
    assert channel_codes(out["image"]) == [1.0, 2.0, 3.0, 4.0]
    assert out["available"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert out["contrasts"] == ["t1n", "t1c", "t2w", "t2f"]
    assert isinstance(out["image"], MetaTensor) and torch.equal(out["image"].affine, img.affine)


def test_reorder_fills_missing_contrasts_with_zeros() -> None:
    img = coded_image(["t2f", "t1n"])
    out = ReorderContrastsd()({"image": img, "contrasts": ["flair", "t1"], "case_id": "c1"})
    assert channel_codes(out["image"]) == [1.0, 0.0, 0.0, 4.0]
    assert out["available"].tolist() == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"case c1: missing contrasts \['t1c', 't2w'\]"):
        ReorderContrastsd(allow_missing=False)({"image": img, "contrasts": ["t2f", "t1n"], "case_id": "c1"})


def test_reorder_treats_a_constant_contrast_as_missing() -> None:
    img = coded_image(["t1n", "t1c", "t2w", "t2f"])
    img[3] = 0.0  # an all-zero FLAIR
    img[1] = 7.0  # a constant t1c
    out = ReorderContrastsd()({"image": img, "contrasts": ["t1n", "t1c", "t2w", "t2f"]})
    assert out["available"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out["unusable"] == "t1c,t2f"
    assert channel_codes(out["image"]) == [1.0, 0.0, 3.0, 0.0]
    with pytest.raises(ValueError, match=r"constant images"):
        ReorderContrastsd(allow_missing=False)({"image": img, "contrasts": ["t1n", "t1c", "t2w", "t2f"]})


def test_synth_weight_stresses_what_must_be_restored() -> None:
    four = ["t1n", "t1c", "t2w", "t2f"]
    xf = SynthWeightd(inputs=four, targets=four, present_weight=0.25)
    # t1c dropped, t2f not acquired (nothing to compare with)
    mask, available = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    out = xf({"channel_mask": mask, "synth_available": available})
    assert out["synth_weight"].tolist() == [0.25, 1.0, 0.25, 0.0]
    # a target that is never an input always weighs 1
    xf = SynthWeightd(inputs=["t1n", "t2w", "t2f"], targets=["t1c"], present_weight=0.0)
    assert xf({"channel_mask": torch.ones(3)})["synth_weight"].tolist() == [1.0]


def test_region_classes_are_disjoint_tumour_classes() -> None:
    regions = torch.zeros(3, 4, 1, 1)
    regions[:, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0])  # healthy
    regions[:, 1, 0, 0] = torch.tensor([1.0, 1.0, 0.0])  # NETC: TC without ET
    regions[:, 2, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # SNFH: WT only
    regions[:, 3, 0, 0] = torch.tensor([1.0, 1.0, 1.0])  # ET
    out = RegionClassesd()({"label": regions})["crop_classes"]
    assert out.shape == (1, 4, 1, 1) and out.flatten().tolist() == [0, 1, 2, 3]


def test_reorder_canonical_input_unchanged_and_channel_count_checked() -> None:
    img = coded_image(["t1n", "t1c", "t2w", "t2f"])
    out = ReorderContrastsd()({"image": img})  # no contrast list: canonical order
    assert torch.equal(out["image"], img)
    with pytest.raises(ValueError, match="image has 4 channels but its contrast list"):
        ReorderContrastsd()({"image": img, "contrasts": ["t1n", "t2w"], "case_id": "c2"})
    with pytest.raises(ValueError, match="same contrast twice"):
        ReorderContrastsd()({"image": img, "contrasts": ["t1", "t1n", "t2w", "t2f"]})


# ---------------------------------------------------------------------------------------------
# SplitTaskd


def test_split_task_inputs_targets_and_masks() -> None:
    d = ReorderContrastsd()({"image": coded_image(["t2f", "t1n", "t2w"]), "contrasts": ["t2f", "t1n", "t2w"]})
    out = SplitTaskd(inputs=["t2f", "t1"], targets=["t1ce", "t2"])(d)
    assert channel_codes(out["image"]) == [4.0, 1.0]  # inputs in the order asked
    assert channel_codes(out["synth_target"]) == [0.0, 3.0]  # t1c absent (zeros), t2w present
    assert out["channel_mask"].tolist() == [1.0, 1.0]
    assert out["synth_available"].tolist() == [0.0, 1.0]
    assert isinstance(out["image"], MetaTensor)


def test_split_task_missing_input_flagged_or_refused() -> None:
    d = ReorderContrastsd()(
        {"image": coded_image(["t1n", "t2f"]), "contrasts": ["t1n", "t2f"], "case_id": "c3"}
    )
    out = SplitTaskd()(d)  # default inputs t1n, t2w, t2f
    assert channel_codes(out["image"]) == [1.0, 0.0, 4.0]
    assert out["channel_mask"].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"case c3: input contrast\(s\) \['t2w'\] missing"):
        SplitTaskd(require_inputs=True)(d)


def test_split_task_needs_canonical_image_and_seg_only_has_no_target() -> None:
    with pytest.raises(ValueError, match="must hold the 4 canonical contrasts"):
        SplitTaskd()({"image": coded_image(["t1n", "t2w"])})
    out = SplitTaskd(targets=[])({"image": coded_image(["t1n", "t1c", "t2w", "t2f"])})
    assert "synth_target" not in out and "synth_available" not in out
    assert out["channel_mask"].tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# RandDropContrastsd


def _drop(seed: int, mask: list[float], prob: float = 1.0, max_drop: int = 3) -> dict:
    image = (
        torch.stack([torch.full(SHAPE, v) for v in (1.0, 2.0, 3.0)]) * torch.tensor(mask)[:, None, None, None]
    )
    t = RandDropContrastsd(prob=prob, max_drop=max_drop)
    t.set_random_state(seed)
    return t({"image": image, "channel_mask": torch.tensor(mask)})


def test_drop_contrasts_never_drops_all_and_mask_matches_zeroed_channels() -> None:
    patterns = set()
    for seed in range(40):
        out = _drop(seed, [1.0, 1.0, 1.0])
        mask, image = out["channel_mask"], out["image"]
        zeroed = [bool(torch.all(ch == 0)) for ch in image]
        assert mask.tolist() == [0.0 if z else 1.0 for z in zeroed], seed
        assert 1 <= mask.sum() <= 2, seed  # prob=1: something dropped, never everything
        for i, keep in enumerate(mask.tolist()):
            if keep:
                assert torch.all(image[i] == i + 1.0)  # kept channels are untouched
        patterns.add(tuple(mask.tolist()))
    assert len(patterns) >= 4, patterns  # different seeds drop different subsets


def test_drop_contrasts_keeps_the_last_present_channel_and_missing_ones_stay_missing() -> None:
    for seed in range(20):
        out = _drop(seed, [1.0, 0.0, 1.0])
        assert out["channel_mask"][1] == 0 and torch.all(out["image"][1] == 0)
        assert out["channel_mask"].sum() == 1, seed
    out = _drop(0, [0.0, 1.0, 0.0])  # one real channel: nothing can be dropped
    assert out["channel_mask"].tolist() == [0.0, 1.0, 0.0] and torch.all(out["image"][1] == 2.0)


def test_drop_contrasts_deterministic_with_random_state_and_prob_zero() -> None:
    runs = [[_drop(seed, [1.0, 1.0, 1.0])["channel_mask"].tolist() for seed in range(10)] for _ in range(2)]
    assert runs[0] == runs[1]
    for seed in range(10):
        assert _drop(seed, [1.0, 1.0, 1.0], prob=0.0)["channel_mask"].tolist() == [1.0, 1.0, 1.0]
    # max_drop bounds the number dropped at once.
    assert all(_drop(seed, [1.0, 1.0, 1.0], max_drop=1)["channel_mask"].sum() == 2 for seed in range(10))


# ---------------------------------------------------------------------------------------------
# BrainMaskd


def test_brain_mask_is_union_of_nonzero_voxels() -> None:
    image = torch.zeros(2, *SHAPE)
    image[0, 0, 0, 0] = 5.0
    image[1, 2, 3, 4] = -1.0  # negative intensities count too
    image[0, 1, 1, 1] = image[1, 1, 1, 1] = 2.0
    affine = torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0]))
    out = BrainMaskd(keys="image")({"image": MetaTensor(image, affine=affine)})
    mask = out["brain_mask"]
    assert tuple(mask.shape) == (1, *SHAPE)
    assert sorted(map(tuple, torch.nonzero(mask[0]).tolist())) == [(0, 0, 0), (1, 1, 1), (2, 3, 4)]
    assert torch.equal(mask.affine, affine)
    out = BrainMaskd(keys="image", mask_key="m")({"image": image.numpy()})
    assert out["m"].sum() == 3


# ---------------------------------------------------------------------------------------------
# pipelines on a phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory, write_phantom_case) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("tf_phantom"), 0, "brats2023")


def _source(folder: Path, token: str) -> nib.Nifti1Image:
    return nib.load(str(next(folder.glob(f"*-{token}.nii.gz"))))


def _axcodes(t: MetaTensor) -> tuple[str, ...]:
    return nib.aff2axcodes(np.asarray(t.affine))


def test_val_pipeline_shapes_normalisation_orientation_and_regions(phantom: Path) -> None:
    d = val_transforms(spacing=(2.0, 2.0, 2.0))(case_entry(phantom))
    image, target, label, brain = d["image"], d["synth_target"], d["label"], d["brain_mask"]
    spatial = tuple(image.shape[1:])
    assert image.shape[0] == 3 and target.shape[0] == 1 and label.shape[0] == 3 and brain.shape[0] == 1
    assert tuple(target.shape[1:]) == tuple(label.shape[1:]) == tuple(brain.shape[1:]) == spatial
    assert d["channel_mask"].tolist() == [1.0, 1.0, 1.0] and d["synth_available"].tolist() == [1.0]
    # RAS at 2 mm, cropped to the brain: the brain touches all six faces of the crop.
    for t in (image, target, label, brain):
        assert _axcodes(t) == ("R", "A", "S")
        assert np.allclose(np.linalg.norm(np.asarray(t.affine)[:3, :3], axis=0), 2.0)
    inside = brain[0] > 0
    for axis in range(3):
        assert inside.any(dim=[a for a in range(3) if a != axis]).all(), f"crop not tight on axis {axis}"
    full = np.ceil(np.array([40 * 3.0, 40 * 2.5, 26 * 3.5]) / 2.0)
    assert all(s <= f + 1 for s, f in zip(spatial, full))
    # z-score per channel over its non-zero voxels, exact zeros outside the brain.
    for ch in torch.cat([image, target]):
        vals = ch[ch != 0].double()
        assert abs(float(vals.mean())) < 1e-3 and abs(float(vals.std(unbiased=False)) - 1.0) < 1e-3
        assert torch.all(ch[~inside] == 0)
    # Labels became nested binary regions TC, WT, ET, inside the brain, with the source's tumour volume.
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}
    tc, wt, et = (label[i] > 0 for i in range(3))
    assert torch.all(tc <= wt) and torch.all(et <= tc) and not torch.any(wt & ~inside)
    seg = np.asanyarray(_source(phantom, "seg").dataobj)
    src_voxel = 3.0 * 2.5 * 3.5
    for region, values in ((wt, (1, 2, 3)), (tc, (1, 3)), (et, (3,))):
        src_mm3 = np.isin(seg, values).sum() * src_voxel
        assert abs(float(region.sum()) * 8.0 - src_mm3) < 0.15 * src_mm3


def test_train_pipeline_patches_and_tumour_balanced_sampling(phantom: Path) -> None:
    entry = case_entry(phantom)

    def sample(pos: float, neg: float) -> list[dict]:
        # No flips, so each patch's sampling centre stays at voxel 8 (RandCropByPosNegLabeld's centre).
        pipe = train_transforms(
            roi_size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), num_samples=60, pos=pos, neg=neg, flip_prob=0.0
        )
        pipe.set_random_state(seed=0)
        return pipe(dict(entry))

    def with_tumour(patches: list[dict]) -> float:
        return float(np.mean([float(p["label"][1].sum() > 0) for p in patches]))

    def centred_on_tumour(patches: list[dict]) -> float:
        return float(np.mean([float(p["label"][1, 8, 8, 8] > 0) for p in patches]))

    patches = sample(1.0, 1.0)
    assert len(patches) == 60
    for p in patches:
        assert tuple(p["image"].shape) == (3, 16, 16, 16)
        assert tuple(p["label"].shape) == (3, 16, 16, 16)
        assert tuple(p["synth_target"].shape) == (1, 16, 16, 16)
        assert tuple(p["brain_mask"].shape) == (1, 16, 16, 16)
        assert p["brain_mask"][0, 8, 8, 8] > 0  # every patch is centred in the brain
    assert with_tumour(patches) >= 0.5
    # pos=1, neg=1: about half the patches are centred on tumour; pos=0 or neg=0 gives (nearly) none or
    # all (a centre near the volume's edge is moved inside, off the voxel it was drawn at).
    assert 0.3 <= centred_on_tumour(patches) <= 0.7, centred_on_tumour(patches)
    assert centred_on_tumour(sample(0.0, 1.0)) <= 0.1
    assert centred_on_tumour(sample(1.0, 0.0)) >= 0.9


def test_train_pipeline_drops_contrasts_when_asked(phantom: Path) -> None:
    pipe = train_transforms(
        roi_size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), num_samples=8, drop_contrasts_prob=1.0
    )
    pipe.set_random_state(seed=1)
    for p in pipe(case_entry(phantom)):
        mask = p["channel_mask"]
        assert 1 <= mask.sum() <= 2
        for i in range(3):
            if mask[i] == 0:
                assert torch.all(p["image"][i] == 0)


def test_nnunet_augmentation_with_class_sampling_keeps_shapes_brain_and_centres_et(phantom: Path) -> None:
    four = ["t1n", "t1c", "t2w", "t2f"]
    pipe = train_transforms(
        inputs=four, targets=four, roi_size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), num_samples=40,
        augment="nnunet", crop="classes", class_ratios=(0.0, 0.0, 0.0, 1.0), drop_contrasts_prob=1.0,
        present_weight=0.5,
    )  # fmt: skip
    pipe.set_random_state(seed=0)
    patches = pipe(case_entry(phantom))
    et_near_centre = []
    for p in patches:
        assert p["image"].shape == (4, 16, 16, 16) and p["synth_target"].shape == (4, 16, 16, 16)
        assert p["label"].shape == (3, 16, 16, 16) and set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0}
        assert "crop_classes" not in p
        # intensity augmentation never paints outside the brain, and dropped inputs stay empty
        assert torch.all(p["image"][:, p["brain_mask"][0] == 0] == 0)
        mask = p["channel_mask"]
        assert 1 <= mask.sum() <= 3
        assert torch.all(p["image"][mask == 0] == 0)
        assert p["synth_weight"].tolist() == [0.5 if m > 0 else 1.0 for m in mask.tolist()]
        et_near_centre.append(float(p["label"][2, 6:10, 6:10, 6:10].sum() > 0))
    # ET-only ratios: (after rotation/scaling about the centre) ET lies at nearly every patch centre
    assert np.mean(et_near_centre) > 0.8


@pytest.mark.parametrize(
    "crop", [{"crop": "posneg", "pos": 1.0, "neg": 0.0}, {"crop": "classes", "class_ratios": (0, 0, 0, 1)}],
    ids=["posneg", "classes"],
)  # fmt: skip
def test_unlabelled_case_falls_back_to_brain_crops_and_collates_with_labelled(phantom: Path, crop) -> None:
    from monai.data import list_data_collate

    # tumour-only centres: an unlabelled case has no tumour voxel, so its centres must come from the brain
    pipe = train_transforms(
        roi_size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), num_samples=20, flip_prob=0.0, **crop
    )
    pipe.set_random_state(seed=0)
    labelled = case_entry(phantom)
    unlabelled = {k: v for k, v in labelled.items() if k != "label"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI says it found no tumour voxel to centre on
        patches = pipe(unlabelled)
    for p in patches:
        assert float(p["has_label"]) == 0.0
        assert tuple(p["label"].shape) == (3, 16, 16, 16) and torch.count_nonzero(p["label"]) == 0
        assert p["brain_mask"][0, 8, 8, 8] > 0  # centred in the brain
    assert len({tuple(p["image"][0, 8, 8, 8:10].tolist()) for p in patches}) > 1  # not one fixed crop
    (with_label,) = pipe(labelled)[:1]
    assert float(with_label["has_label"]) == 1.0 and with_label["label"][1].sum() > 0  # on the tumour
    batch = list_data_collate([with_label, patches[0]])
    assert batch["has_label"].tolist() == [1.0, 0.0] and tuple(batch["label"].shape) == (2, 3, 16, 16, 16)


def test_infer_pipeline_keeps_source_mask_and_handles_missing_contrasts(
    phantom: Path, tmp_path: Path
) -> None:
    entry = case_entry(phantom)
    d = infer_transforms(spacing=(2.0, 2.0, 2.0))(entry)
    assert "label" not in d or isinstance(d["label"], str)  # labels are not loaded at inference
    source = np.stack([np.asanyarray(_source(phantom, c).dataobj) for c in ("t1n", "t1c", "t2w", "t2f")])
    assert tuple(d["source_brain_mask"].shape) == (1, 40, 40, 26)
    assert np.array_equal(d["source_brain_mask"][0].numpy() > 0, np.any(source != 0, axis=0))
    assert _axcodes(d["image"]) == ("R", "A", "S")
    assert d["image"].applied_operations, "inference transforms must be invertible"

    # Without the target (t1c) the case still runs; without an input it needs a model with an input mask.
    case = tmp_path / phantom.name
    shutil.copytree(phantom, case)
    next(case.glob("*-t1c.nii.gz")).unlink()
    next(case.glob("*-seg.nii.gz")).unlink()
    d = infer_transforms(spacing=(2.0, 2.0, 2.0))(case_entry(case))
    assert d["channel_mask"].tolist() == [1.0, 1.0, 1.0] and d["synth_available"].tolist() == [0.0]
    next(case.glob("*-t2w.nii.gz")).unlink()
    with pytest.raises(RuntimeError) as err:
        infer_transforms(spacing=(2.0, 2.0, 2.0))(case_entry(case))
    assert "input contrast(s) ['t2w'] missing" in str(err.value.__cause__)
    d = infer_transforms(spacing=(2.0, 2.0, 2.0), allow_missing_inputs=True)(case_entry(case))
    assert d["channel_mask"].tolist() == [1.0, 0.0, 1.0]
    assert torch.all(d["image"][1] == 0)


def test_msd_4d_file_gives_the_same_pipeline_output_as_separate_files(phantom: Path, tmp_path: Path) -> None:
    imgs = {c: _source(phantom, c) for c in ("t1n", "t1c", "t2w", "t2f")}
    msd_order = ["t2f", "t1n", "t1c", "t2w"]  # FLAIR, T1w, T1gd, T2w
    stack = np.stack([np.asanyarray(imgs[c].dataobj) for c in msd_order], axis=-1)
    path = tmp_path / "BRATS_001.nii.gz"
    nib.save(nib.Nifti1Image(stack, imgs["t1n"].affine), str(path))
    entry_4d = {"case_id": "BRATS_001", "image": str(path), "contrasts": ["FLAIR", "T1w", "T1gd", "T2w"]}
    pipe = infer_transforms(spacing=(2.0, 2.0, 2.0))
    a, b = pipe(entry_4d), pipe(case_entry(phantom))
    assert torch.allclose(a["image"], b["image"], atol=1e-5)
    assert torch.allclose(a["synth_target"], b["synth_target"], atol=1e-5)
    assert np.allclose(a["image"].affine, b["image"].affine)

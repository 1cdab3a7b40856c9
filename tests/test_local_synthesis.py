"""Local synthesis: task transform (regions, lesion channels), network input, and inpaint / synth-lesion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from data_prep.layouts import discover
from medmtl.cli import main as cli_main
from medmtl.contrasts import CONTRASTS
from medmtl.labels import REGIONS
from medmtl.local_synthesis import (
    IN_CHANNELS,
    LOCAL_MODEL,
    LocalSynthesisTaskd,
    healthy_region,
    inpaint,
    lesion_compartments,
    lesion_region,
    network_input,
    synthesise_lesion,
)
from medmtl.networks import get_network


def _sample(shape=(32, 32, 24), seed=0):
    rng = np.random.default_rng(seed)
    brain = np.zeros(shape, bool)
    brain[3:-3, 3:-3, 2:-2] = True
    image = rng.normal(size=(4, *shape)).astype(np.float32) * brain
    wt = np.zeros(shape, bool)
    wt[6:14, 6:14, 6:12] = True
    tc = np.zeros(shape, bool)
    tc[8:12, 8:12, 7:11] = True
    core = np.zeros(shape, bool)
    core[9:11, 9:11, 8:10] = True
    et = tc & ~core  # enhancing rim around a necrotic centre
    regions = np.stack([tc, wt, et]).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    return {
        "case_id": "c0",
        "image": MetaTensor(torch.from_numpy(image), affine=torch.from_numpy(affine)),
        "label": MetaTensor(torch.from_numpy(regions), affine=torch.from_numpy(affine)),
        "brain_mask": MetaTensor(
            torch.from_numpy(brain[None].astype(np.float32)), affine=torch.from_numpy(affine)
        ),
    }


def test_lesion_task_blanks_the_tumour_and_gives_its_compartments():
    d = _sample()
    out = LocalSynthesisTaskd(task="lesion")(d)
    x, region = out["image"], out["synth_mask"][0].numpy() > 0
    wt = d["label"][REGIONS.index("WT")].numpy() > 0
    assert x.shape[0] == IN_CHANNELS and out["local_task"] == "lesion"
    # the region is the whole tumour with a margin, inside the brain
    assert region[wt].all() and region.sum() > wt.sum()
    assert not region[d["brain_mask"][0].numpy() == 0].any()
    # contrasts are zero inside the region, untouched outside; the target keeps the real voxels
    assert torch.all(x[:4][:, torch.from_numpy(region)] == 0)
    assert torch.equal(x[:4][:, torch.from_numpy(~region)], d["image"][:, torch.from_numpy(~region)])
    assert torch.equal(out["synth_target"], d["image"])
    # lesion channels: NETC, SNFH, ET exactly as the label's compartments; mask channel = region
    comps = lesion_compartments(d["label"].numpy())
    np.testing.assert_array_equal(x[5:].numpy(), comps)
    np.testing.assert_array_equal(x[4].numpy() > 0, region)
    assert comps[0].sum() > 0 and comps[1].sum() > 0 and comps[2].sum() > 0


def test_inpaint_task_draws_healthy_regions_deterministically_for_validation():
    d = _sample()
    t = LocalSynthesisTaskd(task="inpaint", deterministic=True)
    a, b = t(dict(d)), t(dict(d))
    region = a["synth_mask"][0].numpy() > 0
    assert region.sum() > 20
    # away from the tumour, inside the brain; lesion channels are empty
    assert not (region & (d["label"][1].numpy() > 0)).any()
    assert not region[d["brain_mask"][0].numpy() == 0].any()
    assert torch.count_nonzero(a["image"][5:]) == 0
    assert torch.equal(a["synth_mask"], b["synth_mask"])
    other = dict(d, case_id="c1")
    assert not torch.equal(t(other)["synth_mask"], a["synth_mask"])


def test_healthy_region_and_lesion_region_geometry():
    brain = np.zeros((30, 30, 30), bool)
    brain[2:-2, 2:-2, 2:-2] = True
    tumour = np.zeros_like(brain)
    tumour[5:10, 5:10, 5:10] = True
    region = healthy_region(brain, tumour, (1.0, 1.0, 1.0), np.random.RandomState(0), radius_mm=(3, 5))
    assert region.any() and not (region & lesion_region(tumour, (1, 1, 1), 5.0)).any()
    grown = lesion_region(tumour, (1.0, 1.0, 1.0), 2.0)
    assert grown[tumour].all() and grown[3, 7, 7] and not grown[2, 7, 7]


def test_label_map_channels_reach_the_network_output():
    torch.manual_seed(0)
    net = get_network("cpu", in_channels=IN_CHANNELS, synth_channels=4).eval()
    d = _sample()
    region = (LocalSynthesisTaskd(task="lesion")(d)["synth_mask"][0] > 0).numpy()
    comps = lesion_compartments(d["label"].numpy())
    with_lesion = network_input(d["image"], region[None], comps)[None]
    without = network_input(d["image"], region[None], None)[None]
    with torch.no_grad():
        a, b = net(with_lesion)["synth"], net(without)["synth"]
    assert with_lesion.shape[1] == IN_CHANNELS
    assert (a - b).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------
# inpaint / synth-lesion on files


@pytest.fixture(scope="module")
def local_bundle(tmp_path_factory, bundle_factory) -> Path:
    """A bundle with random local-synthesis weights (8 input channels, 4 synthesised contrasts)."""
    root = tmp_path_factory.mktemp("local") / "bundle"
    model_dir = str(Path(LOCAL_MODEL).parent)
    return bundle_factory(
        root, CONTRASTS, CONTRASTS, in_channels=IN_CHANNELS, model_dir=model_dir, stage="local_synthesis"
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory, write_phantom_case) -> Path:
    return write_phantom_case(tmp_path_factory.mktemp("localcase"), 0)


def _files(case: Path) -> tuple[dict[str, Path], str]:
    found = discover(case).cases[0]
    return {c: Path(found.root) / p for c, p in found.images.items()}, str(Path(found.root) / found.label)


def _healthy_mask(case: Path, out: Path) -> Path:
    files, label = _files(case)
    ref = nib.load(files["t1n"])
    brain = np.asarray(ref.dataobj) != 0
    seg = np.asarray(nib.load(label).dataobj) > 0
    far = brain & ~lesion_region(seg, ref.header.get_zooms()[:3], 6.0)
    idx = np.argwhere(far)[len(np.argwhere(far)) // 2]
    mask = np.zeros(brain.shape, np.uint8)
    mask[tuple(slice(max(0, i - 2), i + 3) for i in idx)] = 1
    mask &= far
    nib.save(nib.Nifti1Image(mask, ref.affine), out)
    return out


def test_inpaint_changes_only_the_region_and_keeps_the_grid(tmp_path, case, local_bundle):
    mask = _healthy_mask(case, tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    res = inpaint(case, mask, bundle=local_bundle, out_dir=out, device="cpu")
    files, _ = _files(case)
    region = np.asarray(nib.load(mask).dataobj) > 0
    assert np.array_equal(res.region, region)
    for c in CONTRASTS:
        src = nib.load(files[c])
        written = nib.load(out / f"{res.case_id}_{c}_inpainted.nii.gz")
        arr, orig = np.asarray(written.dataobj), np.asarray(src.dataobj).astype(np.float32)
        assert written.shape == src.shape and np.allclose(written.affine, src.affine)
        np.testing.assert_array_equal(arr[~region], orig[~region])
        assert not np.array_equal(arr[region], orig[region])
        assert np.isfinite(arr).all() and arr.min() >= 0
    sidecar = json.loads((out / f"{res.case_id}_inpaint.json").read_text())
    assert sidecar["region_voxels"] == int(region.sum())


def test_synth_lesion_region_follows_the_label_map(tmp_path, case, local_bundle):
    files, label = _files(case)
    ref = nib.load(label)
    seg = np.asarray(ref.dataobj)
    moved = np.roll(seg, 6, axis=0)
    lab = tmp_path / "lesion.nii.gz"
    nib.save(nib.Nifti1Image(moved.astype(np.uint8), ref.affine), lab)
    res = synthesise_lesion(case, lab, bundle=local_bundle, device="cpu")
    brain = np.asarray(nib.load(files["t1n"]).dataobj) != 0
    assert res.region[(moved > 0) & brain].all()
    orig = np.asarray(nib.load(files["t1c"]).dataobj).astype(np.float32)
    np.testing.assert_array_equal(res.images["t1c"][~res.region], orig[~res.region])
    assert res.images["t1c"].shape == orig.shape and np.allclose(res.affine, ref.affine)


def test_bad_masks_give_one_clear_error_and_write_nothing(tmp_path, case, local_bundle, capsys):
    files, _ = _files(case)
    ref = nib.load(files["t1n"])
    shape = ref.shape
    shifted = ref.affine.copy()
    shifted[0, 3] += 5.0
    bad = {
        "empty.nii.gz": (np.zeros(shape, np.uint8), ref.affine, "empty"),
        "grid.nii.gz": (np.ones((shape[0] - 1, *shape[1:]), np.uint8), ref.affine, "differs from the case"),
        "moved.nii.gz": (np.ones(shape, np.uint8), shifted, "differs from the case"),
    }
    outside = np.zeros(shape, np.uint8)
    outside[:3, :3, :3] = 1
    bad["outside.nii.gz"] = (outside, ref.affine, "inside the brain")
    out = tmp_path / "out"
    for name, (arr, affine, message) in bad.items():
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / name)
        rc = cli_main(["inpaint", str(case), "--mask", str(tmp_path / name), "--out", str(out), "--bundle",
                       str(local_bundle), "--device", "cpu"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and message in err and name in err, (name, err)
        assert not out.exists() or not any(out.iterdir())
    rc = cli_main(["synth-lesion", str(case), "--label", str(tmp_path / "empty.nii.gz"), "--out", str(out),
                   "--bundle", str(local_bundle)])  # fmt: skip
    assert rc == 2 and "empty" in capsys.readouterr().err


def test_missing_weights_and_missing_contrast_are_named(tmp_path, case, local_bundle):
    mask = _healthy_mask(case, tmp_path / "mask.nii.gz")
    with pytest.raises(FileNotFoundError, match="local-synthesis weights"):
        inpaint(case, mask, bundle=tmp_path)
    files, _ = _files(case)
    partial = tmp_path / "partial"
    shutil.copytree(case, partial)
    (partial / Path(files["t2w"]).name).unlink()
    with pytest.raises(ValueError, match="t2w"):
        inpaint(partial, mask, bundle=local_bundle)

"""Guided synthesis: coefficient fields of the coarse network applied to the full-resolution inputs."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Spacing

from medmtl.bundle_config import coarse_state
from medmtl.cli import main
from medmtl.networks import GuidedSynthesisUNet, apply_guidance, get_network, set_trainable
from medmtl.networks.guided import load_coarse_guided
from medmtl.training import BrainSynthesisMetric, SynthOutput
from medmtl.transforms import SplitTaskd, SynthWeightd, WithholdContrastd

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0) -> GuidedSynthesisUNet:
    torch.manual_seed(seed)
    return get_network("cpu", in_channels=4, synth_channels=4, input_mask=True, guided={"factor": 2}).eval()


def test_apply_guidance_is_the_local_affine_combination():
    guide = torch.randn(2, 3, 5, 4, 3)
    fields = torch.randn(2, 2 * 4, 5, 4, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    out = apply_guidance(fields, guide, mask)
    assert out.shape == (2, 2, 5, 4, 3)
    for b in range(2):
        for t in range(2):
            a = fields[b, t * 4 : t * 4 + 3]
            expected = (a * guide[b] * mask[b].view(3, 1, 1, 1)).sum(0) + fields[b, t * 4 + 3]
            torch.testing.assert_close(out[b, t], expected)
    with pytest.raises(ValueError, match="do not fit a guide"):
        apply_guidance(torch.randn(1, 7, 5, 4, 3), guide[:1])


def test_started_from_a_coarse_model_it_returns_that_model_upsampled(tmp_path):
    torch.manual_seed(1)
    coarse = get_network("cpu", in_channels=4, synth_channels=4, input_mask=True).eval()
    with torch.no_grad():  # a trained-looking head: non-zero output weights and biases
        for p in coarse.synth_decoder.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save(coarse.state_dict(), tmp_path / "model.pt")
    net = load_coarse_guided(_net(), coarse_state(str(tmp_path / "model.pt")))
    x = torch.randn(1, 4, 32, 24, 17)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    x[:, 1] = 0
    # The bundle's path for a 2 mm model: Spacingd to 2 mm, the network, Invertd back to 1 mm.
    spacing = Spacing(pixdim=(2, 2, 2), mode="bilinear")
    small = spacing(MetaTensor(x[0], affine=torch.eye(4)))
    with torch.no_grad():
        out = net(x, mask)
        expected = coarse(small[None].as_tensor(), mask)
    # the segmentation is interpolated as probabilities (the sigmoid comes before Invertd)
    for key, to_prob in (("seg", torch.sigmoid), ("synth", lambda t: t)):
        back = MetaTensor(
            to_prob(expected[key][0]), affine=small.affine, applied_operations=small.applied_operations
        )
        torch.testing.assert_close(
            to_prob(out[key][0]), spacing.inverse(back).as_tensor(), atol=1e-5, rtol=1e-5
        )
    assert net.synth_channels == 4 and net.divisor == 2 * net.base.divisor and net.input_mask
    with pytest.raises(ValueError, match="coarse_weights"):
        load_coarse_guided(_net(), coarse_state(None))
    torch.save(get_network("cpu", in_channels=4, synth_channels=2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_coarse_guided(_net(), coarse_state(tmp_path / "other.pt"), str(tmp_path / "other.pt"))


def test_an_absent_input_contributes_nothing():
    net = _net()
    with torch.no_grad():  # coefficient fields that are not zero
        for p in net.base.synth_decoder.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 4, 32, 32, 16)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    other = x.clone()
    other[:, 2] = 5 * torch.randn_like(other[:, 2])
    with torch.no_grad():
        torch.testing.assert_close(net(x, mask)["synth"], net(other, mask)["synth"])
        assert not torch.allclose(net(x)["synth"], net(other)["synth"])


def test_guided_synthesis_learns_detail_the_coarse_network_cannot_see():
    # Target: twice the first input minus the third, 1-voxel checkerboards included; the half-
    # resolution network never sees them, but its coefficient fields carry them over from the inputs.
    torch.manual_seed(0)
    net = _net().train()
    set_trainable(net, encoder=False, seg=False, synth=True)
    assert not any(p.requires_grad for p in net.base.seg_decoder.parameters())
    assert all(p.requires_grad for p in net.base.synth_decoder.parameters())
    grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij")).sum(0) % 2
    x = torch.randn(2, 4, 16, 16, 16) + grid.float()
    target = (2 * x[:, :1] - x[:, 2:3]).expand(-1, 4, -1, -1, -1)
    seg_before = [p.detach().clone() for p in net.base.seg_decoder.parameters()]
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(net(x)["synth"], target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the best any 2x-coarse picture can do: the target's own block averages, upsampled
    blocky = F.interpolate(F.avg_pool3d(target, 2), size=[16] * 3, mode="trilinear", align_corners=False)
    assert losses[-1] < 0.5 * F.mse_loss(blocky, target).item(), losses[::10]
    assert all(torch.equal(a, b) for a, b in zip(seg_before, net.base.seg_decoder.parameters()))


def test_validation_withholds_one_real_contrast_per_case_the_same_each_time():
    contrasts = ["t1n", "t1c", "t2w", "t2f"]
    split = SplitTaskd(keys="image", inputs=contrasts, targets=contrasts)
    withhold = WithholdContrastd(keys="image")
    weight = SynthWeightd(inputs=contrasts, targets=contrasts, present_weight=0.0)
    dropped = set()
    for i in range(12):
        d = {"image": torch.rand(4, 6, 6, 6) + 1, "case_id": f"case{i}", "available": torch.ones(4)}
        first = weight(withhold(split(d)))
        again = weight(withhold(split(d)))
        assert torch.equal(first["channel_mask"], again["channel_mask"])
        (gone,) = torch.nonzero(first["channel_mask"] == 0).flatten().tolist()
        assert first["image"][gone].abs().sum() == 0 and first["synth_target"][gone].abs().sum() > 0
        assert first["synth_weight"].tolist() == [float(j == gone) for j in range(4)]
        dropped.add(gone)
    assert len(dropped) > 1  # the choice depends on the case
    one = {"image": torch.rand(4, 6, 6, 6), "case_id": "x", "available": torch.tensor([0.0, 0.0, 1.0, 0.0])}
    assert withhold(split(one))["channel_mask"].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_absent_only_validation_scores_the_missing_contrasts_only():
    torch.manual_seed(0)
    target = torch.rand(1, 2, 16, 16, 16)
    pred = target.clone()
    pred[:, 1] = torch.rand(1, 16, 16, 16)  # channel 1 is poor, channel 0 perfect
    brain = torch.ones(1, 1, 16, 16, 16)
    output = {"pred": {"synth": pred}, "label": {"synth": target, "brain_mask": brain}}
    both = BrainSynthesisMetric("SSIM")
    both(*SynthOutput()(output))
    output["label"]["synth_weight"] = torch.tensor([[0.0, 1.0]])
    absent = BrainSynthesisMetric("SSIM")
    absent(*SynthOutput(absent_only=True)(output))
    channel1 = BrainSynthesisMetric("SSIM")
    channel1(*SynthOutput(channel=1)(output))
    assert absent.aggregate().item() == pytest.approx(channel1.aggregate().item())
    assert absent.aggregate().item() < both.aggregate().item() < 1.0


def test_a_guided_bundle_infers_at_the_scan_grid(bundle_factory, phantom_cases, tmp_path, capsys):
    bundle = bundle_factory(
        tmp_path / "bundle",
        inputs=("t1n", "t1c", "t2w", "t2f"),
        targets=("t1n", "t1c", "t2w", "t2f"),
        input_mask=True,
        guided={"factor": 2},
    )
    case = phantom_cases["brats2023"]
    files = {c: next(case.glob(f"*-{c}.nii.gz")) for c in ("t1n", "t2w", "t2f")}
    out = tmp_path / "pred"
    args = [a for c, f in files.items() for a in (f"--{c}", str(f))]
    rc = main(["infer", *args, "--bundle", str(bundle), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    src = nib.load(files["t1n"])
    sidecar = next(out.glob("*.json"))
    stem = sidecar.name[: -len(".json")]
    for name in (f"{stem}_seg.nii.gz", f"{stem}_t1c_synth.nii.gz"):
        img = nib.load(out / name)
        assert img.shape[:3] == src.shape and np.allclose(img.affine, src.affine, atol=1e-5)
    assert "t1c" in json.loads(sidecar.read_text())["synthesised"]


def test_guided_stage_trains_the_fields_over_a_frozen_encoder(tmp_path):
    from test_training import _run, _state, _train_cmd

    from data_prep.datalist import prepare
    from data_prep.phantoms import write_phantoms

    root = tmp_path / "phantoms"
    write_phantoms(root, n=4, shape=(48, 48, 32), layout="brats2023", seed=3)
    prepare(root, root / "datalist.json", folds=4, seed=0)
    data = (root, root / "datalist.json")
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    _run(_train_cmd(data, coarse, "plain", 1, {"drop_contrasts_prob": 0.5}))
    weights = coarse / "models" / "model.pt"
    _run([
        sys.executable, "-m", "medmtl.cli", "train", "--dataset-dir", str(root), "--datalist",
        str(root / "datalist.json"), "--out", str(fine), "--stage", "guided", "--preset", "cpu",
        "--epochs", "1", "--set", "num_workers=0", "val_interval=1", "roi_size=[64,64,64]",
        f"coarse_weights={json.dumps(str(weights))}",
    ])  # fmt: skip
    config = json.loads((fine / "models" / "model_config.json").read_text())
    assert config["network_kwargs"]["guided"] == {"factor": 2} and config["spacing"] == [1.0, 1.0, 1.0]
    state, coarse_state = _state(fine / "models" / "model.pt"), _state(weights)
    # Encoder and segmentation come through bit for bit; the synthesis head now predicts fields.
    for k, v in coarse_state.items():
        if k.startswith(("encoder.", "seg_decoder.", "film.")):
            assert torch.equal(state[f"base.{k}"], v), k
    head = [k for k in state if k.startswith("base.synth_decoder.head") and k.endswith("bias")][-1]
    assert state[head].shape[0] == 4 * 5

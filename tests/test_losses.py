"""Tests of medmtl.losses: the joint loss, its masked parts, task weighting and PCGrad."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from monai.metrics.regression import compute_ssim_and_cs

from medmtl.losses import (
    DiceBCELoss,
    MaskedL1SSIMLoss,
    MultiTaskLoss,
    UncertaintyWeighting,
    get_weighting,
    masked_l1,
    masked_ssim,
    pcgrad_backward,
    pcgrad_project,
)

torch.set_num_threads(1)


def _batch(seed: int = 0, size: int = 16, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    shape = (b, 1, size, size, size)
    brain = torch.zeros(shape)
    brain[..., 3:13, 2:14, 4:12] = 1
    regions = torch.zeros(b, 3, size, size, size)
    regions[:, 1, 6:10, 6:10, 6:10] = 1  # WT
    regions[:, 0, 7:9, 7:9, 7:9] = 1  # TC
    regions[:, 2, 7:8, 7:9, 7:9] = 1  # ET
    target = {
        "seg": regions,
        "synth": torch.randn(shape, generator=g) * brain,
        "brain_mask": brain,
    }
    pred = {
        "seg": torch.randn(b, 3, size, size, size, generator=g, requires_grad=True),
        "synth": torch.randn(shape, generator=g, requires_grad=True),
    }
    return pred, target


# ---------------------------------------------------------------- synthesis parts
def test_masked_l1_hand_computed():
    pred = torch.zeros(1, 1, 2, 2, 2)
    target = torch.arange(8.0).view(1, 1, 2, 2, 2)
    mask = torch.zeros(1, 1, 2, 2, 2)
    mask.view(-1)[[1, 2, 7]] = 1
    assert masked_l1(pred, target, mask).item() == pytest.approx((1 + 2 + 7) / 3)
    assert masked_l1(pred, target).item() == pytest.approx(28 / 8)
    # all-zero weights: zero, with a gradient path
    p = pred.clone().requires_grad_(True)
    zero = masked_l1(p, target, torch.zeros_like(mask))
    zero.backward()
    assert zero.item() == 0 and p.grad is not None


def test_masked_l1_ignores_voxels_outside_the_brain():
    pred, target = _batch()
    loss = MultiTaskLoss(l2=0.0, gen_ssim=0.0)
    before = loss(pred, target).item()
    outside = target["brain_mask"] == 0
    changed_pred = {"synth": pred["synth"].detach().masked_fill(outside, 100.0)}
    changed_target = dict(target, synth=target["synth"].masked_fill(outside, -50.0))
    assert loss(changed_pred, changed_target).item() == pytest.approx(before, abs=1e-6)
    inside = dict(target, synth=target["synth"] + target["brain_mask"])
    assert loss(pred, inside).item() != pytest.approx(before, abs=1e-3)


def test_brain_mask_defaults_to_nonzero_target_voxels():
    pred, target = _batch()
    no_mask = {k: v for k, v in target.items() if k != "brain_mask"}
    loss = MultiTaskLoss(l2=0.0, gen_ssim=0.0)
    expected = masked_l1(pred["synth"], target["synth"], (target["synth"] != 0).float())
    assert loss(pred, no_mask).item() == pytest.approx(expected.item(), rel=1e-6)
    unmasked = MultiTaskLoss(l2=0.0, gen_ssim=0.0, brain_masked=False)
    assert unmasked(pred, target).item() == pytest.approx(
        (pred["synth"] - target["synth"]).abs().mean().item(), rel=1e-6
    )


def test_tumour_weight_hand_computed():
    brain = torch.zeros(1, 1, 4, 4, 4)
    brain[..., :2, :2, :2] = 1  # 8 brain voxels
    regions = torch.zeros(1, 3, 4, 4, 4)
    regions[0, 1, 0, 0, :2] = 1  # 2 WT voxels
    target = {"synth": torch.zeros(1, 1, 4, 4, 4), "seg": regions, "brain_mask": brain}
    pred = {"synth": regions[:, 1:2].clone()}  # error 1 in the tumour, 0 elsewhere
    plain = MultiTaskLoss(l2=0.0, gen_ssim=0.0)
    boosted = MultiTaskLoss(l2=0.0, gen_ssim=0.0, tumour_weight=3.0)
    assert plain(pred, target).item() == pytest.approx(2 / 8)
    assert boosted(pred, target).item() == pytest.approx((2 * 4) / (6 + 2 * 4))


def test_per_contrast_synth_weight_hand_computed():
    brain = torch.ones(1, 1, 2, 2, 2)
    target = {"synth": torch.zeros(1, 2, 2, 2, 2), "brain_mask": brain}
    pred = {"synth": torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])[None]}
    loss = MultiTaskLoss(l2=0.0, gen_ssim=0.0)
    assert loss(pred, target).item() == pytest.approx(2.0)
    # the second contrast was dropped (weight 1), the first is a real input (weight 0.25)
    weighted = dict(target, synth_weight=torch.tensor([[0.25, 1.0]]))
    assert loss(pred, weighted).item() == pytest.approx((0.25 * 1 + 1.0 * 3) / 1.25)
    with pytest.raises(ValueError, match="synth_weight"):
        loss(pred, dict(target, synth_weight=torch.ones(1, 3)))


def test_masked_ssim_without_mask_equals_monai_ssimloss_after_rescaling():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 1, 16, 16, 16, generator=g)
    target = torch.randn(2, 1, 16, 16, 16, generator=g) * 2 + 1
    lo = target.flatten(1).amin(1).view(-1, 1, 1, 1, 1)
    span = target.flatten(1).amax(1).view(-1, 1, 1, 1, 1) - lo
    reference = SSIMLoss(spatial_dims=3, data_range=1.0)((pred - lo) / span, (target - lo) / span)
    assert 1 - masked_ssim(pred, target).item() == pytest.approx(reference.item(), abs=1e-5)
    ones = torch.ones(2, 1, 16, 16, 16)
    assert masked_ssim(pred, target, ones).item() == pytest.approx(masked_ssim(pred, target).item(), abs=1e-6)
    assert masked_ssim(target, target).item() == pytest.approx(1.0, abs=1e-5)


def test_masked_ssim_ignores_voxels_beyond_the_window_from_the_brain():
    pred, target = _batch(size=24, b=1)
    brain = torch.zeros(1, 1, 24, 24, 24)
    brain[..., 8:16, 8:16, 8:16] = 1
    base = masked_ssim(pred["synth"].detach(), target["synth"], brain).item()
    far = pred["synth"].detach().clone()
    far[..., :2, :, :] = 7.0  # more than 5 voxels (half an 11-window) from the brain
    assert masked_ssim(far, target["synth"], brain).item() == pytest.approx(base, abs=1e-6)
    near = pred["synth"].detach().clone()
    near[..., 10:12, 10:12, 10:12] = 7.0
    assert masked_ssim(near, target["synth"], brain).item() != pytest.approx(base, abs=1e-4)


def test_masked_ssim_percentile_range_equals_monai_ssim_at_each_contrasts_brain_percentiles():
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 2, 16, 16, 16, generator=g)
    target = torch.randn(2, 2, 16, 16, 16, generator=g) * torch.tensor([1.0, 5.0]).view(1, 2, 1, 1, 1)
    brain = torch.zeros(2, 1, 16, 16, 16)
    brain[..., 2:14, 3:13, 1:15] = 1
    lo = torch.zeros(2, 2, 1, 1, 1)
    hi = torch.zeros(2, 2, 1, 1, 1)
    for i in range(2):
        for j in range(2):
            inside = target[i, j][brain[i, 0] > 0].numpy()
            lo[i, j], hi[i, j] = (float(v) for v in np.percentile(inside, [0.5, 99.5]))
    x, y = (pred - lo) / (hi - lo), (target - lo) / (hi - lo)
    # the mean over the brain of MONAI's SSIM map (valid windows: the brain is cropped by 5 voxels)
    reference = []
    for i in range(2):
        for j in range(2):
            full, _ = compute_ssim_and_cs(
                x[i : i + 1, j : j + 1],
                y[i : i + 1, j : j + 1],
                3,
                [11] * 3,
                [1.5] * 3,
                1.0,
                "gaussian",
                0.01,
                0.03,
            )
            w = brain[i : i + 1, :, 5:-5, 5:-5, 5:-5]
            reference.append((full * w).sum() / w.sum())
    got = masked_ssim(pred, target, brain, intensity_range="percentile")
    assert got.item() == pytest.approx(torch.stack(reference).mean().item(), abs=1e-4)


def test_masked_ssim_percentile_range_ignores_background_and_other_contrasts():
    g = torch.Generator().manual_seed(4)
    target = torch.randn(1, 2, 24, 24, 24, generator=g)
    pred = target + 0.7 * torch.randn(1, 2, 24, 24, 24, generator=g)
    brain = torch.zeros(1, 1, 24, 24, 24)
    brain[..., 6:18, 6:18, 6:18] = 1
    base = masked_ssim(pred, target, brain, intensity_range="percentile").item()
    # a bright vessel or skull voxel far outside the brain moves a min-max range, not the brain's percentiles
    spiked = target.clone()
    spiked[..., 0, 0, 0] = 50.0
    spiked_percentile = masked_ssim(pred, spiked, brain, intensity_range="percentile").item()
    assert spiked_percentile == pytest.approx(base, abs=1e-6)
    minmax = masked_ssim(pred, target, brain).item()
    assert masked_ssim(pred, spiked, brain).item() != pytest.approx(minmax, abs=1e-3)
    # each contrast has its own range: rescaling one leaves the score unchanged
    scale = torch.tensor([1.0, 10.0]).view(1, 2, 1, 1, 1)
    rescaled = masked_ssim(pred * scale, target * scale, brain, intensity_range="percentile").item()
    assert rescaled == pytest.approx(base, abs=1e-5)
    assert masked_ssim(pred * scale, target * scale, brain).item() != pytest.approx(
        masked_ssim(pred, target, brain).item(), abs=1e-3
    )


def test_percentile_ssim_penalises_lost_structure_more_than_minmax():
    # a smooth prediction of a textured brain beside a much brighter background voxel: the min-max range
    # compresses the texture towards SSIM's constant and the structure loss shrinks
    g = torch.Generator().manual_seed(5)
    target = torch.randn(1, 1, 24, 24, 24, generator=g) * 0.3 + 2.0
    target[..., 0, 0, 0] = 12.0
    brain = torch.zeros(1, 1, 24, 24, 24)
    brain[..., 4:20, 4:20, 4:20] = 1
    smooth = torch.full_like(target, 2.0)
    lost_minmax = 1 - masked_ssim(smooth, target, brain).item()
    lost_percentile = 1 - masked_ssim(smooth, target, brain, intensity_range="percentile").item()
    assert lost_percentile > 2 * lost_minmax


def test_ssim_range_is_checked():
    with pytest.raises(ValueError, match="ssim_range"):
        MaskedL1SSIMLoss(ssim_range="zscore")
    with pytest.raises(ValueError, match="intensity_range"):
        masked_ssim(torch.zeros(1, 1, 12, 12, 12), torch.zeros(1, 1, 12, 12, 12), intensity_range="max")
    loss = MultiTaskLoss(l2=0.0, ssim_range="percentile")
    assert loss.gen_loss.ssim_range == "percentile"


# ---------------------------------------------------------------- segmentation part
def test_dice_bce_hand_computed():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    assert DiceBCELoss()(logits, target).item() == pytest.approx((dice + bce).item(), rel=1e-5)


def test_seg_loss_is_multilabel_not_softmax():
    # overlapping regions (ET inside TC inside WT): all-positive logits on a voxel that is in all three
    # regions must score better than a softmax-style one-hot pick
    target = torch.ones(1, 3, 4, 4, 4)
    all_on = torch.full((1, 3, 4, 4, 4), 8.0)
    one_hot = torch.full((1, 3, 4, 4, 4), -8.0)
    one_hot[:, 0] = 8.0
    loss = DiceBCELoss()
    assert loss(all_on, target).item() < 0.01 < loss(one_hot, target).item()


def test_deep_supervision_terms_are_included():
    pred, target = _batch()
    g = torch.Generator().manual_seed(3)
    ds = [torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 8, 8, 8, generator=g)]  # coarsest first
    loss = MultiTaskLoss(l1=0.0)
    plain = loss.task_losses(pred, target)["seg"]
    with_ds = loss.task_losses(dict(pred, seg_ds=ds), target)["seg"]
    w = [1.0, 0.5, 0.25]
    w = [v / sum(w) for v in w]

    def resized(size):
        return F.interpolate(target["seg"], size=(size,) * 3, mode="nearest-exact")

    expected = (
        w[0] * plain + w[1] * loss.seg_loss(ds[1], resized(8)) + w[2] * loss.seg_loss(ds[0], resized(4))
    )
    assert with_ds.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- the joint loss
def test_fixed_weighting_total_and_logging():
    pred, target = _batch()
    loss = MultiTaskLoss(l1=0.5, l2=2.0)
    total = loss(pred, target)
    tasks = loss.task_losses(pred, target)
    assert set(tasks) == {"seg", "gen"}
    assert total.item() == pytest.approx(0.5 * tasks["gen"].item() + 2.0 * tasks["seg"].item(), rel=1e-6)
    last = loss.last
    assert all(isinstance(v, float) for v in last.values())
    assert last["weight_gen"] == 0.5 and last["weight_seg"] == 2.0
    assert last["loss_seg"] == pytest.approx(tasks["seg"].item(), rel=1e-6)
    assert last["gen_l1"] + last["gen_ssim_loss"] == pytest.approx(last["loss_gen"], rel=1e-6)
    assert last["total"] == pytest.approx(total.item(), rel=1e-6)
    assert list(loss.parameters()) == []


def test_vae_term_is_added_with_its_weight():
    pred, target = _batch()
    loss = MultiTaskLoss()
    base = loss(pred, target).item()
    with_vae = loss(dict(pred, vae_loss=torch.tensor(2.0)), target).item()
    assert with_vae == pytest.approx(base + 0.1 * 2.0, rel=1e-6)
    assert loss.last["loss_vae"] == 2.0


def test_single_task_modes_skip_the_other_term(monkeypatch):
    pred, target = _batch()

    def boom(*args, **kwargs):
        raise AssertionError("a skipped term was computed")

    seg_only = MultiTaskLoss(l1=0.0)
    monkeypatch.setattr(seg_only.gen_loss, "components", boom)
    assert set(seg_only.task_losses(pred, target)) == {"seg"}
    assert seg_only(pred, target).item() == pytest.approx(seg_only.task_losses(pred, target)["seg"].item())

    no_synth_target = MultiTaskLoss()
    monkeypatch.setattr(no_synth_target.gen_loss, "components", boom)
    target_seg = {"seg": target["seg"]}
    assert set(no_synth_target.task_losses(pred, target_seg)) == {"seg"}

    gen_only = MultiTaskLoss(l2=0.0)
    monkeypatch.setattr(gen_only, "_seg", boom)
    assert set(gen_only.task_losses(pred, target)) == {"gen"}
    assert set(MultiTaskLoss().task_losses({"synth": pred["synth"]}, target)) == {"gen"}

    with pytest.raises(ValueError, match="no task to compute"):
        MultiTaskLoss()({"synth": pred["synth"]}, {"seg": target["seg"]})
    with pytest.raises(ValueError, match="not both 0"):
        MultiTaskLoss(l1=0.0, l2=0.0)


def test_shape_mismatch_is_reported():
    pred, target = _batch()
    with pytest.raises(ValueError, match=r"pred\['seg'\]"):
        MultiTaskLoss()(pred, dict(target, seg=target["seg"][:, :2]))
    with pytest.raises(ValueError, match="brain_mask"):
        MultiTaskLoss()(pred, dict(target, brain_mask=target["brain_mask"][..., :8]))


# ---------------------------------------------------------------- weighting strategies
def test_uncertainty_weighting_converges_to_log_loss():
    # Kendall et al.: exp(-s) L + s is minimal at s = log L, i.e. the weight exp(-s) = 1 / L
    fixed_losses = {"seg": torch.tensor(4.0), "gen": torch.tensor(0.25)}
    weighting = UncertaintyWeighting({"seg": 1.0, "gen": 1.0})
    opt = torch.optim.Adam(weighting.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        sum(weighting(fixed_losses).values()).backward()
        opt.step()
    assert weighting.log_vars["seg"].item() == pytest.approx(math.log(4.0), abs=0.02)
    assert weighting.log_vars["gen"].item() == pytest.approx(math.log(0.25), abs=0.02)
    weights = weighting.effective_weights()
    assert weights["seg"] == pytest.approx(0.25, rel=0.03) and weights["gen"] == pytest.approx(4.0, rel=0.03)


def test_uncertainty_parameters_are_exposed_by_the_loss():
    loss = MultiTaskLoss(
        weighting="uncertainty", adversarial=True, adversarial_kwargs={"channels": 4, "num_layers": 2}
    )
    params = list(loss.parameters())
    assert len(params) == 2 and all(p.dim() == 0 for p in params)
    pred, target = _batch()
    loss(pred, target).backward()
    assert all(p.grad is not None for p in params)
    assert loss.last["weight_seg"] == pytest.approx(1.0)


def test_weighting_factory():
    assert type(get_weighting("Fixed", {"seg": 1.0})).__name__ == "FixedWeighting"
    assert get_weighting("pcgrad", {"seg": 1.0}).gradient_surgery
    with pytest.raises(ValueError, match="unknown weighting"):
        get_weighting("gradvac", {"seg": 1.0})


def test_pcgrad_projection_on_conflicting_and_agreeing_vectors():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflict: dot = -1
    combined = pcgrad_project([g1, g2])
    # g1 - (g1.g2/|g2|^2) g2 = (0.5, 0.5); g2 - (g2.g1/|g1|^2) g1 = (0, 1)
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        a, b = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
        if torch.dot(a, b) < 0:
            c = pcgrad_project([a, b], generator=gen)
            assert torch.dot(c, a) >= -1e-6 and torch.dot(c, b) >= -1e-6
        else:
            torch.testing.assert_close(pcgrad_project([a, b], generator=gen), a + b)


def test_pcgrad_backward_writes_projected_shared_and_summed_task_grads():
    shared = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
    h1 = torch.nn.Parameter(torch.tensor(1.5))
    h2 = torch.nn.Parameter(torch.tensor(-0.7))
    c1, c2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    shared.grad = torch.tensor([1.0, 1.0])  # accumulates like backward()
    losses = [shared @ c1 + h1**2, shared @ c2 + 3 * h2]
    pcgrad_backward(losses, [shared], [h1, h2])
    torch.testing.assert_close(shared.grad, torch.tensor([1.5, 2.5]))
    torch.testing.assert_close(h1.grad, torch.tensor(3.0))
    torch.testing.assert_close(h2.grad, torch.tensor(3.0))


def test_loss_backward_fixed_equals_plain_backward_and_pcgrad_runs():
    torch.manual_seed(0)
    enc = torch.nn.Conv3d(1, 4, 3, padding=1)
    seg_head = torch.nn.Conv3d(4, 3, 1)
    syn_head = torch.nn.Conv3d(4, 1, 1)
    _, target = _batch()
    x = torch.randn(2, 1, 16, 16, 16)

    def run():
        h = enc(x)
        return {"seg": seg_head(h), "synth": syn_head(h)}

    heads = list(seg_head.parameters()) + list(syn_head.parameters())
    loss = MultiTaskLoss()
    loss(run(), target).backward()
    plain = [p.grad.clone() for p in list(enc.parameters()) + heads]
    for p in list(enc.parameters()) + heads:
        p.grad = None
    total = loss.backward(run(), target, enc.parameters(), heads)
    for p, g in zip(list(enc.parameters()) + heads, plain):
        torch.testing.assert_close(p.grad, g)
    assert total.requires_grad is False

    for p in list(enc.parameters()) + heads:
        p.grad = None
    pc = MultiTaskLoss(weighting="pcgrad")
    pc.backward(run(), target, list(enc.parameters()), heads)
    # heads are task-specific: they get exactly the plain gradient
    for p, g in zip(heads, plain[len(list(enc.parameters())) :]):
        torch.testing.assert_close(p.grad, g)
    assert all(p.grad is not None for p in enc.parameters())


# ---------------------------------------------------------------- adversarial term
def test_adversarial_term_on_a_toy():
    torch.manual_seed(0)
    loss = MultiTaskLoss(
        l2=0.0,
        adversarial=True,
        adv_weight=0.5,
        spatial_dims=2,
        synth_channels=1,
        adversarial_kwargs={"channels": 8, "num_layers": 2},
    )
    assert list(loss.parameters()) == []  # the discriminator is not trained by the generator's optimiser
    disc = loss.adversary.discriminator
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    real = (1 - xx**2 - yy**2).expand(4, 1, 16, 16).contiguous()
    brain = torch.ones(4, 1, 16, 16)
    fake = torch.randn(4, 1, 16, 16, requires_grad=True)

    total = loss({"synth": fake}, {"synth": real, "brain_mask": brain})
    assert "loss_adv" in loss.last
    total.backward()
    assert fake.grad is not None
    assert all(p.grad is None for p in disc.parameters())

    before = [p.detach().clone() for p in disc.parameters()]
    d_losses = [loss.discriminator_step(real, fake, brain) for _ in range(30)]
    assert any(not torch.equal(p, b) for p, b in zip(disc.parameters(), before))
    assert sum(d_losses[-5:]) / 5 < 0.5 * sum(d_losses[:5]) / 5

    state = loss.adversary.state_dict()
    other = MultiTaskLoss(
        adversarial=True, spatial_dims=2, adversarial_kwargs={"channels": 8, "num_layers": 2}
    )
    other.adversary.load_state_dict(state)
    for p, q in zip(disc.parameters(), other.adversary.discriminator.parameters()):
        assert torch.equal(p, q)

    with pytest.raises(RuntimeError, match="adversarial=True"):
        MultiTaskLoss().discriminator_step(real, fake)


def test_network_output_dict_end_to_end():
    from medmtl.networks import MultiTaskUNet, set_trainable

    torch.manual_seed(0)
    net = MultiTaskUNet(
        features=(4, 8, 16, 32),
        blocks_down=(1, 1, 1, 1),
        deep_supervision=True,
        vae=True,
        vae_input_shape=(16, 16, 32),
    ).train()
    _, target = _batch()
    target = {k: v[..., :16, :16, :16].repeat(1, 1, 1, 1, 2) for k, v in target.items()}
    set_trainable(net, encoder=False)  # stage 2 of the schedule: heads on a frozen encoder
    pred = net(torch.randn(2, 3, 16, 16, 32))
    loss = MultiTaskLoss()
    total = loss(pred, target)
    assert {"loss_seg", "loss_gen", "loss_vae"} <= set(loss.last)
    # the deep-supervision terms count in L_seg
    no_ds = loss.task_losses({k: v for k, v in pred.items() if k != "seg_ds"}, target)["seg"]
    assert loss.last["loss_seg"] != pytest.approx(no_ds.item(), abs=1e-6)
    total.backward()
    groups = net.parameter_groups()
    assert all(p.grad is None for p in groups["encoder"] + groups["vae"])
    assert all(p.grad is not None for p in groups["seg"] + groups["synth"])


# ---------------------------------------------------------------- unlabelled studies
def _mixed_net_and_batch():
    from medmtl.networks import MultiTaskUNet

    torch.manual_seed(0)
    net = MultiTaskUNet(features=(4, 8, 16, 32), blocks_down=(1, 1, 1, 1), deep_supervision=True).train()
    _, target = _batch(seed=1)
    target["seg"][1] = 1.0  # whatever an unlabelled sample's (empty) label says must not count
    target["has_label"] = torch.tensor([1.0, 0.0])
    x = torch.randn(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    return net, x, target


def test_unlabelled_sample_gives_zero_seg_gradient_and_nonzero_synth_gradient():
    net, x, target = _mixed_net_and_batch()
    params = [p for p in net.parameters() if p.requires_grad]
    loss = MultiTaskLoss()  # batch Dice, deep supervision on: both must leave the sample out

    x = x.clone().requires_grad_(True)
    terms = loss.terms(net(x), target)
    assert loss.last["labelled"] == 0.5
    seg_x, *seg_params = torch.autograd.grad(terms["seg"], [x, *params], retain_graph=True, allow_unused=True)
    (gen_x,) = torch.autograd.grad(terms["gen"], [x])
    # the unlabelled sample (index 1) has exactly no segmentation gradient, but a synthesis one
    assert torch.count_nonzero(seg_x[1]) == 0 and torch.count_nonzero(seg_x[0]) > 0
    assert gen_x[1].abs().sum() > 0

    # the segmentation term and its gradients are those of the labelled sample alone
    alone = {k: v[:1] for k, v in target.items() if k != "has_label"}
    seg_alone = loss.terms(net(x.detach()[:1]), alone)["seg"]
    grads_alone = torch.autograd.grad(seg_alone, params, allow_unused=True)
    assert terms["seg"].item() == pytest.approx(seg_alone.item(), rel=1e-5)
    for mixed, single in zip(seg_params, grads_alone):
        if single is None:
            assert mixed is None or torch.count_nonzero(mixed) == 0
        else:
            assert torch.allclose(mixed, single, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_batch_of_unlabelled_samples_has_a_zero_seg_term_with_a_gradient_path(weighting):
    pred, target = _batch()
    target["has_label"] = torch.zeros(2)
    loss = MultiTaskLoss(weighting=weighting)
    terms = loss.terms(pred, target)
    assert terms["seg"].item() == 0.0 and terms["seg"].requires_grad
    assert loss.last["loss_seg"] == 0.0 and loss.last["labelled"] == 0.0
    sum(terms.values()).backward()
    # zero (not missing) gradients on the seg logits; learned weights are not pushed by the empty term
    assert pred["seg"].grad is not None and torch.count_nonzero(pred["seg"].grad) == 0
    assert pred["synth"].grad.abs().sum() > 0
    if weighting == "uncertainty":
        assert loss.weighting.log_vars["seg"].grad.item() == 0.0
        assert loss.weighting.log_vars["gen"].grad.item() != 0.0
    # a labelled batch with the flag set gives the loss of a batch without it
    labelled = dict(target, has_label=torch.ones(2))
    plain = {k: v for k, v in target.items() if k != "has_label"}
    assert loss(pred, labelled).item() == pytest.approx(loss(pred, plain).item(), rel=1e-6)
    with pytest.raises(ValueError, match="one flag per sample"):
        loss(pred, dict(target, has_label=torch.zeros(3)))

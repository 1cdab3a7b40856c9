"""The full-resolution refinement head: starts as the coarse model, refines at the input's resolution."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medmtl.cli import main
from medmtl.networks import RefinedMultiTaskUNet, get_network, set_trainable

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(**kw) -> RefinedMultiTaskUNet:
    torch.manual_seed(0)
    return get_network(
        "cpu", in_channels=4, synth_channels=4, input_mask=True, refinement={"factor": 2, **kw}
    ).eval()


def test_untrained_head_returns_the_upsampled_coarse_outputs():
    net = _net()
    x = torch.randn(1, 4, 32, 24, 16)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    x[:, 1] = 0
    with torch.no_grad():
        out = net(x, mask)
        coarse = net.base(x[..., ::2, ::2, ::2], mask)
    for key, to_prob in (("seg", torch.sigmoid), ("synth", lambda t: t)):
        # coarse voxel k on fine voxel 2k (the grid Spacingd makes); the last fine voxel repeats it;
        # the segmentation is interpolated as probabilities, as the bundle's inference does
        inner = F.interpolate(to_prob(coarse[key]), size=[31, 23, 15], mode="trilinear", align_corners=True)
        expected = F.pad(inner, [0, 1, 0, 1, 0, 1], mode="replicate")
        assert out[key].shape == expected.shape
        torch.testing.assert_close(to_prob(out[key]), expected, atol=1e-5, rtol=1e-5)
    assert net.divisor == 2 * net.base.divisor and net.input_mask and net.in_channels == 4


def test_outputs_keep_any_input_size_and_the_tuple_matches_the_dict():
    net = _net(features=4, layers=1)
    x = torch.randn(1, 4, 33, 19, 17)
    with torch.no_grad():
        seg, synth = net.forward_tuple(x)
        out = net(x)
    assert seg.shape == (1, 3, 33, 19, 17) and synth.shape == (1, 4, 33, 19, 17)
    torch.testing.assert_close(seg, out["seg"])


def test_head_learns_full_resolution_detail_the_coarse_network_cannot_see():
    # Target: the input itself, whose 1-voxel checkerboard the half-resolution network never sees.
    torch.manual_seed(0)
    net = _net(features=8, layers=2).train()
    set_trainable(net, encoder=False, seg=False, synth=False)
    assert all(not p.requires_grad for p in net.base.parameters())
    assert all(p.requires_grad for p in net.head.parameters())
    grid = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij")).sum(0) % 2
    x = torch.randn(2, 4, 16, 16, 16) + grid.float()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    base_before = [p.detach().clone() for p in net.base.parameters()]
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.mse_loss(net(x)["synth"], x)  # restore the input, checkerboard included
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    assert all(torch.equal(a, b) for a, b in zip(base_before, net.base.parameters()))


def test_a_refined_bundle_infers_at_the_scan_grid(bundle_factory, phantom_cases, tmp_path, capsys):
    bundle = bundle_factory(
        tmp_path / "bundle",
        inputs=("t1n", "t1c", "t2w", "t2f"),
        targets=("t1n", "t1c", "t2w", "t2f"),
        input_mask=True,
        refinement={"factor": 2, "features": 4, "layers": 1},
    )
    case = phantom_cases["brats2023"]
    t1c = next(case.glob("*-t1c.nii.gz"))
    out = tmp_path / "pred"
    rc = main(["infer", str(case), "--bundle", str(bundle), "--out", str(out), "--restorations"])
    assert rc == 0, capsys.readouterr().err
    seg = nib.load(out / f"{case.name}_seg.nii.gz")
    src = nib.load(t1c)
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(seg.dataobj))) <= {0, 1, 2, 3}
    assert json.loads((out / f"{case.name}.json").read_text())["synthesised"] == ["t1n", "t1c", "t2w", "t2f"]

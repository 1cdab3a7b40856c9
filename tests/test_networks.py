"""Tests of medmtl.networks: shapes, sharing, staged training, conditioning, export views."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import SegResNet
from torch.utils.flop_counter import FlopCounterMode

from medmtl.networks import (
    PRESETS,
    BranchView,
    MultiTaskUNet,
    TupleView,
    get_network,
    set_trainable,
)

torch.set_num_threads(1)

TINY = {"features": (4, 8, 16, 32), "blocks_down": (1, 1, 1, 1), "blocks_up": (1, 1, 1)}


def tiny(**kw) -> MultiTaskUNet:
    torch.manual_seed(0)
    return MultiTaskUNet(**{**TINY, **kw})


@pytest.mark.parametrize(
    ("spatial_dims", "size"),
    [(3, (21, 19, 27)), (3, (16, 16, 16)), (3, (9, 30, 17)), (2, (37, 41)), (2, (5, 8))],
)
def test_output_shapes_any_size(spatial_dims, size):
    net = tiny(spatial_dims=spatial_dims, in_channels=3, seg_channels=3, synth_channels=2).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {"seg", "synth"}
    assert out["seg"].shape == (2, 3, *size)
    assert out["synth"].shape == (2, 2, *size)
    assert torch.isfinite(out["seg"]).all() and torch.isfinite(out["synth"]).all()


def test_odd_size_output_is_the_padded_output_cropped():
    # The crop must keep the voxels that correspond to the input (padding at the end of each axis).
    net = tiny().eval()
    x = torch.randn(1, 3, 13, 11, 9)
    padded = torch.nn.functional.pad(x, (0, 7, 0, 5, 0, 3))
    with torch.no_grad():
        odd, full = net(x), net(padded)
    torch.testing.assert_close(odd["seg"], full["seg"][..., :13, :11, :9])
    torch.testing.assert_close(odd["synth"], full["synth"][..., :13, :11, :9])


def test_branches_share_one_encoder():
    net = tiny()
    assert isinstance(net.encoder, torch.nn.Module)
    assert net.seg_decoder is not net.synth_decoder
    groups = net.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in groups["encoder"]} == {id(p) for p in net.encoder.parameters()}

    x = torch.randn(1, 3, 16, 16, 16)
    calls = []
    handle = net.encoder.down_layers[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        net(x)
    handle.remove()
    assert len(calls) == 1  # one encoder pass feeds both decoders

    for branch, other in (("seg", "synth"), ("synth", "seg")):
        net.zero_grad(set_to_none=True)
        net(x)[branch].square().mean().backward()
        enc_grads = [p.grad for p in groups["encoder"]]
        assert all(g is not None for g in enc_grads)
        assert sum(float(g.abs().sum()) for g in enc_grads) > 0
        assert sum(float(p.grad.abs().sum()) for p in groups[branch]) > 0
        # the other decoder is not on this loss's path
        assert all(p.grad is None for p in groups[other])


def test_set_trainable_frozen_encoder_stays_bit_identical():
    net = tiny()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(2, 3, 16, 16, 16)
    # a first joint step leaves stale gradients and optimiser momentum on the encoder
    net(x)["seg"].mean().backward()
    opt.step()
    set_trainable(net, encoder=False, seg=True, synth=True)
    groups = net.parameter_groups()
    assert all(not p.requires_grad and p.grad is None for p in groups["encoder"])
    before = {k: [p.detach().clone() for p in v] for k, v in groups.items()}
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        out = net(x)
        (out["seg"].sigmoid().mean() + out["synth"].square().mean()).backward()
        opt.step()
    for p, b in zip(groups["encoder"], before["encoder"]):
        assert torch.equal(p, b)
    for part in ("seg", "synth"):
        assert any(not torch.equal(p, b) for p, b in zip(groups[part], before[part]))

    set_trainable(net, encoder=True, seg=False, synth=True)
    assert all(p.requires_grad for p in groups["encoder"]) and not any(p.requires_grad for p in groups["seg"])


def test_set_trainable_refuses_to_freeze_running_stats():
    net = tiny(norm="batch")
    with pytest.raises(ValueError, match="running"):
        set_trainable(net, encoder=False)
    set_trainable(net, encoder=True)  # nothing frozen: allowed


def test_deep_supervision_only_in_training():
    net = tiny(deep_supervision=True)
    x = torch.randn(2, 3, 21, 19, 27)
    net.train()
    out = net(x)
    assert set(out) == {"seg", "synth", "seg_ds"}
    # coarsest first, each at its own resolution ceil(S / 2**k)
    expected = [(2, 3, 6, 5, 7), (2, 3, 11, 10, 14)]
    assert [tuple(t.shape) for t in out["seg_ds"]] == expected
    net.eval()
    with torch.no_grad():
        assert set(net(x)) == {"seg", "synth"}


def test_vae_branch_only_in_training_and_regularises_encoder():
    net = tiny(vae=True, vae_input_shape=(32, 32, 32))
    x = torch.randn(1, 3, 32, 32, 32)
    net.train()
    out = net(x)
    assert set(out) == {"seg", "synth", "vae_loss"}
    assert out["vae_loss"].dim() == 0 and out["vae_loss"].item() > 0
    out["vae_loss"].backward()
    groups = net.parameter_groups()
    assert sum(float(p.grad.abs().sum()) for p in groups["encoder"] if p.grad is not None) > 0
    assert all(p.grad is None for p in groups["seg"] + groups["synth"])
    with pytest.raises(ValueError, match="vae_input_shape"):
        net(torch.randn(1, 3, 16, 16, 16))
    net.eval()
    with torch.no_grad():
        assert set(net(torch.randn(1, 3, 16, 16, 16))) == {"seg", "synth"}


def test_vae_needs_a_valid_shape():
    with pytest.raises(ValueError, match="vae_input_shape"):
        tiny(vae=True)
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny(vae=True, vae_input_shape=(24, 24, 24))


def test_channel_mask_conditions_the_output():
    net = tiny(input_mask=True).eval()
    x = torch.randn(2, 3, 16, 16, 16)
    all_on = torch.ones(2, 3)
    t1c_off = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    with torch.no_grad():
        a = net(x, all_on)
        b = net(x, t1c_off)
        # an absent channel is zero-filled: its values do not matter
        x2 = x.clone()
        x2[:, 1] = torch.randn_like(x2[:, 1]) * 5
        c = net(x2, t1c_off)
        # the mask itself is an input: same (zero) data, different mask -> different output
        x0 = x.clone()
        x0[:, 1] = 0
        d = net(x0, all_on)
        # None means all channels real; a (1, C) mask broadcasts over the batch
        e = net(x, None)
        f = net(x, torch.ones(1, 3))
    assert not torch.allclose(a["seg"], b["seg"])
    torch.testing.assert_close(b["seg"], c["seg"])
    torch.testing.assert_close(b["synth"], c["synth"])
    assert not torch.allclose(d["synth"], b["synth"])
    torch.testing.assert_close(e["seg"], a["seg"])
    torch.testing.assert_close(f["seg"], a["seg"])


def test_input_errors_name_what_was_expected():
    net = tiny()
    with pytest.raises(ValueError, match=r"expects input \(B, 3"):
        net(torch.randn(1, 4, 16, 16, 16))
    with pytest.raises(ValueError, match="input_mask=False"):
        net(torch.randn(1, 3, 16, 16, 16), torch.ones(1, 3))
    masked = tiny(input_mask=True)
    with pytest.raises(ValueError, match="channel_mask must have shape"):
        masked(torch.randn(2, 3, 16, 16, 16), torch.ones(2, 4))
    with pytest.raises(ValueError, match="blocks_down"):
        MultiTaskUNet(features=(4, 8), blocks_down=(1, 1, 1), blocks_up=(1,))


def _trace(module, *args):
    with warnings.catch_warnings():
        # trace-time notes from the norm layers' shape checks, and TorchScript's deprecation notice
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, args)


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def test_branch_view_trace_matches_eager():
    net = tiny().eval()
    x = torch.randn(1, 3, 16, 16, 16)
    for branch, channels in (("seg", 3), ("synth", 1)):
        view = BranchView(net, branch).eval()
        traced = _trace(view, x)
        other = torch.randn(1, 3, 32, 16, 24)  # another size divisible by 8 works too
        for inp in (x, other):
            with torch.no_grad():
                eager, tr = view(inp), traced(inp)
            assert eager.shape == (1, channels, *inp.shape[2:])
            torch.testing.assert_close(tr, eager, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="branch"):
        BranchView(net, "label")


def test_tuple_view_trace_and_script_match_eager():
    net = tiny(input_mask=True).eval()
    x = torch.randn(1, 3, 16, 16, 16)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    view = TupleView(net).eval()
    traced = _trace(view, x, mask)
    scripted = _script(view)
    odd = torch.randn(1, 3, 13, 11, 9)
    with torch.no_grad():
        eager = view(x, mask)
        for got in (traced(x, mask), scripted(x, mask)):
            for g, e in zip(got, eager):
                torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
        # scripting keeps the padding logic: odd sizes work
        s_odd, e_odd = scripted(odd, mask), view(odd, mask)
    for g, e in zip(s_odd, e_odd):
        assert g.shape[2:] == odd.shape[2:]
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)


def test_full_model_scripts_with_dict_output():
    net = tiny(deep_supervision=True, vae=True, vae_input_shape=(32, 32, 32), input_mask=True).eval()
    scripted = _script(net)
    x = torch.randn(1, 3, 13, 11, 9)
    with torch.no_grad():
        out, ref = scripted(x), net(x)
    assert set(out) == {"seg", "synth"}
    torch.testing.assert_close(out["seg"], ref["seg"], atol=1e-5, rtol=0)
    scripted.train()
    out = scripted(torch.randn(1, 3, 32, 32, 32), torch.ones(1, 3))
    assert set(out) == {"seg", "synth", "seg_ds", "vae_loss"}


def test_sliding_window_inferer_stitches_both_outputs():
    net = tiny().eval()
    x = torch.randn(1, 3, 24, 20, 28)
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        out = inferer(x, net)
    assert set(out) == {"seg", "synth"}
    assert out["seg"].shape == (1, 3, 24, 20, 28) and out["synth"].shape == (1, 1, 24, 20, 28)


def test_presets_and_factory():
    cpu = get_network("cpu")
    default = get_network("default")
    assert cpu.features == (8, 16, 32, 64) and default.features == (16, 32, 64, 128)
    assert sum(p.numel() for p in cpu.parameters()) < sum(p.numel() for p in default.parameters())
    over = get_network("CPU", in_channels=4, synth_channels=2, deep_supervision=True)
    assert over.in_channels == 4 and over.synth_channels == 2 and over.deep_supervision
    assert set(PRESETS) == {"cpu", "default"}
    with pytest.raises(ValueError, match="unknown network preset"):
        get_network("huge")


def test_default_decoders_are_half_as_wide_as_the_encoder():
    net = get_network("default")
    assert net.decoder_features == (8, 16, 32)
    # no residual block at full resolution, one per lower level
    assert [len(level.blocks) for level in net.seg_decoder.levels] == [1, 1, 0]
    assert isinstance(net.encoder.down_layers[0][1].norm1, torch.nn.InstanceNorm3d)
    assert not net.encoder.down_layers[0][1].norm1.track_running_stats


def _brats_segresnet() -> torch.nn.Module:
    return SegResNet(
        init_filters=16, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], in_channels=4, out_channels=3
    )


def test_default_costs_fewer_flops_than_the_brats_segresnet():
    # counted on the meta device: no memory, no time; both outputs against SegResNet's single one
    with torch.device("meta"):
        ours = get_network("default", in_channels=4).eval()
        ref = _brats_segresnet().eval()
        x = torch.empty(1, 4, 128, 128, 128)
    flops = []
    for net in (ours, ref):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(x)
        flops.append(counter.get_total_flops())
    assert flops[0] < 0.8 * flops[1]


_MEASURE = """
import json, resource, sys, time, torch
torch.set_num_threads(2)
from monai.networks.nets import SegResNet
from medmtl.networks import get_network
if sys.argv[1] == "segresnet":
    net = SegResNet(init_filters=16, blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], in_channels=4,
                    out_channels=3)
else:
    net = get_network("default", in_channels=4)
net.eval()
x = torch.randn(1, 4, 128, 128, 128)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    net(x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    net(x)
    cpu = time.process_time() - cpu
print(json.dumps({"peak_kb": peak - base, "cpu_s": cpu}))
"""


@pytest.mark.slow
def test_default_fits_the_segresnet_budget_at_128():
    """Both outputs within a BraTS SegResNet's CPU time and 0.8x its peak memory (fresh processes)."""
    result = {}
    for name in ("segresnet", "ours"):
        run = subprocess.run(
            [sys.executable, "-c", _MEASURE, name],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            check=True,
            timeout=300,
        )
        result[name] = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["ours"]["peak_kb"] <= 0.8 * result["segresnet"]["peak_kb"], result
    assert result["ours"]["cpu_s"] <= result["segresnet"]["cpu_s"], result


def test_branch_view_torch_export_matches_eager():
    net = tiny().eval()
    view = BranchView(net, "synth").eval()
    x = torch.randn(1, 3, 16, 16, 16)
    exported = torch.export.export(view, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), view(x), atol=1e-5, rtol=0)


def test_seg_heads_start_at_the_foreground_prior():
    import math

    from medmtl.networks import get_network

    torch.manual_seed(0)
    net = get_network("cpu", in_channels=3, synth_channels=1, deep_supervision=True, seg_prior=0.05).eval()
    convs = [m for m in net.seg_decoder.modules() if isinstance(m, torch.nn.Conv3d) and m.out_channels == 3]
    prior = math.log(0.05 / 0.95)
    assert convs and all(torch.allclose(c.bias, torch.full_like(c.bias, prior)) for c in convs)
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.randn(1, 3, 32, 32, 32))["seg"])
    # an untrained model marks little as tumour, not half the volume
    assert float((prob > 0.5).float().mean()) < 0.2
    with pytest.raises(ValueError, match="seg_prior"):
        get_network("cpu", in_channels=3, seg_prior=1.5)

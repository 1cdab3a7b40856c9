"""GPU benchmark: whole-case two-output inference with AMP, and training throughput at 128^3.

Runs where only torch (with CUDA) is installed, plus MONAI from a carried wheel (see ``gpu.sh``):
no nibabel, scipy or ignite; the volume is random (timings do not depend on voxel values) and the
bundle settings are read from ``bundles/brats_mtl/configs/train.json`` as plain JSON.

Measured, in one process, after warm-up passes, with ``torch.cuda.synchronize`` around each timing:

- inference on a 240 x 240 x 155 four-contrast case with the bundle's sliding-window settings for
  (a) medmtl (seg + synth, one pass), (b) the MONAI BraTS SegResNet, (c) (b) + a synthesis SegResNet:
  the network time with the input already on the device, and end to end (host to device, inference,
  outputs back to the host); peak allocated device memory;
- training steps per second of (a) (and (b) for reference) on 128^3 patches, batch 2 (the shipped
  bundle's ``num_samples`` 2 x ``batch_size`` 1), with the real losses and AMP.

Targets: (a) a whole case, both outputs, under 1 s; training over 5 steps/s.

    bash benchmarks/gpu.sh                          # on the GPU machine
    python benchmarks/gpu.py --device cpu --smoke   # dry run of every code path on a CPU

Prints one JSON object and writes it to ``$OUT/gpu.json`` when ``OUT`` is set (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRAIN_JSON = REPO / "bundles" / "brats_mtl" / "configs" / "train.json"
INFER_JSON = REPO / "bundles" / "brats_mtl" / "configs" / "inference.json"
from common import build_models  # noqa: E402  (benchmarks/ is the script's folder)

TARGET_INFER_S = 1.0
TARGET_STEPS_PER_S = 5.0


def literal(config: dict[str, Any], key: str) -> Any:
    """A plain value of a bundle config (expressions need MONAI's parser and its imports)."""
    value = config[key]
    if isinstance(value, str) and value.startswith(("$", "@")):
        raise ValueError(f"{TRAIN_JSON}: {key} is an expression ({value!r}); this script reads plain values")
    return value


def bundle_settings() -> dict[str, Any]:
    """Network preset, contrasts and sliding-window settings of the shipped bundle."""
    train = json.loads(TRAIN_JSON.read_text())
    infer = json.loads(INFER_JSON.read_text())
    keys = ("network_preset", "network_kwargs", "input_contrasts", "target_contrasts", "val_roi_size")
    settings = {k: literal(train, k) for k in keys}
    settings.update(
        {"learning_rate": literal(train, "learning_rate"), "weight_decay": literal(train, "weight_decay")}
    )
    settings["sw"] = {
        "sw_batch_size": infer["sw_batch_size"],
        "overlap": infer["overlap"],
        "mode": "gaussian",
    }
    return settings


def build(name: str, settings: dict[str, Any], roi: tuple[int, ...]) -> tuple[list, dict[str, Any]]:
    """Networks (random weights) with the channels each reads, and sliding-window kwargs with ``roi``."""
    models = build_models(name, settings)
    return models["nets"], {**models["sw"], "roi_size": roi}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def autocast(device: torch.device, amp: str) -> Any:
    if amp == "none":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def named_outputs(outs: list[Any]) -> dict[str, torch.Tensor]:
    """``{"seg", "synth"}`` from a set-up's outputs (one dict, or one tensor per network)."""
    if len(outs) == 1 and isinstance(outs[0], dict):
        return dict(outs[0])
    return dict(zip(("seg", "synth"), outs))


def bench_inference(
    name: str, args: argparse.Namespace, settings: dict[str, Any], device: torch.device
) -> dict:
    """Median network and end-to-end times of one set-up on the whole volume."""
    from monai.inferers import SlidingWindowInferer

    default_roi = settings["val_roi_size"] if name == "medmtl" else (240, 240, 160)
    nets, sw = build(name, settings, tuple(args.roi or default_roi))
    nets = [(net.to(device).eval(), idx) for net, idx in nets]
    if args.compile:
        nets = [(torch.compile(net), idx) for net, idx in nets]
    inferer = SlidingWindowInferer(**sw)
    gen = torch.Generator().manual_seed(0)
    host = torch.randn(1, 4, *args.shape, generator=gen)
    if device.type == "cuda":
        host = host.pin_memory()

    def network_pass(x: torch.Tensor) -> list[Any]:
        with torch.inference_mode(), autocast(device, args.amp):
            return [inferer(x[:, idx], net) for net, idx in nets]

    reset_memory(device)
    on_device = host.to(device)
    for _ in range(args.warmup):
        network_pass(on_device)
    sync(device)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        outs = network_pass(on_device)
        sync(device)
        times.append(time.perf_counter() - start)
    end_to_end = []
    for _ in range(max(1, args.reps // 2)):
        start = time.perf_counter()
        outs = network_pass(host.to(device, non_blocking=True))
        # the outputs go back to the host as float32, where the writers take them
        on_host = {k: v.float().cpu() for k, v in named_outputs(outs).items()}
        end_to_end.append(time.perf_counter() - start)
    shapes = {k: list(v.shape) for k, v in on_host.items()}
    return {
        "median_s": round(statistics.median(times), 4),
        "times_s": [round(t, 4) for t in times],
        "end_to_end_median_s": round(statistics.median(end_to_end), 4),
        "peak_memory_gib": peak_memory_gib(device),
        "outputs": shapes,
        "sliding_window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sw.items()},
    }


def bench_training(
    name: str, args: argparse.Namespace, settings: dict[str, Any], device: torch.device
) -> dict:
    """Training steps per second of one set-up on random patches with its real losses."""
    from monai.losses import DiceLoss

    from medmtl.losses import MultiTaskLoss

    nets, _ = build(name, settings, tuple(settings["val_roi_size"]))
    net, idx = nets[0]
    net = net.to(device).train()
    model = torch.compile(net) if args.compile else net
    size = (args.patch,) * 3
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.train_batch, 4, *size, generator=gen)[:, idx].contiguous().to(device)
    regions = (torch.rand(args.train_batch, 3, *size, generator=gen) > 0.9).float().to(device)
    synth = torch.randn(args.train_batch, 1, *size, generator=gen).to(device)
    brain = torch.ones(args.train_batch, 1, *size, device=device)
    if name == "medmtl":
        # train.json's loss: MultiTaskLoss(l1=1 (a target contrast is set), l2=1, weighting="fixed")
        loss = MultiTaskLoss(l1=1.0, l2=1.0, weighting="fixed").to(device)
        params = list(net.parameters()) + list(loss.parameters())
        opt = torch.optim.AdamW(params, lr=settings["learning_rate"], weight_decay=settings["weight_decay"])

        def compute() -> torch.Tensor:
            return loss(model(x), {"seg": regions, "synth": synth, "brain_mask": brain})
    else:
        dice = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5)

        def compute() -> torch.Tensor:
            return dice(model(x), regions)

    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            value = compute()
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        return value

    reset_memory(device)
    for _ in range(args.train_warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        last = step()
    sync(device)
    elapsed = time.perf_counter() - start
    if not bool(torch.isfinite(last)):
        raise RuntimeError(f"{name}: non-finite training loss")
    return {
        "steps_per_s": round(args.train_steps / elapsed, 3),
        "step_s": round(elapsed / args.train_steps, 4),
        "steps": args.train_steps,
        "warmup_steps": args.train_warmup,
        "batch": args.train_batch,
        "patch": list(size),
        "peak_memory_gib": peak_memory_gib(device),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16", help="autocast dtype")
    parser.add_argument("--reps", type=int, default=5, help="timed inference passes per set-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed inference passes first")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--train-warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch (default 2)")
    parser.add_argument("--patch", type=int, default=128, help="training patch edge")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], help="volume size")
    parser.add_argument("--roi", type=int, nargs=3, help="sliding-window ROI (default: the bundle's)")
    parser.add_argument("--models", nargs="+", default=["medmtl", "monai", "monai+synth"], help="set-ups")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and counts: a dry run of the code")
    parser.add_argument("--out", type=Path, help="JSON output (default $OUT/gpu.json when OUT is set)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.roi, args.patch = [48, 40, 36], [48, 48, 48], 32
        args.reps, args.warmup, args.train_steps, args.train_warmup = 2, 1, 2, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("CUDA is not available; use --device cpu for a dry run")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import monai

    settings = bundle_settings()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "monai": monai.__version__,
        "amp": args.amp,
        "compile": args.compile,
        "smoke": args.smoke,
        "volume": list(args.shape),
        "inference": {},
        "train": {},
    }
    for name in args.models:
        result["inference"][name] = bench_inference(name, args, settings, device)
        print(f"infer {name}: {result['inference'][name]['median_s']} s", file=sys.stderr)
    for name in [m for m in args.models if m != "monai+synth"]:
        result["train"][name] = bench_training(name, args, settings, device)
        print(f"train {name}: {result['train'][name]['steps_per_s']} steps/s", file=sys.stderr)
    inf = result["inference"]
    ratios = {}
    for other, tag in (("monai", "b"), ("monai+synth", "c")):
        if "medmtl" in inf and other in inf:
            ratios[f"time_a_over_{tag}"] = round(inf["medmtl"]["median_s"] / inf[other]["median_s"], 3)
            if inf["medmtl"]["peak_memory_gib"] and inf[other]["peak_memory_gib"]:
                ratios[f"memory_a_over_{tag}"] = round(
                    inf["medmtl"]["peak_memory_gib"] / inf[other]["peak_memory_gib"], 3
                )
    result["ratios"] = ratios
    targets = {}
    if "medmtl" in inf:
        t = inf["medmtl"]["median_s"]
        targets["inference_a_under_1s"] = f"{'PASS' if t < TARGET_INFER_S else 'MISS'} ({t} s)"
    if "medmtl" in result["train"]:
        s = result["train"]["medmtl"]["steps_per_s"]
        targets["train_a_over_5_steps_per_s"] = (
            f"{'PASS' if s > TARGET_STEPS_PER_S else 'MISS'} ({s} steps/s)"
        )
    result["targets"] = targets
    result["total_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result)
    out = args.out or (Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else None)
    if out is not None:
        # medmtl.io needs nibabel, absent on the GPU machine: the same write-then-rename here
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

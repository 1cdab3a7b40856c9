"""CPU benchmark: medmtl's one-pass segmentation + synthesis against the MONAI BraTS bundle's network.

Set-ups (see ``benchmarks/common.py``): (a) ``medmtl``, the network the shipped bundle trains, both
outputs from one sliding-window pass; (b) ``monai``, the MONAI model-zoo BraTS SegResNet as its
inference config runs it (segmentation only); (c) ``monai+synth``, (b) followed by a second SegResNet
of the same size for the synthesised contrast.

Measured, each run in its own process and the set-ups interleaved (a b c a b c ...) so a change of
machine load hits all of them alike:

- whole-volume sliding-window inference on a 240 x 240 x 155 four-contrast case (a real BraTS case
  when the shared samples are present, else a phantom): wall time of the inferer call under
  ``torch.inference_mode``, the process's peak RSS, and the peak above the RSS after set-up;
- one training step (forward, the real losses, backward, optimiser step) on 128^3 patches.

    python benchmarks/inference.py                       # defaults: 3 rounds, all cores, 570 s budget
    python benchmarks/inference.py --reps 5 --threads 1 --train-batch 2 --budget 3000 --time-check

Writes ``benchmarks/results/inference_cpu.json`` and prints the medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    LABELS,
    MODELS,
    RESULTS,
    build_models,
    bundle_loss,
    bundle_settings,
    count_parameters,
    load_volume,
    machine_info,
    median,
    paired_ratios,
    proc_status,
    reset_peak_rss,
    run_child,
    self_peak_rss_mib,
    set_threads,
    summarise,
    verdicts,
)

SCRIPT = str(Path(__file__).resolve())
TARGETS = {"time_a_over_b": 1.0, "time_a_over_c": 0.6, "peak_rss_a_over_b": 0.8}


# ----------------------------------------------------------------------------------------------
# Children: one measurement per process


def child_infer(model: str, volume: str, threads: int) -> dict[str, Any]:
    """Time one whole-volume sliding-window inference of a set-up."""
    thread_info = set_threads(threads)
    import torch
    from monai.inferers import SlidingWindowInferer

    settings = bundle_settings()
    setup = build_models(model, settings)
    image = torch.from_numpy(np.load(volume))[None]
    inputs = [image[:, idx].contiguous() for _, idx in setup["nets"]]
    del image
    nets = [net.eval() for net, _ in setup["nets"]]
    inferer = SlidingWindowInferer(**setup["sw"])
    before = proc_status()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = [inferer(x, net) for net, x in zip(nets, inputs)]
    elapsed = time.perf_counter() - start
    after = proc_status()
    shapes: dict[str, list[int]] = {}
    for i, out in enumerate(outputs):
        parts = out if isinstance(out, dict) else {("seg" if i == 0 else "synth"): out}
        for key, value in parts.items():
            if not bool(torch.isfinite(value).all()):
                raise RuntimeError(f"{model}: non-finite {key} output")
            shapes[key] = list(value.shape)
    return {
        "kind": "infer",
        "model": model,
        "time_s": round(elapsed, 3),
        "setup_rss_mib": round(before["VmRSS"], 1),
        "phase_peak_rss_mib": round(after["VmHWM"], 1) if reset_ok else None,
        "peak_above_setup_mib": round(after["VmHWM"] - before["VmRSS"], 1) if reset_ok else None,
        "self_peak_rss_mib": round(self_peak_rss_mib(), 1),
        "outputs": shapes,
        "input_shape": list(inputs[0].shape),
        "sliding_window": {k: (list(v) if isinstance(v, tuple) else v) for k, v in setup["sw"].items()},
        "parameters": count_parameters(setup),
        "threads": thread_info,
    }


def child_train(model: str, threads: int, batch: int, patch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Time training steps of a set-up on random ``patch``^3 patches with the set-up's real losses."""
    thread_info = set_threads(threads)
    import torch
    from monai.losses import DiceLoss

    from medmtl.training import trainable_parameters

    settings = bundle_settings()
    setup = build_models(model, settings)
    gen = torch.Generator().manual_seed(0)
    size = (patch,) * 3
    image = torch.randn(batch, 4, *size, generator=gen)
    regions = (torch.rand(batch, 3, *size, generator=gen) > 0.9).float()
    synth_target = torch.randn(batch, 1, *size, generator=gen)
    brain = torch.ones(batch, 1, *size)
    losses: list[Any] = []
    if model == "medmtl":
        net, idx = setup["nets"][0]
        loss = bundle_loss()
        opt = torch.optim.AdamW(
            trainable_parameters(net, loss),
            lr=settings["learning_rate"],
            weight_decay=settings["weight_decay"],
        )
        x = image[:, idx].contiguous()
        target = {"seg": regions, "synth": synth_target, "brain_mask": brain}
        plan = [(net, opt, lambda out: loss(out, target), x)]
    else:
        # the MONAI BraTS bundle's training loss and optimiser; L1 for the separate synthesis network
        dice = DiceLoss(smooth_nr=0, smooth_dr=1e-5, squared_pred=True, to_onehot_y=False, sigmoid=True)
        seg_net, seg_idx = setup["nets"][0]
        seg_opt = torch.optim.Adam(seg_net.parameters(), lr=1e-4, weight_decay=1e-5)
        plan = [(seg_net, seg_opt, lambda out: dice(out, regions), image[:, seg_idx].contiguous())]
        if len(setup["nets"]) > 1:
            synth_net, synth_idx = setup["nets"][1]
            l1 = torch.nn.L1Loss()
            synth_opt = torch.optim.Adam(synth_net.parameters(), lr=1e-4, weight_decay=1e-5)
            plan.append(
                (synth_net, synth_opt, lambda out: l1(out, synth_target), image[:, synth_idx].contiguous())
            )
    del image
    for net, *_ in plan:
        net.train()

    def step() -> None:
        for net, opt, loss_fn, x in plan:
            opt.zero_grad(set_to_none=True)
            value = loss_fn(net(x))
            value.backward()
            opt.step()
            losses.append(float(value.detach()))

    for _ in range(warmup):
        step()
    before = proc_status()
    reset_ok = reset_peak_rss()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    after = proc_status()
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"{model}: non-finite training loss {losses}")
    return {
        "kind": "train",
        "model": model,
        "time_s": round(median(times), 3),
        "step_times_s": [round(t, 3) for t in times],
        "batch": batch,
        "patch": list(size),
        "warmup_steps": warmup,
        "setup_rss_mib": round(before["VmRSS"], 1),
        "phase_peak_rss_mib": round(after["VmHWM"], 1) if reset_ok else None,
        "peak_above_setup_mib": round(after["VmHWM"] - before["VmRSS"], 1) if reset_ok else None,
        "self_peak_rss_mib": round(self_peak_rss_mib(), 1),
        "parameters": count_parameters(setup),
        "threads": thread_info,
    }


# ----------------------------------------------------------------------------------------------
# Parent: interleaved runs, summary, ratios


def ratios(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Time and memory ratios of (a) to (b) and (c): ratio of medians and median of paired ratios."""
    out: dict[str, Any] = {}
    for other, tag in (("monai", "b"), ("monai+synth", "c")):
        if "medmtl" not in summary or other not in summary:
            continue
        for key, name in (
            ("time_s", "time"),
            ("process_peak_rss_mib", "peak_rss"),
            ("peak_above_setup_mib", "peak_above_setup"),
        ):
            if key in summary["medmtl"] and key in summary[other]:
                out[f"{name}_a_over_{tag}"] = round(summary["medmtl"][key] / summary[other][key], 3)
                paired = paired_ratios(runs, "medmtl", other, key)
                if paired:
                    out[f"{name}_a_over_{tag}_paired_median"] = round(median(paired), 3)
                    out[f"{name}_a_over_{tag}_paired"] = [round(p, 3) for p in paired]
    return out


def whole_process_check(volume: str, threads: int) -> dict[str, Any]:
    """Independent check of the inference time ratio a/b: ``/usr/bin/time -v`` of two whole processes.

    The whole-process wall time includes interpreter start, imports, loading the volume and building
    the model, so its ratio is pulled towards 1 by that fixed cost; it bounds the in-process ratio.
    """
    if not Path("/usr/bin/time").is_file():
        return {"skipped": "/usr/bin/time not found"}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out: dict[str, Any] = {}
    for model in ("medmtl", "monai"):
        cmd = ["/usr/bin/time", "-v", sys.executable, SCRIPT, "--child", "infer", "--model", model]
        cmd += ["--volume", volume, "--threads", str(threads)]
        proc = subprocess.run(
            cmd, capture_output=True, encoding="utf-8", errors="replace", env=env, check=True
        )
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        parts = [float(p) for p in wall.group(1).split(":")] if wall else []
        seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
        inner = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
        out[model] = {
            "wall_s": round(seconds, 2),
            "max_rss_mib": round(int(rss.group(1)) / 1024, 1) if rss else None,
            "in_process_time_s": inner["time_s"],
        }
    out["wall_a_over_b"] = round(out["medmtl"]["wall_s"] / out["monai"]["wall_s"], 3)
    out["in_process_a_over_b"] = round(
        out["medmtl"]["in_process_time_s"] / out["monai"]["in_process_time_s"], 3
    )
    if out["medmtl"]["max_rss_mib"] and out["monai"]["max_rss_mib"]:
        out["max_rss_a_over_b"] = round(out["medmtl"]["max_rss_mib"] / out["monai"]["max_rss_mib"], 3)
    out["command"] = (
        "/usr/bin/time -v python benchmarks/inference.py --child infer --model {medmtl,monai} ..."
    )
    return out


def print_table(title: str, summary: dict[str, dict[str, float]], r: dict[str, Any]) -> None:
    """Print medians and ratios."""
    print(f"\n{title}")
    print(f"{'set-up':<16}{'time s (min-max)':>24}{'peak RSS MiB':>16}{'above set-up MiB':>20}")
    for model, s in summary.items():
        rng = f"{s['time_s']:.2f} ({s['time_s_min']:.2f}-{s['time_s_max']:.2f})"
        print(
            f"{LABELS[model] + ' ' + model:<16}{rng:>24}{s.get('process_peak_rss_mib', float('nan')):>16.0f}"
            f"{s.get('peak_above_setup_mib', float('nan')):>20.0f}"
        )
    for k, v in r.items():
        if not k.endswith("_paired"):
            print(f"  {k} = {v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each set-up (default 3)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads per process (default: all cores)"
    )
    parser.add_argument("--train-batch", type=int, default=1, help="training batch size (default 1)")
    parser.add_argument("--patch", type=int, default=128, help="training patch edge (default 128)")
    parser.add_argument("--train-steps", type=int, default=1, help="timed training steps per process")
    parser.add_argument("--train-warmup", type=int, default=0, help="untimed training steps first")
    parser.add_argument("--skip-infer", action="store_true", help="only the training step")
    parser.add_argument("--skip-train", action="store_true", help="only inference")
    parser.add_argument(
        "--budget", type=float, default=570, help="start no round that would end past this many seconds"
    )
    parser.add_argument(
        "--time-check", action="store_true", help="also /usr/bin/time -v whole processes a, b"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "inference_cpu.json", help="results JSON")
    parser.add_argument("--child", choices=["infer", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "infer":
        print(json.dumps(child_infer(args.model, args.volume, args.threads)))
        return 0
    if args.child == "train":
        result = child_train(
            args.model, args.threads, args.train_batch, args.patch, args.train_steps, args.train_warmup
        )
        print(json.dumps(result))
        return 0

    from medmtl.io import write_json

    started = time.perf_counter()
    info = machine_info()
    settings = bundle_settings()
    image, source = load_volume()
    print(f"volume: {source} {list(image.shape)}; threads {args.threads}; reps {args.reps}", file=sys.stderr)
    results: dict[str, Any] = {
        "benchmark": "inference_cpu",
        "command": "python benchmarks/inference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "threads": args.threads,
        "volume": {"source": source, "shape": list(image.shape)},
        "bundle": {
            k: settings[k] for k in ("network_preset", "input_contrasts", "target_contrasts", "val_roi_size")
        },
        "setups": {
            "a": "medmtl: shipped bundle network, seg + synth from one sliding-window pass",
            "b": "monai: MONAI BraTS bundle SegResNet (16 filters, 1-2-2-4 / 1-1-1), seg only",
            "c": "monai+synth: (b) then a second SegResNet of the same size with out_channels=1",
        },
        "targets": TARGETS,
    }
    kinds = [k for k, skip in (("infer", args.skip_infer), ("train", args.skip_train)) if not skip]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    round_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="medmtl_bench_") as tmp:
        volume = str(Path(tmp) / "volume.npy")
        np.save(volume, image)
        del image
        # One round = every kind for a, b, c back to back; rounds stop early when the next would end
        # past the time budget (the first always runs), so a loaded machine still finishes in time.
        for rep in range(args.reps):
            elapsed = time.perf_counter() - started
            if rep > 0 and elapsed + max(round_times) > args.budget:
                print(
                    f"stopping after {rep} round(s): the next would end past --budget {args.budget:.0f} s",
                    file=sys.stderr,
                )
                break
            round_start = time.perf_counter()
            for kind in kinds:
                for model in MODELS:
                    cmd = [SCRIPT, "--child", kind, "--model", model, "--threads", str(args.threads)]
                    if kind == "infer":
                        cmd += ["--volume", volume]
                    else:
                        cmd += ["--train-batch", str(args.train_batch), "--patch", str(args.patch)]
                        cmd += [
                            "--train-steps",
                            str(args.train_steps),
                            "--train-warmup",
                            str(args.train_warmup),
                        ]
                    r = run_child(cmd, args.threads)
                    r["rep"] = rep
                    runs[kind].append(r)
                    print(
                        f"{kind} rep {rep} {model}: {r['time_s']:.2f} s, "
                        f"peak {r['process_peak_rss_mib']:.0f} MiB",
                        file=sys.stderr,
                    )
            round_times.append(time.perf_counter() - round_start)
        if args.time_check:
            results["whole_process_check"] = whole_process_check(volume, args.threads)
    results["repetitions"] = {"requested": args.reps, "completed": len(round_times), "budget_s": args.budget}
    if "infer" in runs:
        keys = ("time_s", "process_peak_rss_mib", "peak_above_setup_mib", "process_wall_s")
        summary = summarise(runs["infer"], keys)
        rat = ratios(runs["infer"], summary)
        results["inference"] = {
            "runs": runs["infer"],
            "summary": summary,
            "ratios": rat,
            "verdicts": verdicts(rat, TARGETS),
        }
        print_table("Whole-volume inference (240x240x155)", summary, rat)
    if "train" in runs:
        summary = summarise(runs["train"], ("time_s", "process_peak_rss_mib", "peak_above_setup_mib"))
        rat = ratios(runs["train"], summary)
        results["train_step"] = {
            "batch": args.train_batch,
            "patch": [args.patch] * 3,
            "losses": {
                "a": "train.json loss: MultiTaskLoss (Dice+BCE on regions, L1+SSIM in the brain), AdamW",
                "b": "MONAI BraTS bundle: DiceLoss(sigmoid, squared_pred, smooth_nr=0, smooth_dr=1e-5), Adam",
                "c": "(b) + L1Loss for the synthesis SegResNet, its own Adam",
            },
            "runs": runs["train"],
            "summary": summary,
            "ratios": rat,
        }
        print_table(f"Training step ({args.patch}^3, batch {args.train_batch})", summary, rat)
    if "whole_process_check" in results:
        print("\nwhole-process check:", json.dumps(results["whole_process_check"]))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out, results)
    print(f"\nwrote {args.out} ({results['total_s']:.0f} s)")
    if "inference" in results:
        for k, v in results["inference"]["verdicts"].items():
            print(f"target {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

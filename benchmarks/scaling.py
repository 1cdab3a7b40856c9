"""How medmtl's whole-volume inference (both outputs) grows with the number of voxels, on CPU.

The shipped network (``train.json`` preset) runs on one case resampled to each size, the whole volume
in one window (``roi_size`` = volume size), each run in its own process, sizes interleaved. The cost
model ``time = c * voxels**k`` is fitted on the medians (least squares in log-log), likewise for the
peak memory above set-up. With the bundle's own ROI (240 x 240 x 160) a smaller volume is padded to
the ROI and costs as much as a full one (``--roi shipped`` shows it).

    python benchmarks/scaling.py                       # 96^3, 160^3, 240x240x155; 3 repetitions
    python benchmarks/scaling.py --sizes 64 64 64 128 128 128 --reps 2

Writes ``benchmarks/results/scaling_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    RESULTS,
    build_models,
    bundle_settings,
    load_volume,
    machine_info,
    median,
    proc_status,
    reset_peak_rss,
    run_child,
    self_peak_rss_mib,
    set_threads,
)

SCRIPT = str(Path(__file__).resolve())
DEFAULT_SIZES = [96, 96, 96, 160, 160, 160, 240, 240, 155]


def child(volume: str, threads: int, roi: str) -> dict[str, Any]:
    """Time one whole-volume two-output inference of the shipped network."""
    thread_info = set_threads(threads)
    import torch
    from monai.inferers import SlidingWindowInferer

    settings = bundle_settings()
    setup = build_models("medmtl", settings)
    net, idx = setup["nets"][0]
    net.eval()
    image = torch.from_numpy(np.load(volume))[None][:, idx].contiguous()
    sw = dict(setup["sw"])
    if roi == "volume":
        sw["roi_size"] = tuple(image.shape[2:])
    inferer = SlidingWindowInferer(**sw)
    before = proc_status()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        out = inferer(image, net)
    elapsed = time.perf_counter() - start
    after = proc_status()
    assert out["seg"].shape[2:] == image.shape[2:] and out["synth"].shape[2:] == image.shape[2:]
    return {
        "shape": list(image.shape[2:]),
        "voxels": int(np.prod(image.shape[2:])),
        "roi_size": list(sw["roi_size"]),
        "time_s": round(elapsed, 3),
        "setup_rss_mib": round(before["VmRSS"], 1),
        "peak_above_setup_mib": round(after["VmHWM"] - before["VmRSS"], 1) if reset_ok else None,
        "self_peak_rss_mib": round(self_peak_rss_mib(), 1),
        "threads": thread_info,
    }


def fit_exponent(voxels: list[float], values: list[float]) -> dict[str, float]:
    """Least-squares fit of ``value = c * voxels**k`` in log-log; returns ``k`` and ``c``."""
    k, log_c = np.polyfit(np.log(voxels), np.log(values), 1)
    return {"exponent": round(float(k), 3), "coefficient": float(np.exp(log_c))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="X Y Z triples")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per size (default 3)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads per process (default: all cores)"
    )
    parser.add_argument(
        "--roi",
        choices=["volume", "shipped"],
        default="volume",
        help="window: whole volume or the bundle's ROI",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling_cpu.json", help="results JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.roi)))
        return 0
    if len(args.sizes) % 3:
        parser.error(f"--sizes takes X Y Z triples, found {len(args.sizes)} numbers")
    sizes = [tuple(args.sizes[i : i + 3]) for i in range(0, len(args.sizes), 3)]

    import torch
    from monai.transforms import Resize

    from medmtl.io import write_json

    started = time.perf_counter()
    image, source = load_volume()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medmtl_scaling_") as tmp:
        files = {}
        for size in sizes:
            resized = (
                image
                if tuple(image.shape[1:]) == size
                else Resize(size, mode="trilinear")(torch.from_numpy(image))
            )
            files[size] = str(Path(tmp) / f"{'x'.join(map(str, size))}.npy")
            np.save(files[size], np.asarray(resized, dtype=np.float32))
        for rep in range(args.reps):
            for size in sizes:
                r = run_child(
                    [SCRIPT, "--child", files[size], "--threads", str(args.threads), "--roi", args.roi],
                    args.threads,
                )
                r["rep"] = rep
                runs.append(r)
                print(
                    f"rep {rep} {size}: {r['time_s']:.2f} s, +{r['peak_above_setup_mib']} MiB",
                    file=sys.stderr,
                )
    table = []
    for size in sizes:
        mine = [r for r in runs if tuple(r["shape"]) == size]
        table.append(
            {
                "shape": list(size),
                "voxels": mine[0]["voxels"],
                "time_s": round(median([r["time_s"] for r in mine]), 3),
                "peak_above_setup_mib": round(median([r["peak_above_setup_mib"] for r in mine]), 1),
                "process_peak_rss_mib": round(median([r["process_peak_rss_mib"] for r in mine]), 1),
            }
        )
    voxels = [t["voxels"] for t in table]
    results = {
        "benchmark": "scaling_cpu",
        "command": "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**machine_info(), "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "threads": args.threads,
        "source": source,
        "roi": args.roi,
        "table": table,
        "fit_time": fit_exponent(voxels, [t["time_s"] for t in table]),
        "fit_peak_above_setup": fit_exponent(voxels, [t["peak_above_setup_mib"] for t in table]),
        "us_per_voxel": [round(1e6 * t["time_s"] / t["voxels"], 3) for t in table],
        "bytes_per_voxel": [round(t["peak_above_setup_mib"] * 2**20 / t["voxels"], 1) for t in table],
        "runs": runs,
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, results)
    print(f"\n{'shape':<18}{'voxels':>12}{'time s':>10}{'us/voxel':>10}{'+MiB':>8}{'B/voxel':>9}")
    for t, us, bpv in zip(table, results["us_per_voxel"], results["bytes_per_voxel"]):
        shape = "x".join(map(str, t["shape"]))
        print(
            f"{shape:<18}{t['voxels']:>12}{t['time_s']:>10.2f}{us:>10.2f}{t['peak_above_setup_mib']:>8.0f}{bpv:>9.0f}"
        )
    print(
        f"time ~ voxels^{results['fit_time']['exponent']}, "
        f"memory ~ voxels^{results['fit_peak_above_setup']['exponent']}"
    )
    print(f"wrote {args.out} ({results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

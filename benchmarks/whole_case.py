"""Whole-case CPU benchmark: ``medmtl infer`` on one real case against the MONAI BraTS bundle's inference.

Compared, each run a fresh process measured whole (interpreter start, imports, loading the four
volumes, building and loading the model, sliding-window inference, post-processing, writing NIfTI):

- ``medmtl``: the real command line with the shipped bundle and its defaults,
  ``python -m medmtl.cli infer CASE --out DIR`` (``--medmtl-arg`` adds options, to time one);
- ``monai``: the MONAI model-zoo bundle ``brats_mri_segmentation`` run the way its ``inference.json``
  runs a case, rebuilt here as a config dict (:func:`monai_bundle_config`) and run with
  ``monai.bundle.ConfigParser``: ``LoadImaged`` of the four contrasts (stacked channel-first),
  ``NormalizeIntensityd(nonzero, channel_wise)``, ``SegResNet`` (16 filters, blocks 1-2-2-4 / 1-1-1)
  through a ``SlidingWindowInferer`` (ROI 240 x 240 x 160, batch 1, overlap 0.5), ``Activationsd``
  sigmoid, ``Invertd``, ``AsDiscreted`` threshold 0.5, regions to a label map, ``SaveImaged`` uint8.
  The zoo bundle has no orientation or resampling step (BraTS cases are 1 mm already) and neither
  has this. Its weights are random (nothing is downloaded; timing does not depend on weight
  values), saved to a temporary ``models/model.pt`` that the bundle's ``CheckpointLoader`` loads.

Both run on the same case with the same torch threads (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``),
interleaved (medmtl, monai, medmtl, monai, ...) so a change of machine load hits both alike. Per run:
wall time of the whole process, its peak RSS from the kernel (``os.wait4``'s ``ru_maxrss``: the
largest single process of the child's tree, so DataLoader workers are not added up), and the peak of
the process tree's summed RSS, polled from ``/proc`` (an upper bound: the pages forked workers share
with their parent count once per process).

    python benchmarks/whole_case.py                 # 3 rounds, 2 threads, the shared BraTS 2023 case
    python benchmarks/whole_case.py --rounds 5 --threads 2 --case CASE_FOLDER --out OUT.json

Writes ``benchmarks/results/whole_case_cpu.json`` and prints the medians and ratios (medmtl / monai).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    REPO,
    RESULTS,
    brats_dir,
    machine_info,
    median,
    paired_ratios,
    set_threads,
    summarise,
    verdicts,
)

SCRIPT = str(Path(__file__).resolve())
#: set-ups, in the order they run within a round
SETUPS = ("medmtl", "monai")
#: targets on the ratio of medians, medmtl / monai
TARGETS = {"time": 0.5, "peak_rss": 0.3}
#: the zoo bundle's order of the four contrasts in its ``image`` list (t1ce, t1, t2, flair)
ZOO_CONTRAST_ORDER = ("t1c", "t1n", "t2w", "t2f")
#: the zoo bundle's DataLoader workers (``inference.json``)
ZOO_WORKERS = 4
#: seconds between two polls of the process tree's memory, and between two scans for its processes
POLL_S = 0.05
RESCAN_S = 0.5
#: KiB per memory page (``statm`` counts pages)
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ----------------------------------------------------------------------------------------------
# The MONAI model-zoo BraTS bundle, as its inference.json runs a case


def monai_bundle_config(images: list[str], bundle_root: str, output_dir: str) -> dict[str, Any]:
    """The ``brats_mri_segmentation`` bundle's ``inference.json`` for one case, as a config dict.

    As the zoo's file, except: the datalist is the one case given (the zoo reads its ``testing``
    section from a JSON file), and ``amp`` follows CUDA (the zoo's ``true`` is a no-op on a CPU).

    Args:
        images: the case's four contrast files, in the zoo's order (t1c, t1n, t2w, t2f).
        bundle_root: folder holding ``models/model.pt``.
        output_dir: where ``SaveImaged`` writes.

    Returns:
        A dict for ``monai.bundle.ConfigParser``; ``initialize`` then ``run`` do the work.
    """
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": bundle_root,
        "output_dir": output_dir,
        "test_datalist": [{"image": list(images)}],
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": "$torch.cuda.is_available()",
        "network_def": {
            "_target_": "SegResNet",
            "blocks_down": [1, 2, 2, 4],
            "blocks_up": [1, 1, 1],
            "init_filters": 16,
            "in_channels": 4,
            "out_channels": 3,
            "dropout_prob": 0.2,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "image_only": False},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@test_datalist", "transform": "@preprocessing"},
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": True,
            "num_workers": ZOO_WORKERS,
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [240, 240, 160],
            "sw_batch_size": 1,
            "overlap": 0.5,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "meta_keys": "pred_meta_dict",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {
                    "_target_": "Lambdad",
                    "keys": "pred",
                    "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, "
                    "torch.where(x[[1]] > 0, 2, 0)))",
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "meta_keys": "pred_meta_dict",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "uint8",
                    "resample": False,
                    "squeeze_end_dims": True,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@amp",
        },
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }


def zoo_images(case: Path) -> list[str]:
    """The case's contrast files in the zoo bundle's order (t1c, t1n, t2w, t2f).

    Args:
        case: a case folder in a layout medmtl reads.

    Returns:
        Four absolute file paths.

    Raises:
        ValueError: when the case lacks one of the four contrasts.
    """
    from medmtl.inference.cases import case_entry

    entry = case_entry(str(case))
    missing = [c for c in ZOO_CONTRAST_ORDER if not entry.get(c)]
    if missing:
        raise ValueError(f"case {case} lacks {missing}; the MONAI bundle needs all four contrasts")
    return [str(entry[c]) for c in ZOO_CONTRAST_ORDER]


def write_random_weights(bundle_root: Path, seed: int = 0) -> int:
    """Save the zoo network's random weights (seed ``seed``) to ``bundle_root/models/model.pt``.

    Args:
        bundle_root: the stand-in bundle folder.
        seed: torch seed of the initialisation.

    Returns:
        The number of parameters.
    """
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(seed)
    parser = ConfigParser(monai_bundle_config([], str(bundle_root), str(bundle_root)))
    net = parser.get_parsed_content("network_def")
    (bundle_root / "models").mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), bundle_root / "models" / "model.pt")
    return sum(p.numel() for p in net.parameters())


def child_monai(images: list[str], bundle_root: str, output_dir: str, threads: int) -> dict[str, Any]:
    """One whole case through the zoo bundle's inference config, in this (child) process.

    Args:
        images: the four contrast files, zoo order.
        bundle_root: folder holding ``models/model.pt``.
        output_dir: where the label map is written.
        threads: torch intra-op threads.

    Returns:
        In-process phase times (imports, config parsing, the evaluator run) and the threads in effect.
    """
    start = time.perf_counter()
    thread_info = set_threads(threads)
    from monai.bundle import ConfigParser

    imported = time.perf_counter()
    parser = ConfigParser(monai_bundle_config(images, bundle_root, output_dir))
    parser.get_parsed_content("initialize")  # evaluating the list runs its expressions
    evaluator = parser.get_parsed_content("evaluator")
    parsed = time.perf_counter()
    evaluator.run()
    ran = time.perf_counter()
    return {
        "import_s": round(imported - start, 3),
        "build_s": round(parsed - imported, 3),
        "run_s": round(ran - parsed, 3),
        "threads": thread_info,
    }


# ----------------------------------------------------------------------------------------------
# Measuring a child process


def _proc_tree(root: int) -> list[int]:
    """``root`` and every live descendant (from ``/proc/*/stat``)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields start after the last ')'
        parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def _rss_kib(pid: int) -> int:
    """Current RSS of one process in KiB (``/proc/PID/statm``); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


class TreeMemoryPoller:
    """Polls a process tree's summed RSS in a thread; keeps the peak.

    Cheap on purpose (the poller shares the machine with what it measures): ``statm`` of the known
    processes every ``interval`` s, the list of processes rescanned every ``rescan`` s. PSS would
    count the pages forked workers share with their parent once, but reading it (``smaps_rollup``)
    costs tens of ms per torch process and would slow the runs down.

    Args:
        pid: the tree's root process.
        interval: seconds between polls.
        rescan: seconds between two scans for new descendants.
    """

    def __init__(self, pid: int, interval: float = POLL_S, rescan: float = RESCAN_S) -> None:
        self.pid = pid
        self.interval = interval
        self.rescan = rescan
        self.peak_rss_kib = 0
        self.max_processes = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        tree, scanned = [self.pid], 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - scanned >= self.rescan:
                tree, scanned = _proc_tree(self.pid), now
            usage = [_rss_kib(p) for p in tree]
            self.peak_rss_kib = max(self.peak_rss_kib, sum(usage))
            self.max_processes = max(self.max_processes, sum(1 for u in usage if u))
            self.polls += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemoryPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], threads: int, cwd: str | Path = REPO) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process; measure its wall time and memory.

    Args:
        cmd: the command (``sys.executable`` first).
        threads: exported as ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.
        cwd: its working folder.

    Returns:
        ``wall_s``; ``ru_maxrss_mib`` (``os.wait4``: the largest single process of the tree);
        ``tree_peak_rss_mib`` (polled sum over the tree); the processes seen at once; CPU times
        of the tree; the last line of JSON the child printed, if any.

    Raises:
        RuntimeError: when the child fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        with TreeMemoryPoller(proc.pid) as poller:
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return {
        "wall_s": round(wall, 2),
        "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
        "tree_peak_rss_mib": round(poller.peak_rss_kib / 1024, 1),
        "max_processes": poller.max_processes,
        "polls": poller.polls,
        "user_s": round(usage.ru_utime, 2),
        "sys_s": round(usage.ru_stime, 2),
        "child": json.loads(lines[-1]) if lines else None,
        "stdout_tail": stdout.strip().splitlines()[-3:],
    }


def outputs(folder: Path) -> list[dict[str, Any]]:
    """The files a run wrote (path relative to ``folder``, bytes, NIfTI shape and dtype)."""
    import nibabel as nib

    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        item: dict[str, Any] = {"file": str(path.relative_to(folder)), "bytes": path.stat().st_size}
        if path.name.endswith((".nii", ".nii.gz")):
            img = nib.load(str(path))
            item["shape"] = list(img.shape)
            item["dtype"] = str(img.get_data_dtype())
        found.append(item)
    return found


# ----------------------------------------------------------------------------------------------
# Parent: interleaved runs, summary, ratios

#: measured quantities summarised per set-up
KEYS = ("wall_s", "ru_maxrss_mib", "tree_peak_rss_mib", "user_s", "sys_s")


def ratios(runs: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    """medmtl / monai of time and memory: ratio of medians and the median of per-round ratios."""
    out: dict[str, Any] = {}
    if not all(s in summary for s in SETUPS):
        return out
    for key, name in (
        ("wall_s", "time"),
        ("ru_maxrss_mib", "peak_rss"),
        ("tree_peak_rss_mib", "tree_peak_rss"),
    ):
        out[name] = round(summary["medmtl"][key] / summary["monai"][key], 3)
        paired = [round(p, 3) for p in paired_ratios(runs, "medmtl", "monai", key)]
        out[f"{name}_paired"] = paired
        out[f"{name}_paired_median"] = round(median(paired), 3) if paired else None
    return out


def print_table(summary: dict[str, dict[str, float]], r: dict[str, Any], v: dict[str, str]) -> None:
    """Print the medians (min-max), the ratios medmtl / monai and the verdicts."""
    print(f"\n{'set-up':<16}{'wall s (min-max)':>22}{'peak RSS MiB':>15}{'tree RSS MiB':>15}{'CPU s':>10}")
    for setup, s in summary.items():
        rng = f"{s['wall_s']:.1f} ({s['wall_s_min']:.1f}-{s['wall_s_max']:.1f})"
        cpu = s["user_s"] + s["sys_s"]
        print(f"{setup:<16}{rng:>22}{s['ru_maxrss_mib']:>15.0f}{s['tree_peak_rss_mib']:>15.0f}{cpu:>10.1f}")
    if r:
        print(f"{'medmtl / monai':<16}{r['time']:>22.3f}{r['peak_rss']:>15.3f}{r['tree_peak_rss']:>15.3f}")
    for k, text in v.items():
        print(f"  target {k}: {text}")


def medmtl_source(root: Path) -> dict[str, Any]:
    """Which medmtl the ``medmtl`` runs import from ``root``, and the repository's git state.

    ``python -m medmtl.cli`` run with ``root`` as its working folder imports ``root/medmtl`` (the
    working folder comes first on ``sys.path``) and its shipped bundle ``root/bundles/brats_mtl``.

    Args:
        root: the folder the medmtl runs start in (the repository, or an export of one commit).

    Returns:
        ``root``, the imported package's file, and this repository's commit and changed files under
        ``medmtl/`` and ``bundles/``.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import medmtl; print(medmtl.__file__)"],
        cwd=root,
        capture_output=True,
        encoding="utf-8",
        check=True,
    )

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *a], capture_output=True, encoding="utf-8", check=False
        ).stdout.rstrip()

    return {
        "root": str(root),
        "imported": probe.stdout.strip(),
        "repo_head": git("rev-parse", "--short", "HEAD"),
        "repo_changed_files": git("status", "--porcelain", "--", "medmtl", "bundles").splitlines(),
    }


def default_case() -> Path:
    """The shared BraTS 2023 case (the first folder of ``<brats>/brats2023``)."""
    root = brats_dir() / "brats2023"
    cases = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not cases:
        raise FileNotFoundError(f"no BraTS 2023 case under {root}; give --case")
    return cases[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (medmtl, monai) (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process (default 2)")
    parser.add_argument("--case", type=Path, help="case folder (default: the shared BraTS 2023 case)")
    parser.add_argument("--out", type=Path, default=RESULTS / "whole_case_cpu.json", help="results JSON")
    parser.add_argument(
        "--medmtl-root",
        type=Path,
        default=REPO,
        help="folder the medmtl runs start in, whose medmtl/ and bundles/ they use (default: this "
        "repository; e.g. `git archive HEAD` unpacked elsewhere to time a commit, not a working tree)",
    )
    parser.add_argument(
        "--medmtl-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `medmtl infer` (repeat; e.g. --medmtl-arg=--sw-batch-size --medmtl-arg=2)",
    )
    parser.add_argument("--child", choices=["monai"], help=argparse.SUPPRESS)
    parser.add_argument("--images", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--bundle-root", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "monai":
        result = child_monai(args.images, args.bundle_root, args.output_dir, args.threads)
        print(json.dumps(result))
        return 0

    case = (args.case or default_case()).resolve()
    info = machine_info()
    load_start = info.pop("load_average")
    images = zoo_images(case)
    source = medmtl_source(args.medmtl_root.resolve())
    print(f"case {case}; threads {args.threads}; rounds {args.rounds}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medmtl_whole_case_") as tmp:
        bundle_root = Path(tmp) / "brats_mri_segmentation"
        zoo_parameters = write_random_weights(bundle_root)
        for rnd in range(args.rounds):
            for setup in SETUPS:
                out_dir = Path(tmp) / f"{setup}_{rnd}"
                if setup == "medmtl":
                    cmd = [sys.executable, "-m", "medmtl.cli", "infer", str(case), "--out", str(out_dir)]
                    cmd += args.medmtl_arg
                else:
                    cmd = [SCRIPT, "--child", "monai", "--threads", str(args.threads)]
                    cmd = [sys.executable, *cmd, "--images", *images]
                    cmd += ["--bundle-root", str(bundle_root), "--output-dir", str(out_dir)]
                load = [round(x, 2) for x in os.getloadavg()]
                r = run_measured(cmd, args.threads, cwd=source["root"] if setup == "medmtl" else REPO)
                r = {"model": setup, "rep": rnd, "load_average_before": load, **r}
                r["outputs"] = outputs(out_dir)
                if not any(o["file"].endswith("_seg.nii.gz") for o in r["outputs"]):
                    raise RuntimeError(f"{setup} wrote no segmentation: {r['outputs']}")
                runs.append(r)
                print(
                    f"round {rnd} {setup}: {r['wall_s']:.1f} s, peak RSS {r['ru_maxrss_mib']:.0f} MiB, "
                    f"tree RSS {r['tree_peak_rss_mib']:.0f} MiB ({r['max_processes']} processes)",
                    file=sys.stderr,
                )
    summary = summarise(runs, KEYS, SETUPS)
    rat = ratios(runs, summary)
    ver = verdicts(rat, TARGETS)
    results = {
        "benchmark": "whole_case_cpu",
        "command": "python benchmarks/whole_case.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**info, "load_average_start": [round(x, 2) for x in load_start]},
        "threads": args.threads,
        "case": {"folder": str(case), "images_zoo_order": images},
        "medmtl_source": source,
        "setups": {
            "medmtl": "python -m medmtl.cli infer CASE --out DIR "
            + (" ".join(args.medmtl_arg) + " " if args.medmtl_arg else "")
            + "(shipped bundle, defaults)",
            "monai": "MONAI model-zoo brats_mri_segmentation inference.json (random weights, "
            f"{zoo_parameters} parameters, {ZOO_WORKERS} DataLoader workers), monai.bundle.ConfigParser",
        },
        "measures": {
            "wall_s": "whole process, Popen to exit",
            "ru_maxrss_mib": "os.wait4 ru_maxrss: the largest single process of the child's tree",
            "tree_peak_rss_mib": f"peak of the tree's summed RSS, /proc polled every {POLL_S} s: an upper "
            "bound (pages forked DataLoader workers share with their parent count once per process)",
            "user_s_sys_s": "CPU time of the child and its waited-for descendants",
        },
        "targets": {"time": TARGETS["time"], "peak_rss": TARGETS["peak_rss"]},
        "runs": runs,
        "summary": summary,
        "ratios_medmtl_over_monai": rat,
        "verdicts": ver,
    }
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(summary, rat, ver)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

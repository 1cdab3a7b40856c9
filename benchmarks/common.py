"""Shared pieces of the CPU benchmarks: the test volume, the compared models, subprocess runs, memory.

The compared set-ups (random weights; the architectures and inference settings are what is timed):

- ``medmtl``: the network the shipped bundle trains (``bundles/brats_mtl/configs/train.json``: preset,
  input and target contrasts, validation ROI), both outputs from one sliding-window pass with the
  settings of the bundle's ``inference.json`` (``sw_batch_size`` 1, overlap 0.5, Gaussian blending);
- ``monai``: the MONAI model-zoo BraTS bundle (``brats_mri_segmentation``) as its inference config
  builds it: ``SegResNet(blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], init_filters=16,
  in_channels=4, out_channels=3, dropout_prob=0.2)``, ROI 240 x 240 x 160, ``sw_batch_size`` 1,
  overlap 0.5, constant blending;
- ``monai+synth``: ``monai`` followed by a second SegResNet of the same size with one output channel
  (fed the non-contrast inputs) for the synthesised contrast: two passes for two outputs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BUNDLE_CONFIGS = REPO / "bundles" / "brats_mtl" / "configs"
#: model keys in the order they are run within each repetition
MODELS = ("medmtl", "monai", "monai+synth")
LABELS = {"medmtl": "a", "monai": "b", "monai+synth": "c"}

#: The MONAI model-zoo BraTS bundle (brats_mri_segmentation) network and sliding-window settings.
MONAI_BRATS_NET = {
    "blocks_down": (1, 2, 2, 4),
    "blocks_up": (1, 1, 1),
    "init_filters": 16,
    "in_channels": 4,
    "out_channels": 3,
    "dropout_prob": 0.2,
}
MONAI_BRATS_SW = {"roi_size": (240, 240, 160), "sw_batch_size": 1, "overlap": 0.5, "mode": "constant"}


# ----------------------------------------------------------------------------------------------
# Data


def brats_dir() -> Path:
    """The shared real BraTS samples: ``MEDMTL_BRATS_DIR`` or ``<repo>/../shared/data/brats``."""
    env = os.environ.get("MEDMTL_BRATS_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "brats"


def load_volume(shape: Sequence[int] = (240, 240, 155)) -> tuple[np.ndarray, str]:
    """A 4-contrast volume (t1n, t1c, t2w, t2f), nonzero z-scored per channel, as inference sees it.

    A real BraTS 2023 case (240 x 240 x 155) when the shared samples are there and ``shape`` is that
    size; a phantom of ``shape`` otherwise. Voxel values do not change the timings; a real case makes
    the foreground realistic for the record.

    Args:
        shape: grid size.

    Returns:
        ``(float32 array (4, *shape), description of the source)``.
    """
    from monai.transforms import NormalizeIntensity

    from medmtl.contrasts import CONTRASTS

    root = brats_dir() / "brats2023"
    if tuple(shape) == (240, 240, 155) and root.is_dir():
        import nibabel as nib

        from data_prep.layouts import discover

        cases = discover(root).cases
        if cases:
            case = cases[0]
            arrays = [
                np.asarray(nib.load(str(Path(case.root) / case.images[c])).dataobj, dtype=np.float32)
                for c in CONTRASTS
            ]
            if arrays[0].shape == tuple(shape):
                image = np.stack(arrays)
                norm = NormalizeIntensity(nonzero=True, channel_wise=True)
                return np.asarray(norm(image), dtype=np.float32), f"BraTS 2023 case {case.case_id}"
    from data_prep.phantoms import make_phantom

    phantom = make_phantom(tuple(shape), seed=0)
    norm = NormalizeIntensity(nonzero=True, channel_wise=True)
    return np.asarray(norm(phantom.images.astype(np.float32)), dtype=np.float32), f"phantom {tuple(shape)}"


def bundle_settings() -> dict[str, Any]:
    """What the shipped bundle trains and infers with (read from its ``train.json``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_CONFIGS / "train.json"))
    keys = (
        "network_preset",
        "network_kwargs",
        "input_contrasts",
        "target_contrasts",
        "roi_size",
        "val_roi_size",
        "batch_size",
        "num_samples",
        "learning_rate",
        "weight_decay",
    )
    settings = {k: parser.get_parsed_content(k) for k in keys}
    infer = json.loads((BUNDLE_CONFIGS / "inference.json").read_text())
    settings["sw"] = {
        "sw_batch_size": infer["sw_batch_size"],
        "overlap": infer["overlap"],
        "mode": "gaussian",
    }
    return settings


def bundle_loss() -> Any:
    """The shipped bundle's training loss, built from its ``train.json`` (``loss``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_CONFIGS / "train.json"))
    return parser.get_parsed_content("loss")


# ----------------------------------------------------------------------------------------------
# Models


def build_models(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The networks of one set-up (random weights, seed 0) and the channels each reads.

    Args:
        name: one of :data:`MODELS`.
        settings: :func:`bundle_settings`.

    Returns:
        ``{"nets": [(net, channel indices into t1n,t1c,t2w,t2f)], "sw": sliding-window kwargs}``.
    """
    import torch
    from monai.networks.nets import SegResNet

    from medmtl.contrasts import CONTRASTS
    from medmtl.networks import get_network

    torch.manual_seed(0)
    inputs = [CONTRASTS.index(c) for c in settings["input_contrasts"]]
    if name == "medmtl":
        net = get_network(
            settings["network_preset"],
            in_channels=len(inputs),
            synth_channels=max(1, len(settings["target_contrasts"])),
            **settings["network_kwargs"],
        )
        sw = {"roi_size": tuple(settings["val_roi_size"]), **settings["sw"]}
        return {"nets": [(net, inputs)], "sw": sw}
    seg = SegResNet(spatial_dims=3, **MONAI_BRATS_NET)
    nets = [(seg, list(range(4)))]
    if name == "monai+synth":
        synth = SegResNet(
            spatial_dims=3, **{**MONAI_BRATS_NET, "in_channels": len(inputs), "out_channels": 1}
        )
        nets.append((synth, inputs))
    elif name != "monai":
        raise ValueError(f"unknown model set-up {name!r}; expected one of {MODELS}")
    return {"nets": nets, "sw": dict(MONAI_BRATS_SW)}


def count_parameters(models: dict[str, Any]) -> int:
    """Number of parameters of a set-up's networks."""
    return sum(p.numel() for net, _ in models["nets"] for p in net.parameters())


# ----------------------------------------------------------------------------------------------
# Threads, memory, machine


def set_threads(n: int) -> dict[str, Any]:
    """Fix torch's intra-op threads to ``n`` and inter-op threads to 1; return what is in effect."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once parallel work ran
        pass
    return {
        "intra_op": torch.get_num_threads(),
        "inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def proc_status() -> dict[str, float]:
    """Current and peak resident memory of this process in MiB (``VmRSS``, ``VmHWM``)."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS, so a later peak covers one phase.

    Linux ``/proc/self/clear_refs`` value 5; returns False where that is not allowed.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_info() -> dict[str, Any]:
    """Machine, library versions and load, for the results file."""
    import monai
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            mem_gib = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": mem_gib,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
    }


# ----------------------------------------------------------------------------------------------
# Subprocess runs


def run_child(args: Sequence[str], threads: int) -> dict[str, Any]:
    """Run ``python <args>`` in a fresh process; return the JSON it prints last, plus its peak RSS.

    The whole child's peak RSS comes from ``os.wait4``, the kernel's rusage of that one process.

    Args:
        args: script and arguments.
        threads: thread count exported as ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``.

    Returns:
        The child's JSON result with ``process_peak_rss_mib`` and ``process_wall_s`` added.

    Raises:
        RuntimeError: when the child fails.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {' '.join(args)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchmark child {' '.join(args)} printed no result:\n{stdout[-2000:]}")
    result = json.loads(lines[-1])
    result["process_peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    result["process_wall_s"] = round(wall, 2)
    return result


def self_peak_rss_mib() -> float:
    """Peak RSS of this whole process so far (``getrusage(RUSAGE_SELF).ru_maxrss``), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def summarise(
    runs: list[dict[str, Any]], keys: Sequence[str], models: Sequence[str] = MODELS
) -> dict[str, dict[str, float]]:
    """Median, min and max of each key over the runs of each model (``run["model"]``)."""
    out: dict[str, dict[str, float]] = {}
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        out[model] = {}
        for k in keys:
            vals = [float(r[k]) for r in mine if r.get(k) is not None]
            if vals:
                out[model][k] = round(median(vals), 3)
                out[model][f"{k}_min"] = round(min(vals), 3)
                out[model][f"{k}_max"] = round(max(vals), 3)
    return out


def paired_ratios(runs: list[dict[str, Any]], num: str, den: str, key: str) -> list[float]:
    """``num / den`` of ``key`` within each repetition (``run["rep"]``: runs of one repetition ran
    back to back, so a change of machine load hits both alike)."""
    out = []
    for rep in sorted({r["rep"] for r in runs}):
        a = next((r[key] for r in runs if r["rep"] == rep and r["model"] == num), None)
        b = next((r[key] for r in runs if r["rep"] == rep and r["model"] == den), None)
        if a is not None and b:
            out.append(a / b)
    return out


def verdicts(ratios: dict[str, Any], targets: dict[str, float]) -> dict[str, str]:
    """PASS / MISS of each target (an upper bound on a ratio) present in ``ratios``."""
    return {
        k: ("PASS" if ratios[k] <= limit else "MISS") + f" ({ratios[k]:.3f} vs <= {limit})"
        for k, limit in targets.items()
        if k in ratios
    }

"""``medmtl demo``: the whole pipeline on built-in synthetic data, end to end, on a CPU.

phantoms -> prepare (datalist, folds) -> train the bundle (CPU preset) -> sliding-window inference
on the held-out fold -> evaluation (Dice, HD95, SSIM, PSNR, with a naive baseline) -> report + figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

#: Demo defaults: sized to finish in a few minutes on 2 CPU cores.
DEMO_DEFAULTS: dict[str, Any] = {
    "n_cases": 10,
    "shape": (96, 96, 64),
    "epochs": 12,
    "folds": 5,
}


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medmtl demo``."""
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--cases", type=int, default=DEMO_DEFAULTS["n_cases"], help="number of phantoms")
    parser.add_argument("--epochs", type=int, default=DEMO_DEFAULTS["epochs"], help="training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stage", default="plain", help="plain (joint training from scratch) or all (the staged schedule)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete a previous demo in --out first")


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.time()


def run_demo(
    out: str | Path,
    n_cases: int = DEMO_DEFAULTS["n_cases"],
    epochs: int = DEMO_DEFAULTS["epochs"],
    seed: int = 0,
    stage: str = "plain",
    fresh: bool = False,
) -> dict[str, Any]:
    """Run the demo pipeline.

    Args:
        out: output folder; holds data/, datalist.json, bundle/ (trained), predictions/, evaluation/.
        n_cases: number of synthetic cases.
        epochs: training epochs (per stage when ``stage="all"``).
        seed: seed for phantoms, folds and training.
        stage: ``plain`` or ``all``.
        fresh: remove an existing demo folder first.

    Returns:
        The evaluation summary.
    """
    import shutil

    import torch

    from data_prep.datalist import prepare
    from data_prep.phantoms import write_phantoms
    from medmtl.evaluation import evaluate
    from medmtl.inference import DEFAULT_BUNDLE
    from medmtl.training import train

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(out).resolve()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir, datalist = out / "data", out / "datalist.json"
    t0 = time.time()

    t = _step(f"1/5 phantoms: {n_cases} synthetic BraTS 2023-layout cases in {data_dir}")
    if not any(data_dir.glob("*/*-t1n.nii.gz")):
        write_phantoms(data_dir, n=n_cases, shape=DEMO_DEFAULTS["shape"], layout="brats2023", seed=seed)
    print(f"    {time.time() - t:.1f} s")

    t = _step(f"2/5 prepare: validate cases, write {datalist}")
    prepare(data_dir, datalist, folds=min(DEMO_DEFAULTS["folds"], n_cases), seed=seed)
    print(f"    {time.time() - t:.1f} s")

    bundle_dir = out / "bundle"
    t = _step(f"3/5 train: bundle configs train.json + cpu.json ({stage}), {epochs} epochs -> {bundle_dir}")
    overrides = {"max_epochs": epochs, "val_interval": max(1, epochs // 3), "seed": seed, "num_workers": 0}
    if not (bundle_dir / "models" / "model.pt").is_file():
        train(
            data_dir,
            datalist,
            bundle_dir,
            stage=stage,
            preset="cpu",
            bundle=DEFAULT_BUNDLE,
            overrides=overrides,
        )
    print(f"    {time.time() - t:.1f} s")

    pred_dir = out / "predictions"
    t = _step(f"4/5 infer: whole-volume sliding window on the held-out fold -> {pred_dir}")
    from monai.bundle import run

    from medmtl.datalist import load_datalist

    val_cases = load_datalist(datalist, data_dir, section="training", folds=[0])
    run(
        config_file=str(bundle_dir / "configs" / "inference.json"),
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        bundle_root=str(bundle_dir),
        cases=val_cases,
        output_dir=str(pred_dir),
        num_workers=0,
    )
    print(f"    {len(val_cases)} case(s), {time.time() - t:.1f} s")

    eval_dir = out / "evaluation"
    t = _step(f"5/5 evaluate + report -> {eval_dir}")
    summary = evaluate(
        pred_dir, datalist, dataset_dir=data_dir, out_dir=eval_dir, cases=[e["case_id"] for e in val_cases]
    )
    print(f"    {time.time() - t:.1f} s")
    print(f"\nmedmtl demo finished in {time.time() - t0:.0f} s. Report: {eval_dir / 'report.md'}")
    return summary


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl demo``."""
    run_demo(
        args.out, n_cases=args.cases, epochs=args.epochs, seed=args.seed, stage=args.stage, fresh=args.fresh
    )
    return 0

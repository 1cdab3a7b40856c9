"""Ablation on real cases: single-task vs multi-task rows and the missing-contrast study, one run.

Every row trains the shipped bundle (``bundles/brats_mtl``) through ``medmtl train`` with the same
preset, epoch budget, seed and split, then runs whole-volume inference on the held-out fold through
the bundle's ``inference.json`` and scores it with ``medmtl evaluate`` (Dice / HD95 per region in the
scan's own grid; synthesised t1c SSIM / PSNR inside the brain, tumour and non-tumour).

Every row is the bundle's default recipe (``configs/train.json``: all four contrasts in with the
channel mask, contrasts dropped at random, the synthesis branch restoring all four) with the row's
overrides. Rows (``--rows``, all by default):

=================  ===========================================================================
``seg_only``       encoder + seg decoder (no synthesis target)
``synth_only``     encoder + synth decoder (no segmentation loss)
``mtl_fixed``      both heads, l1 = l2 = 1
``mtl_uncertainty``  both heads, learned homoscedastic-uncertainty weights (Kendall et al. 2018)
``mtl_pcgrad``     both heads, PCGrad (Yu et al. 2020)
``mtl_staged``     pretrain seg, pretrain synth, heads on the frozen encoder, joint; the epoch
                   budget split evenly over the four stages
``seg_only_all4``  seg-only on all four contrasts: the reference of the missing-contrast study
``mtl_missing``    all four contrasts with an input mask, contrasts dropped at random in training
                   (``drop_contrasts_prob`` 0.5); the synth branch restores all four
``seg_only_5``     seg-only trained on the first 5 training cases (low-data setting)
``seg_only_5_lesions``  the same with synthetic-lesion augmentation
                   (:class:`medmtl.lesion_augment.RandSyntheticLesiond`, real donor tumours)
=================  ===========================================================================

Missing-contrast study (rows ``seg_only_all4`` and ``mtl_missing``): seg Dice with all four inputs and
with each contrast absent in turn. For ``seg_only_all4`` the absent contrast is zero-filled (the
model has no way to know); ``mtl_missing`` is told through its channel mask, synthesises the missing
contrast and segments; the table adds the synthesised contrast's SSIM inside the brain.

Validation runs once, after the last epoch, so every row is scored with its final weights (no model
selection on the held-out cases). Results go to ``OUT/ablation.json`` and ``OUT/ablation.md`` after
each row; a rerun skips rows whose results exist (``--fresh`` to redo).

    python benchmarks/ablation.py --dataset-dir ../shared/data/brats --out runs/ablation --epochs 60
    python benchmarks/ablation.py --dataset-dir D --out O --rows seg_only mtl_fixed --set learning_rate=0.001
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medmtl.contrasts import CONTRASTS  # noqa: E402
from medmtl.labels import REGIONS  # noqa: E402

FOUR = list(CONTRASTS)
DEFAULT_INPUTS = ["t1n", "t2w", "t2f"]

#: row name -> (training stage, config overrides, what trains, training cases (None: all)).
ROWS: dict[str, tuple[str, dict[str, Any], str, int | None]] = {
    "seg_only": ("seg_only", {}, "encoder + seg decoder", None),
    "synth_only": ("synth_only", {}, "encoder + synth decoder (t1c)", None),
    "mtl_fixed": ("plain", {"weighting": "fixed"}, "both, l1 = l2 = 1", None),
    "mtl_uncertainty": ("plain", {"weighting": "uncertainty"}, "both, learned (uncertainty) weights", None),
    "mtl_pcgrad": ("plain", {"weighting": "pcgrad"}, "both, PCGrad", None),
    "mtl_staged": ("all", {}, "pretrain seg -> pretrain synth -> heads (frozen encoder) -> joint", None),
    "seg_only_all4": ("seg_only", {"input_contrasts": FOUR}, "seg-only on all four contrasts", None),
    "mtl_missing": (
        "plain",
        {"input_contrasts": FOUR, "target_contrasts": FOUR, "drop_contrasts_prob": 0.5},
        "all four in, random contrasts dropped, synth restores all four",
        None,
    ),
    "seg_only_5": ("seg_only", {}, "seg-only, 5 training cases", 5),
    "seg_only_5_lesions": (
        "seg_only",
        {"synthetic_lesion_prob": 0.5, "lesion_donors": "training"},
        "seg-only, 5 training cases + synthetic lesions (donor tumours moved, scaled, rotated)",
        5,
    ),
}
#: rows evaluated with contrasts taken away at inference
MISSING_ROWS = ("seg_only_all4", "mtl_missing")
STAGES_IN_ALL = 4


# ----------------------------------------------------------------------------------------------
# Training and scoring one row


def train_row(
    name: str,
    run_dir: Path,
    dataset_dir: Path,
    datalist: Path,
    epochs: int,
    preset: str,
    overrides: Mapping[str, Any],
    val_fold: int,
    seed: int,
) -> float:
    """Train one ablation row into ``run_dir`` (a bundle of its own). Returns wall seconds."""
    from medmtl.training import train

    stage, row_overrides, _, _ = ROWS[name]
    per_stage = max(1, epochs // STAGES_IN_ALL) if stage == "all" else epochs
    cfg = {
        "max_epochs": per_stage,
        # one validation, after the last epoch: the row is scored with its final weights
        "val_interval": per_stage,
        "val_fold": val_fold,
        "seed": seed,
        **row_overrides,
        **overrides,
    }
    if stage in ("seg_only", "synth_only"):
        cfg["ckpt_dir"] = "$@bundle_root + '/models'"
    t0 = time.time()
    train(dataset_dir, datalist, run_dir, stage=stage, preset=preset, overrides=cfg)
    return time.time() - t0


def window_size(run_dir: Path) -> list[int]:
    """Sliding-window size of a row: its training patch size.

    The network's instance norms see the statistics of the patches they were trained on; one window over
    the whole brain shifts them and floods the prediction with false positives (measured: held-out WT
    Dice 0.32 with one 128^3 window vs 0.81 with 64^3 windows, same weights).
    """
    return list(json.loads((run_dir / "models" / "model_config.json").read_text())["roi_size"])


def infer_row(run_dir: Path, cases: Sequence[dict], pred_dir: Path, num_workers: int) -> float:
    """Whole-volume inference on ``cases`` with the row's bundle. Returns wall seconds."""
    from monai.bundle import run

    if pred_dir.exists():
        shutil.rmtree(pred_dir)
    t0 = time.time()
    run(
        roi_size=window_size(run_dir),
        config_file=str(run_dir / "configs" / "inference.json"),
        meta_file=str(run_dir / "configs" / "metadata.json"),
        logging_file=str(run_dir / "configs" / "logging.conf"),
        bundle_root=str(run_dir),
        cases=list(cases),
        output_dir=str(pred_dir),
        num_workers=num_workers,
        restorations=True,  # every synthesised contrast scored, as the rows were measured
    )
    return time.time() - t0


def _stat(summary: Mapping[str, Any], key: str) -> dict[str, float | None]:
    s = summary.get(key) or {}
    return {"mean": s.get("mean"), "std": s.get("std")}


def score_row(pred_dir: Path, datalist: Path, dataset_dir: Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """Dice / HD95 per region and t1c synthesis metrics of a row's held-out predictions."""
    from medmtl.evaluation import evaluate

    result = evaluate(
        pred_dir,
        datalist,
        dataset_dir=dataset_dir,
        out_dir=pred_dir.parent / "evaluation",
        cases=list(case_ids),
        figures=False,
    )
    summary = result["summary"]["metrics"]
    out: dict[str, Any] = {}
    for region in REGIONS:
        out[f"Dice_{region}"] = _stat(summary, f"Dice_{region}")
        out[f"HD95_{region}"] = _stat(summary, f"HD95_{region}")
    for part in ("brain", "tumour", "nontumour"):
        out[f"t1c_SSIM_{part}"] = _stat(summary, f"t1c_SSIM_{part}")
        out[f"t1c_PSNR_{part}"] = _stat(summary, f"t1c_PSNR_{part}")
        out[f"t1c_baseline_SSIM_{part}"] = _stat(summary, f"t1c_baseline_SSIM_{part}")
    return out


def _zero_like(path: str, folder: Path) -> str:
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    out = folder / Path(path).name.replace(".nii", "_zero.nii")
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(out))
    return str(out)


def missing_contrast_study(run_dir: Path, cases: Sequence[dict], device: str | None) -> dict[str, Any]:
    """Seg Dice (and synthesised-contrast SSIM) with each input contrast absent in turn.

    Args:
        run_dir: a trained row bundle whose inputs are all four contrasts.
        cases: held-out datalist entries (absolute paths, with ``label``).
        device: torch device for inference (None: CUDA when available).

    Returns:
        ``{scenario: {"Dice_TC": {mean, std}, ..., "SSIM_brain": {mean, std} | None}}`` with scenarios
        ``all`` and ``no_<contrast>``.
    """
    import nibabel as nib
    import numpy as np

    from medmtl.inference import load_model
    from medmtl.metrics import segmentation_metrics, synthesis_metrics

    model = load_model(run_dir, device=device, roi_size=window_size(run_dir))
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="medmtl_missing_") as tmp:
        for entry in cases:
            files = {c: entry[c] for c in FOUR}
            ref = nib.load(entry["label"])
            true = np.asarray(ref.dataobj)
            spacing = ref.header.get_zooms()[:3]
            brain = np.zeros(true.shape, bool)
            for c in FOUR:
                brain |= np.asarray(nib.load(files[c]).dataobj) != 0
            for scenario in ["all"] + [f"no_{c}" for c in FOUR]:
                absent = scenario[3:] if scenario != "all" else None
                case = dict(files)
                if absent is not None:
                    if model.use_mask:
                        case.pop(absent)
                    else:
                        case[absent] = _zero_like(files[absent], Path(tmp))
                pred = model.predict(case, convention=entry["label_convention"])
                row = segmentation_metrics(
                    pred.seg, true, entry["label_convention"], entry["label_convention"], spacing
                )
                scores = {k: v for k, v in row.items() if k.startswith("Dice_")}
                if absent is not None and absent in pred.synth:
                    real = np.asarray(nib.load(files[absent]).dataobj, np.float32)
                    scores["SSIM_brain"] = synthesis_metrics(pred.synth[absent], real, brain)["SSIM_brain"]
                results.setdefault(scenario, []).append(scores)
    summary: dict[str, Any] = {}
    for scenario, rows in results.items():
        keys = sorted({k for r in rows for k in r})
        summary[scenario] = {
            k: {
                "mean": float(np.mean([r[k] for r in rows if k in r])),
                "std": float(np.std([r[k] for r in rows if k in r])),
            }
            for k in keys
        }
    return summary


# ----------------------------------------------------------------------------------------------
# Tables


def _fmt(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    mean, std = stat["mean"], stat.get("std")
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def markdown(results: Mapping[str, Any]) -> str:
    """The ablation and missing-contrast tables as markdown."""
    meta = results["meta"]
    lines = [
        "# Ablation",
        "",
        f"{meta['n_train']} training cases, {meta['n_heldout']} held out ({', '.join(meta['heldout'])}); "
        f"preset {meta['preset']}, {meta['epochs']} epochs per row, seed {meta['seed']}"
        + (f", overrides {meta['overrides']}" if meta["overrides"] else "")
        + ".",
        "",
        "| row | what trains | WT Dice | TC Dice | ET Dice | WT HD95 (mm) | TC HD95 | ET HD95 "
        "| t1c SSIM brain | t1c SSIM tumour | t1c SSIM non-tumour | t1c PSNR brain | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["rows"].items():
        s = row["scores"]
        cells = [name, ROWS[name][2]]
        if ROWS[name][0] == "synth_only":
            cells += ["-"] * 6  # its seg decoder is never trained: the scores of random weights mean nothing
        else:
            cells += [_fmt(s[f"Dice_{r}"]) for r in ("WT", "TC", "ET")]
            cells += [_fmt(s[f"HD95_{r}"], 1) for r in ("WT", "TC", "ET")]
        cells += [_fmt(s[f"t1c_SSIM_{part}"]) for part in ("brain", "tumour", "nontumour")]
        cells += [_fmt(s["t1c_PSNR_brain"], 1), f"{row['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    scored = [r["scores"] for r in results["rows"].values()]
    base = next((s for s in scored if s["t1c_baseline_SSIM_brain"]["mean"] is not None), None)
    if base:
        parts = ", ".join(
            f"{part} {_fmt(base[f't1c_baseline_SSIM_{part}'])}" for part in ("brain", "tumour", "nontumour")
        )
        lines += ["", f"Baseline (T1 copied as t1c), SSIM: {parts}."]
    missing = {n: r["missing"] for n, r in results["rows"].items() if r.get("missing")}
    if missing:
        lines += [
            "",
            "## Missing contrasts (held-out seg Dice; SSIM of the synthesised missing contrast in the brain)",
            "",
            "| row | inputs | WT Dice | TC Dice | ET Dice | synthesised SSIM |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, study in missing.items():
            for scenario, s in study.items():
                inputs = "all four" if scenario == "all" else f"without {scenario[3:]}"
                lines.append(
                    f"| {name} | {inputs} | {_fmt(s.get('Dice_WT'))} | {_fmt(s.get('Dice_TC'))} "
                    f"| {_fmt(s.get('Dice_ET'))} | {_fmt(s.get('SSIM_brain'))} |"
                )
    return "\n".join(lines) + "\n"


def collect(out: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """All finished rows in ``out`` (``<row>/result.json``), in :data:`ROWS` order, with ``meta``."""
    rows = {}
    for name in ROWS:
        path = out / name / "result.json"
        if path.is_file():
            rows[name] = json.loads(path.read_text())
    return {"meta": dict(meta), "rows": rows}


def save_tables(out: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite ``ablation.json`` and ``ablation.md`` from the finished rows (atomic replaces)."""
    from medmtl.io import atomic_path, write_json

    results = collect(out, meta)
    write_json(out / "ablation.json", results)
    with atomic_path(out / "ablation.md") as tmp:
        Path(tmp).write_text(markdown(results))
    return results


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Training scalars of a row's runs (TensorBoard event files), stages appended in order.

    Returns:
        ``{tag: [(global step, value), ...]}`` for ``train/loss_seg``, ``train/loss_gen`` and
        ``train/weight_*``; steps of later stages continue after earlier ones.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    stage_dirs = sorted(
        (run_dir / "runs").glob("*"), key=lambda p: min(f.stat().st_mtime for f in p.glob("events*"))
    )
    for stage_dir in stage_dirs:
        last = offset
        for f in sorted(stage_dir.glob("events*")):
            acc = EventAccumulator(str(f))
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                if tag.startswith(("train/loss_", "train/weight_")):
                    for e in acc.Scalars(tag):
                        curves.setdefault(tag, []).append((offset + e.step, e.value))
                        last = max(last, offset + e.step)
        offset = last
    return curves


def plot_curves(out: Path, rows: Sequence[str]) -> Path | None:
    """Segmentation and synthesis training losses of each row, one panel per task (``curves.png``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    axes = fig.subplots(1, 2)
    drawn = False
    for name in rows:
        if not (out / name / "runs").is_dir():
            continue
        curves = read_curves(out / name)
        for ax, tag in zip(axes, ("train/loss_seg", "train/loss_gen")):
            if curves.get(tag):
                steps, values = zip(*curves[tag])
                ax.plot(steps, values, label=name, lw=1.2)
                drawn = True
    if not drawn:
        return None
    for ax, title in zip(axes, ("L_seg (Dice + BCE)", "L_gen (L1 + 1 - SSIM, brain)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path)
    return path


def subset_datalist(datalist: Path, out: Path, val_fold: int, n_train: int) -> Path:
    """A datalist with the held-out fold and only the first ``n_train`` other cases (low-data rows)."""
    from medmtl.io import write_json

    doc = json.loads(datalist.read_text())
    train = [e for e in doc["training"] if e.get("fold") != val_fold][:n_train]
    held = [e for e in doc["training"] if e.get("fold") == val_fold]
    doc["training"] = held + train
    path = out / f"datalist_{n_train}.json"
    write_json(path, doc)
    return path


def run_row(name: str, args: argparse.Namespace, out: Path, datalist: Path, meta: Mapping[str, Any]) -> None:
    """Train (unless ``--rescore``), infer, score one row; its result goes to ``out/<name>/result.json``."""
    from medmtl.datalist import load_datalist
    from medmtl.io import write_json
    from medmtl.training import parse_overrides

    dataset_dir = Path(args.dataset_dir).resolve()
    heldout = load_datalist(
        datalist, dataset_dir, section="training", folds=[args.val_fold], labelled_only=True
    )
    run_dir = out / name
    n_train = ROWS[name][3]
    if args.rescore:
        previous = run_dir / "result.json"
        if not (run_dir / "models" / "model.pt").is_file() or not previous.is_file():
            raise SystemExit(f"ablation: --rescore needs a trained row {name} in {out}")
        train_s = float(json.loads(previous.read_text())["train_s"])
        print(f"\n==> ablation row {name}: scoring the trained weights again", flush=True)
    else:
        if run_dir.exists():
            # a row is trained from scratch: weights of an interrupted earlier run would be resumed
            shutil.rmtree(run_dir)
        row_datalist = datalist if n_train is None else subset_datalist(datalist, out, args.val_fold, n_train)
        overrides = {"num_workers": args.num_workers, **parse_overrides(args.set)}
        print(f"\n==> ablation row {name}: {ROWS[name][2]}", flush=True)
        train_s = train_row(
            name,
            run_dir,
            dataset_dir,
            row_datalist,
            args.epochs,
            args.preset,
            overrides,
            args.val_fold,
            args.seed,
        )
    pred_dir = run_dir / "predictions"
    infer_s = infer_row(run_dir, heldout, pred_dir, args.num_workers)
    row: dict[str, Any] = {
        "train_s": train_s,
        "infer_s": infer_s,
        "n_train": n_train or meta["n_train"],
        "scores": score_row(pred_dir, datalist, dataset_dir, meta["heldout"]),
    }
    if name in MISSING_ROWS:
        row["missing"] = missing_contrast_study(run_dir, heldout, args.device)
    write_json(run_dir / "result.json", row)
    s = row["scores"]
    print(
        f"ablation: {name} WT {_fmt(s['Dice_WT'])} TC {_fmt(s['Dice_TC'])} ET {_fmt(s['Dice_ET'])} "
        f"t1c SSIM brain {_fmt(s['t1c_SSIM_brain'])} (train {train_s:.0f} s)",
        flush=True,
    )


# ----------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset-dir", required=True, help="dataset root (e.g. ../shared/data/brats)")
    p.add_argument("--datalist", help="datalist from `medmtl prepare`; made in OUT when omitted")
    p.add_argument("--out", required=True, help="output folder: one bundle per row + ablation.{json,md}")
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, default=60, help="epoch budget of every row (default 60)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--folds", type=int, default=3, help="folds of a datalist made here (3: 5 of 15 held out)")
    p.add_argument("--val-fold", type=int, default=0, help="held-out fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="inference device of the missing-contrast study")
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers (training and inference)")
    p.add_argument("--jobs", type=int, default=1, help="rows trained at once, each in its own process")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every row")
    p.add_argument("--fresh", action="store_true", help="redo rows that already have results")
    p.add_argument("--rescore", action="store_true", help="redo inference and scores of trained rows only")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the ablation; see the module docstring.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        ``{"meta": {...}, "rows": {row: {"scores", "missing"?, "train_s", ...}}}``.
    """
    import subprocess

    from data_prep.datalist import prepare
    from medmtl.datalist import load_datalist
    from medmtl.training import parse_overrides

    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = Path(args.dataset_dir).resolve()
    datalist = Path(args.datalist).resolve() if args.datalist else out / "datalist.json"
    if not args.datalist and not datalist.is_file():
        prepare(dataset_dir, datalist, folds=args.folds, seed=args.seed)
    heldout = load_datalist(
        datalist, dataset_dir, section="training", folds=[args.val_fold], labelled_only=True
    )
    train_cases = load_datalist(datalist, dataset_dir, section="training", exclude_folds=[args.val_fold])
    meta = {
        "epochs": args.epochs,
        "preset": args.preset,
        "seed": args.seed,
        "val_fold": args.val_fold,
        "overrides": parse_overrides(args.set),
        "heldout": [e["case_id"] for e in heldout],
        "n_heldout": len(heldout),
        "n_train": len(train_cases),
        "datalist": str(datalist),
    }
    meta_path = out / "meta.json"
    if meta_path.is_file() and not args.fresh:
        before = json.loads(meta_path.read_text())
        differs = [
            k for k in ("epochs", "preset", "seed", "overrides", "heldout") if before.get(k) != meta[k]
        ]
        if differs:
            raise SystemExit(f"{out} holds rows made with other {differs}; use --fresh or another --out")
    from medmtl.io import write_json

    write_json(meta_path, meta)
    todo = [n for n in args.rows if args.fresh or args.rescore or not (out / n / "result.json").is_file()]
    for name in sorted(set(args.rows) - set(todo)):
        print(f"ablation: {name} done before, skipped", flush=True)
    if args.jobs <= 1 or len(todo) <= 1:
        for name in todo:
            run_row(name, args, out, datalist, meta)
            save_tables(out, meta)
    else:
        # one process per row, ``jobs`` at a time: each writes only its own row folder
        base = [sys.executable, str(Path(__file__).resolve())]
        common = list(argv if argv is not None else sys.argv[1:])
        common = _without(common, "--rows") + ["--datalist", str(datalist), "--jobs", "1"]
        running: list[tuple[str, subprocess.Popen]] = []
        queue = list(todo)
        while queue or running:
            while queue and len(running) < args.jobs:
                name = queue.pop(0)
                log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
                running.append(
                    (
                        name,
                        subprocess.Popen(
                            base + common + ["--rows", name], stdout=log, stderr=subprocess.STDOUT
                        ),
                    )
                )
                print(f"ablation: started {name} (log {out / (name + '.log')})", flush=True)
            time.sleep(2)
            for name, proc in list(running):
                if proc.poll() is not None:
                    running.remove((name, proc))
                    print(f"ablation: {name} finished with exit code {proc.returncode}", flush=True)
                    save_tables(out, meta)
    results = save_tables(out, meta)
    curves = plot_curves(out, list(results["rows"]))
    print(
        f"\nablation: tables in {out / 'ablation.md'}" + (f", learning curves in {curves}" if curves else ""),
        flush=True,
    )
    return results


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and the values that follow it."""
    out, skip = [], False
    for a in argv:
        if a == flag:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()

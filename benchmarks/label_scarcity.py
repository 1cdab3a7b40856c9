"""Label scarcity: does the synthesis branch, or unlabelled studies, help segmentation when labels are few?

For each number of labelled training cases L (``--labelled``, default 3 6 12 and all of the training
folds) four rows are trained with the same split, seed and step budget, through ``medmtl train`` (the
shipped bundle, ``--preset``), and scored on the held-out fold as a user scores a model: whole volumes
through ``medmtl infer`` + ``medmtl evaluate`` (``benchmarks/heldout.py``), with all four contrasts and
without t1c.

======  ===========================================================================================
``a``   segmentation only, on the L labelled cases (``seg_only``)
``b``   joint (segmentation + synthesis of all four contrasts), on the L labelled cases
``c``   joint, on the L labelled cases plus every other training study with its label hidden: those
        train the synthesis loss only (per-sample masking of the segmentation loss)
``d``   synthesis pretraining on every training study as unlabelled (``synth_only``, run once and
        shared by every L), then fine-tuning on the L labelled cases with the segmentation loss only,
        encoder and segmentation decoder trainable (the bundle's ``few_labels`` config; the staged
        schedule of the method; M3AE pretrains the same way: Liu et al., AAAI 2023)
``e``   control of ``d``: segmentation only on the L labelled cases, for ``d``'s whole budget
``f``   as ``c``, but labelled cases are drawn half the time (``labelled_fraction`` 0.5): in ``c`` the
        segmentation loss sees only the labelled share of the iterations (L of L + unlabelled)
======  ===========================================================================================

The budget is the same for every row: ``--epochs`` epochs of ``--epoch-length`` iterations (one
iteration: one case, ``num_samples`` patches), whatever L, so a row with fewer cases sees each case
more often rather than training for less. Row ``d``'s pretraining is one more such budget, spent once;
row ``e`` is its control: segmentation only on the L labelled cases for twice the budget, so that a
gain of ``d`` over ``a`` can be told from that of training longer.
Every row is validated once, after its last epoch, and scored with its final weights (no model
selection on the held-out cases). The L labelled cases are the first L of the training cases in an
order drawn once from ``--seed``, so the sets are nested. Unlabelled studies of the dataset
(``medmtl prepare --unlabelled train``) join every row that takes unlabelled studies, whatever fold
``prepare`` gave them: they have no label to be held out with.

Each finished row writes ``OUT/<row>_L<L>/result.json``; a rerun skips it (the table spans as many
runs as it needs). ``OUT/label_scarcity.json`` and ``.md`` and ``OUT/label_scarcity.png`` (Dice
against L, one line per row, the per-case spread) are rewritten after every row, with the paired
comparisons of :data:`PAIRS` (``benchmarks/paired.py``: per-case differences, Wilcoxon p). Finished
rows' scores and per-case metrics, row d's pretrained weights and the tables are copied to
``--archive`` (``benchmarks/results/label_scarcity``, kept in the repository); a run into an empty
``OUT`` starts from them, so the experiment goes on from a fresh clone.

    python benchmarks/label_scarcity.py --dataset-dir ../shared/data/brats --out runs/label_scarcity
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import heldout  # noqa: E402
import paired  # noqa: E402
from common import RESULTS as BENCH_RESULTS  # noqa: E402

from medmtl.contrasts import CONTRASTS  # noqa: E402
from medmtl.labels import REGIONS  # noqa: E402

ROWS: dict[str, str] = {
    "a": "segmentation only, L labelled",
    "b": "joint, L labelled",
    "c": "joint, L labelled + the other training studies unlabelled",
    "d": "synthesis pretraining on all (unlabelled), then segmentation fine-tuning on L",
    "e": "segmentation only, L labelled, twice the budget (row d's pretraining + fine-tuning)",
    "f": "as c, labelled cases drawn half the time (labelled_fraction 0.5)",
}
#: paired comparisons (row, baseline): every row against segmentation only, and row d against the
#: control that spends its whole budget (pretraining included) on the labelled cases
PAIRS: tuple[tuple[str, str], ...] = (("b", "a"), ("c", "a"), ("d", "a"), ("d", "e"), ("f", "a"))
SCENARIOS = {"all": tuple(CONTRASTS), "no_t1c": tuple(c for c in CONTRASTS if c != "t1c")}
PRETRAIN = "d_pretrain"
#: where finished rows are kept in the repository (``--archive``)
RESULTS = BENCH_RESULTS / "label_scarcity"


# ----------------------------------------------------------------------------------------------
# Datalists


def experiment_datalist(dataset_dir: Path, out: Path, folds: int, seed: int) -> Path:
    """``medmtl prepare --unlabelled train`` of the dataset, made once in ``out``."""
    from data_prep.datalist import prepare

    path = out / "datalist.json"
    if not path.is_file():
        prepare(dataset_dir, path, folds=folds, seed=seed, unlabelled="train")
    return path


def split(datalist: Path, val_fold: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Held-out labelled cases, training labelled cases (in the seeded order), unlabelled studies."""
    doc = json.loads(datalist.read_text())
    held = [e for e in doc["training"] if e.get("fold") == val_fold and "label" in e]
    train = [e for e in doc["training"] if e.get("fold") != val_fold and "label" in e]
    random.Random(seed).shuffle(train)
    unlabelled = [e for e in doc["training"] if "label" not in e]
    return held, train, unlabelled


def row_datalist(
    datalist: Path, val_fold: int, seed: int, n_labelled: int, with_unlabelled: bool, path: Path
) -> Path:
    """The held-out fold, the first ``n_labelled`` training cases and, if asked, every other study unlabelled.

    The other training cases lose their ``label`` (and the unlabelled studies get a training fold), so
    the bundle's own rules apply: entries without a label train the synthesis loss only.
    """
    from medmtl.io import write_json

    doc = json.loads(datalist.read_text())
    held, train, unlabelled = split(datalist, val_fold, seed)
    train_fold = next(f for f in range(int(doc.get("folds", val_fold + 2))) if f != val_fold)
    entries = list(held) + [dict(e) for e in train[:n_labelled]]
    if with_unlabelled:
        hidden = [{k: v for k, v in e.items() if k != "label"} for e in train[n_labelled:]]
        entries += [{**e, "fold": train_fold} for e in hidden + unlabelled]
    write_json(path, {**doc, "training": entries, "testing": []})
    return path


# ----------------------------------------------------------------------------------------------
# Training


def train_run(
    run_dir: Path,
    stage: str,
    dataset_dir: Path,
    datalist: Path,
    args: argparse.Namespace,
    extra: Mapping[str, Any] | None = None,
) -> float:
    """Train one run with the experiment's budget (resumes an interrupted run). Returns wall seconds."""
    from medmtl.training import train

    cfg: dict[str, Any] = {
        "max_epochs": args.epochs,
        "epoch_length": args.epoch_length,
        "val_interval": args.epochs,
        "val_fold": args.val_fold,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "ckpt_dir": "$@bundle_root + '/models'",
        **(extra or {}),
    }
    t0 = time.time()
    train(dataset_dir, datalist, run_dir, stage=stage, preset=args.preset, overrides=cfg)
    return time.time() - t0


def _trained(run_dir: Path) -> bool:
    return (run_dir / "models" / "model.pt").is_file()


def train_row(
    row: str, n: int, out: Path, dataset_dir: Path, datalist: Path, args: argparse.Namespace
) -> float:
    """Train row ``row`` at L = ``n`` into ``out/<row>_L<n>``.

    Returns:
        Wall seconds (row d's pretraining counted in the first row that runs it).
    """
    run_dir = out / f"{row}_L{n}"
    with_unlabelled = row in ("c", "f")
    dl_path = out / f"datalist_{row}_L{n}.json"
    dl = row_datalist(datalist, args.val_fold, args.seed, n, with_unlabelled, dl_path)
    seconds = 0.0
    if row == "a":
        seconds += train_run(run_dir, "seg_only", dataset_dir, dl, args)
    elif row == "e":
        twice = {"max_epochs": 2 * args.epochs, "val_interval": 2 * args.epochs}
        seconds += train_run(run_dir, "seg_only", dataset_dir, dl, args, twice)
    elif row in ("b", "c"):
        seconds += train_run(run_dir, "plain", dataset_dir, dl, args)
    elif row == "f":
        seconds += train_run(run_dir, "plain", dataset_dir, dl, args, {"labelled_fraction": 0.5})
    else:
        pre = out / PRETRAIN
        if not _trained(pre):
            all_dl = row_datalist(datalist, args.val_fold, args.seed, 0, True, out / "datalist_pretrain.json")
            seconds += train_run(pre, "synth_only", dataset_dir, all_dl, args)
        # the bundle's few_labels config: segmentation loss only, encoder and segmentation decoder
        # trainable, starting from the pretrained weights
        extra = {"init_from": str(pre / "models" / "model.pt")}
        seconds += train_run(run_dir, "few_labels", dataset_dir, dl, args, extra)
    return seconds


# ----------------------------------------------------------------------------------------------
# Scoring


def score_row(run_dir: Path, datalist: Path, val_fold: int) -> dict[str, Any]:
    """Held-out scores of a trained row, with all four contrasts and without t1c (``heldout.py``)."""
    scores = {}
    for name, present in SCENARIOS.items():
        scores[name] = heldout.run_scenario(run_dir, datalist, val_fold, name, present, run_dir / "heldout")
    return scores


def per_case(run_dir: Path, scenario: str) -> dict[str, dict[str, float]]:
    """``{case: {metric: value}}`` of a scored row."""
    return paired.read_metrics(run_dir / "heldout" / scenario / "evaluation")


# ----------------------------------------------------------------------------------------------
# Tables and figure


def collect(out: Path, labelled: Sequence[int]) -> dict[str, Any]:
    """Every finished row: ``{f"{row}_L{n}": result}``."""
    found = {}
    for n in labelled:
        for row in ROWS:
            path = out / f"{row}_L{n}" / "result.json"
            if path.is_file():
                found[f"{row}_L{n}"] = json.loads(path.read_text())
    return found


def comparisons(out: Path, labelled: Sequence[int]) -> list[dict[str, Any]]:
    """Paired differences of each of :data:`PAIRS` at each L, per region and scenario."""
    rows = []
    for n in labelled:
        for row, against in PAIRS:
            base, other = out / f"{against}_L{n}", out / f"{row}_L{n}"
            if not ((base / "result.json").is_file() and (other / "result.json").is_file()):
                continue
            for scenario in SCENARIOS:
                a_cases, o_cases = per_case(base, scenario), per_case(other, scenario)
                for region in REGIONS:
                    stat = paired.paired(o_cases, a_cases, f"Dice_{region}")
                    if stat:
                        rows.append(
                            {
                                "L": n,
                                "row": row,
                                "against": against,
                                "scenario": scenario,
                                "region": region,
                                **stat,
                            }
                        )
    return rows


def _cell(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(meta: Mapping[str, Any], found: Mapping[str, Any], pairs: Sequence[Mapping[str, Any]]) -> str:
    """The table of rows x L, and the paired comparisons against row a."""
    lines = [
        "# Label scarcity",
        "",
        f"Held-out fold {meta['val_fold']}: {meta['n_heldout']} labelled cases. Training: "
        f"{meta['n_train']} labelled cases, {meta['n_unlabelled']} unlabelled studies. Budget of every row: "
        f"{meta['epochs']} epochs x {meta['epoch_length']} iterations = {meta['steps']} iterations "
        f"({meta['preset']} preset, seed {meta['seed']}); row d also spends one such budget on "
        "synthesis pretraining, once for every L, and row e (its control) spends both on the labelled "
        "cases. Whole volumes, `medmtl infer` + `medmtl evaluate`; mean ± std over the held-out cases.",
        "",
        "| L | row | recipe | "
        + " | ".join(f"all four: {r}" for r in REGIONS)
        + " | "
        + " | ".join(f"no t1c: {r}" for r in REGIONS)
        + " | synthesised t1c SSIM (brain) | train s (wall clock) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, res in found.items():
        row, n = key.split("_L")
        s_all, s_no = res["scores"]["all"], res["scores"]["no_t1c"]
        cells = [n, row, ROWS[row]]
        cells += [_cell(s_all.get(f"Dice_{r}")) for r in REGIONS]
        cells += [_cell(s_no.get(f"Dice_{r}")) for r in REGIONS]
        cells += [
            _cell(s_no.get("t1c_SSIM_brain")) if row not in ("a", "e") else "-",
            f"{res['train_s']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if pairs:
        lines += [
            "",
            "## Paired (same L, same cases): Dice difference, cases won, Wilcoxon p",
            "",
            "| L | row | against | inputs | region | row mean | baseline mean | difference | wins | p |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in pairs:
            pv = "-" if p["p"] is None else f"{p['p']:.3f}"
            lines.append(
                f"| {p['L']} | {p['row']} | {p.get('against', 'a')} | {p['scenario']} | {p['region']} "
                f"| {p['mean_a']:.3f} "
                f"| {p['mean_b']:.3f} | {p['diff_mean']:+.3f} ± {p['diff_std']:.3f} | {p['a_wins']}/{p['n']} "
                f"| {pv} |"
            )
    return "\n".join(lines) + "\n"


def figure(out: Path, labelled: Sequence[int], found: Mapping[str, Any]) -> Path | None:
    """Dice against L (log axis), one line per row, per-case spread as a band; one panel per region."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(13, 5), dpi=100)
    axes = fig.subplots(1, len(REGIONS), sharey=True)
    drawn = False
    for ax, region in zip(axes, REGIONS):
        for i, row in enumerate(ROWS):
            xs, means, lo, hi = [], [], [], []
            for n in labelled:
                if f"{row}_L{n}" not in found:
                    continue
                vals = [v[f"Dice_{region}"] for v in per_case(out / f"{row}_L{n}", "all").values()
                        if f"Dice_{region}" in v]  # fmt: skip
                if not vals:
                    continue
                # rows side by side at each L so the bands do not hide each other
                xs.append(n * (1 + 0.04 * (i - (len(ROWS) - 1) / 2)))
                means.append(float(np.mean(vals)))
                lo.append(float(np.percentile(vals, 25)))
                hi.append(float(np.percentile(vals, 75)))
            if xs:
                ax.plot(xs, means, marker="o", label=f"{row}: {ROWS[row]}")
                ax.vlines(xs, lo, hi, colors=ax.lines[-1].get_color(), alpha=0.5, lw=3)
                drawn = True
        ax.set_xscale("log")
        ax.set_xticks(list(labelled), [str(n) for n in labelled])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("labelled training cases L")
        ax.set_title(f"{region} Dice, all four contrasts (mean; bar: per-case IQR)", fontsize=9)
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].set_ylabel("held-out Dice")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path = out / "label_scarcity.png"
    fig.savefig(path)
    return path


def save(out: Path, meta: Mapping[str, Any], labelled: Sequence[int]) -> dict[str, Any]:
    """Rewrite the json, markdown and figure from the finished rows."""
    from medmtl.io import atomic_path, write_json

    found = collect(out, labelled)
    pairs = comparisons(out, labelled)
    results = {"meta": dict(meta), "rows": found, "paired": pairs}
    write_json(out / "label_scarcity.json", results)
    with atomic_path(out / "label_scarcity.md") as tmp:
        Path(tmp).write_text(markdown(meta, found, pairs))
    figure(out, labelled, found)
    return results


# ----------------------------------------------------------------------------------------------
# Main


#: what the archive keeps of a finished row (the scores and per-case metrics the tables are made of)
ARCHIVED = (
    "result.json",
    "train_s.json",
    "heldout/*/evaluation/metrics.csv",
    "heldout/*/evaluation/summary.json",
)
#: what it keeps of row d's pretraining, so that later rows fine-tune the same weights
ARCHIVED_PRETRAIN = ("models/model.pt", "models/model_config.json")
#: the tables and figure, copied beside the rows
ARCHIVED_TABLES = ("meta.json", "label_scarcity.json", "label_scarcity.md", "label_scarcity.png")


def _copy(src_root: Path, dst_root: Path, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        for src in src_root.glob(pattern):
            dst = dst_root / src.relative_to(src_root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def archive(out: Path, dest: Path) -> None:
    """Copy the finished rows' scores (and row d's pretrained weights) from ``out`` into ``dest``."""
    for row_dir in sorted(out.glob("*_L*")):
        if (row_dir / "result.json").is_file():
            _copy(row_dir, dest / row_dir.name, ARCHIVED)
    if _trained(out / PRETRAIN):
        _copy(out / PRETRAIN, dest / PRETRAIN, ARCHIVED_PRETRAIN)
    _copy(out, dest, ARCHIVED_TABLES)


def restore(dest: Path, out: Path) -> None:
    """Seed ``out`` with the archived rows it lacks, so a run on another machine goes on from them."""
    for row_dir in sorted(dest.glob("*_L*")):
        if (row_dir / "result.json").is_file() and not (out / row_dir.name / "result.json").is_file():
            _copy(row_dir, out / row_dir.name, ARCHIVED)
            print(f"label_scarcity: {row_dir.name} restored from {dest}", flush=True)
    if _trained(dest / PRETRAIN) and not _trained(out / PRETRAIN):
        _copy(dest / PRETRAIN, out / PRETRAIN, ARCHIVED_PRETRAIN)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset-dir", required=True, type=Path, help="dataset root (e.g. ../shared/data/brats)")
    p.add_argument("--out", required=True, type=Path, help="output folder (one bundle per row and L)")
    p.add_argument("--labelled", nargs="+", default=["3", "6", "12", "all"], help="values of L ('all')")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=int, default=20, help="epochs of every row (default 20)")
    p.add_argument("--epoch-length", type=int, default=20, help="iterations per epoch (default 20)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--val-fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--archive",
        type=Path,
        default=RESULTS,
        help="where finished rows' scores are kept and restored from (benchmarks/results/label_scarcity)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every missing row (L-major: every row at the smallest L first); see the module docstring."""
    from medmtl.io import write_json

    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    dataset_dir = args.dataset_dir.resolve()
    datalist = experiment_datalist(dataset_dir, out, args.folds, args.seed)
    restore(args.archive.resolve(), out)
    held, train, unlabelled = split(datalist, args.val_fold, args.seed)
    labelled = sorted({len(train) if v == "all" else min(int(v), len(train)) for v in args.labelled})
    # the tables show every finished row, also those of L that this run does not train
    finished = {int(d.name.rsplit("_L", 1)[1]) for d in out.glob("*_L*") if (d / "result.json").is_file()}
    shown = sorted(set(labelled) | finished)
    meta = {
        "val_fold": args.val_fold,
        "seed": args.seed,
        "preset": args.preset,
        "epochs": args.epochs,
        "epoch_length": args.epoch_length,
        "steps": args.epochs * args.epoch_length,
        "labelled": shown,
        "heldout": [e["case_id"] for e in held],
        "n_heldout": len(held),
        "n_train": len(train),
        "n_unlabelled": len(unlabelled),
        "labelled_order": [e["case_id"] for e in train],
    }
    before = out / "meta.json"
    if before.is_file():
        old = json.loads(before.read_text())
        differs = [k for k in ("seed", "preset", "epochs", "epoch_length", "heldout", "labelled_order")
                   if old.get(k) != meta[k]]  # fmt: skip
        if differs:
            raise SystemExit(f"label_scarcity: {out} holds rows made with other {differs}; use another --out")
    write_json(before, meta)
    for n in labelled:
        for row in args.rows:
            run_dir = out / f"{row}_L{n}"
            if (run_dir / "result.json").is_file():
                print(f"label_scarcity: {row} L={n} done before, skipped", flush=True)
                continue
            print(f"\n==> label_scarcity: row {row} ({ROWS[row]}), L = {n}", flush=True)
            if _trained(run_dir) and (run_dir / "train_s.json").is_file():
                train_s = float(json.loads((run_dir / "train_s.json").read_text())["train_s"])
            else:
                # an interrupted row resumes from its last checkpoint (the bundle's ``resume``)
                train_s = train_row(row, n, out, dataset_dir, datalist, args)
                write_json(run_dir / "train_s.json", {"train_s": train_s})
            scores = score_row(run_dir, datalist, args.val_fold)
            write_json(run_dir / "result.json", {"train_s": train_s, "n_labelled": n, "scores": scores})
            s = scores["all"]
            print(
                f"label_scarcity: {row} L={n} "
                + " ".join(f"{r} {_cell(s.get(f'Dice_{r}'))}" for r in REGIONS),
                flush=True,
            )
            save(out, meta, shown)
            archive(out, args.archive.resolve())
    results = save(out, meta, shown)
    archive(out, args.archive.resolve())
    print(f"\nlabel_scarcity: {out / 'label_scarcity.md'}, {out / 'label_scarcity.png'}", flush=True)
    return results


if __name__ == "__main__":
    main()

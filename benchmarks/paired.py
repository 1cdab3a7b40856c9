"""Paired per-case differences between two models scored on the same cases by ``medmtl evaluate``.

With nine held-out cases, differences in mean Dice between two training recipes are of the size of
the case-to-case spread; pairing by case removes the spread that comes from the cases themselves.
For each metric: both means, the mean and standard deviation of the per-case difference, how many
cases the first model wins, and the two-sided Wilcoxon signed-rank p-value (scipy).

    python benchmarks/paired.py --a mtl=runs/ablation/mtl_fixed/heldout/all/evaluation \
        --b seg_only=runs/ablation/seg_only/heldout/all/evaluation --out runs/ablation/paired_all.md
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

DEFAULT_METRICS = ("Dice_WT", "Dice_TC", "Dice_ET", "HD95_WT", "HD95_TC", "HD95_ET", "t1c_SSIM_brain")


def read_metrics(eval_dir: Path) -> dict[str, dict[str, float]]:
    """``{case_id: {metric: value}}`` from an evaluation folder's ``metrics.csv`` (blank cells dropped)."""
    path = eval_dir / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run `medmtl evaluate` first)")
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {}
            for k, v in row.items():
                try:
                    values[k] = float(v)
                except (TypeError, ValueError):
                    continue
            out[row["case_id"]] = values
    return out


def paired(
    a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str
) -> dict[str, Any] | None:
    """Paired statistics of ``metric`` over the cases both hold it for; None when none does.

    Returns:
        ``{"n", "mean_a", "mean_b", "diff_mean", "diff_std", "a_wins", "p"}`` (``p`` None when every
        difference is zero or fewer than two cases).
    """
    cases = sorted(c for c in a if c in b and metric in a[c] and metric in b[c])
    if not cases:
        return None
    x = np.array([a[c][metric] for c in cases])
    y = np.array([b[c][metric] for c in cases])
    d = x - y
    better = d < 0 if metric.startswith("HD95") else d > 0
    p = float(wilcoxon(x, y).pvalue) if len(cases) > 1 and np.any(d != 0) else None
    return {
        "n": len(cases),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff_mean": float(d.mean()),
        "diff_std": float(d.std(ddof=1)) if len(cases) > 1 else 0.0,
        "a_wins": int(better.sum()),
        "p": p,
    }


def markdown(name_a: str, name_b: str, stats: dict[str, dict[str, Any] | None]) -> str:
    """The paired table, one row per metric."""
    lines = [
        f"| metric | {name_a} | {name_b} | {name_a} - {name_b} (per case) | cases {name_a} better "
        "| Wilcoxon p |",
        "| --- " * 6 + "|",
    ]
    for metric, s in stats.items():
        if s is None:
            continue
        digits = 1 if metric.startswith("HD95") else 3
        p = "-" if s["p"] is None else f"{s['p']:.2f}"
        lines.append(
            f"| {metric.replace('_', ' ')} | {s['mean_a']:.{digits}f} | {s['mean_b']:.{digits}f} | "
            f"{s['diff_mean']:+.{digits}f} ± {s['diff_std']:.{digits}f} | {s['a_wins']}/{s['n']} | {p} |"
        )
    return "\n".join(lines) + "\n"


def _named(value: str) -> tuple[str, Path]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=EVALUATION_DIR")
    name, path = value.split("=", 1)
    return name, Path(path)


def main(argv: Sequence[str] | None = None) -> str:
    """Compare two evaluation folders case by case; print (and with ``--out`` write) the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", type=_named, required=True, help="NAME=EVALUATION_DIR of the first model")
    p.add_argument("--b", type=_named, required=True, help="NAME=EVALUATION_DIR of the second model")
    p.add_argument("--metrics", nargs="*", default=list(DEFAULT_METRICS))
    p.add_argument("--out", type=Path, help="write the markdown table here")
    args = p.parse_args(argv)
    try:
        a, b = read_metrics(args.a[1]), read_metrics(args.b[1])
    except FileNotFoundError as err:
        p.error(str(err))
    if not set(a) & set(b):
        p.error(f"{args.a[1]} and {args.b[1]} share no case")
    table = markdown(args.a[0], args.b[0], {m: paired(a, b, m) for m in args.metrics})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()

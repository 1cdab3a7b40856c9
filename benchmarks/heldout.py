"""Held-out scores of a bundle, as a user gets them: ``medmtl infer`` + ``medmtl evaluate`` on one fold.

For each scenario the fold's cases are written to a datalist that leaves out the scenario's absent
contrasts (the case simply lacks them, as a site that did not acquire them), inferred whole-volume
by the ``medmtl infer`` command and scored by ``medmtl evaluate`` against the full datalist (so a
synthesised contrast is compared with the acquired one). Scenarios: ``all`` (four contrasts),
``no_t1c`` (a study without gadolinium); with ``--missing-each``, each contrast missing in turn
(``no_t1n``, ``no_t1c``, ``no_t2w``, ``no_t2f``: the BraSyn setting); with ``--handback``, ``synth_t1c``:
the t1c synthesised in ``no_t1c`` handed back as if acquired and the case segmented again (the
BraSyn downstream test); with ``--subsets``, every non-empty subset of the four contrasts (the
protocol of RFNet, Ding et al. ICCV 2021; mmFormer, Zhang et al. MICCAI 2022; M3AE, Liu et al.
AAAI 2023).

    python benchmarks/heldout.py --bundle bundles/brats_mtl --datalist runs/datalist.json --fold 0 \
        --out runs/heldout [--missing-each] [--handback] [--subsets]

Writes ``OUT/<scenario>/pred``, ``OUT/<scenario>/evaluation``, ``OUT/heldout.json`` / ``.md``; with
``--missing-each``, ``OUT/missing.md`` (each missing contrast beside its nearest copy, our brain and
tumour scores and the BraSyn ones); with ``--handback``, ``OUT/handback.md`` (Dice with the real t1c,
the synthesised one, and none); with ``--subsets``, ``OUT/subsets.md`` (Dice and the SSIM of each
synthesised absent contrast).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl.metrics import NEAREST

FOUR = ("t1n", "t1c", "t2w", "t2f")
REGIONS = ("WT", "TC", "ET")


def scenarios(subsets: bool, missing_each: bool = False) -> dict[str, tuple[str, ...]]:
    """Scenario name -> contrasts present."""
    out = {"all": FOUR, "no_t1c": ("t1n", "t2w", "t2f")}
    if missing_each:
        for c in FOUR:
            out[f"no_{c}"] = tuple(x for x in FOUR if x != c)
    if subsets:
        for k in (1, 2, 3):
            for combo in itertools.combinations(FOUR, k):
                if combo not in out.values():  # t1n, t2w, t2f is already ``no_t1c``
                    out["only_" + "+".join(combo)] = combo
    return out


def fold_datalist(datalist: Path, fold: int, present: Sequence[str], out: Path) -> Path:
    """The fold's labelled cases, each holding only the ``present`` contrasts (relative paths kept)."""
    doc = json.loads(datalist.read_text())
    root = doc.get("dataset_dir") or str(datalist.parent)
    entries = []
    for e in doc["training"]:
        if e.get("fold") != fold:
            continue
        e = dict(e)
        order = [c for c in e["contrasts"] if c in present]
        e["image"] = [e[c] for c in order]
        e["contrasts"] = order
        for c in FOUR:
            if c not in present:
                e.pop(c, None)
        entries.append(e)
    if not entries:
        raise ValueError(f"{datalist}: fold {fold} holds no labelled case")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**doc, "dataset_dir": root, "training": entries, "testing": []}, indent=1))
    return out


def handback_datalist(datalist: Path, fold: int, synth_pred: Path, out: Path) -> Path:
    """The fold's cases with their t1c replaced by the one synthesised without it (``synth_pred``).

    The case files are linked into ``out.parent / "data"`` (the datalist's paths stay inside its
    dataset folder); the label comes along for scoring.
    """
    doc = json.loads(datalist.read_text())
    root = Path(doc.get("dataset_dir") or datalist.parent).absolute()
    data = out.parent / "data"
    entries = []
    for e in doc["training"]:
        if e.get("fold") != fold:
            continue
        synth = synth_pred / f"{e['case_id']}_t1c_synth.nii.gz"
        if not synth.is_file():
            raise FileNotFoundError(f"{synth} not found: run the no_t1c scenario first")
        sources = {c: root / e[c] for c in FOUR if c != "t1c"} | {"t1c": synth}
        if e.get("label"):
            sources["label"] = root / e["label"]
        case_dir = data / e["case_id"]
        case_dir.mkdir(parents=True, exist_ok=True)
        entry = {k: v for k, v in e.items() if k not in (*FOUR, "label", "image")}
        for key, src in sources.items():
            link = case_dir / f"{key}.nii.gz"
            if not link.exists():
                link.symlink_to(src.resolve())
            entry[key] = f"{e['case_id']}/{key}.nii.gz"
        entry["image"] = [entry[c] for c in FOUR]
        entry["contrasts"] = list(FOUR)
        entries.append(entry)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({**doc, "dataset_dir": str(data), "training": entries, "testing": []}, indent=1)
    )
    return out


def medmtl(*args: str) -> None:
    """Run a ``medmtl`` command as a user would; fail loudly."""
    cmd = [sys.executable, "-m", "medmtl.cli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def run_scenario(
    bundle: Path,
    datalist: Path,
    fold: int,
    name: str,
    present: Sequence[str],
    out: Path,
    fresh: bool = False,
    probabilities: bool = False,
) -> dict:
    """Infer and evaluate one scenario; returns its ``summary.json`` metrics.

    A scenario already scored in ``out`` is reused (a killed run resumes) unless ``fresh``.
    """
    summary = out / name / "evaluation" / "summary.json"
    if summary.is_file() and not fresh:
        return json.loads(summary.read_text())["metrics"]
    if name == "synth_t1c":
        case_list = handback_datalist(datalist, fold, out / "no_t1c" / "pred", out / name / "datalist.json")
    else:
        case_list = fold_datalist(datalist, fold, present, out / name / "datalist.json")
    pred = out / name / "pred"
    extra = ["--probabilities"] if probabilities else []  # for benchmarks/thresholds.py
    medmtl(
        "infer", "--datalist", case_list, "--section", "training", "--bundle", bundle, "--out", pred, *extra
    )
    ids = [e["case_id"] for e in json.loads(case_list.read_text())["training"]]
    medmtl("evaluate", pred, "--datalist", datalist, "--out", out / name / "evaluation", "--no-figures",
           "--cases", *ids)  # fmt: skip
    return json.loads((out / name / "evaluation" / "summary.json").read_text())["metrics"]


def _cell(metrics: dict[str, Any], key: str, digits: int = 3) -> str:
    s = metrics.get(key)
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(results: dict[str, dict[str, Any]], present: dict[str, tuple[str, ...]]) -> str:
    """The held-out table: Dice / HD95 per region, synthesised t1c SSIM beside T1 copied."""
    head = (
        "| inputs | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 | t1c SSIM brain | "
        "t1c SSIM tumour | T1 copied SSIM brain | t1c PSNR brain |\n" + "| --- " * 11 + "|"
    )
    rows = [head]
    for name, m in results.items():
        cells = [", ".join(present[name])]
        cells += [_cell(m, f"Dice_{r}") for r in REGIONS] + [_cell(m, f"HD95_{r}", 1) for r in REGIONS]
        absent_t1c = "t1c" not in present[name]
        for key in ("t1c_SSIM_brain", "t1c_SSIM_tumour", "t1c_baseline_SSIM_brain"):
            cells.append(_cell(m, key) if absent_t1c else "-")
        cells.append(_cell(m, "t1c_PSNR_brain", 1) if absent_t1c else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def missing_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Each contrast synthesised when it is the missing one, beside its nearest acquired contrast copied."""
    head = (
        "| missing | copied | SSIM brain | copy | SSIM tumour | copy | PSNR brain | copy "
        "| BraSyn SSIM tumour | copy | BraSyn SSIM non-tumour | copy |\n" + "| --- " * 12 + "|"
    )
    rows = [head]
    for c in FOUR:
        m = results.get(f"no_{c}")
        if not m:
            continue
        source = NEAREST[c]
        cells = [c, source]
        for key, digits in (("SSIM_brain", 3), ("SSIM_tumour", 3), ("PSNR_brain", 1),
                            ("BraSynSSIM_tumour", 3), ("BraSynSSIM_nontumour", 3)):  # fmt: skip
            cells += [_cell(m, f"{c}_{key}", digits), _cell(m, f"{c}_baseline_{key}", digits)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def handback_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Dice with the real t1c, with the synthesised t1c handed back as if acquired, and without t1c."""
    rows = ["| t1c given | WT Dice | TC Dice | ET Dice |\n| --- | --- | --- | --- |"]
    for name, what in (("all", "acquired"), ("synth_t1c", "synthesised"), ("no_t1c", "none")):
        if name in results:
            rows.append(
                f"| {what} | " + " | ".join(_cell(results[name], f"Dice_{r}") for r in REGIONS) + " |"
            )
    return "\n".join(rows) + "\n"


def subsets_markdown(results: dict[str, dict[str, Any]], present: dict[str, tuple[str, ...]]) -> str:
    """The missing-contrast table: Dice per region and the brain SSIM of each synthesised absent contrast."""
    head = (
        "| inputs | WT Dice | TC Dice | ET Dice | synthesised SSIM brain (absent contrasts) |\n"
        + "| --- " * 5
        + "|"
    )
    rows = [head]
    for name, m in results.items():
        cells = [", ".join(present[name])] + [_cell(m, f"Dice_{r}") for r in REGIONS]
        absent = [c for c in FOUR if c not in present[name]]
        ssim = [f"{c} {m[f'{c}_SSIM_brain']['mean']:.3f}" for c in absent if m.get(f"{c}_SSIM_brain")]
        cells.append("; ".join(ssim) or "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the held-out evaluation; returns ``{scenario: metrics}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder with trained weights")
    p.add_argument("--datalist", type=Path, required=True, help="datalist from `medmtl prepare`")
    p.add_argument("--fold", type=int, default=0, help="held-out fold")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subsets", action="store_true", help="every non-empty subset of the four contrasts")
    p.add_argument("--missing-each", action="store_true", help="each contrast missing in turn")
    p.add_argument("--handback", action="store_true", help="segment again with the synthesised t1c as input")
    p.add_argument("--fresh", action="store_true", help="redo scenarios already scored in OUT")
    p.add_argument("--only", nargs="+", metavar="SCENARIO", help="run only these scenarios (e.g. no_t1c)")
    p.add_argument("--probabilities", action="store_true", help="also write region probabilities")
    args = p.parse_args(argv)
    present = scenarios(args.subsets, args.missing_each)
    if args.handback:
        present["synth_t1c"] = FOUR
    if args.only:
        unknown = sorted(set(args.only) - set(present))
        if unknown:
            p.error(f"unknown scenario(s) {unknown}; expected some of {sorted(present)}")
        present = {k: v for k, v in present.items() if k in args.only}
    results = {}
    for name, contrasts in present.items():
        results[name] = run_scenario(
            args.bundle, args.datalist, args.fold, name, contrasts, args.out, args.fresh, args.probabilities
        )
        print(
            f"{name}: " + ", ".join(f"{r} {_cell(results[name], f'Dice_{r}')}" for r in REGIONS), flush=True
        )
    (args.out / "heldout.json").write_text(json.dumps(results, indent=1))
    (args.out / "heldout.md").write_text(markdown(results, present))
    if args.missing_each:
        (args.out / "missing.md").write_text(missing_markdown(results))
        print(missing_markdown(results))
    if args.handback:
        (args.out / "handback.md").write_text(handback_markdown(results))
        print(handback_markdown(results))
    if args.subsets:
        (args.out / "subsets.md").write_text(subsets_markdown(results, present))
        print(subsets_markdown(results, present))
    print(markdown(results, present))
    return results


if __name__ == "__main__":
    main()

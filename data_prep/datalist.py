"""Discover and validate the cases of a dataset folder and write a datalist with cross-validation folds.

``medmtl prepare DATA_DIR --out datalist.json`` writes a MONAI / Decathlon-style datalist whose paths
are relative to DATA_DIR: labelled cases in ``training`` (each with its patient-grouped ``fold``),
cases without a label map in ``testing`` (or, with ``--unlabelled train``, in ``training`` without a
``label``: unlabelled studies that train the synthesis loss only), and bad cases in ``skipped`` with
the reason. A report (``datalist.report.json``) is written beside it. Both files are written whole or
not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.layouts import LAYOUTS, Case, discover
from data_prep.validate import CaseReport, Problem, validate_case
from medmtl.contrasts import CONTRASTS
from medmtl.io import write_json
from medmtl.labels import REGIONS, check_convention

#: Where ``medmtl prepare`` puts cases without a label map: inference-only, or unlabelled training.
UNLABELLED_PLACES: tuple[str, ...] = ("test", "train")


class DatasetValidationError(ValueError):
    """Raised by :func:`prepare` in strict mode when any case has a problem; nothing is written.

    Args:
        message: what went wrong, one line per bad case.
        report: the report that would have been written.
    """

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def report_path(out: str | os.PathLike) -> Path:
    """Where the report of a datalist goes: ``datalist.json`` -> ``datalist.report.json``."""
    out = Path(out)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.report.json")


def assign_folds(patient_ids: Sequence[str], folds: int, seed: int = 0) -> list[int]:
    """Group k-fold: put every case in a fold, all cases of one patient in the same fold.

    Patients are shuffled with ``seed``, then taken largest group first and each given to the fold
    that holds the fewest cases so far, so fold sizes differ by at most the largest group's size.
    The result depends only on the multiset of patient ids and the seed, not on the input order.

    Args:
        patient_ids: the patient of each case.
        folds: number of folds (at least 1).
        seed: shuffling seed.

    Returns:
        The fold (0 .. folds-1) of each case, in input order.

    Raises:
        ValueError: if ``folds`` < 1 or there are fewer patients than folds.
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(patient_ids):
        groups.setdefault(pid, []).append(i)
    if patient_ids and len(groups) < folds:
        raise ValueError(
            f"cannot make {folds} folds from {len(groups)} patients ({len(patient_ids)} labelled cases); "
            f"use --folds {max(len(groups), 1)} or fewer"
        )
    out = [0] * len(patient_ids)
    for pid, fold in _balanced_folds(groups, folds, seed).items():
        for i in groups[pid]:
            out[i] = fold
    return out


def _balanced_folds(groups: dict[str, list[int]], folds: int, seed: int) -> dict[str, int]:
    # Patients shuffled with the seed, largest group first, each to the fold holding fewest cases.
    patients = sorted(groups)
    shuffled = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    shuffled.sort(key=lambda p: len(groups[p]), reverse=True)  # stable: the shuffle breaks ties
    sizes = [0] * folds
    fold_of = {}
    for pid in shuffled:
        fold = sizes.index(min(sizes))
        sizes[fold] += len(groups[pid])
        fold_of[pid] = fold
    return fold_of


def assign_unlabelled_folds(
    patient_ids: Sequence[str], labelled_folds: Mapping[str, int], folds: int, seed: int = 0
) -> list[int]:
    """Folds of unlabelled training studies, grouped by patient with the labelled cases.

    A study of a patient who also has a labelled case goes to that case's fold, so no patient is in
    both the training and the validation side of a split. The other patients are spread over the folds
    as :func:`assign_folds` does, among themselves, so the folds of the labelled cases are the same
    with or without the unlabelled studies.

    Args:
        patient_ids: the patient of each unlabelled study.
        labelled_folds: fold of each patient that has labelled cases.
        folds: number of folds (at least 1); fewer new patients than folds is allowed.
        seed: shuffling seed.

    Returns:
        The fold of each study, in input order.
    """
    if folds < 1:
        raise ValueError(f"folds must be at least 1, got {folds}")
    groups: dict[str, list[int]] = {}
    for i, pid in enumerate(patient_ids):
        if pid not in labelled_folds:
            groups.setdefault(pid, []).append(i)
    fold_of = {**_balanced_folds(groups, folds, seed), **labelled_folds}
    return [int(fold_of[pid]) for pid in patient_ids]


def case_entry(case: Case, report: CaseReport, fold: int | None = None) -> dict[str, Any]:
    """The datalist entry of a validated case (paths relative to the dataset folder).

    Args:
        case: the case.
        report: its validation report (gives the label convention).
        fold: its fold; None for an inference-only case.

    Returns:
        A dict with ``case_id, patient_id, dataset, image, contrasts`` (the channel order of ``image``),
        per-contrast keys (per-contrast layouts), ``missing`` (when contrasts are missing),
        ``label, label_convention, fold`` (labelled cases) or ``label_convention`` alone.
    """
    entry: dict[str, Any] = {"case_id": case.case_id, "patient_id": case.patient_id, "dataset": case.dataset}
    if case.image_4d is not None:
        entry["image"] = case.image_4d
        entry["contrasts"] = list(case.channels)
    else:
        present = [c for c in CONTRASTS if c in case.images]
        entry["image"] = [case.images[c] for c in present]
        entry["contrasts"] = present
        entry.update({c: case.images[c] for c in present})
    if case.missing:
        entry["missing"] = case.missing
    if case.label is not None:
        entry["label"] = case.label
    entry["label_convention"] = report.convention
    if fold is not None:
        entry["fold"] = fold
    return entry


def _validate_all(
    cases: Sequence[Case], convention: str | None, allow_missing: bool, workers: int, progress: bool
) -> list[CaseReport]:
    def check(case: Case) -> CaseReport:
        return validate_case(case, declared_convention=convention, allow_missing=allow_missing)

    bar = tqdm(
        total=len(cases), desc="validating", unit="case", disable=None if progress else True, file=sys.stderr
    )
    reports = []
    # Decompression and numpy release the GIL, so threads overlap the reading of files.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for rep in pool.map(check, cases):
            reports.append(rep)
            bar.update()
    bar.close()
    return reports


def _mark_duplicates(reports: Sequence[CaseReport]) -> None:
    # One case id must name one study: keep the first usable copy, skip the others.
    groups: dict[str, list[CaseReport]] = {}
    for rep in reports:
        groups.setdefault(rep.case.case_id, []).append(rep)
    for cid, copies in groups.items():
        kept = next((r for r in copies if r.ok), None)
        for rep in copies:
            if kept is not None and rep is not kept and rep.ok:
                rep.problems.append(
                    Problem(rep.case.folder, f"case id {cid} also found in {kept.case.folder}; kept that one")
                )


def prepare(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    strict: bool = False,
    convention: str | None = None,
    allow_missing: bool = False,
    workers: int = 1,
    progress: bool = False,
    unlabelled: str = "test",
) -> dict[str, Any]:
    """Discover, validate and list the cases under ``data_dir``; write the datalist and its report.

    Labelled and unlabelled studies may lie in the same folder or in sibling folders under it: a case
    without a label map is unlabelled. By default it is an inference-only case (``testing``); with
    ``unlabelled="train"`` it joins the ``training`` section without a ``label`` (and with a fold,
    grouped by patient with the labelled cases, :func:`assign_unlabelled_folds`), where it trains the
    synthesis loss only.

    Args:
        data_dir: the dataset folder (any depth; see :mod:`data_prep.layouts` for the layouts).
        out: the datalist JSON to write; the report goes beside it (:func:`report_path`).
        folds: number of patient-grouped cross-validation folds over the labelled cases.
        seed: seed of the fold assignment.
        strict: any bad case is an error and nothing is written; otherwise bad cases are skipped and listed.
        convention: declare the label convention of every case (see :data:`medmtl.labels.CONVENTIONS`);
            a label map whose values contradict it is a problem. By default it is detected per case,
            falling back to the layout's convention when the values do not decide.
        allow_missing: keep cases that lack some contrasts (listed under ``missing``) instead of skipping.
        workers: threads reading files in parallel.
        progress: show a progress bar on stderr (when it is a terminal).
        unlabelled: where cases without a label map go: ``"test"`` (the ``testing`` section) or
            ``"train"`` (the ``training`` section, as unlabelled studies).

    Returns:
        The report (also written to :func:`report_path`): counts per dataset, conventions, folds,
        skipped cases with reasons, warnings, ignored files, timing.

    Raises:
        FileNotFoundError: if ``data_dir`` is not a folder.
        ValueError: if no case is found, no case is usable, the folds cannot be made, or ``unlabelled``
            is unknown.
        DatasetValidationError: in strict mode, when any case has a problem.
    """
    start = time.perf_counter()
    if unlabelled not in UNLABELLED_PLACES:
        raise ValueError(f"unlabelled must be one of {list(UNLABELLED_PLACES)}, got {unlabelled!r}")
    train_unlabelled = unlabelled == "train"
    if convention is not None:
        check_convention(convention)
    out_path = Path(out)
    if out_path.is_dir():
        raise ValueError(
            f"--out {out} is a folder; expected the datalist file to write (e.g. {out}/datalist.json)"
        )
    found = discover(data_dir)
    root = found.root
    if not found.cases:
        raise ValueError(
            f"no cases found under {root}; expected one of the layouts: "
            + "; ".join(f"{lay.name}: {lay.description}" for lay in LAYOUTS.values())
        )

    reports = _validate_all(found.cases, convention, allow_missing, workers, progress)
    _mark_duplicates(reports)
    good = [r for r in reports if r.ok]
    bad = [r for r in reports if not r.ok]
    labelled = [r for r in good if r.case.labelled]
    unlabelled_cases = [r for r in good if not r.case.labelled]

    datasets: dict[str, Counter] = {}
    unlabelled_kind = "unlabelled" if train_unlabelled else "inference_only"
    for rep in reports:
        kind = "skipped" if not rep.ok else ("labelled" if rep.case.labelled else unlabelled_kind)
        datasets.setdefault(rep.case.dataset, Counter())[kind] += 1
    report: dict[str, Any] = {
        "data_dir": str(root),
        "datalist": str(out_path),
        "found": len(reports),
        "training": len(labelled) + (len(unlabelled_cases) if train_unlabelled else 0),
        "unlabelled_training": len(unlabelled_cases) if train_unlabelled else 0,
        "testing": 0 if train_unlabelled else len(unlabelled_cases),
        "skipped": len(bad),
        "unlabelled": unlabelled,
        "datasets": {
            name: {k: c[k] for k in ("labelled", "unlabelled", "inference_only", "skipped")}
            for name, c in sorted(datasets.items())
        },
        "conventions": dict(sorted(Counter(r.convention for r in labelled).items())),
        "convention_sources": dict(sorted(Counter(r.convention_source for r in labelled).items())),
        "declared_convention": convention,
        "folds": folds,
        "seed": seed,
        "fold_sizes": {},
        "unlabelled_fold_sizes": {},
        "skipped_cases": [_skipped(r) for r in bad],
        "warnings": [
            {"case_id": r.case.case_id, "file": w.file, "reason": w.reason}
            for r in reports
            for w in r.warnings
        ],
        "ignored_files": found.ignored,
        "seconds": 0.0,
    }

    if strict and bad:
        lines = [f"  {r.case.case_id}: {r.reason()}" for r in bad]
        raise DatasetValidationError(
            f"{len(bad)} of {len(reports)} cases under {root} have problems; nothing written (strict mode):\n"
            + "\n".join(lines),
            report,
        )
    if not good:
        raise ValueError(
            f"none of the {len(reports)} cases under {root} is usable:\n"
            + "\n".join(f"  {r.case.case_id}: {r.reason()}" for r in bad)
        )

    try:
        fold_of = assign_folds([r.case.patient_id for r in labelled], folds, seed)
    except ValueError as err:
        # Say why so few cases are left: the skipped ones and their reasons come before the fold error.
        skipped = "".join(f"\n  skipped {r.case.case_id}: {r.reason()}" for r in bad)
        raise ValueError(
            f"{len(reports)} case(s) found under {root}, {len(bad)} skipped, {len(labelled)} labelled "
            f"usable: {err}{skipped}"
        ) from None
    report["fold_sizes"] = {str(f): fold_of.count(f) for f in range(folds)} if labelled else {}
    training = [case_entry(r.case, r, f) for r, f in zip(labelled, fold_of)]
    testing = [case_entry(r.case, r) for r in unlabelled_cases]
    if train_unlabelled:
        known = {r.case.patient_id: f for r, f in zip(labelled, fold_of)}
        extra = assign_unlabelled_folds([r.case.patient_id for r in unlabelled_cases], known, folds, seed)
        training += [case_entry(r.case, r, f) for r, f in zip(unlabelled_cases, extra)]
        testing = []
        if unlabelled_cases:
            report["unlabelled_fold_sizes"] = {str(f): extra.count(f) for f in range(folds)}
    datalist = {
        "name": found.names[0] if found.names else root.name,
        "dataset_dir": str(root),
        "contrasts": list(CONTRASTS),
        "regions": list(REGIONS),
        "folds": folds,
        "seed": seed,
        "training": training,
        "testing": testing,
        "skipped": [_skipped(r) for r in bad],
    }
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_json(report_path(out_path), report)
    write_json(out_path, datalist)
    return report


def _skipped(rep: CaseReport) -> dict[str, Any]:
    return {
        "case_id": rep.case.case_id,
        "dataset": rep.case.dataset,
        "files": rep.case.files,
        "reason": rep.reason(),
    }


def format_summary(report: dict[str, Any]) -> str:
    """Human-readable summary of a :func:`prepare` report.

    Args:
        report: the dict :func:`prepare` returns.

    Returns:
        Several lines of text.
    """
    n_unlabelled = report.get("unlabelled_training", 0)
    as_training = report.get("unlabelled") == "train"
    unlabelled = f"{n_unlabelled} unlabelled (training, synthesis loss only), " if as_training else ""
    lines = [
        f"{report['data_dir']}: {report['found']} cases found, "
        f"{report['training'] - n_unlabelled} labelled (training), {unlabelled}"
        f"{report['testing']} inference-only (testing), {report['skipped']} skipped "
        f"[{report['seconds']:.1f} s]",
    ]
    # The unlabelled column only where unlabelled studies train; otherwise they are inference-only.
    kinds = ["labelled", "unlabelled", "inference_only", "skipped"]
    if not as_training:
        kinds.remove("unlabelled")
    widths = {"labelled": 10, "unlabelled": 12, "inference_only": 16, "skipped": 9}
    lines.append(f"  {'dataset':<16}" + "".join(f"{k.replace('_', '-'):>{widths[k]}}" for k in kinds))
    for name, c in report["datasets"].items():
        lines.append(f"  {name:<16}" + "".join(f"{c.get(k, 0):>{widths[k]}}" for k in kinds))
    if report["conventions"]:
        conv = ", ".join(f"{k} {v}" for k, v in report["conventions"].items())
        src = ", ".join(f"{k} {v}" for k, v in report["convention_sources"].items())
        lines.append(f"  label conventions: {conv} ({src})")
    if report["fold_sizes"]:
        sizes = " ".join(f"{k}:{v}" for k, v in report["fold_sizes"].items())
        lines.append(f"  folds (seed {report['seed']}), cases per fold: {sizes}")
    if report.get("unlabelled_fold_sizes"):
        sizes = " ".join(f"{k}:{v}" for k, v in report["unlabelled_fold_sizes"].items())
        lines.append(f"  unlabelled studies per fold (grouped by patient with the labelled): {sizes}")
    for s in report["skipped_cases"]:
        lines.append(f"  skipped {s['case_id']}: {s['reason']}")
    for w in report["warnings"]:
        lines.append(f"  warning {w['case_id']}: {w['file']}: {w['reason']}")
    if report["ignored_files"]:
        shown = ", ".join(report["ignored_files"][:5]) + (" ..." if len(report["ignored_files"]) > 5 else "")
        lines.append(f"  ignored {len(report['ignored_files'])} NIfTI file(s) of no known layout: {shown}")
    lines.append(f"  wrote {report['datalist']} and {report_path(report['datalist'])}")
    return "\n".join(lines)


def cli_main(args: argparse.Namespace) -> int:
    """Run ``medmtl prepare``.

    Args:
        args: parsed arguments from :func:`add_cli_arguments`.

    Returns:
        0 on success, 1 when strict validation fails (nothing written).
    """
    try:
        report = prepare(
            args.data_dir,
            args.out,
            folds=args.folds,
            seed=args.seed,
            strict=args.strict,
            convention=args.convention,
            allow_missing=args.allow_missing,
            workers=args.workers,
            progress=True,
            unlabelled=getattr(args, "unlabelled", "test"),
        )
    except DatasetValidationError as err:
        print(f"medmtl prepare: error: {err}", file=sys.stderr)
        return 1
    print(format_summary(report))
    return 0


__all__ = [
    "UNLABELLED_PLACES",
    "DatasetValidationError",
    "assign_folds",
    "assign_unlabelled_folds",
    "case_entry",
    "cli_main",
    "format_summary",
    "prepare",
    "report_path",
]

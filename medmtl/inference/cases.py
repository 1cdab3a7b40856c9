"""What inference runs on: case folders, loose files and datalists, checked before any work.

Everything a user can get wrong about a case (a missing or unreadable file, a 2D/4D image, contrasts
on different grids, a missing input contrast) is found here and reported naming the user's file.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medmtl.contrasts import CONTRASTS, canonical
from medmtl.datalist import DATALIST_SECTIONS


def shard(entries: Sequence[dict]) -> list[dict]:
    """This rank's share of the cases under ``torchrun`` (all of them in a single process).

    Uses MONAI's ``partition_dataset``: interleaved, non-overlapping shards, one per rank (ranks
    beyond the number of cases get none).

    Args:
        entries: all cases.

    Returns:
        The cases this process handles.
    """
    from monai.data import partition_dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1 or not entries:
        return list(entries)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    # partition_dataset refuses more partitions than items; the surplus ranks simply have nothing to do.
    parts = partition_dataset(
        list(entries), num_partitions=min(world, len(entries)), shuffle=False, even_divisible=False
    )
    return parts[rank] if rank < len(parts) else []


def _entry_images(entry: Mapping[str, Any]) -> list[Any]:
    image = entry.get("image")
    return [f for f in (image if isinstance(image, (list, tuple)) else [image]) if f is not None]


def _entry_files(entry: Mapping[str, Any]) -> list[str]:
    """The image files of an entry (in-memory images, from ``predict``, are not files)."""
    return [str(f) for f in _entry_images(entry) if isinstance(f, (str, os.PathLike)) and f]


def check_cases(entries: Sequence[dict], inputs: Sequence[str], input_mask: bool) -> list[dict]:
    """Check, before any work, that every case can be run by the model; return the entries unchanged.

    Cheap checks only (no voxel data are read): the image files exist, and the case holds every
    input contrast of a model trained without an input mask (with one, a missing input is allowed,
    zero-filled and flagged, but at least one input must be there).

    Args:
        entries: datalist-style entries (``case_id``, ``image``, ``contrasts``).
        inputs: the model's input contrasts.
        input_mask: whether the model was trained with an input mask.

    Returns:
        ``entries``.

    Raises:
        FileNotFoundError: when an image file does not exist, naming the case and the file.
        ValueError: when a case lacks an input contrast the model needs, naming the case's folder.
    """
    wanted = [canonical(c) for c in inputs]
    for entry in entries:
        cid = entry.get("case_id", "?")
        files = _entry_files(entry)
        if not _entry_images(entry):
            raise ValueError(f"case {cid}: no image file in its entry {dict(entry)}")
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"case {cid}: image file {f} does not exist")
        present = [canonical(c) for c in entry.get("contrasts") or CONTRASTS]
        absent = [c for c in wanted if c not in present]
        where = Path(files[0]).parent if files else "arrays"
        if absent and (not input_mask or len(absent) == len(wanted)):
            need = "all of" if not input_mask else "at least one of"
            why = " (it was trained without an input mask)" if not input_mask else ""
            raise ValueError(
                f"case {cid} ({where}): missing input contrast(s) {', '.join(absent)} "
                f"(found {', '.join(present)}); this model needs {need} {', '.join(wanted)}{why}"
            )
    return list(entries)


def datalist_cases(
    datalist: str | os.PathLike | None, dataset_dir: str | os.PathLike | None, section: str = "all"
) -> list[dict]:
    """Cases of a medmtl datalist for inference: ``training``, ``testing`` or ``all`` of them.

    Args:
        datalist: the datalist JSON.
        dataset_dir: root its paths are relative to (the datalist's own record when None).
        section: which section(s).

    Returns:
        Entries with absolute paths.
    """
    from medmtl.datalist import load_datalist, read_datalist

    if not datalist:
        raise ValueError("no cases: give case folders or a datalist")
    if section not in DATALIST_SECTIONS:
        raise ValueError(f"unknown datalist section {section!r}; expected one of {list(DATALIST_SECTIONS)}")
    sections = ["training", "testing"] if section == "all" else [section]
    raw = read_datalist(datalist)
    out: list[dict] = []
    for sec in sections:
        if raw.get(sec):
            out += load_datalist(datalist, dataset_dir, section=sec)
    return out


def case_entry(case: str | os.PathLike | Mapping[str, Any], case_id: str | None = None) -> dict[str, Any]:
    """Turn what a user hands in into a validated, datalist-style entry with absolute paths.

    The case is checked as ``medmtl prepare`` checks it (readable headers, 3D, one grid, label values),
    with missing contrasts allowed: the model is told which inputs are absent. The voxel data are
    read once, by the pipeline, which checks them as it loads them (truncated files, non-finite
    values: :class:`medmtl.transforms.LoadImagesd`).

    Args:
        case: a case folder in any supported layout, or a mapping ``{contrast: path}`` with any
            contrast spelling (a subset of contrasts is allowed).
        case_id: identifier; derived from the folder name or first file when omitted.

    Returns:
        ``{"case_id", "image": [paths], "contrasts": [names], "label_convention", ...}``.

    Raises:
        FileNotFoundError: for a missing folder or file.
        ValueError: when nothing usable is found, naming the file and the problem.
    """
    from data_prep.datalist import case_entry as datalist_entry
    from data_prep.layouts import Case, discover
    from data_prep.validate import validate_case

    if isinstance(case, Mapping):
        images = {}
        for key, path in case.items():
            if not Path(path).is_file():
                raise FileNotFoundError(f"{key} file {path} does not exist")
            images[canonical(key)] = str(Path(path).resolve())
        if not images:
            raise ValueError(f"no contrast files given in {dict(case)}")
        first = next(iter(images.values()))
        cid = case_id or _stem_id(first)
        layout, convention_source = files_layout(images.values())
        found = Case(
            case_id=cid,
            patient_id=cid,
            dataset="files",
            layout=layout.name,
            root=Path("/"),
            images=images,
            convention=layout.convention,
        )
        root = Path("/")
    else:
        folder = Path(case)
        if not folder.exists():
            raise FileNotFoundError(f"case folder {folder} does not exist")
        cases = discover(folder).cases
        if not cases:
            raise ValueError(
                f"{folder}: no case in a known layout (BraTS 2018-21 _t1/_t1ce/_t2/_flair, BraTS 2023 "
                "-t1n/-t1c/-t2w/-t2f, UPENN-GBM _T1/_T1GD/_T2/_FLAIR, MSD imagesTr)"
            )
        if len(cases) > 1:
            where = "; ".join(f"{c.case_id} in {Path(c.root) / c.folder} ({c.layout})" for c in cases)
            raise ValueError(
                f"{folder} holds {len(cases)} cases ({where}); give one case folder or a datalist"
            )
        found, root = cases[0], Path(cases[0].root)
    # Headers only: the pipeline reads each volume once and checks it then (LoadImagesd).
    report = validate_case(found, allow_missing=True, read_images=False)
    if not report.ok and found.label is not None:
        # Inference never reads the ground truth: a bad label file must not block it. The output
        # convention then comes from the layout alone (and the sidecar says which it is).
        without_label = dataclasses.replace(found, label=None)
        retry = validate_case(without_label, allow_missing=True, read_images=False)
        if retry.ok:
            bad = [str(p) for p in report.problems if str(found.label) in str(p)]
            warnings.warn(
                f"case {found.case_id}: ignoring its label file {found.label} "
                f"({'; '.join(bad) or 'unusable'}); inference does not need it",
                stacklevel=2,
            )
            found, report = without_label, retry
    if not report.ok:
        where = "" if isinstance(case, Mapping) else f" ({root.resolve()})"  # loose files are named in full
        raise ValueError(f"case {found.case_id}{where}: {report.reason()}")
    entry = datalist_entry(found, report)
    entry.pop("missing", None)
    absolute = lambda p: str((root / p).resolve())  # noqa: E731
    entry["image"] = (
        [absolute(p) for p in entry["image"]]
        if isinstance(entry["image"], list)
        else absolute(entry["image"])
    )
    for key in ("label", *CONTRASTS):
        if entry.get(key):
            entry[key] = absolute(entry[key])
    if case_id:
        entry["case_id"] = case_id
    if isinstance(case, Mapping):
        entry["convention_source"] = convention_source
    else:
        entry["convention_source"] = {"detected": "label values", "declared": "declared"}.get(
            report.convention_source, "folder layout"
        )
    return entry


def files_layout(paths: Iterable[str]) -> tuple[Any, str]:
    """The release layout that loose files of one case are named in, so that they get its label values.

    A case handed in as ``{contrast: path}`` gets the same answer as its folder: BraTS 2018-2021 file
    names (``_t1ce``, ``_flair``) mean ET = 4, BraTS 2023 names (``-t1c``) ET = 3.

    Args:
        paths: the case's image files.

    Returns:
        ``(layout, source)``: the layout of :data:`data_prep.layouts.LAYOUTS` and ``"file names"``, or
        the BraTS 2023 layout and ``"default (file names name no release)"`` with a warning when the
        names do not agree on one release.
    """
    from data_prep.layouts import LAYOUTS, layout_of, split_case_file
    from medmtl.io import strip_nifti_suffix

    found = set()
    for path in paths:
        stem = strip_nifti_suffix(Path(path).name)
        parts = split_case_file(stem) if stem else None
        if parts is None:
            found.add(None)
            continue
        case_id, separator, _ = parts
        found.add(layout_of(separator, [stem[len(case_id) + 1 :]]).name)
    if len(found) == 1 and None not in found:
        return LAYOUTS[found.pop()], "file names"
    warnings.warn(
        "the file names name no BraTS release: outputs use BraTS 2023 label values (ET = 3); "
        "pass convention='brats2021' (CLI: --convention) for ET = 4",
        stacklevel=3,
    )
    return LAYOUTS["brats2023"], "default (file names name no release)"


def _stem_id(path: str) -> str:
    from medmtl.io import strip_nifti_suffix

    name = strip_nifti_suffix(Path(path).name) or Path(path).name
    for sep in ("_", "-"):
        if sep in name:
            return name.rsplit(sep, 1)[0]
    return name

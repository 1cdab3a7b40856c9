"""Read a medmtl datalist (written by ``medmtl prepare``) into MONAI-ready case dicts.

Paths in a datalist are relative to the dataset folder. :func:`load_datalist` joins them to that
folder and refuses any that would lead outside it (an absolute path, ``..`` components, or a
symbolic link pointing elsewhere), so a datalist cannot make a training or inference job read
files it was not meant to.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medmtl.contrasts import CONTRASTS, canonical_list

logger = logging.getLogger("medmtl.datalist")

#: sections of a datalist a command can run on (``all``: training then testing)
DATALIST_SECTIONS: tuple[str, ...] = ("all", "training", "testing")

#: Entry keys that hold file paths: the image (a list of per-contrast files or one 4D file), the label
#: map and the per-contrast files.
PATH_KEYS: tuple[str, ...] = ("image", "label", *CONTRASTS)

#: Sections a datalist may hold.
SECTIONS: tuple[str, ...] = ("training", "testing", "skipped")


def _resolve(base: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a relative file path (string), found {value!r}")
    rel = Path(value)
    if rel.is_absolute():
        raise ValueError(f"{where}: absolute path {value!r} refused; datalist paths are relative to {base}")
    # Lexical containment: no ``..`` may lead out of the dataset folder, but symlinks inside it (a
    # common way to lay out a dataset) are the user's choice and are followed.
    joined = Path(os.path.normpath(base / rel))
    if not joined.is_relative_to(Path(os.path.normpath(base))):
        raise ValueError(f"{where}: path {value!r} leads to {joined}, outside the dataset folder {base}")
    return str(joined)


def _dataset_dir(doc: Mapping[str, Any], path: Path, dataset_dir: str | os.PathLike | None) -> Path:
    if dataset_dir is not None:
        base, origin = Path(dataset_dir), "the dataset_dir argument"
    elif doc.get("dataset_dir"):
        base, origin = Path(doc["dataset_dir"]), f"'dataset_dir' in {path}"
    else:
        base, origin = path.parent, f"the folder of {path}"
    base = base.expanduser().absolute()
    if not base.is_dir():
        raise FileNotFoundError(
            f"dataset folder {base} (from {origin}) does not exist; pass dataset_dir= (or --dataset-dir) "
            "pointing at the folder the datalist paths are relative to"
        )
    return base


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file, with errors that name it.

    Args:
        path: the datalist JSON.

    Returns:
        The parsed document (paths untouched).

    Raises:
        FileNotFoundError: when it does not exist.
        ValueError: when it is not JSON, or not a JSON object.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"datalist {path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"datalist {path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(
            f"datalist {path}: expected a JSON object with sections {SECTIONS}, found {type(doc).__name__}"
        )
    return doc


def datalist_root(path: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> Path:
    """The folder a datalist's relative paths resolve against.

    Args:
        path: the datalist JSON.
        dataset_dir: an explicit root (wins when given).

    Returns:
        ``dataset_dir`` if given, else the ``dataset_dir`` the datalist records, else its own folder.

    Raises:
        FileNotFoundError: when the datalist or the root does not exist.
        ValueError: when the datalist is not a JSON object.
    """
    return _dataset_dir(read_datalist(path), Path(path), dataset_dir)


def _fold_set(folds: Iterable[int] | int | None) -> set[int] | None:
    if folds is None:
        return None
    return {int(folds)} if isinstance(folds, int) else {int(f) for f in folds}


def labelled_entries(entries: Iterable[Mapping[str, Any]], what: str = "cases") -> list[dict[str, Any]]:
    """The entries that have a ``label``, saying in a log line how many unlabelled ones were left out.

    Validation, model selection and anything that reads label maps (lesion donors) need labelled cases;
    the training section may also hold unlabelled studies (``medmtl prepare --unlabelled train``).

    Args:
        entries: datalist entries.
        what: what the entries are, for the log line (e.g. ``"validation cases"``).

    Returns:
        Copies of the entries with a non-empty ``label``, in their order.
    """
    entries = list(entries)
    kept = [dict(e) for e in entries if e.get("label")]
    if len(kept) < len(entries):
        logger.info(
            "%d of %d %s have no label and are left out (only labelled cases are used here)",
            len(entries) - len(kept), len(entries), what,
        )  # fmt: skip
    return kept


def labelled_sampler(entries: Iterable[Mapping[str, Any]], labelled_fraction: float | None) -> Any:
    """A sampler that draws labelled cases with probability ``labelled_fraction``, whatever their share.

    With few labelled cases among many unlabelled studies, uniform shuffling gives the segmentation
    loss (labelled samples only) a small share of the iterations: 3 labelled among 20 studies see 15 %
    of them. Drawing with replacement, labelled and unlabelled groups each weighted as a whole, keeps
    that share fixed while the unlabelled studies still feed the synthesis loss.

    Args:
        entries: the training entries, in the dataset's order.
        labelled_fraction: the probability of drawing a labelled case, in (0, 1); None for none.

    Returns:
        A ``torch.utils.data.WeightedRandomSampler`` drawing ``len(entries)`` cases per epoch; None
        (the loader shuffles) when ``labelled_fraction`` is None; a plain ``RandomSampler`` when the
        entries are all of one kind.

    Raises:
        ValueError: for a fraction outside (0, 1).
    """
    if labelled_fraction is None:
        return None
    fraction = float(labelled_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1), got {labelled_fraction!r}")
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    flags = [bool(e.get("label")) for e in entries]
    n_lab = sum(flags)
    if n_lab in (0, len(flags)):
        return RandomSampler(flags)

    weights = [fraction / n_lab if f else (1.0 - fraction) / (len(flags) - n_lab) for f in flags]
    return WeightedRandomSampler(weights, num_samples=len(flags), replacement=True)


def load_datalist(
    path: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    folds: Iterable[int] | int | None = None,
    exclude_folds: Iterable[int] | int | None = None,
    labelled_only: bool = False,
) -> list[dict[str, Any]]:
    """Load one section of a datalist with every path made absolute and checked.

    Args:
        path: the datalist JSON.
        dataset_dir: folder the relative paths are resolved against; defaults to the ``dataset_dir``
            recorded in the file, else the datalist's own folder.
        section: ``"training"`` (labelled cases, and unlabelled studies that train the synthesis
            loss only) or ``"testing"`` (inference-only cases).
        folds: keep only these folds (e.g. ``[0]`` for the validation cases of fold 0).
        exclude_folds: drop these folds (e.g. ``[0]`` for the training cases of fold 0).
        labelled_only: keep only the entries with a ``label`` (validation and model selection), with a
            log line when some were left out (:func:`labelled_entries`).

    Returns:
        Copies of the section's entries, each path key (see :data:`PATH_KEYS`) replaced by an absolute
        path inside ``dataset_dir``. Other keys (``case_id``, ``contrasts``, ``label_convention``,
        ``fold``, ...) are kept as they are.

    Raises:
        FileNotFoundError: if the datalist or the dataset folder does not exist.
        ValueError: on invalid JSON, an unknown section, a path outside the dataset folder, folds asked of
            a section without folds, or a fold selection (or ``labelled_only``) that leaves no case.
    """
    path = Path(path)
    doc = read_datalist(path)
    if section not in doc:
        present = [s for s in SECTIONS if s in doc]
        raise ValueError(f"datalist {path} has no section {section!r} (sections present: {present})")
    entries = doc[section]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"datalist {path}: section {section!r} must be a list of objects")

    keep, drop = _fold_set(folds), _fold_set(exclude_folds)
    if keep is not None and drop is not None:
        raise ValueError("give folds or exclude_folds, not both")
    if keep is not None or drop is not None:
        unfolded = [e.get("case_id", i) for i, e in enumerate(entries) if "fold" not in e]
        if unfolded:
            raise ValueError(
                f"datalist {path}: section {section!r} has cases without a fold (e.g. {unfolded[0]})"
            )
        available = sorted({int(e["fold"]) for e in entries})
        entries = [
            e
            for e in entries
            if (keep is None or e["fold"] in keep) and (drop is None or e["fold"] not in drop)
        ]
        if not entries:
            raise ValueError(
                f"datalist {path}: no {section} case left with folds={sorted(keep or [])} "
                f"exclude_folds={sorted(drop or [])} (folds present: {available})"
            )

    if labelled_only:
        where = f"{section} cases" + (f" in folds {sorted(keep)}" if keep is not None else "")
        entries = labelled_entries(entries, f"{where} of {path.name}")
        if not entries:
            raise ValueError(
                f"datalist {path}: no labelled {where}; validation and model selection need cases with a "
                "'label'"
            )

    base = _dataset_dir(doc, path, dataset_dir)
    out = []
    for i, entry in enumerate(entries):
        case = f"datalist {path}, {section} case {entry.get('case_id', f'#{i}')}"
        item = dict(entry)
        for key in PATH_KEYS:
            if key not in item:
                continue
            value = item[key]
            if isinstance(value, list):
                item[key] = [_resolve(base, v, f"{case}, {key}[{j}]") for j, v in enumerate(value)]
            else:
                item[key] = _resolve(base, value, f"{case}, {key}")
        out.append(item)
    return out


def canonical_channel_order(entry: Mapping[str, Any]) -> list[int]:
    """Channel indices that put a loaded entry's image into canonical contrast order.

    ``image[canonical_channel_order(entry)]`` holds the entry's contrasts in the order t1n, t1c, t2w, t2f
    (those present); e.g. an MSD entry (FLAIR, T1w, T1gd, T2w) gives ``[1, 2, 3, 0]``.

    Args:
        entry: a datalist entry; its ``contrasts`` is the channel order of its loaded ``image``
            (canonical order when absent).

    Returns:
        One index per contrast present.
    """
    order = canonical_list(entry.get("contrasts") or CONTRASTS)
    return [order.index(c) for c in CONTRASTS if c in order]


__all__ = ["PATH_KEYS", "SECTIONS", "canonical_channel_order", "labelled_entries", "load_datalist"]

"""Find brain-tumour MRI cases on disk, whatever release layout they were downloaded in.

Supported layouts (any folder depth, ``.nii.gz`` or ``.nii``):

* ``brats2018-2021``: ``<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz`` (labels ET = 4);
* ``brats2023``: ``<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (labels ET = 3);
* ``upenn_gbm``: ``<id>/<id>_{FLAIR,T1,T1GD,T2,SEG}.nii.gz`` (BraTS 2018-21 label values);
* ``bids``: BIDS anatomical names, ``sub-<label>[_ses-<label>]_{T1w,ce-gadolinium_T1w,T2w,FLAIR}.nii.gz``
  (``ce-gd`` as well; no release's label values, so BraTS 2023 unless the label map says otherwise);
* ``msd``: Medical Segmentation Decathlon Task01, ``imagesTr/*.nii.gz`` (one 4D file per case, channels
  FLAIR, T1w, T1gd, T2w unless ``dataset.json`` says otherwise), ``labelsTr/``, ``imagesTs/``.

Contrast spellings are resolved only through :func:`medmtl.contrasts.canonical`. A case without a
label map is an inference-only case.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medmtl.contrasts import BIDS_SPELLINGS, CONTRASTS, canonical, canonical_list
from medmtl.io import NIFTI_SUFFIXES, medmtl_outputs, strip_nifti_suffix

#: Name (lower case) of the label map among the per-contrast files of a case.
LABEL_SUFFIX = "seg"

#: MSD Task01 channel order when ``dataset.json`` is absent (its documented "modality" table).
MSD_DEFAULT_CHANNELS: tuple[str, ...] = ("FLAIR", "T1w", "t1gd", "T2w")

#: MSD folders: images with labels, their labels, and images without labels.
MSD_FOLDERS: tuple[str, str, str] = ("imagesTr", "labelsTr", "imagesTs")


@dataclass(frozen=True)
class Layout:
    """A release's file naming and the label convention its maps use.

    Args:
        name: layout identifier.
        separator: character between the case id and the contrast name (empty for MSD).
        upper_case: True when the contrast names are written in capitals (UPENN-GBM).
        convention: the label convention of its label maps (see :mod:`medmtl.labels`).
        description: the pattern, for messages and docs.
    """

    name: str
    separator: str
    upper_case: bool
    convention: str
    description: str


LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        Layout("brats2018-2021", "_", False, "brats2021", "<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz"),
        Layout("brats2023", "-", False, "brats2023", "<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz"),
        Layout("upenn_gbm", "_", True, "brats2021", "<id>/<id>_{FLAIR,T1,T1GD,T2,SEG}.nii.gz"),
        Layout(
            "bids", "_", False, "brats2023", "sub-<id>[_ses-<id>]_{T1w,ce-gadolinium_T1w,T2w,FLAIR}.nii.gz"
        ),
        Layout("msd", "", False, "msd", "imagesTr/<id>.nii.gz (4D) + labelsTr/<id>.nii.gz, imagesTs/"),
    )
}


@dataclass(frozen=True)
class IdRule:
    """How a case id names its dataset, patient and time point.

    Args:
        pattern: regular expression matched against the whole case id; a group ``patient`` (and
            optionally ``timepoint``) splits the id; without it the case id is the patient id.
        dataset: the dataset name given to matching cases.
    """

    pattern: re.Pattern[str]
    dataset: str


#: First matching rule wins. Ids that match none keep patient = case id and dataset = layout name.
ID_RULES: tuple[IdRule, ...] = (
    IdRule(re.compile(r"Brats18_.+"), "brats2018"),
    IdRule(re.compile(r"BraTS19_.+"), "brats2019"),
    IdRule(re.compile(r"BraTS20_.+"), "brats2020"),
    IdRule(re.compile(r"BraTS2021_.+"), "brats2021"),
    # BraTS 2023+: BraTS-<cohort>-<patient>-<timepoint>, e.g. BraTS-GLI-00000-000.
    IdRule(re.compile(r"(?P<patient>BraTS-[A-Za-z]+-\d+)-(?P<timepoint>\d+)"), "brats2023"),
    # UPENN-GBM: <patient>_<scan>, e.g. UPENN-GBM-00006_11 (11 = first scan, 21 = follow-up).
    IdRule(re.compile(r"(?P<patient>UPENN-GBM-\d+)_(?P<timepoint>\d+)"), "upenn_gbm"),
)


@dataclass
class Case:
    """One imaging study found on disk.

    Paths are POSIX strings relative to the discovery root, so a datalist stays valid when the
    dataset folder moves.

    Args:
        case_id: the id the release gives the study.
        patient_id: the patient it belongs to (several studies may share one).
        dataset: dataset name (``brats2018``, ``brats2023``, ``upenn_gbm``, ``msd_task01``, ...).
        layout: name of the :data:`LAYOUTS` entry it was found in.
        root: the discovery root (absolute).
        images: canonical contrast -> relative path, for per-contrast layouts.
        image_4d: relative path of the single 4D image (MSD), else None.
        channels: canonical channel order of ``image_4d``.
        label: relative path of the label map, or None for an inference-only case.
        convention: the layout's label convention (the default where label values do not decide).
        timepoint: time point / scan number taken from the id, if it has one.
        problems: (relative file, reason) pairs found while reading the folder (e.g. two files for
            one contrast); validation reports them with its own findings.
    """

    case_id: str
    patient_id: str
    dataset: str
    layout: str
    root: Path
    images: dict[str, str] = field(default_factory=dict)
    image_4d: str | None = None
    channels: tuple[str, ...] = ()
    label: str | None = None
    convention: str = "brats2021"
    timepoint: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        """True when the case has a label map."""
        return self.label is not None

    @property
    def missing(self) -> list[str]:
        """Canonical contrasts the case lacks (in canonical order)."""
        present = set(self.channels) if self.image_4d is not None else set(self.images)
        return [c for c in CONTRASTS if c not in present]

    @property
    def files(self) -> list[str]:
        """Every file of the case (relative paths), images first."""
        out = [self.image_4d] if self.image_4d is not None else [self.images[c] for c in self.images]
        return [*out, self.label] if self.label else out

    @property
    def folder(self) -> str:
        """Relative folder of the case's first file, for messages."""
        files = self.files
        return str(Path(files[0]).parent) if files else "."


@dataclass
class Discovery:
    """What :func:`discover` found under a root.

    Args:
        root: the absolute discovery root.
        cases: the cases, sorted by (dataset, case id, folder).
        ignored: NIfTI files (relative paths) that belong to no case of a known layout.
        names: dataset display names read from MSD ``dataset.json`` files.
    """

    root: Path
    cases: list[Case]
    ignored: list[str]
    names: list[str] = field(default_factory=list)


def split_case_file(stem: str) -> tuple[str, str, str] | None:
    """Split a per-contrast file stem into (case id, separator, contrast or ``seg`` token).

    The last three, two or one ``_``/``-`` separated tokens are tried, longest first, so that spellings
    such as ``t2-flair`` and BIDS's ``ce-gadolinium_T1w`` resolve as well as ``flair``.

    Args:
        stem: file name without extension, e.g. ``BraTS-GLI-00000-000-t1c``.

    Returns:
        ``(case_id, separator, token)`` where token is a canonical contrast name or ``seg``;
        None when the stem does not end in a known contrast or label token.
    """
    cuts = [m.start() for m in re.finditer(r"[_-]", stem)]
    for cut in cuts[-3:]:  # the longest spelling first, so "x_t2-flair" is not read as case "x_t2"
        token = stem[cut + 1 :]
        if not stem[:cut]:
            continue
        if token.lower() == LABEL_SUFFIX:
            return stem[:cut], stem[cut], LABEL_SUFFIX
        try:
            return stem[:cut], stem[cut], canonical(token)
        except ValueError:
            continue
    return None


def identify(case_id: str, default_dataset: str) -> tuple[str, str, str | None]:
    """Dataset, patient id and time point of a case id, from :data:`ID_RULES`.

    Args:
        case_id: e.g. ``UPENN-GBM-00006_11``.
        default_dataset: dataset name when no rule matches.

    Returns:
        ``(dataset, patient_id, timepoint)``; e.g. ``("upenn_gbm", "UPENN-GBM-00006", "11")``.
    """
    for rule in ID_RULES:
        m = rule.pattern.fullmatch(case_id)
        if m:
            groups = m.groupdict()
            return rule.dataset, groups.get("patient") or case_id, groups.get("timepoint")
    return default_dataset, case_id, None


def layout_of(separator: str, tokens: Sequence[str]) -> Layout:
    """The release layout that spells a case's files with this separator and these contrast tokens.

    Args:
        separator: ``-`` (BraTS 2023+) or ``_``.
        tokens: the contrast tokens as spelt in the file names (e.g. ``t1ce``, ``T1GD``).

    Returns:
        The layout (which gives the label convention of the release).
    """
    if separator == "_" and any(t in BIDS_SPELLINGS for t in tokens):
        return LAYOUTS["bids"]
    if separator == "-":
        return LAYOUTS["brats2023"]
    if any(t.isupper() for t in tokens):
        return LAYOUTS["upenn_gbm"]
    return LAYOUTS["brats2018-2021"]


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _nifti_files(folder: Path) -> list[Path]:
    # "._name" files are macOS resource forks shipped inside some archives (MSD's tar among them).
    # medmtl's own outputs (listed by their sidecars) are not cases: a prediction written into a
    # case folder must not become a second case.
    own = medmtl_outputs(folder)
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and p.name not in own and strip_nifti_suffix(p.name) and p.is_file()
    )


def _msd_channels(dataset_json: Path) -> tuple[tuple[str, ...], str | None]:
    if not dataset_json.is_file():
        return tuple(canonical_list(MSD_DEFAULT_CHANNELS)), None
    try:
        meta = json.loads(dataset_json.read_text())
        modality = meta["modality"]
        names = [modality[k] for k in sorted(modality, key=int)]
        return tuple(canonical_list(names)), meta.get("name")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{dataset_json}: expected a Decathlon dataset.json with a 'modality' table of MRI contrasts "
            f"(e.g. {{'0': 'FLAIR', '1': 'T1w', '2': 't1gd', '3': 'T2w'}}); {err}"
        ) from err


def _discover_msd(task: Path, root: Path) -> tuple[list[Case], list[str], str | None]:
    channels, name = _msd_channels(task / "dataset.json")
    layout = LAYOUTS["msd"]
    labels: dict[str, Path] = {}
    labels_dir = task / MSD_FOLDERS[1]
    if labels_dir.is_dir():
        labels = {strip_nifti_suffix(p.name) or "": p for p in _nifti_files(labels_dir)}
    cases: list[Case] = []
    for folder_name, with_labels in ((MSD_FOLDERS[0], True), (MSD_FOLDERS[2], False)):
        folder = task / folder_name
        if not folder.is_dir():
            continue
        for path in _nifti_files(folder):
            case_id = strip_nifti_suffix(path.name) or path.name
            dataset, patient, timepoint = identify(case_id, "msd_task01")
            label = labels.pop(case_id, None) if with_labels else None
            cases.append(
                Case(
                    case_id=case_id,
                    patient_id=patient,
                    dataset=dataset,
                    layout=layout.name,
                    root=root,
                    image_4d=_rel(path, root),
                    channels=channels,
                    label=_rel(label, root) if label is not None else None,
                    convention=layout.convention,
                    timepoint=timepoint,
                )
            )
    ignored = [_rel(p, root) for p in labels.values()]  # labels without an image
    return cases, ignored, name


def _discover_folder(folder: Path, files: Sequence[Path], root: Path) -> tuple[list[Case], list[str]]:
    groups: dict[str, list[tuple[Path, str, str]]] = {}
    ignored: list[str] = []
    for path in files:
        parsed = split_case_file(strip_nifti_suffix(path.name) or "")
        if parsed is None:
            ignored.append(_rel(path, root))
            continue
        case_id, sep, token = parsed
        groups.setdefault(case_id, []).append((path, sep, token))
    cases = []
    for case_id, members in sorted(groups.items()):
        raw_tokens = [(strip_nifti_suffix(p.name) or "")[len(case_id) + 1 :] for p, _, _ in members]
        layout = layout_of(members[0][1], raw_tokens)
        dataset, patient, timepoint = identify(case_id, layout.name)
        case = Case(
            case_id, patient, dataset, layout.name, root, convention=layout.convention, timepoint=timepoint
        )
        for path, _, token in members:
            rel = _rel(path, root)
            if token == LABEL_SUFFIX:
                if case.label is not None:
                    case.problems.append(
                        (rel, f"a second label map for case {case_id} (first: {case.label})")
                    )
                else:
                    case.label = rel
            elif token in case.images:
                case.problems.append(
                    (
                        rel,
                        f"a second file for contrast {token} of case {case_id} (first: {case.images[token]})",
                    )
                )
            else:
                case.images[token] = rel
        case.images = {c: case.images[c] for c in CONTRASTS if c in case.images}
        cases.append(case)
    return cases, ignored


def discover(root: str | os.PathLike) -> Discovery:
    """Find every case under ``root``, at any depth, in any of the :data:`LAYOUTS`.

    Symbolic links to folders are followed (each real folder is read once); whether the files
    they lead to stay inside ``root`` is checked by validation.

    Args:
        root: a dataset folder (a release folder, or a folder holding several releases).

    Returns:
        A :class:`Discovery` with the cases (paths relative to ``root``) and the NIfTI files that
        belong to none.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if ``root`` is an MSD image or label folder rather than the task folder, or an
            MSD ``dataset.json`` is unreadable or names unknown contrasts.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder")
    if root_path.name in MSD_FOLDERS:
        raise ValueError(
            f"{root} is an MSD {root_path.name} folder; give the task folder that holds "
            f"{', '.join(MSD_FOLDERS)} (e.g. Task01_BrainTumour) so images and labels are paired"
        )
    cases: list[Case] = []
    ignored: list[str] = []
    names: list[str] = []
    seen: set[Path] = set()
    for dirpath, dirnames, _ in os.walk(root_path, followlinks=True):
        folder = Path(dirpath)
        real = folder.resolve()
        if real in seen:  # a link loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if folder.name in MSD_FOLDERS:
            continue  # read as a whole by the task folder above it
        if any((folder / d).is_dir() for d in (MSD_FOLDERS[0], MSD_FOLDERS[2])):
            found, skipped, name = _discover_msd(folder, root_path)
            cases += found
            ignored += skipped
            names += [name] if name else []
        found, skipped = _discover_folder(folder, _nifti_files(folder), root_path)
        cases += found
        ignored += skipped
    cases.sort(key=lambda c: (c.dataset, c.case_id, c.folder))
    return Discovery(root=root_path, cases=cases, ignored=sorted(ignored), names=names)


__all__ = [
    "LAYOUTS",
    "ID_RULES",
    "NIFTI_SUFFIXES",
    "Layout",
    "IdRule",
    "Case",
    "Discovery",
    "discover",
    "identify",
    "split_case_file",
    "strip_nifti_suffix",
]

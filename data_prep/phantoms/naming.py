"""How each supported release names its case folders, files and label dtypes (plain data)."""

from __future__ import annotations

from dataclasses import dataclass

from medmtl.contrasts import CONTRASTS, canonical

#: Label-map dtypes that may be written (BraTS 2023 ships float32 label maps; uint8 is the default).
SEG_DTYPES: tuple[str, ...] = ("uint8", "int16", "float32")


@dataclass(frozen=True)
class ReleaseNaming:
    """How a release names its case folders and files.

    Args:
        name: layout name.
        convention: label convention of the release's label maps.
        case_id: format of a case id, with ``{index}``.
        separator: between case id and contrast in file names.
        files: canonical contrast -> the release's spelling in file names.
        label: the release's spelling of the label map.
        pattern: the release's pattern, for messages and docs.
    """

    name: str
    convention: str
    case_id: str
    separator: str
    files: dict[str, str]
    label: str
    pattern: str

    def file_name(self, case_id: str, token: str) -> str:
        """File name of one volume of a case (``token`` is a spelling from :attr:`files` or :attr:`label`)."""
        return f"{case_id}{self.separator}{token}.nii.gz"


#: Supported release layouts. Case ids carry ``PHA`` (phantom) where real ids carry the cohort or a
#: number, so a phantom can never be taken for, or collide with, a real case.
LAYOUTS: dict[str, ReleaseNaming] = {
    n.name: n
    for n in (
        ReleaseNaming(
            "brats2023",
            "brats2023",
            "BraTS-PHA-{index:05d}-000",
            "-",
            {c: c for c in CONTRASTS},
            "seg",
            "<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz",
        ),
        ReleaseNaming(
            "brats2021",
            "brats2021",
            "BraTS2021_PHA{index:05d}",
            "_",
            dict(zip(CONTRASTS, ("t1", "t1ce", "t2", "flair"))),
            "seg",
            "<id>/<id>_{flair,t1,t1ce,t2,seg}.nii.gz",
        ),
        ReleaseNaming(
            "upenn",
            "brats2021",
            "UPENN-PHA-{index:05d}_11",
            "_",
            dict(zip(CONTRASTS, ("T1", "T1GD", "T2", "FLAIR"))),
            "SEG",
            "<id>/<id>_{FLAIR,T1,T1GD,T2,SEG}.nii.gz",
        ),
    )
}

#: Other names accepted for the layouts (those of :mod:`data_prep.layouts`).
LAYOUT_ALIASES: dict[str, str] = {"brats2018-2021": "brats2021", "upenn_gbm": "upenn"}

for _naming in LAYOUTS.values():  # the release spellings must be ones the alias table knows
    if any(canonical(token) != c for c, token in _naming.files.items()):  # pragma: no cover
        raise ImportError(f"layout {_naming.name}: file names {_naming.files} disagree with medmtl.contrasts")

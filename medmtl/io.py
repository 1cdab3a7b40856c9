"""Files medmtl reads and writes: NIfTI names, the names of medmtl's outputs, and writing whole or not at all.

A leaf module (no other medmtl import), so the data-preparation stage can use it.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

#: File name endings of NIfTI volumes, longest first.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
#: The endings of inference outputs: ``<case>_seg``, ``<case>_<contrast>_synth``, ``<case>_prob``.
SEG_OUTPUT, SYNTH_OUTPUT, PROB_OUTPUT = "seg", "synth", "prob"
#: The key of an output sidecar that lists the files written with it (``{kind: file name}``).
SIDECAR_OUTPUTS = "outputs"


def strip_nifti_suffix(name: str) -> str | None:
    """File name without its NIfTI extension (any case), or None when it is not a NIfTI file."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def output_paths(
    out_dir: str | os.PathLike, case_id: str, synthesised: Sequence[str] = ()
) -> dict[str, Path]:
    """The files inference writes for one case (the one place their names are made).

    Args:
        out_dir: output folder.
        case_id: case identifier.
        synthesised: the synthesised contrasts written (canonical names).

    Returns:
        ``{"seg": <case>_seg.nii.gz, "<contrast>": <case>_<contrast>_synth.nii.gz, ...,
        "sidecar": <case>.json}``; the sidecar is written last and marks a finished case.
    """
    out = Path(out_dir)
    paths = {"seg": out / f"{case_id}_{SEG_OUTPUT}.nii.gz"}
    for c in synthesised:
        paths[c] = out / f"{case_id}_{c}_{SYNTH_OUTPUT}.nii.gz"
    paths["sidecar"] = out / f"{case_id}.json"
    return paths


def probability_path(out_dir: str | os.PathLike, case_id: str) -> Path:
    """The region probabilities of a case (``--probabilities``): ``<case>_prob.nii.gz``."""
    return Path(out_dir) / f"{case_id}_{PROB_OUTPUT}.nii.gz"


def medmtl_outputs(folder: str | os.PathLike) -> set[str]:
    """Names of the files in ``folder`` that medmtl wrote, as its sidecars record them.

    A sidecar is a JSON object with a ``medmtl_version`` or an :data:`SIDECAR_OUTPUTS` list beside the
    outputs; the files it lists (or, for older sidecars, the inference output names of its case) are
    medmtl's: case discovery skips them, and only they may be replaced with ``--overwrite``.

    Args:
        folder: a folder.

    Returns:
        File names (not paths), the sidecars included.
    """
    names: set[str] = set()
    root = Path(folder)
    if not root.is_dir():
        return names
    for side in root.glob("*.json"):
        try:
            if side.stat().st_size > 1_000_000:
                continue
            doc = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(doc, dict) or not ("medmtl_version" in doc or SIDECAR_OUTPUTS in doc):
            continue
        names.add(side.name)
        listed = doc.get(SIDECAR_OUTPUTS)
        if isinstance(listed, dict):
            names |= {str(v) for v in listed.values()}
        else:
            case_id = side.name[: -len(".json")]
            names |= {p.name for p in output_paths(root, case_id, doc.get("synthesised") or []).values()}
            names.add(probability_path(root, case_id).name)
    return names


#: Largest difference (mm) between two affines that still describe the same grid (the one tolerance of
#: every grid check: a case's files, a prediction against its reference, a mask against its case).
#: Real BraTS files differ by -0.0 vs 0.0 and float noise between the contrasts of one case.
AFFINE_ATOL_MM = 1e-3


def grid_mismatch(
    shape: Sequence[int],
    affine: np.ndarray,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    atol: float = AFFINE_ATOL_MM,
) -> str | None:
    """How a grid differs from a reference grid, or None when they are the same (within ``atol`` mm).

    Args:
        shape: spatial shape of the image checked.
        affine: its voxel-to-world matrix.
        ref_shape: spatial shape of the reference.
        ref_affine: the reference's matrix.
        atol: tolerance on each affine entry.

    Returns:
        ``"shape (a, b, c) differs from (x, y, z)"`` or ``"affine differs by up to D mm (tolerance T mm)"``;
        None when the grids match.
    """
    shape, ref_shape = tuple(int(s) for s in shape[:3]), tuple(int(s) for s in ref_shape[:3])
    if shape != ref_shape:
        return f"shape {shape} differs from {ref_shape}"
    diff = float(np.abs(np.asarray(affine, float) - np.asarray(ref_affine, float)).max())
    if diff > atol:
        return f"affine differs by up to {diff:.4g} mm (tolerance {atol:g} mm)"
    return None


#: How the NIfTI header (``descrip``) of an inference output begins: ``medmtl output <kind> ...``.
OUTPUT_DESCRIP = "medmtl output"


def output_description(kind: str, detail: str = "") -> str:
    """The header description of an inference output (``kind``: ``seg``, ``prob`` or a contrast)."""
    return f"{OUTPUT_DESCRIP} {kind} {detail}".strip()


def written_by_medmtl(path: str | os.PathLike) -> bool:
    """Whether a NIfTI file says in its header that it is a medmtl output (:func:`output_description`).

    Outputs renamed into place before their sidecar (an interrupted run) are known by this mark;
    medmtl's inputs (phantoms) are not outputs and carry another description.
    """
    try:
        descrip = nib.load(str(path)).header.get("descrip")
    except Exception:  # noqa: BLE001 - an unreadable file is not one medmtl can vouch for
        return False
    if descrip is None:
        return False
    text = bytes(np.asarray(descrip).tobytes()).split(b"\0", 1)[0].decode("latin-1")
    return text.startswith(OUTPUT_DESCRIP + " ")


#: errno of a failed write -> what happened and what the user can do about it
_WRITE_ADVICE: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some space or choose another output folder",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another output folder",
    errno.EROFS: "the folder is on a read-only file system; choose a writable output folder",
    errno.EACCES: "permission denied; choose a writable output folder",
    errno.EPERM: "operation not permitted; choose a writable output folder",
}


class OutputWriteError(OSError):
    """Writing an output failed (a full disk, a read-only folder, ...): one line naming the file.

    Nothing of the file is left behind (see :func:`atomic_path`, :func:`write_nifti_group`).

    Args:
        path: the file that could not be written.
        cause: the error the system reported.
    """

    def __init__(self, path: str | os.PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))
        advice = _WRITE_ADVICE.get(cause.errno or -1)
        reason = advice or f"{cause.strerror or cause}; check the output folder"
        self.message = f"cannot write {path}: {reason} (no partial file was left)"

    def __str__(self) -> str:
        return self.message


def _write_error(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` as an :class:`OutputWriteError` naming ``path`` (errors that already say more kept)."""
    if err.errno is None or isinstance(err, (OutputWriteError, FileExistsError, FileNotFoundError)):
        return err
    return OutputWriteError(path, err)


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps the target's suffixes (``.nii.gz``), so writers that choose a format
    from the extension still work.

    Args:
        path: the final file.
        overwrite: if False, refuse to replace an existing file.

    Yields:
        The temporary path to write to.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        PermissionError: if the folder is not writable (raised before anything is written).
        OutputWriteError: when writing fails (a full disk, a read-only file system), naming ``path``.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(final.parent, os.W_OK):
        raise PermissionError(f"output folder {final.parent} is not writable")
    suffix = "".join(final.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as err:
        raise _write_error(err, final) from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final)
    except OSError as err:
        raise _write_error(err, final) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        path: the output file.
        obj: anything ``json.dumps`` takes.
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    dtype: Any = None,
    header: nib.Nifti1Header | None = None,
    description: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a NIfTI file atomically with an explicit affine (see :func:`nifti_image`).

    Args:
        path: output ``.nii.gz`` path.
        array: voxel data in the grid that ``affine`` describes.
        affine: 4x4 voxel-to-world matrix.
        dtype: on-disk data type (defaults to the array's).
        header: a header to follow (e.g. the source scan's): its qform/sform codes and units.
        description: text for the header's ``descrip`` field (max 80 chars).
        overwrite: replace an existing file.

    Returns:
        The path written.
    """
    img = nifti_image(array, affine, dtype, header, description)
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def nifti_image(
    array: np.ndarray,
    affine: np.ndarray,
    dtype: Any = None,
    header: nib.Nifti1Header | None = None,
    description: str | None = None,
) -> nib.Nifti1Image:
    """The one way medmtl makes a NIfTI image to write: explicit affine, qform and sform both set.

    Args:
        array: voxel data in the grid that ``affine`` describes.
        affine: 4x4 voxel-to-world matrix.
        dtype: on-disk data type (defaults to the array's).
        header: a header to follow (e.g. the source scan's): its qform/sform codes (1, scanner, when
            it has none) and spatial/temporal units; its scaling is reset.
        description: text for the header's ``descrip`` field (max 79 characters).

    Returns:
        The image (not written).
    """
    arr = np.asarray(array)
    if dtype is not None:
        arr = arr.astype(dtype)
    aff = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, aff)
    img.set_data_dtype(arr.dtype)
    qcode = int(header["qform_code"]) if header is not None else 0
    scode = int(header["sform_code"]) if header is not None else 0
    img.set_qform(aff, code=qcode or 1)
    img.set_sform(aff, code=scode or 1)
    if header is not None:
        img.header.set_xyzt_units(*header.get_xyzt_units())
    if description:
        img.header["descrip"] = description.encode()[:79]
    return img


def write_nifti_group(
    files: Mapping[str | os.PathLike, tuple[np.ndarray, Any, str | None]],
    reference: nib.Nifti1Image,
    sidecar_path: str | os.PathLike,
    sidecar: Mapping[str, Any],
) -> list[Path]:
    """Write several NIfTI files and a JSON sidecar as one unit: all of them, or none.

    Every image is first written to a temporary file beside its destination; only when all are on
    disk are they renamed into place, the sidecar last. A failure midway leaves no new file behind.

    Args:
        files: ``{final path: (array, on-disk dtype, header description or None)}``, all in the grid
            of ``reference``.
        reference: the scan whose affine, qform/sform codes and units the outputs take.
        sidecar_path: the JSON file describing the outputs.
        sidecar: its content.

    Returns:
        The image paths written.

    Raises:
        OutputWriteError: when a file cannot be written (a full disk, a read-only file system),
            naming it; no new file is left behind.
    """
    tmps: list[tuple[Path, Path]] = []
    umask = os.umask(0)
    os.umask(umask)
    current: Path = Path(sidecar_path)
    try:
        for final, (arr, dtype, descrip) in files.items():
            final = current = Path(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(final.parent, os.W_OK):
                raise PermissionError(f"output folder {final.parent} is not writable")
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".nii.gz", dir=final.parent)
            os.close(fd)
            tmps.append((Path(tmp), final))
            nib.save(nifti_image(arr, reference.affine, dtype, reference.header, descrip), tmp)
            os.chmod(tmp, 0o666 & ~umask)
        current = Path(sidecar_path)
        with atomic_path(sidecar_path, overwrite=True) as tmp_json:
            tmp_json.write_text(json.dumps(dict(sidecar), indent=2) + "\n")
            for tmp, final in tmps:
                os.replace(tmp, final)
    except OSError as err:
        raise _write_error(err, current) from err
    finally:
        for tmp, _ in tmps:
            if tmp.exists():
                tmp.unlink()
    return [final for _, final in tmps]

"""A raw study made BraTS-like (co-registered, 1 mm, brain only), and outputs mapped back onto it.

:func:`preprocess_study` is the one step before inference: every contrast rigidly registered to a
reference contrast, resampled onto a 1 mm RAS grid over the reference's extent, the brain extracted
once (on the reference) and applied to all. Its result holds arrays and an affine, which is what
``predict`` takes. :meth:`PreprocessedStudy.to_reference` and :func:`map_case_outputs` are the one
step after: predictions go back onto the reference contrast's own grid (shape and affine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medmtl.contrasts import CONTRASTS, canonical
from medmtl.io import atomic_path, write_nifti
from medmtl.preprocessing.brain import (
    BRAIN_ML_RANGE,
    check_brain_volume,
    hd_bet_mask,
    mask_volume_ml,
    require_hd_bet,
)
from medmtl.preprocessing.dicom import read_volume, study_sources
from medmtl.preprocessing.registration import (
    RigidRegistration,
    from_array,
    isotropic_grid,
    ras_affine,
    register_rigid,
    resample,
    to_array,
)

#: Reference contrasts in order of preference: the post-contrast T1 has the sharpest anatomy and is
#: the grid radiologists read the tumour on.
REFERENCE_ORDER: tuple[str, ...] = ("t1c", "t1n", "t2f", "t2w")

#: A final Mattes mutual information above this is a failed registration. Successful ones of the
#: shared raw study and of BraTS-derived clinical-style studies end between -0.5 and -0.8; unrelated
#: images stay near 0.
MAX_METRIC = -0.15

#: A reference whose own voxels are at least this fraction exactly 0 is taken as already skull-stripped
#: (BraTS releases: over 80 %; raw scans: under 15 %, their background holds noise).
STRIPPED_ZERO_FRACTION = 0.4


def choose_reference(contrasts: Sequence[str], reference: str | None = None) -> str:
    """The contrast every other is registered to.

    Args:
        contrasts: the contrasts the study has.
        reference: the user's choice (any spelling), or None for the first of :data:`REFERENCE_ORDER`.

    Returns:
        A canonical contrast name.

    Raises:
        ValueError: when the chosen reference is not in the study.
    """
    have = [canonical(c) for c in contrasts]
    if reference is not None:
        ref = canonical(reference)
        if ref not in have:
            raise ValueError(f"--reference {reference}: the study has no {ref} (it has {', '.join(have)})")
        return ref
    return next(c for c in REFERENCE_ORDER if c in have)


@dataclass
class PreprocessedStudy:
    """A study on one 1 mm grid, brain only, with what it takes to go back to the reference's grid.

    Attributes:
        case_id: the study's identifier.
        reference: the reference contrast.
        reference_image: the reference as read (its own grid; outputs are mapped onto it).
        sources: ``{contrast: file or DICOM folder}`` as given.
        grid: the 1 mm RAS grid (geometry only).
        images: ``{contrast: float32 array}`` on ``grid`` in (x, y, z) order, 0 outside the brain.
        brain_mask: uint8 array on ``grid``.
        brain_method: how the mask was made (``hd-bet`` or ``non-zero voxels``).
        brain_ml: the mask's volume in ml.
        registrations: ``{contrast: RigidRegistration}`` for every contrast but the reference.
    """

    case_id: str
    reference: str
    reference_image: sitk.Image
    sources: dict[str, str]
    grid: sitk.Image
    images: dict[str, np.ndarray]
    brain_mask: np.ndarray
    brain_method: str
    brain_ml: float
    registrations: dict[str, RigidRegistration] = field(default_factory=dict)

    @property
    def affine(self) -> np.ndarray:
        """The 1 mm grid's RAS voxel-to-world matrix (what ``predict(arrays, affine=...)`` takes)."""
        return ras_affine(self.grid)

    @property
    def reference_affine(self) -> np.ndarray:
        """The reference contrast's own RAS voxel-to-world matrix."""
        source = self.sources[self.reference]
        if Path(source).is_file() and source.endswith((".nii", ".nii.gz")):
            return np.asarray(nib.load(source).affine)  # exactly what a NIfTI reader sees
        return ras_affine(self.reference_image)

    @property
    def reference_shape(self) -> tuple[int, int, int]:
        """The reference contrast's own voxel grid shape (x, y, z)."""
        return tuple(int(s) for s in self.reference_image.GetSize())  # type: ignore[return-value]

    def to_reference(self, array: np.ndarray, label: bool = False) -> np.ndarray:
        """Map an array on the 1 mm grid back onto the reference contrast's own grid.

        Args:
            array: (x, y, z) or channel-first (C, x, y, z) array on :attr:`grid`.
            label: nearest neighbour (labels, masks) instead of linear interpolation (images,
                probabilities).

        Returns:
            The array on the reference grid, same dtype, 0 outside the 1 mm grid.
        """
        arr = np.asarray(array)
        if arr.ndim == 4:
            return np.stack([self.to_reference(a, label) for a in arr])
        img = from_array(arr if label else arr.astype(np.float32), self.grid)
        return to_array(resample(img, self.reference_image, label=label)).astype(arr.dtype, copy=False)

    def record(self, transform_files: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the sidecar says about the preprocessing.

        Args:
            transform_files: ``{contrast: .tfm path}`` where they were saved.

        Returns:
            A JSON-ready dict: the reference, each contrast's final metric and transform, the brain mask.
        """
        contrasts: dict[str, Any] = {}
        for c in self.images:
            if c == self.reference:
                contrasts[c] = {"source": self.sources[c], "registration": "reference"}
                continue
            r = self.registrations[c]
            tx = r.transform
            contrasts[c] = {
                "source": self.sources[c],
                "metric": round(r.metric, 4),
                "initial_metric": round(r.initial_metric, 4),
                "initialiser": r.initialiser,
                "transform": {
                    "type": tx.GetName(),
                    "parameters": [round(v, 6) for v in tx.GetParameters()],
                    "fixed_parameters": [round(v, 4) for v in tx.GetFixedParameters()],
                    "rotation_deg": round(r.rotation_deg(), 3),
                    "translation_mm": [round(float(v), 3) for v in r.translation_mm()],
                },
            }
            if transform_files and c in transform_files:
                contrasts[c]["transform_file"] = transform_files[c]
        return {
            "reference": self.reference,
            "reference_source": self.sources[self.reference],
            "metric": "Mattes mutual information (SimpleITK), rigid, reference = fixed",
            "transforms_map": "reference (fixed) physical points, LPS mm -> contrast's physical points",
            "contrasts": contrasts,
            "grid_spacing_mm": [float(s) for s in self.grid.GetSpacing()],
            "grid_shape": [int(s) for s in self.grid.GetSize()],
            "grid_affine": self.affine.round(6).tolist(),
            "brain_mask_method": self.brain_method,
            "brain_mask_ml": round(self.brain_ml, 1),
        }

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> dict[str, str]:
        """Write the co-registered 1 mm images, the brain mask and each transform (ITK ``.tfm``).

        The images get BraTS 2023 names (``<case>-t1c.nii.gz``), so ``folder`` is a case folder that
        ``medmtl infer``, ``medmtl prepare`` and the bundle read as it is.

        Args:
            folder: where (created if needed).
            overwrite: replace files that exist.

        Returns:
            ``{name: path}`` of the files written (``<contrast>``, ``brain_mask``, ``<contrast>_tfm``).
        """
        out = Path(folder)
        cid = self.case_id
        written: dict[str, str] = {}
        for c, arr in self.images.items():
            p = out / f"{cid}-{c}.nii.gz"
            write_nifti(
                p, arr, self.affine, np.float32, description=f"medmtl preprocessed {c}", overwrite=overwrite
            )
            written[c] = str(p)
        p = out / f"{cid}-brain_mask.nii.gz"
        write_nifti(
            p, self.brain_mask, self.affine, np.uint8, description="medmtl brain mask", overwrite=overwrite
        )
        written["brain_mask"] = str(p)
        for c, r in self.registrations.items():
            p = out / f"{cid}-{c}_to_{self.reference}.tfm"
            with atomic_path(p, overwrite=overwrite) as tmp:
                sitk.WriteTransform(r.transform, str(tmp))
            written[f"{c}_tfm"] = str(p)
        return written


def _already_stripped(reference: sitk.Image) -> bool:
    arr = sitk.GetArrayViewFromImage(reference)
    return float(np.mean(arr == 0)) >= STRIPPED_ZERO_FRACTION


def preprocess_study(
    case: str | os.PathLike | Mapping[str, str | os.PathLike],
    reference: str | None = None,
    spacing: float = 1.0,
    brain: str = "auto",
    max_metric: float = MAX_METRIC,
    brain_ml_range: tuple[float, float] = BRAIN_ML_RANGE,
    device: str = "cpu",
) -> PreprocessedStudy:
    """Co-register, resample to ``spacing`` mm and brain-extract a raw study.

    Args:
        case: the study folder (NIfTI files or DICOM series folders named by contrast), or
            ``{contrast: file or DICOM folder}``; any subset of the four contrasts.
        reference: the contrast to register to (default: t1c, else t1n, t2f, t2w).
        spacing: voxel size of the output grid (mm).
        brain: ``"hd-bet"`` (HD-BET on the reference), ``"auto"`` (the reference's own non-zero
            voxels when it is already skull-stripped, HD-BET otherwise) or ``"none"`` (no mask).
        max_metric: a final registration metric above this is an error.
        brain_ml_range: a brain mask outside this volume range (ml) is an error.
        device: torch device for HD-BET.

    Returns:
        A :class:`PreprocessedStudy`.

    Raises:
        ValueError: for a failed registration or an implausible brain mask (naming the contrast), or
            unusable input (naming the file).
    """
    if brain not in ("auto", "hd-bet", "none"):
        raise ValueError(f"brain extraction {brain!r}: expected 'auto', 'hd-bet' or 'none'")
    case_id, sources = study_sources(case)
    ref = choose_reference(list(sources), reference)
    volumes = {c: read_volume(p, c) for c, p in sources.items()}
    fixed = volumes[ref]
    method = brain
    if brain == "auto":
        method = "non-zero voxels" if _already_stripped(fixed) else "hd-bet"
    if method == "hd-bet":
        require_hd_bet()  # before the registrations, not after a minute of them
    grid = isotropic_grid(fixed, spacing)
    registrations: dict[str, RigidRegistration] = {}
    moved: dict[str, sitk.Image] = {}
    for c in [c for c in CONTRASTS if c in volumes]:
        if c == ref:
            moved[c] = resample(fixed, grid)
            continue
        r = register_rigid(fixed, volumes[c])
        if not r.metric <= max_metric:
            raise ValueError(
                f"registration of {c} ({Path(sources[c]).name}) to {ref} failed: final mutual information "
                f"{r.metric:.3f} is above {max_metric} (is it the same patient and a whole-head scan?)"
            )
        registrations[c] = r
        moved[c] = resample(volumes[c], grid, r.transform)
    if method == "hd-bet":
        mask_img = hd_bet_mask(moved[ref], device=device)
    elif method == "non-zero voxels":
        mask_img = sitk.Cast(moved[ref] != 0, sitk.sitkUInt8)
    else:
        mask_img = sitk.Cast(moved[ref] == moved[ref], sitk.sitkUInt8)  # everything
    ml = mask_volume_ml(mask_img)
    if method != "none":
        check_brain_volume(ml, ref, brain_ml_range)
    mask = to_array(mask_img).astype(np.uint8)
    images = {
        c: np.where(mask > 0, to_array(img), np.float32(0)).astype(np.float32) for c, img in moved.items()
    }
    return PreprocessedStudy(
        case_id=case_id,
        reference=ref,
        reference_image=fixed,
        sources=sources,
        grid=grid,
        images=images,
        brain_mask=mask,
        brain_method=method,
        brain_ml=ml,
        registrations=registrations,
    )


def reference_nifti(study: PreprocessedStudy) -> nib.Nifti1Image:
    """The reference contrast as a NIfTI image whose header (affine, codes, units) outputs copy."""
    source = study.sources[study.reference]
    if Path(source).is_file() and source.endswith((".nii", ".nii.gz")):
        return nib.load(source)
    img = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), study.reference_affine)
    img.header.set_xyzt_units("mm")
    return img


def map_case_outputs(
    study: PreprocessedStudy,
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    transform_files: Mapping[str, str] | None = None,
    convention_source: str | None = None,
) -> list[Path]:
    """Map one case's written outputs from the 1 mm grid onto the reference's own grid, as one unit.

    Every ``<case>_*.nii.gz`` that inference wrote in ``run_dir`` goes to ``out_dir`` under the same
    name, resampled onto the reference contrast's grid: nearest neighbour for the label map and region
    masks (``_seg``), linear for images and probabilities. The brain mask joins them
    (``<case>_brain_mask.nii.gz``), and the sidecar gets the reference grid and a ``preprocessing``
    record. All files are renamed into place together, sidecar last.

    Args:
        study: the preprocessed study.
        run_dir: where inference wrote its outputs on the 1 mm grid.
        out_dir: the user's output folder.
        transform_files: ``{contrast: .tfm}`` when the transforms were saved.
        convention_source: what the sidecar says chose the label convention (None: as inference said).

    Returns:
        The image files written.
    """
    import json

    from medmtl.io import output_description, write_nifti_group

    run, out = Path(run_dir), Path(out_dir)
    cid = study.case_id
    ref = reference_nifti(study)
    files: dict[Path, tuple[np.ndarray, Any, str | None]] = {}
    for path in sorted(run.glob(f"{cid}_*.nii.gz")):
        img = nib.load(path)
        arr = np.asarray(img.dataobj)
        label = path.name == f"{cid}_seg.nii.gz"
        # 4D outputs (probabilities, region masks) keep channels last on disk.
        mapped = (
            np.moveaxis(study.to_reference(np.moveaxis(arr, -1, 0), label), 0, -1)
            if arr.ndim == 4
            else study.to_reference(arr, label)
        )
        descrip = img.header["descrip"].tobytes().split(b"\0")[0].decode(errors="ignore") or None
        files[out / path.name] = (mapped, arr.dtype, descrip)
    files[out / f"{cid}_brain_mask.nii.gz"] = (
        study.to_reference(study.brain_mask, label=True),
        np.uint8,
        output_description("brain_mask", f"({study.brain_method})"),
    )
    sidecar = json.loads((run / f"{cid}.json").read_text())
    sidecar.update(
        source=study.sources[study.reference],
        shape=list(study.reference_shape),
        affine=np.asarray(ref.affine).round(6).tolist(),
        brain_mask=str(out / f"{cid}_brain_mask.nii.gz"),
        preprocessing=study.record(transform_files),
    )
    if convention_source:
        sidecar["label_convention_source"] = convention_source
    return write_nifti_group(files, ref, out / f"{cid}.json", sidecar)


def prediction_to_reference(pred: Any, study: PreprocessedStudy) -> Any:
    """A :class:`~medmtl.inference.api.Prediction` on the 1 mm grid, mapped onto the reference's grid.

    Args:
        pred: the prediction ``predict`` made from ``study.images`` and ``study.affine``.
        study: the preprocessed study.

    Returns:
        A copy with ``seg`` (nearest neighbour), ``probabilities`` and ``synth`` (linear) on the
        reference contrast's own grid, its ``affine``, the study's id, ``brain_mask`` and the
        ``preprocessing`` record.
    """
    import dataclasses

    return dataclasses.replace(
        pred,
        case_id=study.case_id,
        seg=study.to_reference(pred.seg, label=True),
        probabilities=study.to_reference(pred.probabilities),
        synth={c: study.to_reference(img) for c, img in pred.synth.items()},
        affine=study.reference_affine,
        brain_mask=study.to_reference(study.brain_mask, label=True),
        preprocessing=study.record(),
    )


def preprocess_hint(message: str, case: Any) -> str | None:
    """The one line that names ``--preprocess`` when a case failed because it is a raw study.

    Args:
        message: the error a case without preprocessing raised.
        case: what the user gave (a folder or ``{contrast: path}``).

    Returns:
        The message to raise instead, or None when preprocessing would not help.
    """
    hint = "run with --preprocess (Python: predict(..., preprocess=True)) to co-register them"
    if "differs from" in message and ("shape" in message or "affine" in message):
        return f"{message.rstrip('.')}; the contrasts are on different grids: {hint}"
    if "no case in a known layout" in message or "give one case folder or a datalist" in message:
        try:
            _, found = study_sources(case)
        except (OSError, ValueError):
            return None
        if len(found) >= 2:
            names = ", ".join(f"{c}: {Path(p).name}" for c, p in found.items())
            return f"{case}: a raw study whose series are not one case layout ({names}); {hint}"
    return None

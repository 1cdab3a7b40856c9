"""The Python API: :func:`load_model` and ``predict`` on a case folder, files or arrays."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medmtl.bundle_config import DEFAULT_BUNDLE, bundle_file
from medmtl.contrasts import canonical
from medmtl.inference.cases import case_entry, check_cases
from medmtl.inference.outputs import _source_reference, case_outputs
from medmtl.inference.postprocessing import region_thresholds
from medmtl.labels import OUTPUT_CONVENTIONS, regions_to_label, writable_convention


@dataclass
class Prediction:
    """Outputs for one case, in the source scan's grid.

    Attributes:
        case_id: case identifier.
        seg: label map (uint8) in ``convention``.
        probabilities: region probabilities (3, H, W, D), channel order TC, WT, ET.
        synth: synthesised contrasts by canonical name (float32, nonzero z-score space).
        affine: the source scan's voxel-to-world matrix.
        convention: label convention of ``seg``.
        brain_mask: the brain mask (uint8) when the case was preprocessed, else None.
        preprocessing: what preprocessing did (reference, registrations, brain mask), else None.
    """

    case_id: str
    seg: np.ndarray
    probabilities: np.ndarray
    synth: dict[str, np.ndarray] = field(default_factory=dict)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    convention: str = "brats2023"
    brain_mask: np.ndarray | None = None
    preprocessing: dict[str, Any] | None = None


class MultiTaskModel:
    """A trained bundle ready to predict, built from its ``configs/inference.json``.

    Args:
        bundle_dir: the bundle folder.
        device: torch device; CUDA when available by default.
        overrides: config overrides (e.g. ``{"sw_batch_size": 2, "tta": True}``).
    """

    def __init__(
        self, bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, device: str | None = None, **overrides
    ):
        from monai.bundle import ConfigParser

        self.bundle_dir = Path(bundle_dir).resolve()
        cfg = bundle_file(self.bundle_dir)
        parser = ConfigParser()
        parser.read_config(str(cfg))
        parser.read_meta(str(self.bundle_dir / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.bundle_dir)
        if device is not None:
            parser["device"] = f"$torch.device('{device}')"
        for k, v in overrides.items():
            parser[k] = v
        self.parser = parser
        self.network = parser.get_parsed_content("network")
        self.inferer = parser.get_parsed_content("inferer")
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.device = parser.get_parsed_content("device")
        self.targets = list(parser.get_parsed_content("target_contrasts"))
        self.inputs = list(parser.get_parsed_content("input_contrasts"))
        self.use_mask = bool(parser.get_parsed_content("input_mask"))
        # The bundle's evaluator runs the network under CUDA autocast when ``amp``; so does predict.
        self.amp = bool(parser.get_parsed_content("amp"))
        self.min_component_ml = float(parser.get_parsed_content("min_component_ml"))
        self.et_min_ml = float(parser.get_parsed_content("et_min_ml"))
        self.synth_landmarks = parser.get_parsed_content("synth_landmarks")
        self.thresholds = region_thresholds(parser.get_parsed_content("thresholds"), "thresholds")
        parser.get_parsed_content("load_weights")
        self.network.eval()

    def predict(
        self,
        case: str | os.PathLike | Mapping[str, Any],
        affine: np.ndarray | None = None,
        convention: str | None = None,
        preprocess: bool = False,
        reference: str | None = None,
    ) -> Prediction:
        """Segment and synthesise one case without writing files.

        Runs the bundle's preprocessing, inferer and postprocessing, and turns the result into arrays
        exactly as ``medmtl infer`` writes them.

        Args:
            case: a case folder, a mapping ``{contrast: path}``, or ``{contrast: array}`` (3D arrays
                on one grid; then ``affine`` gives that grid, identity when omitted).
            affine: voxel-to-world matrix for array input.
            convention: label convention of the returned map (``brats2021`` or ``brats2023``); by
                default the input's (from its layout or label map), BraTS 2023 for arrays.
            preprocess: treat ``case`` as a raw study (a folder or ``{contrast: file or DICOM
                folder}`` on their own grids, skull on): co-register, resample to 1 mm and extract
                the brain first (:func:`medmtl.preprocessing.preprocess_study`), and return the
                outputs on the reference contrast's own grid.
            reference: the contrast the others are registered to with ``preprocess`` (default t1c,
                else t1n, t2f, t2w).

        Returns:
            A :class:`Prediction` in the input's grid (the reference contrast's with ``preprocess``).

        Raises:
            FileNotFoundError: for a missing folder or file.
            ValueError: for an unusable case (unreadable or non-3D file, grids that differ, a missing
                input contrast the model cannot do without), naming the file.
        """
        if convention is not None and convention not in OUTPUT_CONVENTIONS:
            raise ValueError(f"convention must be one of {list(OUTPUT_CONVENTIONS)}, got {convention!r}")
        if preprocess:
            # One step before the single inference path (arrays + affine in) and one after it.
            from medmtl.preprocessing.study import prediction_to_reference, preprocess_study

            study = preprocess_study(case, reference=reference, device=str(self.device))
            pred = self.predict(study.images, affine=study.affine, convention=convention)
            return prediction_to_reference(pred, study)
        if reference is not None:
            raise ValueError("reference= applies with preprocess=True only")
        with tempfile.TemporaryDirectory(prefix="medmtl_") as tmp:
            copies: dict[str, str] = {}
            if isinstance(case, Mapping) and any(isinstance(v, np.ndarray) for v in case.values()):
                copies = _arrays_to_files(case, affine, Path(tmp))
                case = {**case, **copies}
            try:
                entry = case_entry(case)
                check_cases([entry], self.inputs, self.use_mask)
            except (FileNotFoundError, ValueError) as err:
                if not copies:
                    from medmtl.preprocessing.study import preprocess_hint

                    hint = preprocess_hint(str(err), case)
                    if hint is None:
                        raise
                    raise ValueError(hint) from None
                # Name the user's arrays, not the temporary files they were written to.
                msg = str(err)
                for key, path in copies.items():
                    msg = msg.replace(path, f"array {key!r}")
                raise type(err)(msg.replace(tmp, "<arrays>")) from None
            if copies:
                entry["convention_source"] = "default for arrays"
            conv = writable_convention(convention or entry.get("label_convention"))
            entry["label_convention"] = conv
            entry.pop("label", None)
            data = self.preprocessing(entry)
            batch = {
                k: (v.unsqueeze(0).to(self.device) if isinstance(v, torch.Tensor) else v)
                for k, v in data.items()
            }
            kwargs = {"channel_mask": batch["channel_mask"]} if self.use_mask else {}
            with (
                torch.inference_mode(),
                torch.autocast("cuda", enabled=self.amp and self.device.type == "cuda"),
            ):
                pred = self.inferer(batch["image"], self.network, **kwargs)
            out = dict(data)
            out["pred"] = {k: v[0].cpu() for k, v in pred.items()}
            out = self.postprocessing(out)
            ref = nib.load(_source_reference(out))
            zooms = ref.header.get_zooms()[:3]
            prob, regions, synth = case_outputs(
                out,
                self.targets,
                threshold=self.thresholds,
                min_component_ml=self.min_component_ml,
                spacing=zooms,
                et_min_ml=self.et_min_ml,
                synth_landmarks=self.synth_landmarks,
            )
            return Prediction(
                case_id=str(entry["case_id"]),
                seg=regions_to_label(regions, conv)[0],
                probabilities=prob,
                synth=synth,
                affine=np.asarray(ref.affine),
                convention=conv,
            )


def _arrays_to_files(case: Mapping[str, Any], affine: np.ndarray | None, folder: Path) -> dict[str, str]:
    """Write the arrays of a case to NIfTI files in ``folder`` (paths in ``case`` are left as they are).

    Args:
        case: ``{contrast: array or path}``.
        affine: the arrays' voxel-to-world matrix; identity (1 mm voxels, RAS) with a warning when None.
        folder: where to write.

    Returns:
        ``{contrast: written file}`` for the arrays.

    Raises:
        ValueError: for an array that is not 3D or an affine that is not 4x4, naming the contrast.
    """
    if affine is None:
        warnings.warn(
            "predict() got arrays without affine=: assuming identity (1 mm voxels, RAS axes). Outputs, "
            "resampling and volumes are wrong if the scan has another grid; pass the scan's affine",
            UserWarning,
            stacklevel=3,
        )
        aff = np.eye(4)
    else:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.isfinite(aff).all():
            raise ValueError(f"affine: expected a finite 4x4 matrix, got shape {aff.shape}")
    files: dict[str, str] = {}
    for key, arr in case.items():
        if not isinstance(arr, np.ndarray):
            continue
        if arr.ndim != 3:
            raise ValueError(f"array {key!r}: expected a 3D array, got shape {arr.shape}")
        path = folder / f"case-{canonical(key)}.nii"  # BraTS 2023 spelling: arrays name no release
        nib.save(nib.Nifti1Image(arr.astype(np.float32), aff), str(path))
        files[key] = str(path)
    return files


def load_model(
    bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, device: str | None = None, **overrides
) -> MultiTaskModel:
    """Load a trained medmtl bundle for in-process prediction.

    Args:
        bundle_dir: the bundle folder (the shipped ``bundles/brats_mtl`` by default).
        device: torch device; CUDA when available by default.
        overrides: inference config overrides.

    Returns:
        A :class:`MultiTaskModel`; call ``.predict(case)``.
    """
    return MultiTaskModel(bundle_dir, device=device, **overrides)

"""The Python API: :func:`load_model` and ``predict`` on a case folder, files or arrays."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medmtl.bundle_config import DEFAULT_BUNDLE
from medmtl.inference.cases import case_entry, check_cases
from medmtl.inference.outputs import case_outputs
from medmtl.inference.postprocessing import region_thresholds
from medmtl.inference.predictor import array_entry, build_predictor
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
    """A trained bundle ready to predict: its inference config's :class:`Predictor`, in memory.

    Args:
        bundle_dir: the bundle folder.
        device: torch device; CUDA when available by default.
        overrides: config overrides (e.g. ``{"sw_batch_size": 2, "tta": True}``).
    """

    def __init__(
        self, bundle_dir: str | os.PathLike = DEFAULT_BUNDLE, device: str | None = None, **overrides
    ):
        self.bundle_dir = Path(bundle_dir).resolve()
        # predict() returns every synthesised contrast, restorations of the acquired ones included
        overrides.setdefault("restorations", True)
        self.predictor, parser = build_predictor(self.bundle_dir, device=device, **overrides)
        self.parser = parser
        self.network = self.predictor.network
        self.device = self.predictor.device
        self.targets = list(parser.get_parsed_content("target_contrasts"))
        self.inputs = list(parser.get_parsed_content("input_contrasts"))
        self.use_mask = self.predictor.input_mask
        self.min_component_ml = float(parser.get_parsed_content("min_component_ml"))
        self.et_min_ml = float(parser.get_parsed_content("et_min_ml"))
        self.synth_landmarks = parser.get_parsed_content("synth_landmarks")
        self.thresholds = region_thresholds(parser.get_parsed_content("thresholds"), "thresholds")

    def predict(
        self,
        case: str | os.PathLike | Mapping[str, Any],
        affine: np.ndarray | None = None,
        convention: str | None = None,
        preprocess: bool = False,
        reference: str | None = None,
    ) -> Prediction:
        """Segment and synthesise one case without writing files.

        The case goes through the bundle's predictor (the evaluator ``medmtl infer`` runs), and the
        result is turned into arrays exactly as ``medmtl infer`` writes them.

        Args:
            case: a case folder, a mapping ``{contrast: path}``, or ``{contrast: array}`` (3D numpy
                arrays or MetaTensors on one grid; then ``affine`` gives that grid, identity when
                omitted; a MetaTensor's own affine wins).
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
                input contrast the model cannot do without), naming the file or array.
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
        arrays = isinstance(case, Mapping) and any(_in_memory(v) for v in case.values())
        if arrays:
            if not all(_in_memory(v) for v in case.values()):
                raise ValueError("give every contrast as an array, or every contrast as a file")
            if affine is None and not all(isinstance(v, MetaTensor) for v in case.values()):
                warnings.warn(
                    "predict() got arrays without affine=: assuming identity (1 mm voxels, RAS axes). "
                    "Outputs, resampling and volumes are wrong if the scan has another grid; pass the "
                    "scan's affine",
                    UserWarning,
                    stacklevel=2,
                )
            entry = array_entry(case, affine)
            entry["convention_source"] = "default for arrays"
        else:
            try:
                entry = case_entry(case)
            except (FileNotFoundError, ValueError) as err:
                from medmtl.preprocessing.study import preprocess_hint

                hint = preprocess_hint(str(err), case)
                if hint is None:
                    raise
                raise ValueError(hint) from None
        check_cases([entry], self.inputs, self.use_mask)
        conv = writable_convention(convention or entry.get("label_convention"))
        entry["label_convention"] = conv
        entry.pop("label", None)
        out = self.predictor(entry)
        grid = np.asarray(torch.as_tensor(out["seg"].affine), dtype=np.float64)
        zooms = tuple(float(z) for z in np.sqrt((grid[:3, :3] ** 2).sum(axis=0)))
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
            affine=grid,
            convention=conv,
        )


def _in_memory(value: Any) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


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

"""Local synthesis on the shared encoder: healthy-tissue inpainting and lesion synthesis from a label map.

Both tasks fill a region of a case with synthesised tissue, all four contrasts at once:

- **inpainting** (the BraTS 2023 local synthesis task; Kofler et al., "The Brain Tumor Segmentation
  (BraTS) Challenge 2023: Local Synthesis of Healthy Brain Tissue via Inpainting", arXiv:2305.08992):
  the region is blanked and the network restores plausible healthy brain. Training regions are drawn
  in healthy tissue, so the real voxels under them are the target.
- **lesion synthesis**: the region is blanked and a lesion label map (NETC / SNFH / ET) is given; the
  network paints a tumour that follows it (enhancing rim bright on t1c, oedema bright on t2w / t2f,
  necrosis dark on t1c). Training blanks a real tumour (with a margin) and asks for it back.

The network is the same :class:`~medmtl.networks.MultiTaskUNet` (shared encoder, seg and synth
decoders) with :data:`IN_CHANNELS` inputs: the four contrasts with the region zeroed, the region mask,
and the three lesion compartments (zero for inpainting). Its synth decoder predicts all four contrasts;
the synthesis loss counts only inside the region (``synth_mask``), and the seg decoder keeps learning
the case's tumour regions beside it. ``configs/local_synthesis.json`` trains it through the bundle.

Outputs of :func:`inpaint` / :func:`synthesise_lesion` (and ``medmtl inpaint`` / ``medmtl synth-lesion``)
are in the case's own grid and intensity scale: the acquired voxels outside the region, the
synthesised ones inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Randomizable,
)
from scipy import ndimage

from medmtl.contrasts import CONTRASTS
from medmtl.io import grid_mismatch
from medmtl.labels import REGIONS, label_to_regions, resolve_convention

__all__ = [
    "IN_CHANNELS",
    "TASKS",
    "LocalResult",
    "LocalSynthesisTaskd",
    "healthy_region",
    "inpaint",
    "lesion_compartments",
    "lesion_region",
    "synthesise_lesion",
    "train_transforms",
    "val_transforms",
]

#: The two local tasks.
TASKS: tuple[str, ...] = ("inpaint", "lesion")
#: Network inputs: 4 contrasts (region zeroed), the region mask, the lesion compartments NETC, SNFH, ET.
IN_CHANNELS = len(CONTRASTS) + 1 + 3
#: Margin (mm) around a lesion's whole tumour that is blanked with it, so the network also draws the
#: transition to healthy tissue.
LESION_MARGIN_MM = 3.0
#: The local-synthesis weights inside a bundle (the shipped bundle's by default: see
#: :func:`medmtl.bundle_config.shipped_bundle`, which finds it in a checkout and in an installed package).
LOCAL_MODEL = "models/local_synthesis/model.pt"


def local_bundle(bundle: str | os.PathLike | None = None) -> Path:
    """The bundle whose ``models/local_synthesis`` weights to use: ``bundle``, else the shipped one."""
    from medmtl.bundle_config import shipped_bundle

    return Path(bundle) if bundle else shipped_bundle()


# ----------------------------------------------------------------------------------------------
# Regions


def lesion_region(whole_tumour: np.ndarray, spacing: Sequence[float], margin_mm: float = LESION_MARGIN_MM):
    """The region blanked for lesion synthesis: the whole tumour dilated by ``margin_mm``.

    Args:
        whole_tumour: boolean WT mask (H, W, D).
        spacing: voxel size in mm.
        margin_mm: dilation radius.

    Returns:
        Boolean mask (H, W, D).
    """
    wt = np.asarray(whole_tumour, bool)
    if margin_mm <= 0 or not wt.any():
        return wt
    return ndimage.distance_transform_edt(~wt, sampling=[float(v) for v in spacing]) <= margin_mm


def healthy_region(
    brain: np.ndarray,
    tumour: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.RandomState,
    radius_mm: tuple[float, float] = (8.0, 20.0),
    clearance_mm: float = 5.0,
    max_tries: int = 20,
) -> np.ndarray:
    """A random ellipsoidal region of healthy brain, away from the tumour (inpainting training masks).

    As in the BraTS inpainting data, the region lies inside the brain and does not touch the tumour.

    Args:
        brain: boolean brain mask (H, W, D).
        tumour: boolean whole-tumour mask (H, W, D); may be empty.
        spacing: voxel size in mm.
        rng: random state.
        radius_mm: range of the ellipsoid's semi-axes.
        clearance_mm: smallest distance to the tumour.
        max_tries: centres tried before falling back to the largest fitting region found.

    Returns:
        Boolean mask (H, W, D); empty only when the brain has no healthy voxel.
    """
    brain = np.asarray(brain, bool)
    allowed = brain & ~lesion_region(np.asarray(tumour, bool), spacing, clearance_mm)
    candidates = np.argwhere(ndimage.binary_erosion(allowed, iterations=2))
    if candidates.size == 0:
        candidates = np.argwhere(allowed)
    if candidates.size == 0:
        return np.zeros(brain.shape, bool)
    best = np.zeros(brain.shape, bool)
    sp = np.asarray(spacing, float)
    for _ in range(max_tries):
        centre = candidates[rng.randint(len(candidates))]
        axes = rng.uniform(*radius_mm, size=3)
        grid = np.ogrid[tuple(slice(0, n) for n in brain.shape)]
        inside = sum(((g - c) * s / a) ** 2 for g, c, s, a in zip(grid, centre, sp, axes)) <= 1.0
        region = inside & allowed
        if region.sum() >= 0.9 * inside.sum():
            return region
        if region.sum() > best.sum():
            best = region
    return best


def lesion_compartments(regions: np.ndarray) -> np.ndarray:
    """NETC, SNFH, ET masks (3, H, W, D) from TC, WT, ET region masks.

    Args:
        regions: (3, H, W, D) region masks in the order of :data:`medmtl.labels.REGIONS`.

    Returns:
        float32 (3, H, W, D): necrosis / non-enhancing core, oedema, enhancing tumour.
    """
    r = np.asarray(regions) > 0.5
    tc, wt, et = (r[REGIONS.index(k)] for k in ("TC", "WT", "ET"))
    return np.stack([tc & ~et, wt & ~tc, et]).astype(np.float32)


def network_input(image: Any, region: Any, compartments: Any | None) -> torch.Tensor:
    """The :data:`IN_CHANNELS` network input: contrasts with the region zeroed, region, compartments.

    Args:
        image: (4, ...) canonical contrasts, brain z-scores.
        region: (1, ...) or (...) region mask.
        compartments: (3, ...) lesion compartments (lesion synthesis) or None (inpainting).

    Returns:
        float32 tensor (8, ...).
    """
    img = torch.as_tensor(image, dtype=torch.float32)
    reg = torch.as_tensor(region, dtype=torch.float32).reshape(1, *img.shape[1:])
    comp = (
        torch.zeros((3, *img.shape[1:]), dtype=torch.float32)
        if compartments is None
        else torch.as_tensor(compartments, dtype=torch.float32) * reg
    )
    return torch.cat([img * (1 - reg), reg, comp])


# ----------------------------------------------------------------------------------------------
# Transform and pipelines


class LocalSynthesisTaskd(Randomizable, MapTransform):
    """Make a local-synthesis sample: blank a region, give the lesion map, keep the real voxels as target.

    Reads ``image`` (4 canonical contrasts, z-scored), ``label`` (TC/WT/ET regions), ``brain_mask``;
    a given ``region_mask`` (inference) replaces the drawn region. Writes ``image`` (the
    :data:`IN_CHANNELS` network input), ``synth_target`` (the four real contrasts), ``synth_mask``
    (the region, where the synthesis loss counts) and ``local_task``.

    Args:
        keys: the image key.
        task: ``inpaint``, ``lesion`` or ``mixed`` (each sample picks one, lesion with ``lesion_prob``).
        lesion_prob: probability of the lesion task in ``mixed`` mode.
        label_key: region label key (TC, WT, ET).
        brain_mask_key: brain mask key.
        region_key: key of a given region mask (1, ...); drawn when absent.
        deterministic: draw each case's region from a seed made from its ``case_id`` (validation), so
            every validation sees the same regions.
        radius_mm: semi-axis range of inpainting regions.
        margin_mm: margin blanked around a lesion.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        task: str = "mixed",
        lesion_prob: float = 0.5,
        label_key: str = "label",
        brain_mask_key: str = "brain_mask",
        region_key: str = "region_mask",
        deterministic: bool = False,
        radius_mm: tuple[float, float] = (8.0, 20.0),
        margin_mm: float = LESION_MARGIN_MM,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if task not in (*TASKS, "mixed"):
            raise ValueError(f"task must be one of {[*TASKS, 'mixed']}, got {task!r}")
        self.task, self.lesion_prob = task, float(lesion_prob)
        self.label_key, self.brain_mask_key, self.region_key = label_key, brain_mask_key, region_key
        self.deterministic = deterministic
        self.radius_mm, self.margin_mm = radius_mm, margin_mm
        self._task = task

    def randomize(self, data: Any = None) -> None:
        """Pick the task of the next sample (``mixed`` mode)."""
        self._task = self.task
        if self.task == "mixed":
            self._task = "lesion" if self.R.random_sample() < self.lesion_prob else "inpaint"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.deterministic:
            seed = int(hashlib.sha256(str(d.get("case_id", "")).encode()).hexdigest()[:8], 16)
            self.set_random_state(seed=seed)
        self.randomize()
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(CONTRASTS):
                raise ValueError(
                    f"{key} must hold the {len(CONTRASTS)} canonical contrasts, got {img.shape[0]}"
                )
            spacing = _pixdim(img)
            brain = np.asarray(d[self.brain_mask_key])[0] > 0.5
            regions = np.asarray(d[self.label_key]) > 0.5 if d.get(self.label_key) is not None else None
            task = self._task
            if task == "lesion" and (regions is None or not regions[REGIONS.index("WT")].any()):
                task = "inpaint"  # no tumour to take away: this sample inpaints
            if d.get(self.region_key) is not None:
                region = np.asarray(d[self.region_key]).reshape(brain.shape) > 0.5
            elif task == "lesion":
                region = lesion_region(regions[REGIONS.index("WT")], spacing, self.margin_mm) & brain
            else:
                tumour = regions[REGIONS.index("WT")] if regions is not None else np.zeros_like(brain)
                region = healthy_region(brain, tumour, spacing, self.R, self.radius_mm)
            comps = lesion_compartments(regions) if task == "lesion" else None
            x = network_input(img, region[None], comps)
            d["synth_target"] = img
            if isinstance(img, MetaTensor):
                x = MetaTensor(x, meta=img.meta, applied_operations=list(img.applied_operations))
            d[key] = x
            mask = torch.as_tensor(region[None], dtype=torch.float32)
            d["synth_mask"] = MetaTensor(mask, meta=img.meta) if isinstance(img, MetaTensor) else mask
            d["local_task"] = task
        return d


def _pixdim(img: Any) -> np.ndarray:
    if isinstance(img, MetaTensor):
        return np.asarray(img.pixdim, dtype=float).reshape(-1)[:3]
    return np.ones(3)


def train_transforms(
    roi_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    num_samples: int = 2,
    task: str = "mixed",
    lesion_prob: float = 0.5,
    flip_prob: float = 0.5,
) -> Compose:
    """Training pipeline of the local-synthesis tasks: patches centred on the blanked region mostly.

    Args:
        roi_size: patch size.
        spacing: voxel size in mm.
        num_samples: patches per case and iteration.
        task: ``inpaint``, ``lesion`` or ``mixed``.
        lesion_prob: share of lesion samples in ``mixed`` mode.
        flip_prob: flip probability per axis.

    Returns:
        A MONAI ``Compose``.
    """
    from medmtl.transforms import brain_crop_transforms, patch_transforms

    keys = ["image", "label", "synth_target", "synth_mask", "brain_mask"]
    xforms = brain_crop_transforms(["image", "label"], spacing)
    xforms += [
        LocalSynthesisTaskd(keys="image", task=task, lesion_prob=lesion_prob),
        *patch_transforms(keys, "synth_mask", roi_size, num_samples, pos=3.0, neg=1.0, flip_prob=flip_prob),
    ]
    return Compose(xforms)


def val_transforms(spacing: Sequence[float] | None = (1.0, 1.0, 1.0), task: str = "mixed") -> Compose:
    """Validation pipeline: whole volumes, each case's region drawn from its own fixed seed.

    Args:
        spacing: voxel size in mm.
        task: ``inpaint``, ``lesion`` or ``mixed``.

    Returns:
        A MONAI ``Compose``.
    """
    from medmtl.transforms import brain_crop_transforms

    xforms = brain_crop_transforms(["image", "label"], spacing)
    return Compose([*xforms, LocalSynthesisTaskd(keys="image", task=task, deterministic=True)])


# ----------------------------------------------------------------------------------------------
# Inference on a case


@dataclass
class LocalResult:
    """Output of :func:`inpaint` / :func:`synthesise_lesion`, in the case's own grid.

    Attributes:
        case_id: case identifier.
        images: the four contrasts, acquired voxels outside ``region`` and synthesised inside (float32,
            the case's intensity scale).
        region: the synthesised region (bool).
        affine: the case's voxel-to-world matrix.
        task: ``inpaint`` or ``lesion``.
        files: paths written (when an output folder was given).
    """

    case_id: str
    images: dict[str, np.ndarray]
    region: np.ndarray
    affine: np.ndarray
    task: str
    files: list[str] = field(default_factory=list)


def _check_mask(path: str | os.PathLike, ref: nib.Nifti1Image, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} does not exist")
    try:
        img = nib.load(str(p))
        arr = np.asarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 (any reader failure is a bad file for the user)
        raise ValueError(f"{what} {p}: not a readable NIfTI image ({err})") from err
    arr = arr.reshape(arr.shape[:3]) if arr.ndim == 4 and arr.shape[3] == 1 else arr
    mismatch = grid_mismatch(arr.shape, img.affine, ref.shape, ref.affine)
    if mismatch:
        raise ValueError(
            f"{what} {p}: grid differs from the case's ({mismatch}; shape and affine must match the scans)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} {p}: holds NaN or infinite values")
    return arr


def _source_brain(files: Mapping[str, str]) -> tuple[np.ndarray, dict[str, np.ndarray], nib.Nifti1Image]:
    ref = nib.load(files[CONTRASTS[0]])
    images = {c: np.asarray(nib.load(files[c]).dataobj, dtype=np.float32) for c in CONTRASTS}
    brain = np.zeros(ref.shape[:3], bool)
    for a in images.values():
        brain |= a != 0
    return brain, images, ref


def _load_bundle(bundle: str | os.PathLike | None, device: str | None) -> tuple[torch.nn.Module, dict, Any]:
    from medmtl.bundle_config import read_model_config
    from medmtl.inference.exported import load_weights
    from medmtl.networks import get_network

    root = local_bundle(bundle)
    model_path = root / LOCAL_MODEL
    cfg_path = model_path.parent / "model_config.json"
    if not model_path.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(
            f"no local-synthesis weights in {root} (expected {LOCAL_MODEL} and model_config.json beside it); "
            "train them with the bundle's configs/local_synthesis.json"
        )
    cfg = read_model_config(cfg_path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = get_network(cfg["network_preset"], in_channels=IN_CHANNELS, synth_channels=len(CONTRASTS),
                      **cfg.get("network_kwargs", {}))  # fmt: skip
    load_weights(net, model_path)  # the loader inference uses: data only, a clear error for other weights
    return net.to(dev).eval(), cfg, dev


def run_local(
    case: str | os.PathLike | Mapping[str, Any],
    mask: str | os.PathLike,
    task: str,
    bundle: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str | None = None,
) -> LocalResult:
    """Inpaint a region, or paint a lesion from a label map, into one case.

    Args:
        case: a case folder (any supported layout) or ``{contrast: path}`` with all four contrasts.
        mask: ``inpaint``: the region to fill (non-zero voxels); ``lesion``: a BraTS label map of the
            lesion to paint (either convention). On the case's grid.
        task: ``inpaint`` or ``lesion``.
        bundle: bundle folder holding ``models/local_synthesis/`` (the shipped one by default).
        out_dir: when given, ``<case>_<contrast>_<inpainted|lesion>.nii.gz``, ``<case>_<task>_region.nii.gz``
            and ``<case>_<task>.json`` are written there, all or none.
        overwrite: replace existing outputs.
        device: torch device (CUDA when available by default).

    Returns:
        A :class:`LocalResult`.

    Raises:
        FileNotFoundError: missing case, mask or weights.
        ValueError: a contrast missing, a mask on another grid, empty, or outside the brain, a label
            map with no tumour or values outside the BraTS conventions; each names the file.
    """
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import Invertd

    from medmtl.inference.cases import case_entry
    from medmtl.inference.engine import SplitPredictiond
    from medmtl.inference.predictor import Predictor, in_memory_image
    from medmtl.transforms import brain_crop_transforms

    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    entry = case_entry(case)
    files = {c: entry.get(c) for c in CONTRASTS}
    absent = [c for c, f in files.items() if not f]
    if absent:
        raise ValueError(
            f"case {entry['case_id']}: contrasts {absent} missing; local synthesis needs all four"
        )
    brain, images, ref = _source_brain(files)
    what = "region mask" if task == "inpaint" else "lesion label map"
    arr = _check_mask(mask, ref, what)
    spacing = np.asarray(ref.header.get_zooms()[:3], float)
    if task == "inpaint":
        region = arr > 0
    else:
        values = np.unique(np.rint(arr)).astype(int)
        try:
            convention = resolve_convention(values.tolist())
        except ValueError as err:
            raise ValueError(f"{what} {mask}: {err}") from err
        wt = np.asarray(label_to_regions(np.rint(arr).astype(np.int16), convention))[REGIONS.index("WT")]
        region = lesion_region(wt, spacing) & brain
    if not region.any():
        raise ValueError(
            f"{what} {mask}: empty (no non-zero voxel{' in the brain' if task == 'lesion' else ''})"
        )
    inside = float((region & brain).sum()) / float(region.sum())
    if inside < 0.9:
        raise ValueError(f"{what} {mask}: only {inside:.0%} of its voxels lie inside the brain (need 90 %)")
    region &= brain

    suffix = "inpainted" if task == "inpaint" else "lesion"
    out_paths: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output {out} exists and is not a folder")
        cid = entry["case_id"]
        out_paths = {c: out / f"{cid}_{c}_{suffix}.nii.gz" for c in CONTRASTS}
        out_paths["region"] = out / f"{cid}_{task}_region.nii.gz"
        existing = [str(p) for p in out_paths.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(f"outputs exist ({existing[0]}, ...); pass overwrite=True / --overwrite")

    net, cfg, dev = _load_bundle(bundle, device)
    # The images were read once above: they go in as MetaTensors on the scan's grid.
    data: dict[str, Any] = {
        "image": [in_memory_image(images[c], ref.affine, files[c]) for c in CONTRASTS],
        "contrasts": list(CONTRASTS),
        "case_id": entry["case_id"],
        "region_mask": in_memory_image(region.astype(np.uint8), ref.affine, "region"),
    }
    keys = ["image", "region_mask"]
    if task == "lesion":
        data["label"] = in_memory_image(np.rint(arr).astype(np.uint8), ref.affine, str(mask))
        data["label_convention"] = convention
        keys.append("label")
    pre = Compose(
        [*brain_crop_transforms(keys, cfg["spacing"]), LocalSynthesisTaskd(keys="image", task=task)]
    )
    post = Compose(
        [
            SplitPredictiond(keys="pred"),
            Invertd(keys="synth", transform=pre, orig_keys="image", nearest_interp=False),
        ]
    )
    inferer = SlidingWindowInferer(
        roi_size=cfg["val_roi_size"], sw_batch_size=1, overlap=0.5, mode="gaussian"
    )
    out = Predictor(net, pre, inferer, post, device=dev)(data)
    synth = np.asarray(torch.as_tensor(out["synth"]).cpu(), dtype=np.float32)

    out_images: dict[str, np.ndarray] = {}
    for i, c in enumerate(CONTRASTS):
        a = images[c]
        vals = a[brain]
        mean, std = float(vals.mean()), float(vals.std()) or 1.0
        # back from the network's brain z-scores to the scan's own intensity scale
        filled = np.clip(synth[i] * std + mean, 0.0, None).astype(np.float32)
        out_images[c] = np.where(region, filled, a).astype(np.float32)
    result = LocalResult(entry["case_id"], out_images, region, np.asarray(ref.affine), task)
    if out_paths:
        from medmtl.io import write_nifti_group

        group = {out_paths[c]: (out_images[c], np.float32, f"medmtl {suffix} {c}") for c in CONTRASTS}
        group[out_paths["region"]] = (region.astype(np.uint8), np.uint8, f"medmtl {task} region")
        sidecar = {
            "case_id": entry["case_id"],
            "task": task,
            "mask": str(Path(mask).resolve()),
            "region_voxels": int(region.sum()),
            "model": str(local_bundle(bundle).resolve() / LOCAL_MODEL),
            "outputs": {k: p.name for k, p in out_paths.items()},
            "intensity": "the scan's own scale; synthesised voxels mapped from brain z-scores",
        }
        written = write_nifti_group(group, ref, Path(out_dir) / f"{entry['case_id']}_{task}.json", sidecar)
        result.files = [str(p) for p in written]
    return result


def inpaint(
    case: str | os.PathLike | Mapping[str, Any], mask: str | os.PathLike, **kwargs: Any
) -> LocalResult:
    """Fill ``mask`` with healthy tissue in all four contrasts; see :func:`run_local` for the arguments."""
    return run_local(case, mask, "inpaint", **kwargs)


def synthesise_lesion(
    case: str | os.PathLike | Mapping[str, Any], label: str | os.PathLike, **kwargs: Any
) -> LocalResult:
    """Paint the lesion of a BraTS label map into a case; see :func:`run_local` for the arguments."""
    return run_local(case, label, "lesion", **kwargs)


# ----------------------------------------------------------------------------------------------
# CLI


def cli_main(args: argparse.Namespace, task: str) -> int:
    """Run ``medmtl inpaint`` / ``medmtl synth-lesion`` (user errors are reported by :mod:`medmtl.cli`)."""
    prog = "medmtl inpaint" if task == "inpaint" else "medmtl synth-lesion"
    mask = args.mask if task == "inpaint" else args.label
    res = run_local(
        args.case,
        mask,
        task,
        bundle=args.bundle,
        out_dir=args.out,
        overwrite=args.overwrite,
        device=args.device,
    )
    print(
        f"{prog}: {res.case_id}: {int(res.region.sum())} voxels synthesised; "
        f"{len(res.files)} files in {args.out}",
        flush=True,
    )
    return 0

"""Synthetic-lesion augmentation: paste a glioma-like lesion into a training case and label it.

A lesion is made of the three BraTS compartments, stored internally as a BraTS 2023 label map
(1 necrosis / non-enhancing core NETC, 2 oedema SNFH, 3 enhancing tumour ET). It is either a
procedural blob (:func:`make_procedural_lesion`) or a donor tumour from another case, rotated,
scaled and placed with MONAI's :class:`~monai.transforms.Affine`. Inside the lesion every contrast
is shifted, in z-score units and relative to the surrounding healthy tissue, the way gliomas look:

* ET: bright on T1 post-contrast (t1c), mildly bright on t2w / t2f;
* NETC: dark on t1n and t1c, bright on t2w;
* SNFH: bright on t2w and t2f, slightly dark on t1n, with a soft outer boundary.

The transform runs on the canonical, brain-normalised image (after ``NormalizeIntensityd`` and
``CropForegroundd`` of :func:`medmtl.transforms.train_transforms`, before ``SplitTaskd``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Affine, MapTransform, RandomizableTransform
from monai.transforms.utils import create_rotate
from monai.utils import convert_data_type
from scipy import ndimage

from medmtl.contrasts import CONTRASTS, canonical, canonical_list
from medmtl.labels import CONVENTIONS, label_to_regions, resolve_convention

#: Compartment codes of the internal lesion map (the BraTS 2023 label values).
NETC, SNFH, ET = 1, 2, 3
_CODES: dict[str, int] = {"NETC": NETC, "SNFH": SNFH, "ET": ET}

#: Default intensity change per compartment and contrast: (low, high) of a uniform draw, in z-score
#: units of the brain-normalised image. One value is drawn per lesion, compartment and contrast.
DEFAULT_INTENSITY_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "ET": {"t1n": (-0.6, -0.1), "t1c": (1.5, 3.0), "t2w": (0.3, 1.0), "t2f": (0.3, 1.0)},
    "NETC": {"t1n": (-1.5, -0.6), "t1c": (-1.5, -0.6), "t2w": (1.0, 2.0), "t2f": (-0.5, 0.8)},
    "SNFH": {"t1n": (-0.6, -0.2), "t1c": (-0.4, 0.0), "t2w": (1.0, 2.0), "t2f": (1.2, 2.5)},
}

Rng = np.random.RandomState | np.random.Generator


def _range(value: float | Sequence[float], name: str, symmetric: bool = False) -> tuple[float, float]:
    if np.isscalar(value):
        v = float(value)  # type: ignore[arg-type]
        lo, hi = (-abs(v), abs(v)) if symmetric else (v, v)
    else:
        lo, hi = (float(x) for x in value)  # type: ignore[union-attr]
    if lo > hi:
        raise ValueError(f"{name} must be (low, high) with low <= high, got {value}")
    return lo, hi


def _smooth_noise(rng: Rng, shape: Sequence[int], sigma: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian noise smoothed with ``sigma`` voxels, clipped to [-2, 2]."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="nearest")
    return np.clip((field - field.mean()) / max(float(field.std()), 1e-6), -2.0, 2.0)


def make_procedural_lesion(
    spacing: Sequence[float],
    rng: Rng,
    core_radius_mm: tuple[float, float] = (4.0, 15.0),
    rim_mm: tuple[float, float] = (1.5, 4.0),
    oedema_mm: tuple[float, float] = (2.0, 15.0),
    irregularity: float = 0.3,
) -> np.ndarray:
    """A random glioma-like lesion: irregular core with an enhancing rim around necrosis, in oedema.

    The core is a ball of random radius whose surface is pushed in and out by smooth noise; the
    enhancing rim is the outer layer of the core (distance to its surface below the rim thickness),
    the rest of the core is necrosis (a small core is entirely enhancing); the oedema is everything
    within a noisy margin of the core. All lengths are in mm, so anisotropic grids are handled.

    Args:
        spacing: voxel size (mm) of the grid the lesion is made on.
        rng: random generator (``numpy.random.RandomState`` or ``Generator``).
        core_radius_mm: range of the tumour-core (TC) radius.
        rim_mm: range of the enhancing-rim thickness.
        oedema_mm: range of the oedema margin around the core.
        irregularity: relative amplitude of the shape noise (0 gives spheres and shells).

    Returns:
        A uint8 map (x, y, z) of 0 background, 1 NETC, 2 SNFH, 3 ET (BraTS 2023 values), centred on
        the core's centre voxel.
    """
    spacing_a = np.asarray(spacing, dtype=float)
    r_core = rng.uniform(*core_radius_mm)
    rim = rng.uniform(*rim_mm)
    margin = rng.uniform(*oedema_mm)
    stretch = 1.0 + 2.0 * irregularity  # noise is clipped to +-2 std
    half = np.ceil((r_core * stretch + margin * (1.0 + 3.0 * irregularity)) / spacing_a).astype(int) + 1
    shape = tuple(int(n) for n in 2 * half + 1)
    axes = [(np.arange(n) - h) * s for n, h, s in zip(shape, half, spacing_a)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij", sparse=True)
    radius = np.sqrt(gx**2 + gy**2 + gz**2)

    shape_noise = _smooth_noise(rng, shape, 0.5 * r_core / spacing_a)
    core = radius <= r_core * np.maximum(1.0 + irregularity * shape_noise, 0.3)
    # Noise far from the centre can make islands; a tumour core is one piece.
    parts, _ = ndimage.label(core)
    core = parts == parts[tuple(half)]

    depth = ndimage.distance_transform_edt(core, sampling=spacing_a)
    # The outer voxel layer always enhances, even where the rim is thinner than a voxel.
    surface = core & ~ndimage.binary_erosion(core)
    et = surface | (core & (depth <= rim * (1.0 + 0.5 * irregularity * shape_noise)))

    # Oedema spreads unevenly (along white-matter tracts), so its margin varies more than the core's.
    oedema_noise = _smooth_noise(rng, shape, 0.35 * (r_core + margin) / spacing_a)
    reach = ndimage.distance_transform_edt(~core, sampling=spacing_a)
    oedema = ~core & (reach <= margin * np.maximum(1.0 + 1.5 * irregularity * oedema_noise, 0.2))

    out = np.zeros(shape, dtype=np.uint8)
    out[oedema] = SNFH
    out[core] = NETC
    out[et] = ET
    return out


def donor_compartments(donor: Any, convention: str | None = None) -> np.ndarray:
    """Turn a donor tumour label into the internal compartment map, cropped to its tumour.

    Args:
        donor: numpy array or torch tensor, either region masks (3, x, y, z) in the order TC, WT, ET
            (as :class:`~medmtl.labels.LabelToRegionsd` makes them) or a BraTS label map (x, y, z) or
            (1, x, y, z).
        convention: label convention of a label-map donor; detected from its values when None
            (BraTS 2023 when they do not decide). Ignored for region masks.

    Returns:
        A uint8 map of 0 background, 1 NETC, 2 SNFH, 3 ET cropped to the tumour's bounding box
        (empty (0, 0, 0) when the donor has no tumour).

    Raises:
        ValueError: for an array of another shape.
    """
    arr = convert_data_type(donor, np.ndarray)[0]
    if arr.ndim == 4 and arr.shape[0] == 3:
        tc, wt, et = (arr[i] > 0.5 for i in range(3))
    elif arr.ndim == 3 or (arr.ndim == 4 and arr.shape[0] == 1):
        label = np.rint(arr.reshape(arr.shape[-3:])).astype(np.int64)
        values = CONVENTIONS[resolve_convention(np.unique(label).tolist(), convention)]
        et = label == values["ET"]
        tc = et | (label == values["NETC"])
        wt = tc | (label == values["SNFH"])
    else:
        raise ValueError(
            f"a lesion donor must be region masks (3, x, y, z) or a label map (x, y, z), got {arr.shape}"
        )
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = SNFH
    out[tc] = NETC
    out[et] = ET
    return _crop_to_foreground(out)


def _crop_to_foreground(lesion: np.ndarray) -> np.ndarray:
    idx = np.nonzero(lesion)
    if idx[0].size == 0:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    return lesion[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]


def _masked_blur(values: np.ndarray, mask: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Gaussian blur of ``values`` using only voxels in ``mask`` (normalised convolution); 0 outside.

    Plain blurring would pull values at the lesion's edge towards the zeros outside it.
    """
    m = mask.astype(np.float64)
    num = ndimage.gaussian_filter(values * m, sigma, mode="nearest")
    den = ndimage.gaussian_filter(m, sigma, mode="nearest")
    return np.where(mask, num / np.maximum(den, 1e-6), 0.0)


class RandSyntheticLesiond(RandomizableTransform, MapTransform):
    """Paste a synthetic glioma into a case (image and region label), for segmentation training.

    With probability ``prob`` a lesion is made (from a random donor when ``donors`` are given,
    otherwise procedurally), centred on a random brain voxel and clipped to the brain mask. With
    ``avoid_existing`` it must not overlap the case's tumour (WT); if no valid place is found in
    ``max_tries`` draws, the case is returned unchanged. Inside the lesion each contrast is shifted by a
    per-compartment amount drawn from ``intensity_ranges``; in the tumour core the healthy texture is
    replaced by the mean of the surrounding healthy tissue plus that shift, while oedema adds the shift
    to the tissue it infiltrates, fading towards its outer boundary. Voxels outside the lesion are
    returned bit-identical, so nothing outside the brain changes. The label becomes the union of the
    case's regions and the lesion's (TC, WT, ET), which keeps ET within TC within WT.

    Args:
        prob: probability of pasting a lesion into a case.
        donors: optional tumours to paste, numpy arrays or torch tensors of region masks (3, x, y, z)
            (TC, WT, ET) or BraTS label maps (x, y, z), already on the voxel spacing of the images the
            transform sees (it does not resample them). Each is read when drawn, so a lazy sequence
            works. When None or empty, lesions are procedural.
        image_key: key of the image (C, X, Y, Z), brain-normalised (z-scores, 0 outside the brain).
        label_key: key of the region label (3, X, Y, Z) in the order TC, WT, ET.
        brain_mask_key: key of the brain mask (1, X, Y, Z); None derives it from the non-zero voxels
            of the image, as :class:`~medmtl.transforms.BrainMaskd` does.
        contrasts: contrast of each image channel (canonical order by default); a channel that is all
            zero around the lesion (a missing contrast) is left alone.
        avoid_existing: do not overlap the case's tumour (WT).
        max_tries: placements drawn before giving up.
        min_inside_fraction: share of the lesion's voxels that must land inside the brain (and the
            volume); placements clipped more are redrawn.
        rotate_range: donor rotation about each axis, uniform in (-r, r) radians (a float or one per
            axis).
        scale_range: donor scaling, an isotropic zoom of 1 + uniform(low, high); a float s means
            (-s, s). 0 (with ``rotate_range=0``) pastes the donor voxel for voxel.
        donor_convention: label convention of label-map donors; detected per donor when None.
        core_radius_mm: procedural tumour-core radius range (mm).
        rim_mm: procedural enhancing-rim thickness range (mm).
        oedema_mm: procedural oedema margin range (mm).
        irregularity: relative amplitude of the procedural shape noise.
        intensity_ranges: overrides of :data:`DEFAULT_INTENSITY_RANGES`, ``{compartment: {contrast:
            (low, high)}}`` with compartments ``"ET"``, ``"NETC"``, ``"SNFH"``; missing entries keep
            the defaults.
        edge_mm: length over which the lesion fades in from its outer oedema boundary (0: hard edge).
        blur_mm: Gaussian sigma (mm) smoothing the steps between compartments (partial volume); keep it
            below the rim thickness, or the thin enhancing rim is averaged away.
        noise_std: amplitude (z-score units) of the smooth texture noise added inside the lesion.
        shell_mm: thickness of the ring of healthy tissue around the lesion that sets the local
            reference intensity.
        pixdim: voxel size used for plain tensors / arrays (MetaTensors use their affine); 1 mm when
            None.
        allow_missing_keys: return the data unchanged when the image or label key is absent.
    """

    def __init__(
        self,
        prob: float = 0.5,
        donors: Sequence[Any] | None = None,
        image_key: str = "image",
        label_key: str = "label",
        brain_mask_key: str | None = "brain_mask",
        contrasts: Sequence[str] = CONTRASTS,
        avoid_existing: bool = True,
        max_tries: int = 10,
        min_inside_fraction: float = 0.5,
        rotate_range: float | Sequence[float] = np.pi,
        scale_range: float | Sequence[float] = 0.15,
        donor_convention: str | None = None,
        core_radius_mm: tuple[float, float] = (4.0, 15.0),
        rim_mm: tuple[float, float] = (1.5, 4.0),
        oedema_mm: tuple[float, float] = (2.0, 15.0),
        irregularity: float = 0.3,
        intensity_ranges: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
        edge_mm: float = 2.0,
        blur_mm: float = 0.5,
        noise_std: float = 0.1,
        shell_mm: float = 5.0,
        pixdim: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, [image_key, label_key], allow_missing_keys)
        self.donors = donors if donors is not None and len(donors) > 0 else None
        self.image_key, self.label_key, self.brain_mask_key = image_key, label_key, brain_mask_key
        self.contrasts = canonical_list(contrasts)
        self.avoid_existing = avoid_existing
        self.max_tries = int(max_tries)
        self.min_inside_fraction = float(min_inside_fraction)
        rr = np.broadcast_to(np.abs(np.asarray(rotate_range, dtype=float)), (3,))
        self.rotate_range = tuple(float(r) for r in rr)
        self.scale_range = _range(scale_range, "scale_range", symmetric=True)
        if self.scale_range[0] <= -1.0:
            raise ValueError(f"scale_range must keep the zoom positive, got {scale_range}")
        self.donor_convention = donor_convention
        self.core_radius_mm = _range(core_radius_mm, "core_radius_mm")
        self.rim_mm = _range(rim_mm, "rim_mm")
        self.oedema_mm = _range(oedema_mm, "oedema_mm")
        self.irregularity = float(irregularity)
        self.intensity_ranges = self._merge_ranges(intensity_ranges)
        self.edge_mm, self.blur_mm, self.noise_std, self.shell_mm = edge_mm, blur_mm, noise_std, shell_mm
        self.pixdim = None if pixdim is None else tuple(float(p) for p in pixdim)

    @staticmethod
    def _merge_ranges(
        overrides: Mapping[str, Mapping[str, Sequence[float]]] | None,
    ) -> dict[str, dict[str, tuple[float, float]]]:
        ranges = {k: dict(v) for k, v in DEFAULT_INTENSITY_RANGES.items()}
        for compartment, per_contrast in (overrides or {}).items():
            if compartment not in ranges:
                raise ValueError(
                    f"unknown lesion compartment {compartment!r}; expected one of {list(ranges)}"
                )
            for contrast, value in per_contrast.items():
                ranges[compartment][canonical(contrast)] = _range(value, f"{compartment}/{contrast}")
        return ranges

    def randomize(self, data: Any = None) -> None:
        """Decide whether the next case gets a lesion (the lesion itself is drawn in ``__call__``).

        Args:
            data: unused; part of MONAI's ``Randomizable`` interface.
        """
        super().randomize(None)

    def _spacing(self, img: Any) -> np.ndarray:
        if isinstance(img, MetaTensor):
            return np.asarray(img.pixdim, dtype=float).reshape(-1)[:3]
        return np.asarray(self.pixdim or (1.0, 1.0, 1.0), dtype=float)

    def _make_lesion(self, spacing: np.ndarray) -> np.ndarray:
        if self.donors is None:
            return make_procedural_lesion(
                spacing, self.R, self.core_radius_mm, self.rim_mm, self.oedema_mm, self.irregularity
            )
        donor = donor_compartments(self.donors[self.R.randint(len(self.donors))], self.donor_convention)
        angles = [self.R.uniform(-r, r) for r in self.rotate_range]
        zoom = 1.0 + self.R.uniform(*self.scale_range)
        if donor.size == 0:
            return donor
        return self._transform_donor(donor, spacing, angles, zoom)

    @staticmethod
    def _transform_donor(
        donor: np.ndarray, spacing: np.ndarray, angles: Sequence[float], zoom: float
    ) -> np.ndarray:
        rot = create_rotate(3, angles)[:3, :3]
        # Rotate and zoom in mm, not voxels, so anisotropic grids do not shear the tumour.
        in_half_mm = 0.5 * np.asarray(donor.shape) * spacing
        corners = np.array(np.meshgrid(*[(-h, h) for h in in_half_mm], indexing="ij")).reshape(3, -1)
        out_half_vox = np.abs(zoom * rot @ corners).max(axis=1) / spacing
        out_size = np.ceil(2 * out_half_vox).astype(int) + 3
        # Same parity as the donor: with identity parameters the centres then fall on whole voxels.
        out_size += (out_size - np.asarray(donor.shape)) % 2
        # Affine maps output voxels to the donor's voxels (both centred on their grids).
        matrix = np.eye(4)
        matrix[:3, :3] = np.diag(1.0 / spacing) @ rot.T @ np.diag(spacing) / zoom
        resample = Affine(
            affine=matrix,
            spatial_size=tuple(int(s) for s in out_size),
            mode="nearest",
            padding_mode="zeros",
            image_only=True,
        )
        moved = resample(torch.as_tensor(donor[None], dtype=torch.float32))
        out = np.rint(convert_data_type(moved, np.ndarray)[0][0]).astype(np.uint8)
        return _crop_to_foreground(out)

    def _place(
        self, lesion: np.ndarray, brain: np.ndarray, old_wt: np.ndarray
    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
        """Draw a placement; returns the volume slices of the lesion box and its brain-clipped map."""
        total = int(np.count_nonzero(lesion))
        candidates = np.flatnonzero(brain & ~old_wt if self.avoid_existing else brain)
        if total == 0 or candidates.size == 0:
            return None
        core = np.argwhere((lesion == NETC) | (lesion == ET))
        anchor = np.rint((core if core.size else np.argwhere(lesion)).mean(axis=0)).astype(int)
        shape = np.asarray(brain.shape)
        for _ in range(self.max_tries):
            centre = np.asarray(np.unravel_index(candidates[self.R.randint(candidates.size)], brain.shape))
            start = centre - anchor
            lo, hi = np.maximum(start, 0), np.minimum(start + lesion.shape, shape)
            if np.any(hi <= lo):
                continue
            vol = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            box = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
            placed = np.where(brain[vol], lesion[box], 0).astype(np.uint8)
            inside = int(np.count_nonzero(placed))
            if inside == 0 or inside < self.min_inside_fraction * total:
                continue
            if self.avoid_existing and np.any((placed > 0) & old_wt[vol]):
                continue
            return vol, placed
        return None

    def _paint(
        self,
        image: np.ndarray,
        lesion: np.ndarray,
        brain: np.ndarray,
        old_wt: np.ndarray,
        spacing: np.ndarray,
    ) -> np.ndarray:
        """New image values (C, n) at the lesion voxels of a local region, in the order of its mask."""
        wt = lesion > 0
        tc = (lesion == NETC) | (lesion == ET)
        sigma = self.blur_mm / spacing
        ring = ndimage.distance_transform_edt(~wt, sampling=spacing) <= self.shell_mm
        healthy = brain & ~old_wt & ~wt
        if np.any(healthy & ring):
            healthy &= ring
        # Core tissue is replaced by tumour; oedema is water added to the tissue it infiltrates.
        replace = _masked_blur(tc.astype(np.float64), wt, sigma)
        depth = ndimage.distance_transform_edt(wt, sampling=spacing)
        fade = 1.0 - np.exp(-depth / self.edge_mm) if self.edge_mm > 0 else wt.astype(np.float64)
        weight = np.where(tc, 1.0, fade)

        out = image[:, wt].astype(np.float64)
        for c, contrast in enumerate(self.contrasts):
            # Drawn for every channel, present or not, so the stream of draws does not depend on the case.
            shift = np.zeros(lesion.shape)
            for name, code in _CODES.items():
                shift[lesion == code] = self.R.uniform(*self.intensity_ranges[name][contrast])
            noise = _smooth_noise(self.R, lesion.shape, 1.0 / spacing * np.ones(3)) * self.noise_std
            channel = image[c].astype(np.float64)
            if not np.any(channel != 0):
                continue  # a missing contrast stays missing
            reference = float(channel[healthy].mean()) if np.any(healthy) else 0.0
            change = _masked_blur(shift, wt, sigma) + replace * (reference - channel) + noise
            out[c] = (channel + weight * change)[wt]
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Paste a lesion into one case with probability ``prob``.

        Args:
            data: a case with the image, region-label and (unless ``brain_mask_key`` is None) brain
                mask keys.

        Returns:
            A shallow copy of ``data``; when a lesion was pasted, image and label are new arrays of the
            same type, dtype, device and meta, otherwise the input objects themselves.
        """
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        if self.allow_missing_keys and not all(k in d for k in (self.image_key, self.label_key)):
            return d
        img, label = d[self.image_key], d[self.label_key]
        if img.shape[0] != len(self.contrasts):
            raise ValueError(
                f"{self.image_key} has {img.shape[0]} channels but contrasts names {len(self.contrasts)}"
            )
        image_np = convert_data_type(img, np.ndarray)[0]
        label_np = convert_data_type(label, np.ndarray)[0]
        if self.brain_mask_key is None:
            brain = np.any(image_np != 0, axis=0)
        else:
            brain = convert_data_type(d[self.brain_mask_key], np.ndarray)[0].reshape(image_np.shape[1:]) > 0.5
        old_wt = label_np[1] > 0.5
        spacing = self._spacing(img)

        lesion = self._make_lesion(spacing)
        placement = self._place(lesion, brain, old_wt)
        if placement is None:
            return d
        vol, placed = placement

        # Work on a region around the lesion wide enough to hold the healthy reference ring.
        pad = np.ceil(self.shell_mm / spacing).astype(int) + 1
        lo = [max(s.start - p, 0) for s, p in zip(vol, pad)]
        hi = [min(s.stop + p, n) for s, p, n in zip(vol, pad, brain.shape)]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        local = np.zeros([b - a for a, b in zip(lo, hi)], dtype=np.uint8)
        local[tuple(slice(s.start - a, s.stop - a) for s, a in zip(vol, lo))] = placed
        wt = local > 0

        values = self._paint(image_np[(slice(None), *region)], local, brain[region], old_wt[region], spacing)
        new_image = image_np[(slice(None), *region)].copy()
        new_image[:, wt] = values.astype(image_np.dtype)
        new_label = label_np[(slice(None), *region)].copy()
        regions = np.asarray(label_to_regions(local, "brats2023"), dtype=bool)
        new_label[regions] = 1

        d[self.image_key] = _write_region(img, region, new_image)
        d[self.label_key] = _write_region(label, region, new_label)
        return d


def _write_region(dst: Any, region: tuple[slice, ...], values: np.ndarray) -> Any:
    """A copy of ``dst`` (tensor, MetaTensor with its meta, or array) with ``values`` in ``region``."""
    index = (slice(None), *region)
    if isinstance(dst, torch.Tensor):
        out = dst.clone()
        plain = out.as_tensor() if isinstance(out, MetaTensor) else out
        plain[index] = torch.as_tensor(values, dtype=dst.dtype, device=dst.device)
        return out
    out = np.array(dst, copy=True)
    out[index] = values
    return out


__all__: Sequence[str] = (
    "DEFAULT_INTENSITY_RANGES",
    "make_procedural_lesion",
    "donor_compartments",
    "RandSyntheticLesiond",
)


def load_donors(entries: Sequence[Mapping[str, Any]], spacing: Sequence[float] | None) -> list[np.ndarray]:
    """Real tumours as donors for :class:`RandSyntheticLesiond`, on the training grid.

    Each entry's label map is loaded, oriented to RAS and resampled (nearest) to ``spacing`` as the
    training pipeline does, turned into TC / WT / ET regions and cropped to its whole tumour.

    Args:
        entries: datalist entries with ``label`` (absolute path) and ``label_convention``.
        spacing: the training voxel size in mm (None keeps each label's own grid).

    Returns:
        ``(3, x, y, z)`` uint8 region masks, one per entry with a non-empty tumour.

    Raises:
        ValueError: when an entry has no label, naming the case.
    """
    from monai.transforms import Compose, LoadImage, Orientation, Spacing

    steps: list[Any] = [LoadImage(image_only=True, ensure_channel_first=True), Orientation(axcodes="RAS")]
    if spacing is not None:
        steps.append(Spacing(pixdim=tuple(float(s) for s in spacing), mode="nearest"))
    load = Compose(steps)
    donors = []
    for entry in entries:
        if not entry.get("label"):
            raise ValueError(f"case {entry.get('case_id', '?')}: no label map to take a donor tumour from")
        label = np.asarray(load(entry["label"]))[0]
        try:
            convention = resolve_convention(np.unique(label).tolist(), entry.get("label_convention"))
        except ValueError as err:
            raise ValueError(f"{entry['label']}: {err}") from err
        regions = np.asarray(label_to_regions(label, convention)).astype(np.uint8)
        idx = np.nonzero(regions[1])
        if idx[0].size:
            box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
            donors.append(regions[(slice(None), *box)])
    return donors

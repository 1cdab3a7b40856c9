"""Assemble a phantom case: grid, anatomy, tumour with mass effect, four contrasts, labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_prep.phantoms.anatomy import Anatomy, tissue_map
from data_prep.phantoms.mri import Scanner
from data_prep.phantoms.tumour import Tumour
from medmtl.contrasts import CONTRASTS, canonical
from medmtl.labels import CONVENTIONS, check_convention

#: Field of view (mm) of a BraTS scan: 240 x 240 x 155 voxels of 1 mm.
BRATS_FOV: tuple[float, float, float] = (240.0, 240.0, 155.0)

# Where the cerebrum centre sits relative to the field-of-view centre (mm, LPS image axes), as in
# BraTS: the brain is a little posterior and superior, cerebellum and brainstem reach the bottom.
_BRAIN_OFFSET = np.array([0.0, 8.0, 8.0])
# Anatomical extent of the brain (mm, at head scale 1): x, y (anterior, posterior), z (inferior, superior).
_BRAIN_BOX = ((-78.0, 78.0), (-94.0, 94.0), (-95.0, 68.0))


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """Isotropic voxel size that makes ``shape`` cover at least a BraTS field of view.

    Args:
        shape: grid size, e.g. (96, 96, 64).

    Returns:
        (s, s, s) with s = max(240 / X, 240 / Y, 155 / Z) mm: 1 mm for 240x240x155, 2.5 mm for
        96x96x64.
    """
    s = max(f / n for f, n in zip(BRATS_FOV, shape))
    return (s, s, s)


def lps_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Voxel-to-world affine of an LPS-stored volume centred on the world origin.

    Args:
        shape: grid size.
        spacing: voxel size (mm).

    Returns:
        4x4 float64 matrix diag(-sx, -sy, sz) whose grid centre maps to (0, 0, 0), so that
        ``nibabel.aff2axcodes`` gives ("L", "P", "S") like BraTS files on disk.
    """
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


@dataclass(frozen=True)
class Phantom:
    """A synthetic BraTS-like case.

    Args:
        images: int16 array (4, X, Y, Z), channels in canonical order :data:`medmtl.contrasts.CONTRASTS`,
            zero outside the brain (skull-stripped).
        label: uint8 label map (X, Y, Z) in ``convention`` (1 NETC, 2 SNFH, ET 3 or 4).
        brain_mask: bool brain mask (X, Y, Z).
        tissue: uint8 healthy-tissue map (X, Y, Z) of :data:`~data_prep.phantoms.anatomy.TISSUES`
            (displaced by the tumour; under the tumour it gives the tissue it grew in).
        affine: 4x4 voxel-to-world matrix (LPS on disk).
        spacing: voxel size (mm).
        convention: label convention of ``label``.
        seed: the seed it was made from.
        info: tumour description (kind, centre voxel, radius, ...) and voxel counts.
    """

    images: np.ndarray
    label: np.ndarray
    brain_mask: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    convention: str
    seed: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Channel names of :attr:`images`."""
        return CONTRASTS

    def image(self, contrast: str) -> np.ndarray:
        """One contrast by any known name (``"flair"``, ``"T1GD"``, ``"t2w"`` ...)."""
        return self.images[CONTRASTS.index(canonical(contrast))]


def _check_grid(shape: Sequence[int], spacing: float | Sequence[float] | None) -> tuple[tuple, tuple]:
    shape_t = tuple(int(n) for n in shape)
    if len(shape_t) != 3 or min(shape_t) < 16:
        raise ValueError(f"phantom shape must be 3 sizes of at least 16 voxels, got {tuple(shape)}")
    if spacing is None:
        spacing_t = default_spacing(shape_t)
    elif np.isscalar(spacing):
        spacing_t = (float(spacing),) * 3  # type: ignore[arg-type]
    else:
        spacing_t = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise ValueError(f"phantom spacing must be one or three positive sizes in mm, got {spacing}")
    return shape_t, spacing_t


def _rotation(rng: np.random.Generator) -> np.ndarray:
    # Registered BraTS scans are near the atlas orientation: a few degrees of residual tilt.
    ax, ay, az = np.deg2rad(rng.uniform(-3.0, 3.0, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _points(box: tuple[slice, ...], shape: tuple, spacing: tuple, rotation: np.ndarray) -> np.ndarray:
    """Anatomical coordinates (mm) of the voxels in ``box``, shape (3, ...)."""
    axes = [
        ((np.arange(sl.start, sl.stop) - (n - 1) / 2.0) * s - o).astype(np.float32)
        for sl, n, s, o in zip(box, shape, spacing, _BRAIN_OFFSET)
    ]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    return np.einsum("ij,j...->i...", rotation.astype(np.float32), grid)


def _box(
    lo: np.ndarray, hi: np.ndarray, shape: tuple, spacing: tuple, rotation: np.ndarray
) -> tuple[slice, ...]:
    """Voxel box (clipped to the grid) holding the anatomical box [lo, hi] (mm)."""
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    world = rotation.T @ corners + _BRAIN_OFFSET[:, None]
    centre = (np.asarray(shape) - 1) / 2.0
    first = np.floor(world.min(1) / spacing + centre).astype(int) - 1
    last = np.ceil(world.max(1) / spacing + centre).astype(int) + 2
    return tuple(slice(int(max(a, 0)), int(min(b, n))) for a, b, n in zip(first, last, shape))


def make_phantom(
    shape: Sequence[int] = (96, 96, 64),
    spacing: float | Sequence[float] | None = None,
    seed: int = 0,
    convention: str = "brats2023",
    tumour_kind: str | None = None,
) -> Phantom:
    """Make one synthetic BraTS-like case.

    A procedural brain (cortex folded by random sulci, white matter, deep grey nuclei, ventricles,
    CSF, cerebellum, brainstem) is displaced by a tumour (necrosis, enhancing rim, oedema spreading
    in white matter) and rendered as skull-stripped T1, T1 post-contrast, T2 and FLAIR with bias
    field, Rician noise and a per-case intensity scale. The same seed gives the same arrays; the
    anatomy of a seed does not depend on the grid it is sampled on.

    Args:
        shape: grid size (X, Y, Z), X right-to-left, Y anterior-to-posterior, Z inferior-to-superior
            (LPS, as BraTS stores its volumes).
        spacing: voxel size in mm (one value or three); by default isotropic, filling a BraTS field
            of view (see :func:`default_spacing`).
        seed: random seed (a non-negative integer).
        convention: label convention of the label map (``brats2023``: ET = 3; ``brats2021``: ET = 4).
        tumour_kind: ``full`` (necrosis, enhancing rim, oedema), ``no_necrosis``, ``no_enhancement``;
            drawn at random (80 / 10 / 10 %) when None.

    Returns:
        The :class:`Phantom`.

    Raises:
        ValueError: for a bad shape, spacing, seed, convention or tumour kind.
    """
    shape_t, spacing_t = _check_grid(shape, spacing)
    conv = check_convention(convention)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom seed must be a non-negative integer, got {seed!r}")
    # One generator per stage: a change in how one stage draws leaves the others' draws alone.
    rng_anatomy, rng_tumour, rng_scanner, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(4)
    )
    rotation = _rotation(rng_anatomy)
    anatomy = Anatomy.random(rng_anatomy)
    tumour = Tumour.random(rng_tumour, anatomy, kind=tumour_kind)
    scanner = Scanner.random(rng_scanner)

    lo = np.array([b[0] for b in _BRAIN_BOX]) * anatomy.scale * 1.08
    hi = np.array([b[1] for b in _BRAIN_BOX]) * anatomy.scale * 1.08
    box = _box(lo, hi, shape_t, spacing_t, rotation)
    points = _points(box, shape_t, spacing_t, rotation)

    depth = anatomy.brain_depth(points)
    brain = depth > 0
    source = tumour.displace(points, np.clip(depth / 15.0, 0.0, 1.0))
    fractions = anatomy.fractions(source, spacing_t)
    # The tumour and its oedema are rasterised only in their own box (relative to the brain box).
    reach = np.full(3, tumour.reach)
    tbox = _box(tumour.centre - reach, tumour.centre + reach, shape_t, spacing_t, rotation)
    sub = tuple(
        slice(
            min(max(t.start - b.start, 0), b.stop - b.start), min(max(t.stop - b.start, 0), b.stop - b.start)
        )
        for t, b in zip(tbox, box)
    )
    comp = tumour.compartments(
        points[(slice(None), *sub)], {k: v[sub] for k, v in fractions.items()}, brain[sub], spacing_t
    )
    netc, et = np.zeros_like(brain), np.zeros_like(brain)
    oedema, tumour_texture = np.zeros(brain.shape, np.float32), np.zeros(brain.shape, np.float32)
    netc[sub], et[sub], oedema[sub], tumour_texture[sub] = (
        comp.netc,
        comp.et,
        comp.oedema_strength,
        comp.texture,
    )
    snfh = oedema > 0
    texture = scanner.texture(source)
    vessels = anatomy.vessel_density(source)

    values = CONVENTIONS[conv]
    label = np.zeros(brain.shape, dtype=np.uint8)
    label[snfh] = values["SNFH"]
    label[netc] = values["NETC"]
    label[et] = values["ET"]

    images = np.zeros((len(CONTRASTS), *shape_t), dtype=np.int16)
    for c, contrast in enumerate(CONTRASTS):
        images[(c, *box)] = scanner.render(
            contrast,
            fractions,
            netc,
            et,
            oedema,
            tumour_texture,
            texture,
            vessels,
            points,
            brain,
            rng_noise,
            solid_core=tumour.kind == "no_enhancement",
        )
    full_label = np.zeros(shape_t, dtype=np.uint8)
    full_label[box] = label
    full_brain = np.zeros(shape_t, dtype=bool)
    full_brain[box] = brain
    full_tissue = np.zeros(shape_t, dtype=np.uint8)
    full_tissue[box] = tissue_map(fractions, brain)

    centre_voxel = rotation.T @ tumour.centre + _BRAIN_OFFSET
    centre_voxel = centre_voxel / np.asarray(spacing_t) + (np.asarray(shape_t) - 1) / 2.0
    info = {
        "tumour_kind": tumour.kind,
        "tumour_centre_voxel": [round(float(v), 2) for v in centre_voxel],
        "tumour_radius_mm": round(tumour.radius, 2),
        "necrosis_fraction": round(tumour.necrosis, 3),
        "oedema_reach_mm": round(tumour.oedema, 2),
        "mass_effect": round(tumour.mass, 3),
        "hemisphere": "left" if tumour.centre[0] > 0 else "right",
        "voxels": {name: int((full_label == v).sum()) for name, v in values.items()},
    }
    return Phantom(
        images=images,
        label=full_label,
        brain_mask=full_brain,
        tissue=full_tissue,
        affine=lps_affine(shape_t, spacing_t),
        spacing=spacing_t,
        convention=conv,
        seed=int(seed),
        info=info,
    )

"""Procedural brain anatomy: cerebrum, cerebellum and brainstem with CSF, cortex, white matter,
deep grey nuclei and ventricles, as partial-volume tissue fractions on an image grid.

Coordinates are millimetres in an anatomical frame centred on the cerebrum: +x towards the
patient's left, +y posterior, +z superior (the LPS directions of the image axes). Every shape is
an implicit function of these coordinates, so the anatomy can be evaluated at displaced points
(mass effect) and at any resolution. Sizes are those of an average adult brain: cortical thickness
about 2.5 mm (Fischl & Dale, PNAS 97:11050, 2000); ventricles, deep nuclei and fissures placed
approximately as in an MNI-space template.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_prep.phantoms.fields import SmoothField, ramp, relu

#: Tissue classes of :attr:`Phantom.tissue` (deep grey nuclei count as grey matter).
TISSUES: dict[str, int] = {"background": 0, "csf": 1, "gm": 2, "wm": 3, "ventricle": 4}

#: Names of the partial-volume fractions returned by :meth:`Anatomy.fractions`, in this order.
FRACTIONS: tuple[str, ...] = ("csf", "gm", "deep_gm", "wm", "ventricle")

# Semi-axes (mm) of the cerebrum of an average adult at head scale 1.
_CEREBRUM_AXES = (70.0, 85.0, 60.0)
# (centre, semi-axes) in mm, relative to the cerebrum centre.
_CEREBELLUM = ((0.0, 44.0, -48.0), (48.0, 30.0, 23.0))
_BRAINSTEM = ((0.0, 14.0, -54.0), (11.0, 12.0, 36.0))
_THIRD_VENTRICLE = ((0.0, 4.0, -4.0), (2.0, 12.0, 9.0))
# Deep grey nuclei per hemisphere (x given for the left side): thalamus, lentiform, caudate head.
_NUCLEI = (
    ((9.0, 6.0, -2.0), (8.0, 14.0, 9.0)),
    ((24.0, -4.0, -3.0), (5.5, 13.0, 9.0)),
    ((11.0, -16.0, 6.0), (5.0, 8.0, 8.0)),
)


def _ellipsoid_distance(points: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipsoid."""
    shape = (3,) + (1,) * (points.ndim - 1)
    rel = (points - centre.reshape(shape).astype(np.float32)) / axes.reshape(shape).astype(np.float32)
    r = np.sqrt(np.einsum("i...,i...->...", rel, rel))
    return (r - 1.0) * np.float32(axes.min())


@dataclass(frozen=True)
class Anatomy:
    """One randomly drawn brain.

    Build it with :meth:`random`; evaluate it with :meth:`depths` and :meth:`fractions`.

    Args:
        scale: overall head size factor (1 = average adult).
        axes: cerebrum semi-axes (mm), left-right, anterior-posterior, inferior-superior.
        atrophy: 0 (young) to 1 (old): widens sulci and the CSF layer, enlarges the ventricles.
        csf_layer: thickness (mm) of the CSF layer over the brain surface.
        sulcus_width: width (mm) of the CSF in a sulcus.
        sulcus_depth: mean sulcal depth (mm).
        cortex: mean cortical thickness (mm).
        shape: low-frequency deformation of the brain outline.
        gyri: field whose zero set, extruded radially, forms the sulci of the cerebrum.
        folia: the same for the cerebellum (finer).
        detail: slowly varying field modulating sulcal depth, cortical thickness and the ventricles.
        vessels: field whose peaks are the vessels running in the sulci (enhancing on T1c).
    """

    scale: float
    axes: tuple[float, float, float]
    atrophy: float
    csf_layer: float
    sulcus_width: float
    sulcus_depth: float
    cortex: float
    shape: SmoothField
    gyri: SmoothField
    folia: SmoothField
    detail: SmoothField
    vessels: SmoothField

    @classmethod
    def random(cls, rng: np.random.Generator) -> Anatomy:
        """Draw a brain.

        Args:
            rng: random generator (all draws of the anatomy come from it).

        Returns:
            The anatomy.
        """
        scale = float(rng.uniform(0.92, 1.06))
        axes = tuple(float(a * scale * rng.uniform(0.96, 1.04)) for a in _CEREBRUM_AXES)
        atrophy = float(rng.beta(2.0, 2.0))
        return cls(
            scale=scale,
            axes=axes,  # type: ignore[arg-type]
            atrophy=atrophy,
            csf_layer=0.3 + 1.2 * atrophy,
            sulcus_width=1.8 + 2.4 * atrophy,
            sulcus_depth=float(rng.uniform(12.0, 17.0)),
            cortex=float(rng.uniform(2.4, 3.0)),
            shape=SmoothField.random(rng, 35.0),
            gyri=SmoothField.random(rng, 5.0),
            folia=SmoothField.random(rng, 3.5),
            detail=SmoothField.random(rng, 20.0),
            vessels=SmoothField.random(rng, 3.0),
        )

    # -- outline -------------------------------------------------------------------------------------

    def _cerebrum(
        self, p: np.ndarray, shape_noise: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Depth below the cerebrum surface (mm) and its normalised radius."""
        a, b, c = self.axes
        x, y, z = p
        # Egg shape: wider parietal-occipital than frontal; flatter skull base than vertex.
        a_eff = a * (1.0 + 0.06 * np.clip(y / b, -1.0, 1.0))
        # Temporal lobes hang lower than the frontal base and the midline.
        temporal = np.minimum((x / (0.6 * a)) ** 2, 1.0) * np.exp(
            -(((y + 5.0 * self.scale) / (45.0 * self.scale)) ** 2)
        )
        c_eff = np.where(z >= 0, np.float32(c), (0.62 + 0.3 * temporal) * c).astype(np.float32)
        r = np.sqrt((x / a_eff) ** 2 + (y / b) ** 2 + (z / c_eff) ** 2)
        r *= 1.0 + 0.035 * (self.shape(p, order=1) if shape_noise is None else shape_noise)
        r = np.maximum(r, np.float32(1e-3))
        length = np.sqrt(np.einsum("i...,i...->...", p, p))
        return (length * (1.0 / r - 1.0)).astype(np.float32), r.astype(np.float32)

    def _part(self, p: np.ndarray, part: tuple) -> np.ndarray:
        centre, axes = (np.asarray(v, dtype=np.float64) * self.scale for v in part)
        return -_ellipsoid_distance(p, centre, axes)

    def depths(self, points: np.ndarray, shape_noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Depth (mm, positive inside) below the surface of each part of the brain.

        Args:
            points: anatomical coordinates (mm), shape (3, ...).
            shape_noise: the outline deformation at ``points`` if already evaluated.

        Returns:
            ``{"cerebrum", "cerebellum", "brainstem"}`` -> depth arrays; the brain is where any
            depth is positive.
        """
        cerebrum, _ = self._cerebrum(points, shape_noise)
        return {
            "cerebrum": cerebrum,
            "cerebellum": self._part(points, _CEREBELLUM),
            "brainstem": self._part(points, _BRAINSTEM),
        }

    def brain_depth(self, points: np.ndarray) -> np.ndarray:
        """Depth (mm) below the brain surface; positive inside the brain."""
        d = self.depths(points)
        return np.maximum(np.maximum(d["cerebrum"], d["cerebellum"]), d["brainstem"])

    def midline(self, points: np.ndarray, detail: np.ndarray | None = None) -> np.ndarray:
        """Signed distance (mm) from the (slightly wavy) mid-sagittal plane, positive to the left.

        ``detail`` is the anatomy's detail field at ``points`` when already evaluated (here and below).
        """
        return points[0] - 1.2 * (self.detail(points, order=1) if detail is None else detail)

    def ventricle_distance(self, points: np.ndarray, detail: np.ndarray | None = None) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) to the lateral and third ventricles.

        The lateral ventricles are curved tubes, frontal horns near the septum and atria further
        out, arched upwards; their size grows with atrophy. A thin septum pellucidum separates them.
        """
        if detail is None:
            detail = self.detail(points, order=1)
        s = np.float32(self.scale)
        size = 0.9 + 0.8 * self.atrophy
        x, y, z = points / s
        t = (y + 2.0) / (30.0 * (0.9 + 0.2 * self.atrophy))
        xm = np.abs(self.midline(points, detail) / s)
        # Pinched in the middle ")(": frontal horns and atria diverge from the bodies.
        xc = 6.0 + 8.0 * t**2 + 4.0 * t
        wx = (4.0 + 2.5 * t**2 - 1.0 * t) * size
        zc = 10.0 - 8.0 * t**2
        hz = 7.0 * size
        v = np.sqrt(((xm - xc) / wx) ** 2 + t**2 + ((z - zc) / hz) ** 2)
        v *= 1.0 + 0.12 * detail
        lateral = (v - 1.0) * np.minimum(wx, hz) * s
        lateral = np.maximum(lateral, np.float32(0.9 * self.scale) - xm * s)  # septum pellucidum
        centre, axes = (np.asarray(v_, dtype=np.float64) * self.scale for v_ in _THIRD_VENTRICLE)
        third = _ellipsoid_distance(points, centre, axes * np.array([size, 1.0, 1.0]))
        return np.minimum(lateral, third).astype(np.float32)

    def nuclei_distance(self, points: np.ndarray, detail: np.ndarray | None = None) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) to the deep grey nuclei of both sides."""
        mirrored = points.copy()
        mirrored[0] = np.abs(self.midline(points, detail))
        out = None
        for centre, axes in _NUCLEI:
            d = _ellipsoid_distance(mirrored, np.asarray(centre) * self.scale, np.asarray(axes) * self.scale)
            out = d if out is None else np.minimum(out, d)
        return out

    def vessel_density(self, points: np.ndarray) -> np.ndarray:
        """Fraction (0-1) of the CSF at ``points`` taken by vessels: sparse spots and strands."""
        return np.clip(self.vessels(points, order=1) - 1.6, 0.0, 1.0).astype(np.float32)

    # -- tissues -------------------------------------------------------------------------------------

    def fractions(self, points: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, np.ndarray]:
        """Partial-volume tissue fractions of each voxel.

        The cortex is a ribbon of roughly constant thickness under every CSF surface: the outer
        surface, the sulci (zero sets of a random field extruded along the radius, ending at a
        random depth), the interhemispheric and Sylvian fissures and the tentorium between
        cerebrum and cerebellum. ``e`` below is the distance of a voxel to the nearest of those CSF
        surfaces; CSF is ``e < 0``, cortex ``0 < e < thickness``, white matter beyond.

        Args:
            points: anatomical coordinates (mm) of the voxels of a 3D grid, shape (3, X, Y, Z),
                possibly displaced (mass effect).
            spacing: the grid's voxel size (mm), for gradients and partial-volume widths.

        Returns:
            :data:`FRACTIONS` -> float32 arrays that sum to 1 (outside the brain: all CSF).
        """
        voxel = float(np.mean(spacing))
        shape_noise = self.shape(points, order=1)
        detail = self.detail(points, order=1)
        d = self.depths(points, shape_noise)
        cerebrum, r = self._cerebrum(points, shape_noise)

        # The CSF over the surface is patchy: thin in places, wider where the brain is atrophic.
        layer = self.csf_layer * relu(1.0 + 0.8 * detail)

        # Sulci of the cerebrum: distance to the zero set of the radially extruded gyral field.
        # Evaluated mostly on the surface point above the voxel, so sulci run roughly along the
        # radius, but partly at the voxel itself so that they bend and branch with depth.
        surface = points / r[None]
        g = self.gyri(surface + 0.35 * (points - surface))
        grad = np.gradient(g, *spacing)
        gnorm = np.sqrt(sum(gi * gi for gi in grad)) + np.float32(1e-3)
        sulcus_depth = self.sulcus_depth * (1.0 + 0.25 * detail)
        e_sulcus = (
            np.sqrt((np.abs(g) / gnorm) ** 2 + relu(cerebrum - sulcus_depth) ** 2) - self.sulcus_width / 2
        )

        # Interhemispheric fissure down to the corpus callosum (45 % of the way to the centre), and
        # not below it: the diencephalon and midbrain join the hemispheres there.
        x, y, z = points / np.float32(self.scale)
        ray = cerebrum / np.maximum(1.0 - r, np.float32(1e-3))
        mid = self.midline(points, detail)
        below = np.where(np.abs(y + 5.0) < 40.0, relu(5.0 - z), np.float32(0.0)) * np.float32(self.scale)
        e_fissure = np.sqrt(mid**2 + relu(cerebrum - 0.45 * ray) ** 2 + below**2) - (
            0.8 + self.sulcus_width / 2
        )

        # Sylvian fissure: a lateral cleft, rising backwards and towards the insula, which it stops at.
        sylvian_z = -10.0 + 0.3 * (y + 20.0) - 0.45 * (np.abs(x) - 45.0) + 3.0 * detail
        beyond = np.float32(self.scale) * np.sqrt(relu(32.0 - np.abs(x)) ** 2 + relu(y - 30.0) ** 2)
        e_sylvian = np.sqrt(
            ((z - sylvian_z) * np.float32(self.scale / np.sqrt(1.0 + 0.3**2 + 0.45**2))) ** 2 + beyond**2
        ) - (0.5 + self.sulcus_width / 2)

        # Tentorium: a CSF sheet where cerebrum and cerebellum meet.
        both = (d["cerebellum"] > 0) & (cerebrum > 0)
        e_tentorium = np.where(both, np.abs(cerebrum - d["cerebellum"]) / 2 - 0.8, np.float32(np.inf))

        e_cerebrum = np.minimum.reduce([cerebrum - layer, e_sulcus, e_fissure, e_sylvian, e_tentorium])

        # Cerebellum: dense folia, shallow sulci, thick grey matter around a white-matter core.
        cb = d["cerebellum"]
        e_cerebellum = np.full_like(cb, np.inf)
        near = cb > -2.0 * voxel
        if near.any():
            pts = points[:, near]
            centre = np.asarray(_CEREBELLUM[0], dtype=np.float32)[:, None] * np.float32(self.scale)
            rel = pts - centre
            radius = np.sqrt((rel**2).sum(0)) + np.float32(1e-3)
            onto = centre + rel * (np.float32(15.0 * self.scale) / radius)
            f = self.folia(onto)
            # Distance to the zero set |f| / |grad f|, with the typical gradient of a unit field
            # (about 1.75 / lattice step) in place of the local one: no gradient on scattered points.
            dist = np.abs(f) * np.float32(self.folia.step / 1.75)
            e_fol = np.sqrt(dist**2 + relu(cb[near] - 9.0) ** 2) - 0.5
            e_cerebellum[near] = np.minimum(cb[near] - self.csf_layer, e_fol)
        e_cerebellum = np.minimum(e_cerebellum, e_tentorium)

        owner = np.argmax(np.stack([cerebrum, cb, d["brainstem"]]), axis=0)
        e = np.where(
            owner == 0, e_cerebrum, np.where(owner == 1, e_cerebellum, d["brainstem"] - self.csf_layer)
        )
        thickness = np.where(owner == 0, self.cortex * (1.0 + 0.12 * detail), np.float32(2.8))
        thickness = np.where(owner == 2, np.float32(0.0), thickness).astype(np.float32)

        c_csf = ramp(-e, voxel)
        c_gm = ramp(thickness - e, voxel)
        in_cerebrum = (owner == 0).astype(np.float32)
        ventricle = ramp(-self.ventricle_distance(points, detail), voxel) * in_cerebrum
        nuclei = ramp(-self.nuclei_distance(points, detail), voxel) * in_cerebrum
        rest = 1.0 - ventricle
        white = (1.0 - c_gm) * rest
        out = {
            "csf": c_csf * rest,
            "gm": (c_gm - c_csf) * rest,
            "deep_gm": white * nuclei,
            "wm": white * (1.0 - nuclei),
            "ventricle": ventricle,
        }
        outside = np.maximum(np.maximum(cerebrum, cb), d["brainstem"]) <= 0
        for name, arr in out.items():
            arr[outside] = 1.0 if name == "csf" else 0.0
            out[name] = arr.astype(np.float32, copy=False)
        return out


def tissue_map(fractions: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
    """Hard tissue classes (:data:`TISSUES`) from fractions: the largest fraction wins.

    Args:
        fractions: output of :meth:`Anatomy.fractions`.
        brain: boolean brain mask; voxels outside are background.

    Returns:
        uint8 tissue map.
    """
    stack = np.stack(
        [fractions["csf"], fractions["gm"] + fractions["deep_gm"], fractions["wm"], fractions["ventricle"]]
    )
    out = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    out[~brain] = TISSUES["background"]
    return out

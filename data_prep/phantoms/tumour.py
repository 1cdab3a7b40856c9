"""A glioma-like tumour: enhancing rim around a necrotic core, infiltrative oedema, mass effect.

The geometry follows the appearance of glioblastoma on structural MRI (BraTS; Menze et al., IEEE
TMI 2015): an irregular tumour core (TC) whose enhancing shell (ET) surrounds necrosis (NETC), and
peritumoral oedema (SNFH) that spreads along white matter and spares the cortex and CSF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from data_prep.phantoms.anatomy import Anatomy
from data_prep.phantoms.fields import SmoothField

#: Tumour kinds and how often :meth:`Tumour.random` draws them.
KINDS: dict[str, float] = {"full": 0.8, "no_necrosis": 0.1, "no_enhancement": 0.1}

# Relative rate at which oedema spreads into each tissue (white matter 1).
_SPREAD = {"wm": 1.0, "deep_gm": 0.6, "gm": 0.3, "csf": 0.0, "ventricle": 0.0}


@dataclass(frozen=True)
class Compartments:
    """Tumour compartments on a grid.

    Args:
        netc: necrosis / non-enhancing tumour core (bool).
        et: enhancing tumour (bool).
        snfh: oedema (bool).
        oedema_strength: how strongly oedema changes the tissue signal, 0-1 (float32).
        texture: heterogeneity of the tumour signal, about unit variance (float32).
    """

    netc: np.ndarray
    et: np.ndarray
    snfh: np.ndarray
    oedema_strength: np.ndarray
    texture: np.ndarray


@dataclass(frozen=True)
class Tumour:
    """One randomly drawn tumour, in the anatomical frame of an :class:`Anatomy`.

    Args:
        kind: one of :data:`KINDS`.
        centre: centre (mm, anatomical frame).
        radius: mean radius of the tumour core (mm).
        necrosis: necrosis radius as a fraction of the core radius (0 without necrosis).
        necrosis_offset: shift (mm) of the necrosis from the core centre (rims are uneven).
        oedema: reach of the oedema into white matter beyond the core (mm).
        mass: volume displaced by the tumour, as a fraction of the core volume.
        lobes: low-frequency shape of the core (evaluated on directions).
        rough: fine irregularity of the core boundary.
        inner: irregularity of the necrosis boundary.
        spread: heterogeneity of the oedema.
        texture: heterogeneity of the tumour signal.
    """

    kind: str
    centre: np.ndarray
    radius: float
    necrosis: float
    necrosis_offset: np.ndarray
    oedema: float
    mass: float
    lobes: SmoothField
    rough: SmoothField
    inner: SmoothField
    spread: SmoothField
    texture: SmoothField

    @classmethod
    def random(cls, rng: np.random.Generator, anatomy: Anatomy, kind: str | None = None) -> Tumour:
        """Draw a tumour inside one hemisphere of ``anatomy``.

        The centre is drawn by rejection until the whole core lies in the cerebrum of one
        hemisphere, away from the surface and outside the ventricles; the radius shrinks if no
        place fits it.

        Args:
            rng: random generator.
            anatomy: the brain it grows in.
            kind: force a kind (``full``, ``no_necrosis``, ``no_enhancement``); random if None.

        Returns:
            The tumour.

        Raises:
            ValueError: for an unknown kind.
        """
        names = list(KINDS)
        if kind is None:
            kind = names[int(rng.choice(len(names), p=list(KINDS.values())))]
        elif kind not in KINDS:
            raise ValueError(f"unknown tumour kind {kind!r}; expected one of {names}")
        radius = float(rng.uniform(11.0, 24.0)) * anatomy.scale
        side = float(rng.choice([-1.0, 1.0]))
        a, b, c = anatomy.axes
        centre = None
        for attempt in range(400):
            p = np.array(
                [
                    side * rng.uniform(0.0, 0.75 * a),
                    rng.uniform(-0.8 * b, 0.75 * b),
                    rng.uniform(-0.3 * c, 0.75 * c),
                ]
            )
            reach = 1.5 * radius  # the lobes reach up to ~50 % beyond the mean radius
            pt = p.reshape(3, 1).astype(np.float32)
            depths = anatomy.depths(pt)
            if (
                abs(p[0]) > reach + 3.0
                and depths["cerebrum"][0] > reach + 6.0
                and depths["cerebellum"][0] < -reach
                and anatomy.ventricle_distance(pt)[0] > 3.0
            ):
                centre = p
                break
            if attempt % 50 == 49:
                radius *= 0.9
        if centre is None:  # pragma: no cover - the loop shrinks the radius until it fits
            raise RuntimeError("could not place a tumour in the brain")
        necrosis = float(rng.uniform(0.6, 0.85)) if kind == "full" else 0.0
        offset = rng.normal(0.0, 1.0, 3)
        offset *= rng.uniform(0.0, 0.3) * (1.0 - necrosis) * radius / np.linalg.norm(offset)
        oedema = float(rng.uniform(0.4, 1.4)) * radius + 4.0
        mass = float(rng.uniform(0.3, 0.8))
        box = (1.5 * radius + 1.8 * oedema + 10.0,) * 3
        return cls(
            kind=kind,
            centre=centre,
            radius=radius,
            necrosis=necrosis,
            necrosis_offset=offset,
            oedema=oedema,
            mass=mass,
            lobes=SmoothField.random(rng, 0.7 * radius, half_extent=(2 * radius,) * 3, centre=centre),
            rough=SmoothField.random(rng, 4.0, half_extent=box, centre=centre),
            inner=SmoothField.random(rng, 6.0, half_extent=box, centre=centre),
            spread=SmoothField.random(rng, 9.0, half_extent=box, centre=centre),
            texture=SmoothField.random(rng, 3.0, half_extent=box, centre=centre),
        )

    @property
    def reach(self) -> float:
        """Radius (mm) beyond which the tumour and its oedema never extend."""
        return 1.5 * self.radius + 1.8 * self.oedema + 5.0

    def displace(self, points: np.ndarray, taper: np.ndarray) -> np.ndarray:
        """Mass effect: where each voxel's tissue came from before the tumour grew.

        Tissue is pushed radially as by an incompressible inclusion of volume ``mass * core``:
        a point at distance rho came from ``(rho^3 - mass R^3)^(1/3)``. ``taper`` (1 deep, 0 at
        the brain surface) holds the surface in place, as the skull does.

        Args:
            points: anatomical coordinates (mm), shape (3, ...).
            taper: weight of the displacement per point, in [0, 1].

        Returns:
            The source coordinates, shape of ``points``.
        """
        shape = (3,) + (1,) * (points.ndim - 1)
        rel = points - self.centre.reshape(shape).astype(np.float32)
        rho = np.sqrt(np.einsum("i...,i...->...", rel, rel)) + np.float32(1e-3)
        rho0 = np.cbrt(np.maximum(rho**3 - np.float32(self.mass * self.radius**3), 0.0))
        shift = (rho - rho0) * taper / rho
        return (points - rel * shift[None]).astype(np.float32)

    def core_distance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed radial distance (mm, negative inside) to the core and its lobed radius."""
        shape = (3,) + (1,) * (points.ndim - 1)
        centre = self.centre.reshape(shape).astype(np.float32)
        rel = points - centre
        rho = np.sqrt(np.einsum("i...,i...->...", rel, rel)) + np.float32(1e-3)
        on_sphere = centre + rel * (np.float32(self.radius) / rho)[None]
        radius = self.radius * (1.0 + 0.22 * self.lobes(on_sphere))
        return rho - radius - 0.06 * self.radius * self.rough(points), radius

    def compartments(
        self,
        points: np.ndarray,
        fractions: dict[str, np.ndarray],
        brain: np.ndarray,
        spacing: tuple[float, float, float],
    ) -> Compartments:
        """Rasterise the tumour on a grid.

        Args:
            points: anatomical coordinates (mm) of a 3D grid, shape (3, X, Y, Z) (not displaced:
                the tumour is where it is seen).
            fractions: tissue fractions of the displaced anatomy on that grid.
            brain: brain mask of the grid.
            spacing: voxel size (mm).

        Returns:
            The compartments. The enhancing shell is at least one voxel (and 2 mm) thick all
            round the necrosis; the oedema is connected to the core.
        """
        voxel = float(np.mean(spacing))
        ring = np.ones((3, 3, 3), dtype=bool)
        d_core, radius = self.core_distance(points)
        core = (d_core < 0) & ndi.binary_erosion(brain, ring, iterations=2)
        if self.kind == "full":
            shape = (3,) + (1,) * (points.ndim - 1)
            rel = points - (self.centre + self.necrosis_offset).reshape(shape).astype(np.float32)
            rho = np.sqrt(np.einsum("i...,i...->...", rel, rel))
            inner = self.necrosis * radius * (1.0 + 0.3 * self.inner(points))
            netc = (rho < inner) & (d_core < -max(2.0, 0.5 * voxel)) & ndi.binary_erosion(core, ring)
            et = core & ~netc
        elif self.kind == "no_necrosis":
            netc, et = np.zeros_like(core), core
        else:
            netc, et = core, np.zeros_like(core)

        spread = sum(rate * fractions[name] for name, rate in _SPREAD.items())
        reach = self.oedema * spread * (1.0 + 0.35 * self.spread(points))
        # Even a thin cortex next to the core is infiltrated a little, so oedema encloses it.
        reach = np.where(spread > 0.25, np.maximum(reach, np.float32(1.2 * voxel)), reach)
        snfh = (d_core >= 0) & (d_core < reach) & brain & ~core
        # Oedema is contiguous with the tumour: drop islands that the threshold cuts off.
        labels, _ = ndi.label(snfh | core, structure=ring)
        keep = np.unique(labels[core])
        snfh &= np.isin(labels, keep[keep > 0])
        strength = np.clip(
            0.95 - 0.45 * d_core / np.maximum(reach, 1e-3) + 0.12 * self.rough(points), 0.3, 1.0
        )
        return Compartments(
            netc=netc,
            et=et,
            snfh=snfh,
            oedema_strength=(strength * snfh).astype(np.float32),
            texture=self.texture(points),
        )

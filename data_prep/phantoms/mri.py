"""MR signal of the phantoms: tissue contrast per sequence, bias field, noise and quantisation.

Relative intensities (white matter = 1) follow the usual appearance of the four BraTS sequences
and were checked against the ratios measured in real BraTS cases: on T1 white matter is brighter
than grey matter and CSF; on T2 CSF is brightest and grey matter brighter than white matter; FLAIR
suppresses free water (dark CSF) while oedema and tumour stay bright; gadolinium makes the active
tumour rim bright on T1 post-contrast while necrosis stays dark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from data_prep.phantoms.fields import SmoothField
from medmtl.contrasts import CONTRASTS

#: Classes that carry a signal: healthy tissues (see anatomy.FRACTIONS) and tumour compartments
#: (``net`` is non-enhancing solid tumour, used when a tumour has no enhancement); ``vessel`` is the
#: signal added by vessels in the CSF spaces (gadolinium makes them bright on T1c).
CLASSES: tuple[str, ...] = (
    "csf",
    "gm",
    "deep_gm",
    "wm",
    "ventricle",
    "netc",
    "net",
    "et",
    "oedema",
    "vessel",
)

#: Mean relative intensity of each class per canonical contrast (rows follow :data:`CLASSES`).
INTENSITY: dict[str, tuple[float, ...]] = {
    #      csf   gm    dgm   wm   vent  netc  net   et    oedema vessel
    "t1n": (0.35, 0.80, 0.88, 1.0, 0.32, 0.50, 0.70, 0.72, 0.65, 0.0),
    "t1c": (0.36, 0.82, 0.90, 1.0, 0.33, 0.45, 0.72, 1.85, 0.68, 2.5),
    "t2w": (3.30, 1.40, 1.20, 1.0, 3.40, 3.00, 2.20, 2.30, 2.60, 0.0),
    "t2f": (0.28, 1.18, 1.08, 1.0, 0.22, 1.70, 1.90, 1.85, 2.00, 0.0),
}
if set(INTENSITY) != set(CONTRASTS):  # pragma: no cover - guards edits of the table
    raise ImportError(f"INTENSITY must have one row per contrast {CONTRASTS}")

#: Relations that define each sequence, kept after per-case jitter: (contrast, brighter, darker, min ratio).
ORDERING: tuple[tuple[str, str, str, float], ...] = (
    ("t1n", "wm", "gm", 1.15),
    ("t1n", "gm", "csf", 1.6),
    ("t1c", "wm", "gm", 1.12),
    ("t1c", "gm", "csf", 1.6),
    ("t1c", "et", "wm", 1.4),
    ("t1c", "et", "netc", 2.0),
    ("t2w", "gm", "wm", 1.15),
    ("t2w", "csf", "gm", 1.5),
    ("t2f", "gm", "wm", 1.08),
    ("t2f", "wm", "csf", 2.5),
    ("t2f", "oedema", "wm", 1.5),
)


@dataclass(frozen=True)
class Scanner:
    """Per-case acquisition: intensities, scale, bias fields and noise of each contrast.

    Args:
        intensity: contrast -> class -> relative intensity (white matter = 1).
        scale: contrast -> stored value of white matter (the scanner's arbitrary units).
        bias: contrast -> smooth field of the multiplicative bias (log scale).
        bias_strength: contrast -> standard deviation of the log bias.
        noise: contrast -> noise standard deviation relative to white matter.
        blur: partial-volume blur (Gaussian sigma in voxels).
        texture: tissue micro-texture field shared by all contrasts.
    """

    intensity: dict[str, dict[str, float]]
    scale: dict[str, float]
    bias: dict[str, SmoothField]
    bias_strength: dict[str, float]
    noise: dict[str, float]
    blur: float
    texture: SmoothField

    @classmethod
    def random(cls, rng: np.random.Generator) -> Scanner:
        """Draw an acquisition: jittered contrasts within :data:`ORDERING`, scales, bias, noise.

        Args:
            rng: random generator.

        Returns:
            The scanner.
        """
        intensity = {}
        for contrast in CONTRASTS:
            row = np.asarray(INTENSITY[contrast]) * np.exp(rng.normal(0.0, 0.06, len(CLASSES)))
            values = dict(zip(CLASSES, (float(v) for v in row)))
            values["wm"] = 1.0
            for name, bright, dark, ratio in ORDERING:
                if name == contrast and values[bright] < ratio * values[dark]:
                    values[bright] = ratio * values[dark]
            intensity[contrast] = values
        # Stored white-matter level: BraTS releases span ~300 to ~3000 units across sites.
        scale = {c: float(np.exp(rng.uniform(np.log(300.0), np.log(2500.0)))) for c in CONTRASTS}
        bias = {c: SmoothField.random(rng, 70.0) for c in CONTRASTS}
        bias_strength = {c: float(rng.uniform(0.04, 0.15)) for c in CONTRASTS}
        noise = {c: float(rng.uniform(0.01, 0.03)) for c in CONTRASTS}
        return cls(
            intensity=intensity,
            scale=scale,
            bias=bias,
            bias_strength=bias_strength,
            noise=noise,
            blur=float(rng.uniform(0.4, 0.7)),
            texture=SmoothField.random(rng, 4.0),
        )

    @staticmethod
    def _smooth(field: SmoothField, points: np.ndarray, step: int = 4) -> np.ndarray:
        # A field that varies over centimetres is evaluated on every ``step``-th voxel and
        # interpolated: the same values to well under a percent, at a fraction of the cost.
        coarse = field(points[:, ::step, ::step, ::step], order=1)
        zoom = [n / c for n, c in zip(points.shape[1:], coarse.shape)]
        out = ndi.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
        return out[tuple(slice(0, n) for n in points.shape[1:])]

    def render(
        self,
        contrast: str,
        fractions: dict[str, np.ndarray],
        netc: np.ndarray,
        et: np.ndarray,
        oedema: np.ndarray,
        tumour_texture: np.ndarray,
        texture: np.ndarray,
        vessels: np.ndarray,
        points: np.ndarray,
        brain: np.ndarray,
        rng: np.random.Generator,
        solid_core: bool = False,
    ) -> np.ndarray:
        """Render one contrast as stored by a scanner after skull stripping.

        Signal = partial-volume mixture of tissue intensities (with micro-texture), oedema blended
        in, tumour core painted over, then partial-volume blur, multiplicative bias, Rician noise
        (magnitude of a complex Gaussian; Gudbjartsson & Patz, MRM 1995), the scanner's scale,
        rounding to integers, and zero outside the brain.

        Args:
            contrast: canonical contrast name.
            fractions: tissue fractions (anatomy.FRACTIONS), float32 arrays.
            netc: necrosis / non-enhancing core mask.
            et: enhancing tumour mask.
            oedema: oedema strength 0-1 (0 outside the oedema).
            tumour_texture: unit-variance heterogeneity inside the tumour.
            texture: unit-variance tissue micro-texture.
            vessels: fraction of the CSF taken by vessels.
            points: anatomical coordinates (mm) of the voxels (for the bias field).
            brain: brain mask.
            rng: generator of the noise.
            solid_core: the core is non-enhancing solid tumour rather than necrosis.

        Returns:
            int16 image, zero outside ``brain``.
        """
        table = self.intensity[contrast]
        signal = np.zeros(brain.shape, dtype=np.float32)
        for name, frac in fractions.items():
            signal += np.float32(table[name]) * frac
        signal *= 1.0 + 0.03 * texture
        if table["vessel"]:
            signal += np.float32(table["vessel"]) * fractions["csf"] * vessels
        signal += oedema * (np.float32(table["oedema"]) - signal)
        core = np.float32(table["net" if solid_core else "netc"])
        signal = np.where(netc, core * (1.0 + 0.08 * tumour_texture), signal)
        signal = np.where(et, np.float32(table["et"]) * (1.0 + 0.12 * tumour_texture), signal)
        signal = ndi.gaussian_filter(signal, self.blur, mode="nearest")
        signal *= np.exp(self.bias_strength[contrast] * self._smooth(self.bias[contrast], points))
        sigma = np.float32(self.noise[contrast])
        real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag) * np.float32(self.scale[contrast])
        out = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)
        out[~brain] = 0
        return out

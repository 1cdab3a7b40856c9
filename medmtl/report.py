"""Figures of an evaluation: one panel sheet per case and a summary of per-case scores.

Volumes are reoriented to RAS (nibabel ``as_closest_canonical``) before slicing, so every case is
shown the same way whatever its on-disk orientation (BraTS files are LPS): superior and anterior up,
and by default in radiological convention (the patient's right on the left of the image).
Figures are drawn with matplotlib's object API (no pyplot state, Agg rendering) and written
atomically.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from scipy import ndimage

from medmtl.contrasts import CONTRASTS
from medmtl.io import atomic_path
from medmtl.labels import COLOURS, CONVENTIONS, REGIONS, check_convention, label_to_regions
from medmtl.metrics import normalise_intensity

#: Slice views in display order.
VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")

#: Opacity of label overlays.
OVERLAY_ALPHA: float = 0.45

#: Half range of the difference-map colour scale (images are in [0, 1] after normalisation).
DIFF_RANGE: float = 0.5


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    return Path(path)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reorient a volume to the closest RAS orientation (nibabel ``as_closest_canonical``).

    Args:
        array: volume (H, W, D) in the grid that ``affine`` describes.
        affine: its voxel-to-world matrix.

    Returns:
        The reoriented array (x: left->right, y: posterior->anterior, z: inferior->superior) and its
        voxel size (mm) along those axes.
    """
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asanyarray(img.dataobj), zooms  # type: ignore[return-value]


def view_slice(volume: np.ndarray, view: str, index: int, radiological: bool = True) -> np.ndarray:
    """A 2D display slice of a RAS-oriented volume.

    Args:
        volume: array indexed (x: left->right, y: posterior->anterior, z: inferior->superior).
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along the view's normal axis.
        radiological: radiological convention: the patient's right on the left of axial and coronal
            slices, anterior on the left of sagittal ones; otherwise the patient's left and posterior.

    Returns:
        The slice, rotated so that anterior (axial) or superior (coronal, sagittal) is at the top.
    """
    if view == "axial":
        out = np.rot90(volume[:, :, index])
    elif view == "coronal":
        out = np.rot90(volume[:, index, :])
    elif view == "sagittal":
        out = np.rot90(volume[index, :, :])
    else:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    # After rot90 the columns run right-ward (axial, coronal) or anterior-ward (sagittal).
    return np.fliplr(out) if radiological else out


def _aspect(view: str, zooms: Sequence[float]) -> float:
    # Height over width of one displayed pixel, so anisotropic voxels keep their true proportions.
    dx, dy, dz = zooms
    return {"axial": dy / dx, "coronal": dz / dx, "sagittal": dz / dy}[view]


def slice_centre(tumour: np.ndarray | None, brain: np.ndarray) -> tuple[int, int, int]:
    """Voxel through which the three views are cut: the tumour centroid, else the brain's.

    Args:
        tumour: whole-tumour mask (or None).
        brain: brain mask, used when there is no tumour.

    Returns:
        Integer voxel indices (x, y, z), inside the volume.
    """
    mask = tumour if tumour is not None and tumour.any() else brain
    if not mask.any():
        return tuple(s // 2 for s in brain.shape)  # type: ignore[return-value]
    centre = ndimage.center_of_mass(mask)
    return tuple(int(np.clip(round(c), 0, s - 1)) for c, s in zip(centre, mask.shape))  # type: ignore[return-value]


def label_overlay(label: np.ndarray, convention: str, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGBA overlay of a BraTS label map in the BraTS colours (NETC red, SNFH green, ET yellow).

    Args:
        label: label map (any shape).
        convention: its label convention.
        alpha: opacity of labelled voxels (background is transparent).

    Returns:
        float array of shape ``label.shape + (4,)``.
    """
    out = np.zeros((*label.shape, 4), dtype=np.float32)
    for name, value in CONVENTIONS[check_convention(convention)].items():
        out[label == value] = (*COLOURS[name], alpha)
    return out


def _display(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return normalise_intensity(image, brain if brain.any() else np.ones_like(brain)).astype(np.float32)


def case_figure(
    out_path: str | os.PathLike,
    affine: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    true_label: np.ndarray | None = None,
    pred_label: np.ndarray | None = None,
    true_convention: str | None = None,
    pred_convention: str | None = None,
    synth: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str | None = None,
    scores: str | None = None,
    radiological: bool = True,
    dpi: int = 80,
) -> Path:
    """Draw one case: inputs, label overlays and synthesised contrasts, in three views.

    Rows: each input contrast; the reference and the predicted label maps over the FLAIR (or the
    first input); for each synthesised contrast the acquired image, the synthesis and their
    difference (synthesis minus acquired, both normalised as for scoring). Columns: axial, coronal
    and sagittal slices through the whole-tumour centroid (the brain centre without a tumour).

    Args:
        out_path: PNG file to write.
        affine: voxel-to-world matrix shared by every array (the reference grid).
        inputs: contrast -> image (H, W, D) of the acquired inputs.
        true_label: reference label map, or None.
        pred_label: predicted label map, or None.
        true_convention: convention of ``true_label``.
        pred_convention: convention of ``pred_label``.
        synth: contrast -> (acquired image, synthesised image).
        title: figure title (the case id).
        scores: one line of the case's scores, printed under the title (see :func:`scores_line`).
        radiological: patient's right on the image left in axial and coronal views.
        dpi: resolution of the PNG.

    Returns:
        The path written.
    """
    synth = dict(synth or {})
    vols = {c: to_ras(v, affine) for c, v in inputs.items()}
    any_image = next(iter(vols.values()), None) or next((to_ras(r, affine) for r, _ in synth.values()), None)
    if any_image is None:
        raise ValueError(f"{out_path}: nothing to draw (no input and no synthesised image)")
    zooms = any_image[1]
    brain = np.zeros(any_image[0].shape, dtype=bool)
    for v, _ in vols.values():
        brain |= v != 0
    for r, _ in synth.values():
        brain |= to_ras(r, affine)[0] != 0

    labels: list[tuple[str, np.ndarray, str]] = []
    for name, lab, conv in (
        ("reference", true_label, true_convention),
        ("predicted", pred_label, pred_convention),
    ):
        if lab is not None:
            if conv is None:
                raise ValueError(f"{out_path}: the {name} label map needs its convention")
            labels.append((name, to_ras(np.asarray(lab).astype(np.int16), affine)[0], conv))
    tumour = None
    if labels:
        name, lab, conv = labels[0]
        tumour = np.asarray(label_to_regions(lab, conv), dtype=bool)[REGIONS.index("WT")]
    centre = slice_centre(tumour, brain)

    panels: list[tuple[str, np.ndarray, dict[str, Any], tuple[np.ndarray, str] | None]] = []
    grey = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    for c in sorted(vols, key=lambda k: CONTRASTS.index(k) if k in CONTRASTS else len(CONTRASTS)):
        panels.append((f"{c} (input)", _display(vols[c][0], brain), grey, None))
    if labels:
        base_key = "t2f" if "t2f" in vols else next(iter(vols), None)
        base = _display(vols[base_key][0], brain) if base_key else np.zeros(brain.shape)
        for name, lab, conv in labels:
            panels.append((f"{name} labels", base, grey, (lab, conv)))
    for c, (ref, syn) in synth.items():
        r_ras, s_ras = to_ras(ref, affine)[0], to_ras(syn, affine)[0]
        mask = r_ras != 0
        r_n, s_n = _display(r_ras, mask), _display(s_ras, mask)
        diff = {"cmap": "RdBu_r", "vmin": -DIFF_RANGE, "vmax": DIFF_RANGE}
        # a contrast the model was given is restored, one it lacked is synthesised: say which
        made = "restored (an input)" if c in inputs else "synthesised (missing)"
        panels += [
            (f"{c} acquired", r_n, grey, None),
            (f"{c} {made}", s_n, grey, None),
            (f"{c} output - acquired", np.where(mask, s_n - r_n, 0.0), diff, None),
        ]

    n_rows = len(panels)
    fig = Figure(figsize=(3 * 2.4, n_rows * 2.0 + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, len(VIEWS), squeeze=False)
    for row, (name, image, style, overlay) in enumerate(panels):
        for col, view in enumerate(VIEWS):
            ax = axes[row, col]
            idx = centre[(2, 1, 0)[col]]
            im = ax.imshow(view_slice(image, view, idx, radiological), aspect=_aspect(view, zooms), **style)
            if overlay is not None:
                lab_slice = view_slice(overlay[0], view, idx, radiological)
                ax.imshow(label_overlay(lab_slice, overlay[1]), aspect=_aspect(view, zooms))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{view} {idx}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
            if row == 0:
                left, right = ("A", "P") if view == "sagittal" else ("R", "L")
                left, right = (left, right) if radiological else (right, left)
                kw = {"transform": ax.transAxes, "color": "white", "fontsize": 8, "va": "top"}
                ax.text(0.02, 0.98, left, ha="left", **kw)
                ax.text(0.98, 0.98, right, ha="right", **kw)
        if style.get("cmap") == "RdBu_r":
            bar = fig.colorbar(im, ax=axes[row, :].tolist(), fraction=0.03, pad=0.01)
            bar.set_label("output - acquired\n(scaled intensity)", fontsize=7)
        elif row == 0:
            bar = fig.colorbar(im, ax=axes[row, :].tolist(), fraction=0.03, pad=0.01)
            bar.set_label("intensity, brain\nscaled to [0, 1]", fontsize=7)
    if labels:
        handles = [_patch(name) for name in COLOURS]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title or scores:
        fig.suptitle(figure_title(title, scores), fontsize=10)
    return _save(fig, out_path, dpi)


#: characters per line of a case figure's title (its width at the title's font size)
TITLE_WIDTH = 70


def figure_title(title: str | None, scores: str | None, width: int = TITLE_WIDTH) -> str:
    """A case figure's title, wrapped to the figure's width (a long id or score line is not cut off).

    Args:
        title: the case id.
        scores: the score line (``" | "``-separated parts, see :func:`scores_line`).
        width: characters per line.

    Returns:
        The title lines joined by newlines; score parts are kept whole where they fit.
    """
    lines: list[str] = []
    if title:
        lines += textwrap.wrap(title, width, break_on_hyphens=False) or [title]
    if scores:
        line = ""
        for part in scores.split(" | "):
            if line and len(line) + 3 + len(part) > width:
                lines.append(line)
                line = ""
            line = f"{line} | {part}" if line else part
        lines += textwrap.wrap(line, width, break_on_hyphens=False) if len(line) > width else [line]
    return "\n".join(lines)


def score_range(data: Sequence[Sequence[float]]) -> tuple[float, float]:
    """The y range of a score panel: [0, 1] widened to show any negative value (SSIM can be < 0).

    Args:
        data: the values of each box.

    Returns:
        ``(bottom, top)``.
    """
    low = min((min(d) for d in data if len(d)), default=0.0)
    bottom = 0.0 if low >= 0 else low - 0.05 * (1.0 - low)
    return bottom, 1.02


def scores_line(row: Mapping[str, Any]) -> str:
    """The headline scores of one case (a row of ``metrics.csv``), for its figure.

    Args:
        row: metric name -> value (``Dice_TC``, ``HD95_WT``, ``t1c_SSIM_brain``, ...).

    Returns:
        E.g. ``"Dice TC 0.81 WT 0.90 ET 0.70 | t1c SSIM 0.62 (copy 0.37)"``; empty without scores.
    """

    def num(key: str) -> float | None:
        value = row.get(key)
        return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None

    parts = []
    dice = [f"{r} {num(f'Dice_{r}'):.2f}" for r in REGIONS if num(f"Dice_{r}") is not None]
    if dice:
        parts.append("Dice " + " ".join(dice))
    for c in CONTRASTS:
        ssim, base = num(f"{c}_SSIM_brain"), num(f"{c}_baseline_SSIM_brain")
        if ssim is not None:
            parts.append(f"{c} SSIM {ssim:.2f}" + (f" (copy {base:.2f})" if base is not None else ""))
    return " | ".join(parts)


def _patch(name: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(facecolor=to_rgba(COLOURS[name]), label=name)


def _finite(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    vals = (r.get(key) for r in rows)
    return [float(v) for v in vals if isinstance(v, (int, float)) and np.isfinite(v)]


def summary_figure(rows: Sequence[Mapping[str, Any]], out_path: str | os.PathLike, dpi: int = 100) -> Path:
    """Box plots of per-case scores: Dice per region, SSIM per contrast beside its baseline.

    Args:
        rows: per-case metric mappings as returned by :func:`medmtl.evaluation.evaluate`.
        out_path: PNG file to write.
        dpi: resolution of the PNG.

    Returns:
        The path written.
    """
    panels: list[tuple[str, list[str], list[list[float]], list[str]]] = []
    dice = [_finite(rows, f"Dice_{r}") for r in REGIONS]
    if any(dice):
        panels.append(("Dice per region", list(REGIONS), dice, ["tab:blue"] * len(REGIONS)))
    for region in ("brain", "tumour"):
        names, data, colours = [], [], []
        for c in CONTRASTS:
            model, base = _finite(rows, f"{c}_SSIM_{region}"), _finite(rows, f"{c}_baseline_SSIM_{region}")
            if model:
                names += [c, f"{c}\nbaseline"]
                data += [model, base]
                colours += ["tab:orange", "tab:gray"]
        if data:
            panels.append((f"SSIM ({region})", names, data, colours))
    if not panels:
        raise ValueError(f"{out_path}: no finite Dice or SSIM values to plot")
    fig = Figure(figsize=(4.2 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, names, data, colours) in zip(axes, panels):
        keep = [i for i, d in enumerate(data) if d]
        box = ax.boxplot([data[i] for i in keep], patch_artist=True, widths=0.6)
        ax.set_xticks(range(1, len(keep) + 1), [names[i] for i in keep], fontsize=8)
        for patch, i in zip(box["boxes"], keep):
            patch.set_facecolor(colours[i])
            patch.set_alpha(0.6)
        for pos, i in enumerate(keep, start=1):
            ax.scatter(np.full(len(data[i]), pos), data[i], s=10, color="k", zorder=3)
        ax.set_ylim(*score_range(data))
        if ax.get_ylim()[0] < 0:
            ax.axhline(0.0, color="k", linewidth=0.6, alpha=0.5)
        ax.set_title(f"{title}, n={max(len(d) for d in data)}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path, dpi)


__all__: Sequence[str] = (
    "VIEWS",
    "to_ras",
    "view_slice",
    "slice_centre",
    "label_overlay",
    "case_figure",
    "figure_title",
    "score_range",
    "summary_figure",
)

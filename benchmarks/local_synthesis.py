"""Held-out evaluation of the local-synthesis model: healthy-tissue inpainting and lesion synthesis.

For every held-out case of a datalist fold, with a bundle trained by ``configs/local_synthesis.json``:

- **inpainting**: a healthy region is drawn (ellipsoid in healthy brain, away from the tumour, seeded
  by the case id so every run scores the same regions), filled by :func:`medmtl.local_synthesis.inpaint`
  and scored inside the region against the acquired voxels: SSIM (the SSIM map averaged over the
  region), PSNR and MSE after the 0.5-99.5 % brain normalisation of :mod:`medmtl.metrics`, per contrast
  (the BraTS 2023 inpainting task scores t1n). Baseline: the region filled with the mean of a 5 mm
  shell of healthy tissue around it.
- **lesion synthesis**: the case's own tumour (with a 3 mm margin) is blanked and repainted from its
  label map; scored inside that region against the real tumour, with the same baseline.

Writes ``local_synthesis.json`` / ``local_synthesis.md`` and a figure of real vs synthesised lesions
(the case's own map, the map moved into healthy tissue) and an inpainted region.

    python benchmarks/local_synthesis.py --bundle runs/local --dataset-dir ../shared/data/brats \\
        --datalist runs/ablation/datalist.json --fold 0 --out runs/local_eval
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from medmtl.contrasts import CONTRASTS  # noqa: E402
from medmtl.labels import REGIONS, label_to_regions  # noqa: E402
from medmtl.local_synthesis import healthy_region, inpaint, lesion_region, synthesise_lesion  # noqa: E402
from medmtl.metrics import synthesis_metrics  # noqa: E402


def shell_mean_fill(image: np.ndarray, region: np.ndarray, brain: np.ndarray, spacing: Sequence[float]):
    """Baseline: fill ``region`` with the mean of the healthy brain in a 5 mm shell around it."""
    shell = lesion_region(region, spacing, 5.0) & ~region & brain
    out = image.astype(np.float32).copy()
    out[region] = float(image[shell].mean()) if shell.any() else float(image[brain].mean())
    return out


def score(pred: np.ndarray, real: np.ndarray, brain: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """SSIM / PSNR / MSE inside ``region`` (brain-normalised images)."""
    m = synthesis_metrics(pred, real, brain, tumour_mask=region)
    return {"SSIM": m["SSIM_tumour"], "PSNR": m["PSNR_tumour"], "MSE": m["MSE_tumour"]}


def _seed(case_id: str) -> int:
    return int(hashlib.sha256(case_id.encode()).hexdigest()[:8], 16)


def evaluate_case(entry: Mapping[str, Any], bundle: Path, tmp: Path, device: str | None) -> dict[str, Any]:
    """Inpainting and lesion-synthesis scores of one case, plus the arrays for the figure."""
    files = {c: entry[c] for c in CONTRASTS}
    ref = nib.load(files["t1n"])
    spacing = ref.header.get_zooms()[:3]
    real = {c: np.asarray(nib.load(files[c]).dataobj, np.float32) for c in CONTRASTS}
    brain = np.zeros(ref.shape[:3], bool)
    for a in real.values():
        brain |= a != 0
    label = np.asarray(nib.load(entry["label"]).dataobj)
    wt = np.asarray(label_to_regions(label, entry["label_convention"]))[REGIONS.index("WT")] > 0

    region = healthy_region(brain, wt, spacing, np.random.RandomState(_seed(entry["case_id"])), (10.0, 20.0))
    mask_path = tmp / f"{entry['case_id']}_mask.nii.gz"
    nib.save(nib.Nifti1Image(region.astype(np.uint8), ref.affine), mask_path)
    inp = inpaint(files, mask_path, bundle=bundle, device=device)
    out: dict[str, Any] = {"case_id": entry["case_id"], "inpaint_voxels": int(region.sum())}
    for c in CONTRASTS:
        out[f"inpaint_{c}"] = score(inp.images[c], real[c], brain, region)
        out[f"inpaint_{c}_baseline"] = score(
            shell_mean_fill(real[c], region, brain, spacing), real[c], brain, region
        )

    les = synthesise_lesion(files, entry["label"], bundle=bundle, device=device)
    out["lesion_voxels"] = int(les.region.sum())
    for c in CONTRASTS:
        out[f"lesion_{c}"] = score(les.images[c], real[c], brain, les.region)
        base = shell_mean_fill(real[c], les.region, brain, spacing)
        out[f"lesion_{c}_baseline"] = score(base, real[c], brain, les.region)

    # the case's tumour moved into healthy tissue (mirrored across the midline, else shifted), for the figure
    moved_path, moved_wt = None, None
    step = max(1, int(round(40.0 / float(spacing[0]))))
    for candidate in (np.flip(label, axis=0), np.roll(label, step, axis=0), np.roll(label, -step, axis=0)):
        cand_wt = np.asarray(label_to_regions(candidate, entry["label_convention"]))[REGIONS.index("WT")] > 0
        if not (cand_wt & wt).any() and (cand_wt & brain).sum() >= 0.9 * cand_wt.sum():
            moved_path = tmp / f"{entry['case_id']}_moved.nii.gz"
            nib.save(nib.Nifti1Image(candidate.astype(np.uint8), ref.affine), moved_path)
            moved_wt = cand_wt
            break
    arrays = {"real": real, "lesion": les.images, "inpaint": inp.images, "inpaint_region": region,
              "lesion_region": les.region, "brain": brain, "wt": wt, "affine": ref.affine}  # fmt: skip
    if moved_path is not None:
        arrays["moved"] = synthesise_lesion(files, moved_path, bundle=bundle, device=device).images
        arrays["moved_wt"] = moved_wt
    return {"scores": out, "arrays": arrays}


def _mean_std(rows: Sequence[Mapping[str, Any]], key: str, metric: str) -> dict[str, float]:
    vals = [r[key][metric] for r in rows if np.isfinite(r[key][metric])]
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)} if vals else {}


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and std of every score over the cases."""
    out: dict[str, Any] = {}
    for task in ("inpaint", "lesion"):
        for c in CONTRASTS:
            for suffix in ("", "_baseline"):
                key = f"{task}_{c}{suffix}"
                out[key] = {m: _mean_std(rows, key, m) for m in ("SSIM", "PSNR", "MSE")}
    return out


def markdown(summary: Mapping[str, Any], cases: Sequence[str], bundle: Path) -> str:
    """Tables of the summary."""
    lines = [
        "# Local synthesis on held-out cases",
        "",
        f"Model: `{bundle}`; held-out cases: {', '.join(cases)}.",
        "Scores inside the synthesised region (brain-normalised 0.5-99.5 %); baseline = region filled with",
        "the mean of a 5 mm shell of healthy tissue around it.",
        "",
        "| task | contrast | SSIM | SSIM baseline | PSNR (dB) | PSNR baseline | MSE | MSE baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def f(s: Mapping[str, Any], digits: int = 3) -> str:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}" if s else "-"

    for task, name in (("inpaint", "healthy inpainting"), ("lesion", "lesion from its label map")):
        for c in CONTRASTS:
            m, b = summary[f"{task}_{c}"], summary[f"{task}_{c}_baseline"]
            lines.append(
                f"| {name} | {c} | {f(m['SSIM'])} | {f(b['SSIM'])} | {f(m['PSNR'], 1)} | {f(b['PSNR'], 1)} "
                f"| {f(m['MSE'], 4)} | {f(b['MSE'], 4)} |"
            )
    return "\n".join(lines) + "\n"


def figure(cases: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Real vs synthesised lesions (own map, moved map) and an inpainted region, t1c and t2f, axial."""
    from matplotlib.figure import Figure

    from medmtl.report import to_ras

    cols = [
        "real",
        "lesion from its map",
        "map moved (synthesised)",
        "inpainted (healthy)",
        "real (inpaint region)",
    ]
    rows = [(a, c) for a in cases for c in ("t1c", "t2f")]
    fig = Figure(figsize=(2.4 * len(cols), 2.5 * len(rows)), dpi=100)
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols)))
    for r, (a, contrast) in enumerate(rows):
        aff = a["affine"]

        def ras(x: np.ndarray, aff: np.ndarray = aff) -> np.ndarray:
            return to_ras(np.asarray(x, np.float32), aff)[0]

        wt = ras(a["wt"])
        z_t = int(np.argmax(wt.sum(axis=(0, 1))))
        reg = ras(a["inpaint_region"])
        z_i = int(np.argmax(reg.sum(axis=(0, 1))))
        brain = ras(a["brain"]) > 0
        vmax = float(np.percentile(ras(a["real"][contrast])[brain], 99.5))
        panels = [(a["real"][contrast], z_t), (a["lesion"][contrast], z_t)]
        if "moved" in a:
            z_m = int(np.argmax(ras(a["moved_wt"]).sum(axis=(0, 1))))
            panels.append((a["moved"][contrast], z_m))
        else:
            panels.append((None, 0))
        panels += [(a["inpaint"][contrast], z_i), (a["real"][contrast], z_i)]
        for col, (img, z) in enumerate(panels):
            ax = axes[r, col]
            ax.axis("off")
            if img is None:
                continue
            ax.imshow(np.rot90(ras(img)[:, :, z]), cmap="gray", vmin=0, vmax=vmax)
            if r == 0:
                ax.set_title(cols[col], fontsize=8)
            if col == 0:
                ax.text(2, 12, f"{a['case_id']}\n{contrast}", color="yellow", fontsize=7, va="top")
    fig.tight_layout()
    fig.savefig(path)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Evaluate; see the module docstring."""
    from medmtl.datalist import load_datalist
    from medmtl.io import atomic_path, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, help="bundle folder with models/local_synthesis/")
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--datalist", required=True)
    p.add_argument("--fold", type=int, default=0, help="held-out fold")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--figure-cases", type=int, default=2, help="cases drawn in the figure")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = Path(args.bundle).resolve()
    entries = load_datalist(
        args.datalist, args.dataset_dir, section="training", folds=[args.fold], labelled_only=True
    )
    rows, drawn = [], []
    with tempfile.TemporaryDirectory(prefix="medmtl_local_eval_") as tmp:
        for entry in entries:
            res = evaluate_case(entry, bundle, Path(tmp), args.device)
            rows.append(res["scores"])
            s = res["scores"]
            print(
                f"{entry['case_id']}: inpaint t1n SSIM {s['inpaint_t1n']['SSIM']:.3f} "
                f"(baseline {s['inpaint_t1n_baseline']['SSIM']:.3f}); "
                f"lesion t1c SSIM {s['lesion_t1c']['SSIM']:.3f} "
                f"(baseline {s['lesion_t1c_baseline']['SSIM']:.3f})",
                flush=True,
            )
            if len(drawn) < args.figure_cases and "moved" in res["arrays"]:
                drawn.append({"case_id": entry["case_id"], **res["arrays"]})
    summary = summarise(rows)
    cases = [r["case_id"] for r in rows]
    write_json(out / "local_synthesis.json", {"bundle": str(bundle), "cases": rows, "summary": summary})
    with atomic_path(out / "local_synthesis.md") as tmp_md:
        tmp_md.write_text(markdown(summary, cases, bundle))
    if drawn:
        figure(drawn, out / "local_synthesis.png")
    print((out / "local_synthesis.md").read_text())
    return json.loads((out / "local_synthesis.json").read_text())


if __name__ == "__main__":
    main()

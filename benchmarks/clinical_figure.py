"""Figure of a preprocessed raw study: FLAIR moved onto the reference's grid, segmentation overlaid.

    python benchmarks/clinical_figure.py OUT docs/figures/clinical_TCGA-FG-6692.png

``OUT`` is the folder of ``medmtl infer STUDY --preprocess --save-preprocessed --out OUT``: the FLAIR
is resampled from its own grid onto the reference contrast's with the transform saved there (ITK
``.tfm``), so the figure checks both the registration and the mapping back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from medmtl.preprocessing.registration import resample, to_array  # noqa: E402

LABELS = {1: ("NETC", "#ff3030"), 2: ("SNFH", "#30d030"), 3: ("ET", "#ffd000"), 4: ("ET", "#ffd000")}


def main() -> None:
    """Draw the figure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("figure")
    a = p.parse_args()
    out = Path(a.out)
    side = json.loads(next(f for f in out.glob("*.json")).read_text())
    pre = side["preprocessing"]
    cid, ref = side["case_id"], pre["reference"]
    ref_img = sitk.ReadImage(pre["reference_source"])
    seg = np.asarray(nib.load(out / f"{cid}_seg.nii.gz").dataobj)
    rows = {ref: to_array(sitk.Cast(ref_img, sitk.sitkFloat32))}
    if "t2f" in pre["contrasts"] and ref != "t2f":
        tfm = sitk.ReadTransform(pre["contrasts"]["t2f"]["transform_file"])
        rows["t2f"] = to_array(resample(sitk.ReadImage(pre["contrasts"]["t2f"]["source"]), ref_img, tfm))
    tumour = np.nonzero((seg > 0).sum((0, 1)))[0]
    centre = int(np.argmax((seg > 0).sum((0, 1))))
    slices = sorted({max(tumour.min(), centre - 2), centre, min(tumour.max(), centre + 2)})
    fig, axes = plt.subplots(2 * len(rows) // 2, len(slices) * 2, figsize=(4 * len(slices) * 2 / 1.6, 7.5))
    axes = np.atleast_2d(axes)
    for r, (name, vol) in enumerate(rows.items()):
        hi = np.percentile(vol[vol > 0], 99.5)
        for j, z in enumerate(slices):
            for k, overlay in enumerate((False, True)):
                ax = axes[r, 2 * j + k]
                ax.imshow(np.rot90(vol[:, :, z]), cmap="gray", vmin=0, vmax=hi)
                if overlay:
                    for lab, (_, colour) in LABELS.items():
                        m = np.rot90(seg[:, :, z] == lab)
                        if m.any():
                            ax.contour(m, levels=[0.5], colors=colour, linewidths=1.0)
                ax.set_title(f"{name} slice {z}" + (" + seg" if overlay else ""), fontsize=9)
                ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in {v[0]: v[1] for v in LABELS.values()}.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(
        f"{cid}: outputs on the {ref} grid {tuple(seg.shape)}; FLAIR registered onto it "
        f"(brain mask {pre['brain_mask_ml']:.0f} ml)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=80)
    print(a.figure)


if __name__ == "__main__":
    main()

"""What a missing contrast's in-brain SSIM can reach: references that see the acquired target.

For every labelled case of a datalist fold and one target contrast, each row is scored against the
acquired target by :func:`medmtl.metrics.synthesis_metrics` (the SSIM that ``medmtl evaluate``
reports: 0.5-99.5 % brain scaling, 7-voxel window, averaged over the brain):

- ``copy``: the nearest acquired contrast (:data:`medmtl.metrics.NEAREST`) copied.
- ``blurred sigma S``: the acquired target itself under a Gaussian blur of ``S`` mm: a perfect
  synthesis that carries no detail finer than ``S``.
- ``local fit sigma W``: the local linear model of guided filtering (He, Sun and Tang, "Guided Image
  Filtering", TPAMI 2013), ``target ~ sum_c a_c * input_c + b`` with coefficients fitted **to the
  acquired target** by least squares under Gaussian weights of ``W`` mm, applied to the acquired
  other contrasts: the best that coefficient fields of that smoothness could do (an oracle).
- with ``--pred DIR`` (``medmtl infer`` outputs of the scenario that lacks the target): the synthesis,
  and the synthesis passed through the guided filter (coefficients fitted between the synthesis and
  the inputs blurred to its resolution, applied to the sharp inputs: the fast guided upsampling of
  Wu et al., CVPR 2018, with no training); and the same guided filter on the blurred target
  (``guided(blurred sigma 2)``): what borrowing the inputs' detail gives a perfect smooth synthesis.
- with ``--pred DIR --blend W ...``: ``synthesis + copy W``, the synthesis and the copy, each
  z-scored in the brain, mixed as ``(1 - W) * synthesis + W * copy``: how much of the acquired
  contrast's own pattern, taken as it is, the synthesis should keep.

Each row's brain SSIM is also split into its three terms (Wang et al., "Image quality assessment:
from error visibility to structural similarity", IEEE TIP 2004, Eqs. 6-9; SSIM = l * c * s):
luminance (local means agree), contrast (local standard deviations agree) and structure (the local
correlation of the two images), so a row's deficit can be read as wrong intensities, wrong amounts of
detail, or detail in the wrong places.

Writes ``OUT/ceiling_<target>.json`` (per case) and ``.md`` (means, how many cases each row beats the
copy on, and the three terms).

    python benchmarks/synthesis_ceiling.py --dataset-dir ../shared/data/brats --datalist runs/datalist.json \\
        --fold 0 --target t1c --pred runs/heldout/no_t1c/pred --out runs/ceiling
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from monai.networks.layers import GaussianFilter  # noqa: E402
from scipy.ndimage import uniform_filter  # noqa: E402

from medmtl.contrasts import CONTRASTS  # noqa: E402
from medmtl.io import output_paths  # noqa: E402
from medmtl.labels import REGIONS, resolve_convention  # noqa: E402
from medmtl.metrics import NEAREST, normalise_intensity, region_masks, synthesis_metrics  # noqa: E402


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return GaussianFilter(x.dim() - 2, sigma, truncated=3.0)(x) if sigma > 0 else x


def _masked_blur(x: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur that only averages brain voxels (no dark rim from the background)."""
    return _blur(x * mask, sigma) / _blur(mask, sigma).clamp_min(1e-6) if sigma > 0 else x


def local_linear_coefficients(
    target: torch.Tensor,
    guides: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    eps: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients of the multi-channel guided filter: ``target ~ sum_c a_c * guides_c + b`` per window.

    Args:
        target: ``(1, 1, *S)`` the image the coefficients are fitted to.
        guides: ``(1, C, *S)`` the images they combine (z-scored in the brain).
        mask: ``(1, 1, *S)`` 0/1 brain; the Gaussian windows only count brain voxels.
        sigma: Gaussian window of the local fits, in voxels.
        eps: ridge on the coefficients (guide units).

    Returns:
        ``a`` ``(1, C, *S)`` and ``b`` ``(1, 1, *S)``, averaged over the windows covering each voxel
        (He et al., Eq. 8).
    """
    c = guides.shape[1]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return _masked_blur(x, mask, sigma)

    mu_g, mu_t = mean(guides), mean(target)
    cov = torch.empty(c, c, *target.shape[2:])
    for i in range(c):
        for j in range(i, c):
            cov[i, j] = cov[j, i] = (
                mean(guides[:, i : i + 1] * guides[:, j : j + 1]) - mu_g[:, i : i + 1] * mu_g[:, j : j + 1]
            )[0, 0]
    cov += eps * torch.eye(c).reshape(c, c, *([1] * (target.dim() - 2)))
    cross = (mean(guides * target) - mu_g * mu_t)[0]
    a = torch.linalg.solve(cov.movedim((0, 1), (-2, -1)), cross.movedim(0, -1).unsqueeze(-1))[..., 0]
    a = a.movedim(-1, 0).unsqueeze(0)
    b = mu_t - (a * mu_g).sum(1, keepdim=True)
    return mean(a), mean(b)


def local_linear_fit(
    target: torch.Tensor,
    guides: torch.Tensor,
    mask: torch.Tensor,
    sigma: float,
    eps: float = 0.01,
    fit_guides: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-channel guided filter: local affine combination of ``guides`` that best fits ``target``.

    Args:
        target: ``(1, 1, *S)`` the image the coefficients are fitted to.
        guides: ``(1, C, *S)`` the images combined (z-scored in the brain).
        mask: ``(1, 1, *S)`` 0/1 brain; the Gaussian windows only count brain voxels.
        sigma: Gaussian window of the local fits, in voxels.
        eps: ridge on the coefficients (guide units).
        fit_guides: the guides the coefficients are fitted on (e.g. blurred to the target's
            resolution); ``guides`` when None. The coefficients are always applied to ``guides``.

    Returns:
        ``(1, 1, *S)``: ``sum_c a_c * guides_c + b`` (:func:`local_linear_coefficients`).
    """
    a, b = local_linear_coefficients(target, guides if fit_guides is None else fit_guides, mask, sigma, eps)
    return apply_coefficients(a, b, guides)


def apply_coefficients(a: torch.Tensor, b: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """``sum_c a_c * guides_c + b``: the local affine combination of :func:`local_linear_coefficients`."""
    return (a * guides).sum(1, keepdim=True) + b


def ssim_component_maps(x: np.ndarray, y: np.ndarray, win_size: int = 7) -> dict[str, np.ndarray]:
    """Luminance, contrast and structure maps of two images in [0, 1], as scikit-image's SSIM sees them.

    The local statistics are scikit-image's (uniform ``win_size`` window, sample covariance, K1 0.01,
    K2 0.03, data range 1); the structure term's constant C3 = C2 / 2 makes ``l * c * s`` its SSIM map
    (Wang et al., IEEE TIP 2004, Eqs. 6-9).

    Args:
        x: one image, values in [0, 1].
        y: the other, same shape.
        win_size: side of the window, voxels.

    Returns:
        ``{"luminance", "contrast", "structure"}``: maps of ``x``'s shape.
    """
    n = win_size**x.ndim
    cov_norm = n / (n - 1)

    def mean(a: np.ndarray) -> np.ndarray:
        return uniform_filter(a, size=win_size)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    sd = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    return {
        "luminance": (2 * ux * uy + c1) / (ux**2 + uy**2 + c1),
        "contrast": (2 * sd + c2) / (vx + vy + c2),
        "structure": (vxy + c2 / 2) / (sd + c2 / 2),
    }


def ssim_components(pred: np.ndarray, ref: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """The three terms of the brain SSIM that ``medmtl evaluate`` reports, each averaged over the brain.

    Args:
        pred: the synthesised image, any intensity space.
        ref: the acquired image, same grid.
        brain: boolean brain mask.

    Returns:
        ``luminance`` (local means agree), ``contrast`` (local standard deviations agree) and
        ``structure`` (local correlation): each map's mean over the brain, both images first scaled by
        :func:`medmtl.metrics.normalise_intensity`.
    """
    maps = ssim_component_maps(normalise_intensity(pred, brain), normalise_intensity(ref, brain))
    return {k: float(v[brain].mean()) for k, v in maps.items()}


def _zscore(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float32)
    v = x[brain]
    out[brain] = (v - v.mean()) / (v.std() + 1e-6)
    return out


def case_rows(
    entry: dict[str, Any],
    target: str,
    pred: Path | None,
    blurs: Sequence[float],
    fits: Sequence[float],
    components: bool = True,
    blends: Sequence[float] = (),
) -> dict[str, dict[str, float]]:
    """Brain SSIM of every row for one case (voxels are 1 mm in BraTS, so mm = voxels).

    Returns:
        ``{row: {"SSIM": ..., ...}}``: the brain SSIM; ``SSIM tumour`` and ``SSIM non-tumour`` (WT)
        when the case is labelled; ``luminance``, ``contrast`` and ``structure`` with ``components``;
        for the oracle fits, ``a_<contrast> mean`` and ``a_<contrast> sd``, each coefficient's mean and
        standard deviation over the brain; with ``pred``, one ``synthesis + copy W`` row per weight in
        ``blends``.
    """
    images = {c: np.asarray(nib.load(entry[c]).dataobj, np.float32) for c in CONTRASTS}
    ref = images[target]
    brain = ref != 0
    others = [c for c in CONTRASTS if c != target]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(1, -1, *a.shape[-3:])

    mask = tensor(brain.astype(np.float32))
    guides = tensor(np.stack([_zscore(images[c], brain) for c in others]))
    ref_z = tensor(_zscore(ref, brain))

    tumour = None
    if entry.get("label"):
        label = np.asarray(nib.load(entry["label"]).dataobj)
        conv = resolve_convention(np.unique(label).tolist(), entry.get("label_convention"))
        tumour = region_masks(label, conv)[REGIONS.index("WT")]

    def ssim(img: torch.Tensor | np.ndarray) -> dict[str, float]:
        arr = img[0, 0].numpy() if isinstance(img, torch.Tensor) else img
        # voxels outside the brain are not read
        scores = synthesis_metrics(arr, ref, brain, tumour)
        row = {"SSIM": scores["SSIM_brain"]}
        if tumour is not None:
            row |= {"SSIM tumour": scores["SSIM_tumour"], "SSIM non-tumour": scores["SSIM_nontumour"]}
        return row | ssim_components(arr, ref, brain) if components else row

    rows = {"copy": ssim(images[NEAREST[target]])}
    with torch.no_grad():
        for s in blurs:
            rows[f"blurred sigma {s:g}"] = ssim(_masked_blur(ref_z, mask, s))
        inside = mask[0, 0].bool()
        for w in fits:
            a, b = local_linear_coefficients(ref_z, guides, mask, w)
            row = rows[f"local fit sigma {w:g}"] = ssim(apply_coefficients(a, b, guides))
            for c, a_c in zip(others, a[0]):  # how large and how variable the oracle's coefficients are
                row[f"a_{c} mean"], row[f"a_{c} sd"] = float(a_c[inside].mean()), float(a_c[inside].std())
        if pred is not None:
            path = output_paths(pred, str(entry["case_id"]), [target])[target]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found (medmtl infer outputs of the case without it)")
            syn = tensor(_zscore(np.asarray(nib.load(path).dataobj, np.float32), brain))
            rows["synthesis"] = ssim(syn)
            k = others.index(NEAREST[target])
            copy_z = guides[:, k : k + 1]  # the guides are the other contrasts, z-scored
            for w in blends:
                rows[f"synthesis + copy {w:g}"] = ssim((1 - w) * syn + w * copy_z)
            smooth_guides = _masked_blur(guides, mask, 2.0)
            rows["guided(synthesis)"] = ssim(
                local_linear_fit(syn, guides, mask, 4.0, fit_guides=smooth_guides)
            )
            rows["guided(blurred sigma 2)"] = ssim(
                local_linear_fit(_masked_blur(ref_z, mask, 2.0), guides, mask, 4.0, fit_guides=smooth_guides)
            )
    return rows


def markdown(target: str, cases: dict[str, dict[str, dict[str, float]]]) -> str:
    """Means over the cases: each row's SSIM, how many cases it beats the copy on, and its terms."""
    first = next(iter(cases.values()))
    terms = [
        t
        for t in ("SSIM tumour", "SSIM non-tumour", "luminance", "contrast", "structure")
        if t in first["copy"]
    ]
    head = f"| {target}: {len(cases)} cases | SSIM brain (mean ± sd) | cases above the copy |"
    lines = [head + "".join(f" {t} |" for t in terms), "| --- " * (3 + len(terms)) + "|"]
    for n in first:
        v = np.array([c[n]["SSIM"] for c in cases.values()])
        above = sum(c[n]["SSIM"] > c["copy"]["SSIM"] for c in cases.values())
        means = "".join(f" {np.mean([c[n][t] for c in cases.values()]):.3f} |" for t in terms)
        lines.append(f"| {n} | {v.mean():.3f} ± {v.std():.3f} | {above if n != 'copy' else '-'} |" + means)
    guides = [c for c in CONTRASTS if c != target]
    coef_rows = [n for n in first if f"a_{guides[0]} mean" in first[n]]
    if coef_rows:
        lines += [
            "",
            "Oracle coefficients (z-score units): each case's brain mean, range over the cases; "
            "the SD within a case, mean over the cases.",
            "",
            "| fit |" + "".join(f" a {g}: mean | a {g}: SD within |" for g in guides),
            "| --- " * (1 + 2 * len(guides)) + "|",
        ]
        for n in coef_rows:
            cells = ""
            for g in guides:
                m = [c[n][f"a_{g} mean"] for c in cases.values()]
                sd = np.mean([c[n][f"a_{g} sd"] for c in cases.values()])
                cells += f" {min(m):+.2f} to {max(m):+.2f} | {sd:.2f} |"
            lines.append(f"| {n} |{cells}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Score every row on every case; see the module docstring."""
    from medmtl.datalist import load_datalist
    from medmtl.io import atomic_path, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset-dir", required=True)
    p.add_argument("--datalist", required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--target", default="t1c", choices=CONTRASTS)
    p.add_argument("--pred", default=None, help="medmtl infer outputs of the scenario without the target")
    p.add_argument("--blur", type=float, nargs="*", default=[1.0, 2.0], help="Gaussian sigmas (mm)")
    p.add_argument("--fit", type=float, nargs="*", default=[2.0, 4.0, 8.0], help="local fit sigmas (mm)")
    p.add_argument(
        "--blend", type=float, nargs="*", default=[], help="weights of the copy mixed into the synthesis"
    )
    p.add_argument(
        "--no-components", action="store_true", help="SSIM only, not its luminance/contrast/structure"
    )
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    entries = load_datalist(
        args.datalist, args.dataset_dir, section="training", folds=[args.fold], labelled_only=True
    )
    cases: dict[str, dict[str, dict[str, float]]] = {}
    for entry in entries:
        if not all(entry.get(c) for c in CONTRASTS):
            print(f"{entry['case_id']}: skipped, not all four contrasts acquired", flush=True)
            continue
        cases[entry["case_id"]] = case_rows(
            entry,
            args.target,
            Path(args.pred) if args.pred else None,
            args.blur,
            args.fit,
            components=not args.no_components,
            blends=args.blend,
        )
        print(
            entry["case_id"],
            " ".join(f"{k}: {v['SSIM']:.3f}" for k, v in cases[entry["case_id"]].items()),
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / f"ceiling_{args.target}.json", {"target": args.target, "fold": args.fold, "cases": cases}
    )
    with atomic_path(out / f"ceiling_{args.target}.md") as tmp:
        tmp.write_text(markdown(args.target, cases))
    print(markdown(args.target, cases))
    return cases


if __name__ == "__main__":
    main()

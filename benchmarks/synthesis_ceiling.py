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

Writes ``OUT/ceiling_<target>.json`` (per case) and ``.md`` (means, and how many cases each row
beats the copy on).

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

from medmtl.contrasts import CONTRASTS  # noqa: E402
from medmtl.io import output_paths  # noqa: E402
from medmtl.metrics import NEAREST, synthesis_metrics  # noqa: E402


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return GaussianFilter(x.dim() - 2, sigma, truncated=3.0)(x) if sigma > 0 else x


def _masked_blur(x: torch.Tensor, mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur that only averages brain voxels (no dark rim from the background)."""
    return _blur(x * mask, sigma) / _blur(mask, sigma).clamp_min(1e-6) if sigma > 0 else x


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
        ``(1, 1, *S)``: ``sum_c a_c * guides_c + b`` with ``a, b`` averaged over the windows covering
        each voxel (He et al., Eq. 8).
    """
    fit = guides if fit_guides is None else fit_guides
    c = guides.shape[1]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return _masked_blur(x, mask, sigma)

    mu_g, mu_t = mean(fit), mean(target)
    cov = torch.empty(c, c, *target.shape[2:])
    for i in range(c):
        for j in range(i, c):
            cov[i, j] = cov[j, i] = (
                mean(fit[:, i : i + 1] * fit[:, j : j + 1]) - mu_g[:, i : i + 1] * mu_g[:, j : j + 1]
            )[0, 0]
    cov += eps * torch.eye(c).reshape(c, c, *([1] * (target.dim() - 2)))
    cross = (mean(fit * target) - mu_g * mu_t)[0]
    a = torch.linalg.solve(cov.movedim((0, 1), (-2, -1)), cross.movedim(0, -1).unsqueeze(-1))[..., 0]
    a = a.movedim(-1, 0).unsqueeze(0)
    b = mu_t - (a * mu_g).sum(1, keepdim=True)
    return (mean(a) * guides).sum(1, keepdim=True) + mean(b)


def _zscore(x: np.ndarray, brain: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float32)
    v = x[brain]
    out[brain] = (v - v.mean()) / (v.std() + 1e-6)
    return out


def case_rows(
    entry: dict[str, Any], target: str, pred: Path | None, blurs: Sequence[float], fits: Sequence[float]
) -> dict[str, float]:
    """Brain SSIM of every row for one case (voxels are 1 mm in BraTS, so mm = voxels)."""
    images = {c: np.asarray(nib.load(entry[c]).dataobj, np.float32) for c in CONTRASTS}
    ref = images[target]
    brain = ref != 0
    others = [c for c in CONTRASTS if c != target]

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(1, -1, *a.shape[-3:])

    mask = tensor(brain.astype(np.float32))
    guides = tensor(np.stack([_zscore(images[c], brain) for c in others]))
    ref_z = tensor(_zscore(ref, brain))

    def ssim(img: torch.Tensor | np.ndarray) -> float:
        arr = img[0, 0].numpy() if isinstance(img, torch.Tensor) else img
        return synthesis_metrics(arr, ref, brain)["SSIM_brain"]  # voxels outside the brain are not read

    rows = {"copy": ssim(images[NEAREST[target]])}
    with torch.no_grad():
        for s in blurs:
            rows[f"blurred sigma {s:g}"] = ssim(_masked_blur(ref_z, mask, s))
        for w in fits:
            rows[f"local fit sigma {w:g}"] = ssim(local_linear_fit(ref_z, guides, mask, w))
        if pred is not None:
            path = output_paths(pred, str(entry["case_id"]), [target])[target]
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found (medmtl infer outputs of the case without it)")
            syn = tensor(_zscore(np.asarray(nib.load(path).dataobj, np.float32), brain))
            rows["synthesis"] = ssim(syn)
            smooth_guides = _masked_blur(guides, mask, 2.0)
            rows["guided(synthesis)"] = ssim(
                local_linear_fit(syn, guides, mask, 4.0, fit_guides=smooth_guides)
            )
            rows["guided(blurred sigma 2)"] = ssim(
                local_linear_fit(_masked_blur(ref_z, mask, 2.0), guides, mask, 4.0, fit_guides=smooth_guides)
            )
    return rows


def markdown(target: str, cases: dict[str, dict[str, float]]) -> str:
    names = list(next(iter(cases.values())))
    lines = [
        f"| {target}: {len(cases)} cases | SSIM brain (mean ± sd) | cases above the copy |",
        "| --- | --- | --- |",
    ]
    for n in names:
        v = np.array([c[n] for c in cases.values()])
        above = sum(c[n] > c["copy"] for c in cases.values())
        lines.append(f"| {n} | {v.mean():.3f} ± {v.std():.3f} | {above if n != 'copy' else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
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
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    entries = load_datalist(
        args.datalist, args.dataset_dir, section="training", folds=[args.fold], labelled_only=True
    )
    cases: dict[str, dict[str, float]] = {}
    for entry in entries:
        if not all(entry.get(c) for c in CONTRASTS):
            print(f"{entry['case_id']}: skipped, not all four contrasts acquired", flush=True)
            continue
        cases[entry["case_id"]] = case_rows(
            entry, args.target, Path(args.pred) if args.pred else None, args.blur, args.fit
        )
        print(
            entry["case_id"],
            " ".join(f"{k}: {v:.3f}" for k, v in cases[entry["case_id"]].items()),
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

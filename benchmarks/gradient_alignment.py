"""Do the synthesis and segmentation losses pull the shared encoder the same way?

For a trained bundle (or its untrained network), on batches drawn by the bundle's own training
pipeline, each task loss of ``MultiTaskLoss.task_losses`` is back-propagated separately to the
shared encoder; per batch: the cosine of the two encoder gradients and the ratio of their norms.
A cosine near 0 means the synthesis loss moves the encoder in directions the segmentation loss
does not care about (it neither helps nor hurts it directly); a negative cosine means conflict,
which PCGrad removes (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    python benchmarks/gradient_alignment.py --bundle runs/label_scarcity/b_L12 \
        --dataset-dir ../shared/data/brats --datalist runs/label_scarcity/datalist_b_L12.json \
        --batches 16 --out runs/label_scarcity/gradients_b_L12.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def alignment(
    bundle: Path,
    dataset_dir: Path,
    datalist: Path,
    batches: int,
    weights: Path | None,
    preset: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Cosine and norm ratio of the two task gradients on the shared encoder, batch by batch.

    Args:
        bundle: a trained bundle folder (its ``configs/``).
        dataset_dir: root of the datalist's paths.
        datalist: the datalist the bundle trained on.
        batches: how many training batches to measure.
        weights: weights to load (``None``: the network as initialised with ``seed``).
        preset: the training preset (``cpu`` adds ``configs/cpu.json``).
        seed: seed of the initialisation and of the patch draws.

    Returns:
        ``{"cosine": [...], "norm_ratio_gen_over_seg": [...], "summary": {...}}``.
    """
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from medmtl.bundle_config import read_state_dict
    from medmtl.training import stage_config_files

    set_determinism(seed)
    parser = ConfigParser()
    parser.read_config(stage_config_files(bundle, "plain", preset))
    with tempfile.TemporaryDirectory() as tmp:
        parser.update(
            {
                "bundle_root": str(bundle),
                "dataset_dir": str(dataset_dir),
                "datalist": str(datalist),
                "ckpt_dir": tmp,
                "num_workers": 0,
                "resume": False,
                "init_from": None,
                "device": "$torch.device('cpu')",
            }
        )
        net = parser.get_parsed_content("network")
        if weights is not None:
            state = read_state_dict(str(weights))
            net.load_state_dict(state.get("model", state))
        loss_fn = parser.get_parsed_content("loss_function")
        loader = parser.get_parsed_content("train#dataloader")
        prepare_batch = parser.get_parsed_content("prepare_batch")
        inferer = parser.get_parsed_content("train#inferer")
    shared = [p for n, p in net.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    net.train()
    to_vector = torch.nn.utils.parameters_to_vector
    cosines, ratios = [], []
    while len(cosines) < batches:
        measured = len(cosines)
        for batch in loader:
            inputs, targets, _, _ = prepare_batch(batch, torch.device("cpu"), False)
            if "has_label" in targets and not bool((targets["has_label"] > 0.5).any()):
                continue  # no labelled sample: the segmentation loss has nothing to say
            losses = loss_fn.task_losses(inferer(inputs, net), targets)
            if not {"seg", "gen"} <= set(losses):
                raise ValueError(f"{bundle}: the training config trains {sorted(losses)}, not both tasks")
            g_seg = torch.autograd.grad(losses["seg"], shared, retain_graph=True, materialize_grads=True)
            g_gen = torch.autograd.grad(losses["gen"], shared, materialize_grads=True)
            flat = [to_vector(g_seg), to_vector(g_gen)]
            cosines.append(float(torch.nn.functional.cosine_similarity(flat[0], flat[1], dim=0)))
            ratios.append(float(flat[1].norm() / flat[0].norm().clamp_min(1e-12)))
            if len(cosines) >= batches:
                break
        if len(cosines) == measured:
            raise ValueError(f"{datalist}: no training batch holds a labelled case")
    c, r = np.asarray(cosines), np.asarray(ratios)
    summary = {
        "n": len(c),
        "cosine_mean": float(c.mean()),
        "cosine_std": float(c.std(ddof=1)) if len(c) > 1 else 0.0,
        "negative": int((c < 0).sum()),
        "norm_ratio_gen_over_seg_median": float(np.median(r)),
    }
    return {"cosine": cosines, "norm_ratio_gen_over_seg": ratios, "summary": summary}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure one bundle, untrained (``--untrained``) or with its ``models/model.pt``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--dataset-dir", required=True, type=Path)
    p.add_argument("--datalist", required=True, type=Path)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--untrained", action="store_true", help="the network as initialised, not the weights")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    bundle = args.bundle.resolve()
    weights = None if args.untrained else bundle / "models" / "model.pt"
    res = alignment(bundle, args.dataset_dir.resolve(), args.datalist.resolve(), args.batches, weights,
                    args.preset, args.seed)  # fmt: skip
    res["bundle"], res["weights"] = str(bundle), str(weights) if weights else "untrained"
    s = res["summary"]
    print(
        f"gradient_alignment: {bundle.name} ({res['weights']}): cosine {s['cosine_mean']:+.3f} ± "
        f"{s['cosine_std']:.3f} over {s['n']} batches ({s['negative']} negative), "
        f"|g_gen| / |g_seg| median {s['norm_ratio_gen_over_seg_median']:.2f}",
        flush=True,
    )
    if args.out:
        from medmtl.io import write_json

        write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()

"""Pieces that let MONAI engines train and validate the two-output network.

The bundle configs (``bundles/brats_mtl/configs``) are the one description of a training run; this
module holds only what they reference: the batch preparation for dict targets, metric output
transforms for each branch, per-task loss logging, a PCGrad iteration, bfloat16 autocast on CPUs and
checkpoint helpers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data.meta_obj import get_track_meta
from monai.engines.utils import PrepareBatch
from monai.inferers import SimpleInferer
from monai.metrics import CumulativeIterationMetric
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor

from medmtl.engine_logs import quiet_engine_logs
from medmtl.stages import ABLATIONS, STAGES, TASK_CONFIGS  # noqa: F401 - part of this module's API

logger = logging.getLogger("medmtl.training")


class MultiTaskPrepareBatch(PrepareBatch):
    """Prepare a batch for MONAI engines: inputs, a dict of targets, and the channel mask as kwarg.

    ``SupervisedTrainer`` / ``SupervisedEvaluator`` call ``network(inputs, **kwargs)`` and
    ``loss_function(pred, targets)``; the targets are ``{"seg", "synth", "brain_mask"}`` (and the
    per-contrast ``synth_weight`` and the per-sample ``has_label`` when the pipeline writes them) so
    that :class:`medmtl.losses.MultiTaskLoss` sees every task at once, and leaves the unlabelled
    samples of a batch out of the segmentation loss.

    Args:
        use_channel_mask: pass ``channel_mask`` (B, C) to the network (models built with input_mask).
        loss_mask_key: batch key of the region where the synthesis loss and metrics count, given to
            them as ``targets["brain_mask"]``: the brain by default, the blanked region for local
            synthesis (``synth_mask``).
    """

    def __init__(self, use_channel_mask: bool = False, loss_mask_key: str = "brain_mask") -> None:
        self.use_channel_mask = use_channel_mask
        self.loss_mask_key = loss_mask_key

    def __call__(
        self,
        batchdata: dict[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, Any]]:
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, non_blocking=non_blocking, **kwargs)

        inputs = move(batchdata["image"])
        targets = {}
        pairs = (
            ("label", "seg"),
            ("synth_target", "synth"),
            (self.loss_mask_key, "brain_mask"),
            ("synth_weight", "synth_weight"),
            ("has_label", "has_label"),
        )
        for src, dst in pairs:
            if src in batchdata and isinstance(batchdata[src], torch.Tensor):
                targets[dst] = move(batchdata[src])
        net_kwargs = {}
        if self.use_channel_mask and "channel_mask" in batchdata:
            net_kwargs["channel_mask"] = move(batchdata["channel_mask"])
        return inputs, targets, (), net_kwargs


def _first(output: Any) -> dict:
    # Evaluators decollate their output into a list of per-case dicts; metrics want batch tensors.
    if not isinstance(output, list):
        return output
    return {
        key: {k: torch.stack([torch.as_tensor(o[key][k]) for o in output]) for k in output[0][key]}
        for key in (Keys.PRED, Keys.LABEL)
    }


class SegOutput:
    """Output transform for segmentation metric handlers: (binary prediction, target regions).

    Args:
        region: region channel to keep (0 TC, 1 WT, 2 ET); all when None.
        threshold: probability threshold after the sigmoid.
    """

    def __init__(self, region: int | None = None, threshold: float = 0.5) -> None:
        self.region, self.threshold = region, threshold

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = _first(output)
        pred = (torch.sigmoid(out[Keys.PRED]["seg"].float()) > self.threshold).float()
        label = out[Keys.LABEL]["seg"].float()
        if self.region is not None:
            pred, label = pred[:, self.region : self.region + 1], label[:, self.region : self.region + 1]
        return pred, label


class SynthOutput:
    """Output transform for synthesis metric handlers: ``(synthesised, acquired + brain mask)``.

    The brain mask travels as one more channel of the target, so that :class:`BrainSynthesisMetric`
    scores the brain voxels only, as ``medmtl evaluate`` does.

    Args:
        channel: synthesised channel to keep; all when None.
        absent_only: score only the targets the case's input lacked (``synth_weight`` > 0, written by
            ``val_transforms(withhold=True)``); the others become NaN, which
            :class:`BrainSynthesisMetric` leaves out.
    """

    def __init__(self, channel: int | None = None, absent_only: bool = False) -> None:
        self.channel = channel
        self.absent_only = absent_only

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out = _first(output)
        pred = out[Keys.PRED]["synth"].float()
        target = out[Keys.LABEL]["synth"].float()
        mask = out[Keys.LABEL].get("brain_mask")
        mask = (target[:, :1] != 0).float() if mask is None else (mask > 0).float()
        weight = out[Keys.LABEL].get("synth_weight")
        if self.absent_only and weight is not None:
            absent = weight.to(target.device).reshape(*weight.shape[:2], *([1] * (target.dim() - 2))) > 0
            target = torch.where(absent, target, torch.full_like(target, float("nan")))
        if self.channel is not None:
            pred = pred[:, self.channel : self.channel + 1]
            target = target[:, self.channel : self.channel + 1]
        return pred, torch.cat([target, mask.to(target)], dim=1)


class BrainSynthesisMetric(CumulativeIterationMetric):
    """SSIM or PSNR of synthesised contrasts in the brain, defined exactly as ``medmtl evaluate`` does.

    Each image is clipped at its brain's 0.5 / 99.5 percentiles and scaled to [0, 1]; the SSIM map
    (scikit-image, 7-voxel window) and the squared error are averaged over the brain voxels only
    (:func:`medmtl.metrics.synthesis_metrics`). The training loop scores on its validation grid (2 mm
    with the cpu preset) with every contrast in the input, so it measures how well the inputs are
    restored; the synthesis of a contrast the case lacks is measured by ``medmtl evaluate`` on an
    inference run without it.

    Args:
        score: ``"SSIM"`` or ``"PSNR"``.
    """

    def __init__(self, score: str = "SSIM") -> None:
        super().__init__()
        if score not in ("SSIM", "PSNR"):
            raise ValueError(f"score must be SSIM or PSNR, got {score!r}")
        self.score = score

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        from medmtl.metrics import synthesis_metrics

        pred = y_pred.detach().float().cpu().numpy()
        target = y.detach().float().cpu().numpy()
        brain = target[:, -1] > 0
        scores = torch.full(pred.shape[:2], float("nan"))
        for b in range(pred.shape[0]):
            if not brain[b].any():
                continue
            for c in range(pred.shape[1]):
                if math.isnan(float(target[b, c].flat[0])):
                    continue
                scores_bc = synthesis_metrics(pred[b, c], target[b, c], brain[b], ssim=self.score == "SSIM")
                value = scores_bc[f"{self.score}_brain"]
                scores[b, c] = min(value, 100.0)  # identical images: PSNR inf, kept finite for the mean
        return scores

    def aggregate(self) -> torch.Tensor:
        """The mean over cases and contrasts (cases without a brain are left out)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            return torch.tensor(float("nan"))
        return torch.nanmean(data.float())


class TaskLossLogger:
    """Log each task's loss and weight (``loss_function.last``) every N iterations.

    Writes to the Python logger and, when given, to a TensorBoard ``SummaryWriter`` under
    ``train/<name>``, next to MONAI's ``TensorBoardStatsHandler`` total-loss curve.

    Args:
        loss_function: the :class:`medmtl.losses.MultiTaskLoss` instance the trainer uses.
        summary_writer: optional TensorBoard writer.
        interval: log every this many iterations.
    """

    def __init__(self, loss_function: Any, summary_writer: Any = None, interval: int = 10) -> None:
        self.loss_function, self.writer, self.interval = loss_function, summary_writer, interval

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Any) -> None:
        last = getattr(self.loss_function, "last", None) or {}
        if not last:
            return
        it = engine.state.iteration
        logger.info("iter %d: %s", it, ", ".join(f"{k}={float(v):.4f}" for k, v in last.items()))
        if self.writer is not None:
            for k, v in last.items():
                self.writer.add_scalar(f"train/{k}", float(v), it)


class PCGradIteration:
    """``iteration_update`` for MONAI's ``SupervisedTrainer`` that combines task gradients by PCGrad.

    Each task loss is back-propagated separately; where two task gradients on the shared encoder
    conflict (negative dot product) each is projected onto the other's normal plane before summing
    (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    Args:
        shared_params: parameters of the shared encoder.
        other_params: task-specific parameters (decoder heads, learned loss weights).
    """

    def __init__(
        self, shared_params: Sequence[torch.nn.Parameter], other_params: Sequence[torch.nn.Parameter]
    ):
        self.shared = [p for p in shared_params if p.requires_grad]
        self.other = [p for p in other_params if p.requires_grad]

    def __call__(self, engine: Any, batchdata: dict[str, Any]) -> dict[str, Any]:
        inputs, targets, args, kwargs = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs
        )
        # Plain tensors: gradient surgery stacks per-task gradients, which MetaTensor would try to batch.
        inputs = _plain(inputs)
        targets = {k: _plain(v) for k, v in targets.items()}
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        pred = engine.inferer(inputs, engine.network, *args, **kwargs)
        total = engine.loss_function.backward(pred, targets, self.shared, self.other)
        engine.optimizer.step()
        return {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: pred, Keys.LOSS: total.detach()}


class AutocastInferer(SimpleInferer):
    """Run the network's forward pass under ``torch.autocast`` and hand back float32 outputs.

    MONAI's trainer ``amp`` autocasts on CUDA only. On a CPU with bfloat16 instructions (AVX512-BF16,
    AMX) the convolutions then run in bfloat16, forward and backward, while the losses and their
    reductions stay in float32 because the outputs are cast back before the loss sees them.

    Args:
        device_type: ``"cpu"`` (or ``"cuda"``).
        dtype: the autocast dtype; bfloat16 needs no gradient scaling.
    """

    def __init__(self, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.device_type = device_type
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return convert_to_tensor(out, dtype=torch.float32, track_meta=get_track_meta())


def train_inferer(cpu_bf16: bool = False) -> SimpleInferer:
    """The training inferer: the network called as is, or under bfloat16 autocast on the CPU.

    Args:
        cpu_bf16: the bundle's ``cpu_bf16`` setting.

    Returns:
        An :class:`AutocastInferer` for ``cpu_bf16=True``, else MONAI's ``SimpleInferer``.

    Raises:
        ValueError: for anything but a boolean (``--cpu_bf16 false`` on a command line is the string
            ``"false"``, which would read as true).
    """
    if not isinstance(cpu_bf16, bool):
        raise ValueError(f"cpu_bf16 must be true or false, found {cpu_bf16!r}")
    return AutocastInferer() if cpu_bf16 else SimpleInferer()


def _plain(x: Any) -> Any:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def trainable_parameters(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters that require gradients, from one or more modules (network, learned loss weights).

    Args:
        modules: modules whose parameters the optimiser should update.

    Returns:
        A de-duplicated list of trainable parameters.
    """
    seen: set[int] = set()
    out = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """The newest full training checkpoint (network, optimiser, trainer state) in a folder.

    Args:
        ckpt_dir: folder the ``CheckpointSaver`` writes to.
        prefix: file name prefix of the interval checkpoints.

    Returns:
        Path of the complete checkpoint with the highest epoch, or None when there is none (fresh start).
        MONAI's ``CheckpointSaver`` writes in place, so a run killed while saving leaves a truncated
        file; torch's zip format writes its central directory last, so such a file is not a complete
        zip archive: it is skipped (with a warning) and the previous epoch's checkpoint is used.
    """
    import zipfile

    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    cands = []
    for p in folder.glob(f"{prefix}*.pt"):
        digits = "".join(ch for ch in p.stem.split("=")[-1] if ch.isdigit())
        cands.append((int(digits) if digits else -1, p.stat().st_mtime, p))
    for _, _, path in sorted(cands, reverse=True):
        if zipfile.is_zipfile(path):
            return str(path)
        logger.warning("checkpoint %s is incomplete (training was stopped while saving it); skipped", path)
    return None


def write_model_config(ckpt_dir: str | os.PathLike, config: dict[str, Any]) -> str:
    """Save the network/task description beside the weights a training run writes.

    Inference reads it back (:func:`medmtl.bundle_config.read_model_config`), so a model trained with
    any preset is rebuilt exactly, whatever the inference config's defaults are.

    Args:
        ckpt_dir: the run's checkpoint folder.
        config: JSON-serialisable description (contrasts, spacing, preset, network kwargs, ...).

    Returns:
        The path written.
    """
    from medmtl.io import write_json

    return str(write_json(Path(ckpt_dir) / "model_config.json", config))


# ----------------------------------------------------------------------------------------------
# CLI: ``medmtl train`` runs the bundle's configs (there is no other training loop).


def stage_config_files(bundle: Path, stage: str, preset: str | None) -> list[str]:
    """Config files composing one training run, in override order.

    Args:
        bundle: bundle folder holding ``configs/``.
        stage: ``plain`` (joint training), one of :data:`STAGES`, :data:`ABLATIONS` or
            :data:`TASK_CONFIGS`.
        preset: ``cpu`` or ``gpu``/None (the base config is the full-resolution GPU setting).

    Returns:
        Paths for ``monai.bundle run --config_file``.
    """
    cfg = bundle / "configs"
    files = [cfg / "train.json"]
    if preset and preset != "gpu":
        files.append(cfg / f"{preset}.json")
    if stage in STAGES or stage in ABLATIONS or stage in TASK_CONFIGS:
        name = f"stage_{stage}.json" if stage in STAGES else f"{stage}.json"
        files.append(cfg / name)
    elif stage != "plain":
        raise ValueError(
            f"unknown stage {stage!r}; expected plain, all, {list(STAGES)}, {list(ABLATIONS)} "
            f"or {list(TASK_CONFIGS)}"
        )
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found in bundle {bundle}")
    return [str(f) for f in files]


def prepare_run_dir(bundle: Path, run_dir: Path) -> None:
    """Make ``run_dir`` a bundle of its own: its configs copied from ``bundle``, models/ to fill.

    Args:
        bundle: source bundle folder.
        run_dir: where training writes; afterwards ``medmtl infer --bundle run_dir`` uses it.
    """
    import shutil

    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() != bundle.resolve():
        shutil.copytree(bundle / "configs", run_dir / "configs", dirs_exist_ok=True)
        for name in ("LICENSE", "data_license.txt"):
            if (bundle / name).is_file():
                shutil.copy2(bundle / name, run_dir / name)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides; values are JSON when they parse as JSON, else strings (never eval'd).

    Args:
        pairs: ``["max_epochs=3", "roi_size=[32,32,32]"]``.

    Returns:
        ``{"max_epochs": 3, "roi_size": [32, 32, 32]}``.
    """
    import json

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def train(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    run_dir: str | os.PathLike,
    stage: str = "all",
    preset: str | None = "cpu",
    bundle: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Train the bundle: the staged schedule (``stage="all"``), one stage, or an ablation.

    Args:
        dataset_dir: root of the datalist's paths.
        datalist: medmtl datalist JSON.
        run_dir: output bundle folder (configs copied there, weights in ``models/``).
        stage: ``all`` (the four stages in order), ``plain`` (joint from scratch) or one stage name.
        preset: ``cpu`` (2 mm, small widths) or ``gpu`` (full resolution).
        bundle: source bundle (the shipped ``bundles/brats_mtl`` by default).
        overrides: config overrides for every stage.

    Returns:
        The run folder.
    """
    from monai.bundle import run

    from medmtl.bundle_config import DEFAULT_BUNDLE

    src = Path(bundle or DEFAULT_BUNDLE).resolve()
    out = Path(run_dir).resolve()
    prepare_run_dir(src, out)
    quiet_engine_logs()
    stages = list(STAGES) if stage == "all" else [stage]
    for st in stages:
        logger.info("medmtl train: stage %s", st)
        resume = (overrides or {}).get("resume", True)
        ckpt = latest_checkpoint(out / "models") if resume and stage != "all" else None
        if ckpt:
            logger.info("medmtl train: resuming from %s", ckpt)
        run(
            config_file=stage_config_files(out, st, preset),
            meta_file=str(out / "configs" / "metadata.json"),
            logging_file=str(out / "configs" / "logging.conf"),
            bundle_root=str(out),
            dataset_dir=str(Path(dataset_dir).resolve()),
            datalist=str(Path(datalist).resolve()),
            **(overrides or {}),
        )
    return out


def weights_dir(
    run_dir: Path, stage: str, preset: str | None, overrides: dict[str, Any] | None = None
) -> Path:
    """The folder a training run writes its weights to: the composed configs' ``ckpt_dir``.

    Args:
        run_dir: the run's bundle folder.
        stage: as for :func:`train` (``all`` ends with the schedule's last stage).
        preset: as for :func:`train`.
        overrides: the run's config overrides (``ckpt_dir`` among them, if given).

    Returns:
        The resolved ``ckpt_dir``.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(stage_config_files(run_dir, STAGES[-1] if stage == "all" else stage, preset))
    parser.update({"bundle_root": str(run_dir)})
    if "ckpt_dir" in (overrides or {}):
        parser.update({"ckpt_dir": overrides["ckpt_dir"]})
    return Path(parser.get_parsed_content("ckpt_dir"))


def cli_main(args: Any) -> int:
    """Run ``medmtl train``."""
    overrides = parse_overrides(args.set)
    if args.epochs:
        overrides["max_epochs"] = args.epochs
    out = train(args.dataset_dir, args.datalist, args.out, args.stage, args.preset, args.bundle, overrides)
    where = weights_dir(out, args.stage, args.preset, overrides) / "model.pt"
    if args.stage == "local_synthesis":
        use = f"; use them with: medmtl inpaint / synth-lesion --bundle {out} ..."
    elif where.parent == out / "models":
        use = f"; use them with: medmtl infer --bundle {out} ..."
    else:  # a stage of the schedule or an ablation: a later stage starts from them (its init_from)
        use = ""
    if not where.is_file():
        ckpt = latest_checkpoint(where.parent)
        if ckpt is None:
            raise FileNotFoundError(f"training wrote no weights in {where.parent}")
        # No validation ran (val_interval above the epochs): the last epoch's weights are the model.
        from medmtl.bundle_config import read_state_dict

        torch.save(dict(read_state_dict(ckpt)["model"]), where)
        print(f"medmtl train: no validation ran, so {where.name} holds the last epoch's weights ({ckpt})")
    print(f"medmtl train: weights in {where}{use}")
    return 0


def stage_network(
    net: torch.nn.Module, device: Any, encoder: bool = True, seg: bool = True, synth: bool = True
) -> torch.nn.Module:
    """Freeze/unfreeze the network's parts for a training stage and move it to ``device``.

    Args:
        net: a :class:`medmtl.networks.MultiTaskUNet`.
        device: torch device.
        encoder: train the shared encoder.
        seg: train the segmentation decoder.
        synth: train the synthesis decoder.

    Returns:
        The same network, on ``device``.
    """
    from medmtl.networks import set_trainable

    set_trainable(net, encoder=encoder, seg=seg, synth=synth)
    return net.to(device)

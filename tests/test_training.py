"""Bundle training: runs, resumes after a kill, staged schedule freezes the encoder, DDP on gloo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medmtl.intensity import check_landmarks
from medmtl.training import (
    AutocastInferer,
    latest_checkpoint,
    parse_overrides,
    stage_config_files,
    train_inferer,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "brats_mtl"

#: Tiny, fast settings on top of the CPU preset: native grid, 32^3 patches, one patch per case.
TINY = {
    "spacing": None,
    "roi_size": [32, 32, 32],
    "val_roi_size": [48, 48, 32],
    "num_samples": 1,
    "val_interval": 1,
    "log_interval": 1,
    "num_workers": 0,
    "network_kwargs": {"features": [4, 8, 16, 32]},
}


def _sets(extra: dict | None = None) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in {**TINY, **(extra or {})}.items()]


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    from data_prep.datalist import prepare
    from data_prep.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("phantoms")
    write_phantoms(root, n=4, shape=(48, 48, 32), layout="brats2023", seed=3)
    prepare(root, root / "datalist.json", folds=4, seed=0)
    return root, root / "datalist.json"


def _train_cmd(data, run_dir, stage, epochs, extra=None) -> list[str]:
    root, datalist = data
    return [
        sys.executable, "-m", "medmtl.cli", "train", "--dataset-dir", str(root), "--datalist", str(datalist),
        "--out", str(run_dir), "--stage", stage, "--preset", "cpu", "--epochs", str(epochs),
        "--set", *_sets(extra),
    ]  # fmt: skip


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout, env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return sd.get("model", sd)


def test_parse_overrides_is_json_not_eval():
    assert parse_overrides(["a=3", "b=[1,2]", "c=hello", "d=null"]) == {
        "a": 3,
        "b": [1, 2],
        "c": "hello",
        "d": None,
    }
    assert parse_overrides(["e=__import__('os')"]) == {"e": "__import__('os')"}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["novalue"])


def test_stage_config_files_compose_in_order():
    files = stage_config_files(BUNDLE, "heads", "cpu")
    assert [Path(f).name for f in files] == ["train.json", "cpu.json", "stage_heads.json"]
    assert [Path(f).name for f in stage_config_files(BUNDLE, "seg_only", "gpu")] == [
        "train.json",
        "seg_only.json",
    ]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_config_files(BUNDLE, "nonsense", "cpu")


def test_train_writes_weights_and_resumes_after_kill(phantom_data, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(phantom_data, run_dir, "plain", 4),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", env=env,
        cwd=REPO, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(run_dir / "models")
        if ckpt and "epoch=2" in ckpt:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed: " + proc.stdout.read()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = int(re.search(r"epoch=(\d+)", latest_checkpoint(run_dir / "models")).group(1))
    assert 2 <= killed_at < 4

    out = _run(_train_cmd(phantom_data, run_dir, "plain", 4))
    log = out.stdout + out.stderr
    # the restored trainer state picks up after the killed epoch; a fresh start would log epoch 1 again.
    assert re.search(rf"Restored all variables from .*epoch={killed_at}\.pt", log), log[-3000:]
    assert f"Epoch: {killed_at + 1}/4, Iter: 1/" in log and "Epoch: 1/4," not in log, log[-3000:]
    models = run_dir / "models"
    assert (models / "model.pt").is_file() and "epoch=4" in latest_checkpoint(models)
    cfg = json.loads((models / "model_config.json").read_text())
    # the default model: every contrast in (with its channel mask), every contrast restored
    four = ["t1n", "t1c", "t2w", "t2f"]
    assert cfg["input_contrasts"] == four and cfg["target_contrasts"] == four and cfg["input_mask"] is True
    # intensity landmarks of every restored contrast, learnt from the training cases, travel with the weights
    check_landmarks(cfg["synth_landmarks"])
    assert set(cfg["synth_landmarks"]) == {"percentiles", *four}
    assert all(np.all(np.diff(cfg["synth_landmarks"][c]) >= 0) for c in four)
    state = torch.load(latest_checkpoint(models), map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 4 * 3  # 4 epochs of 3 training cases, one patch each
    assert (run_dir / "configs" / "inference.json").is_file()  # the run folder is a bundle of its own

    # the model-zoo way to score a trained bundle on its validation fold: train.json + evaluate.json
    root, datalist = phantom_data
    configs = [str(run_dir / "configs" / f) for f in ("train.json", "cpu.json", "evaluate.json")]
    sets = {**TINY, "dataset_dir": str(root), "datalist": str(datalist), "bundle_root": str(run_dir)}
    sets.pop("spacing")  # the evaluation reads the spacing the model was trained with
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(configs)]
    cmd += [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]
    evaluated = _run(cmd)
    saved = (run_dir / "eval" / "metrics.csv").read_text()
    assert "val_mean_dice" in saved and "val_dice_et" in saved, evaluated.stdout[-2000:] + saved
    dice = float(
        next(line for line in saved.splitlines() if line.startswith("val_mean_dice"))
        .replace(",", " ")
        .split()[-1]
    )
    assert 0.0 <= dice <= 1.0


def test_staged_schedule_freezes_encoder_bit_identical(phantom_data, tmp_path):
    run_dir = tmp_path / "staged"
    _run(_train_cmd(phantom_data, run_dir, "all", 1))
    stages = run_dir / "models" / "stages"
    seg, synth, heads = (_state(stages / s / "model.pt") for s in ("pretrain_seg", "pretrain_synth", "heads"))
    joint = _state(run_dir / "models" / "model.pt")
    enc = [k for k in heads if k.startswith("encoder.")]
    assert enc, "no encoder weights in the checkpoint"
    # heads stage: the encoder is bit-identical to what it started from, both heads moved.
    assert all(torch.equal(heads[k], synth[k]) for k in enc)
    assert any(not torch.equal(heads[k], synth[k]) for k in heads if k.startswith("seg_decoder."))
    assert any(not torch.equal(heads[k], synth[k]) for k in heads if k.startswith("synth_decoder."))
    # synthesis pretraining trains the encoder but leaves the seg decoder as stage 1 left it.
    assert any(not torch.equal(synth[k], seg[k]) for k in enc)
    assert all(torch.equal(synth[k], seg[k]) for k in synth if k.startswith("seg_decoder."))
    # the joint stage trains everything again.
    assert any(not torch.equal(joint[k], heads[k]) for k in enc)


def test_bundle_metadata_and_network_io_verify():
    from monai.bundle import verify_metadata, verify_net_in_out

    cfg = BUNDLE / "configs"
    verify_metadata(
        meta_file=str(cfg / "metadata.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json")
    )
    # MONAI checks the output declared as "pred" (the segmentation); the synthesis view is checked below.
    verify_net_in_out(
        net_id="network_seg_view",
        meta_file=str(cfg / "metadata.json"),
        config_file=[str(cfg / "train.json"), str(cfg / "cpu.json")],
        device="cpu",
        p=1,
        n=1,
        any=0,
    )
    from monai.bundle import ConfigParser

    meta = json.loads((cfg / "metadata.json").read_text())["network_data_format"]
    parser = ConfigParser()
    parser.read_config([str(cfg / "train.json"), str(cfg / "cpu.json")])
    synth_view = parser.get_parsed_content("network_synth_view")
    x = torch.randn(1, meta["inputs"]["image"]["num_channels"], *meta["inputs"]["image"]["spatial_shape"])
    with torch.no_grad():
        y = synth_view.eval()(x)
    assert y.shape == (
        1,
        meta["outputs"]["synth"]["num_channels"],
        *meta["outputs"]["synth"]["spatial_shape"],
    )


def test_two_process_gloo_ddp(phantom_data, tmp_path):
    from data_prep.datalist import prepare

    root, _ = phantom_data
    # two folds: each rank gets one validation case (a rank without data cannot validate).
    datalist = tmp_path / "datalist_2folds.json"
    prepare(root, datalist, folds=2, seed=0)
    cfg = BUNDLE / "configs"
    overrides = []
    for k, v in {**TINY, "max_epochs": 1}.items():
        overrides += [f"--{k}", str(v)]  # the bundle CLI (fire) parses Python literals
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
        "-m", "monai.bundle", "run",
        "--config_file", str([str(cfg / f) for f in ("train.json", "cpu.json", "multi_gpu_train.json")]),
        "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"),
        "--bundle_root", str(tmp_path), "--dataset_dir", str(root), "--datalist", str(datalist), *overrides,
    ]  # fmt: skip
    out = _run(cmd, timeout=400)
    assert (tmp_path / "models" / "model.pt").is_file(), out.stdout[-2000:]
    assert "epoch=1" in latest_checkpoint(tmp_path / "models")


@pytest.mark.parametrize(
    "extra",
    [
        {"weighting": "uncertainty"},
        {"weighting": "pcgrad"},
        {
            "drop_contrasts_prob": 0.7,
            "input_contrasts": ["t1n", "t1c", "t2w", "t2f"],
            "target_contrasts": ["t1c"],
        },
        {"cpu_bf16": True},
    ],
    ids=["uncertainty", "pcgrad", "random_missing", "cpu_bf16"],
)
def test_weighting_and_missing_contrast_modes_train(phantom_data, tmp_path, extra):
    run_dir = tmp_path / "run"
    out = _run(_train_cmd(phantom_data, run_dir, "plain", 1, extra))
    log = out.stdout + out.stderr
    assert (run_dir / "models" / "model.pt").is_file(), log[-2000:]
    ckpt = torch.load(latest_checkpoint(run_dir / "models"), map_location="cpu", weights_only=True)
    if extra.get("weighting") == "uncertainty":
        # the learned log-variances are optimised and checkpointed with the network
        learned = [v for k, v in ckpt["loss"].items() if "log" in k]
        assert learned and any(float(v.abs().max()) > 0 for v in learned), ckpt["loss"]
    cfg = json.loads((run_dir / "models" / "model_config.json").read_text())
    # the default drops contrasts at random (input mask on); a config that sets 0 trains without one
    assert cfg["input_mask"] is bool(extra.get("drop_contrasts_prob", 0.7))
    assert "weight_seg" in log and "weight_gen" in log  # each task's loss and weight is logged


def test_autocast_inferer_runs_convolutions_in_bfloat16_and_returns_float32():
    from medmtl.networks import get_network

    torch.manual_seed(0)
    net = get_network("cpu", in_channels=2, synth_channels=1, features=(4, 8, 16, 32))
    x = torch.randn(1, 2, 16, 16, 16)
    seen: list[torch.dtype] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
        for m in net.modules()
        if isinstance(m, torch.nn.Conv3d)
    ]
    out = AutocastInferer("cpu", torch.bfloat16)(x, net)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}
    ref = net(x)
    for key in ("seg", "synth"):
        assert out[key].dtype == torch.float32 and out[key].shape == ref[key].shape
        # bfloat16 keeps about 3 significant digits: close to the float32 pass, not equal to it
        assert torch.allclose(out[key], ref[key], rtol=0.05, atol=0.05)
        assert not torch.equal(out[key], ref[key])
    (out["synth"].sum() + out["seg"].sum()).backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)


def test_train_inferer_takes_only_a_boolean():
    assert isinstance(train_inferer(True), AutocastInferer)
    assert not isinstance(train_inferer(False), AutocastInferer)
    with pytest.raises(ValueError, match="cpu_bf16 must be true or false, found 'false'"):
        train_inferer("false")


def test_latest_checkpoint_skips_a_file_cut_short_by_a_kill(tmp_path):
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "checkpoint_epoch=2.pt")
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "checkpoint_epoch=3.pt")
    whole = (tmp_path / "checkpoint_epoch=3.pt").read_bytes()
    assert latest_checkpoint(tmp_path).endswith("epoch=3.pt")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(whole[: len(whole) // 2])  # killed while saving
    assert latest_checkpoint(tmp_path).endswith("epoch=2.pt")
    torch.load(latest_checkpoint(tmp_path), weights_only=True)


def test_validation_synthesis_scores_use_the_evaluation_definition():
    from medmtl.metrics import synthesis_metrics
    from medmtl.training import BrainSynthesisMetric, SynthOutput

    rng = np.random.default_rng(0)
    target = torch.zeros(2, 2, 16, 16, 16)
    brain = torch.zeros(2, 1, 16, 16, 16)
    brain[:, :, 3:13, 2:14, 4:12] = 1
    target[:] = torch.from_numpy(rng.normal(size=target.shape).astype(np.float32)) * brain
    pred = target + 0.3 * torch.from_numpy(rng.normal(size=target.shape).astype(np.float32)) * brain
    output = {"pred": {"synth": pred}, "label": {"synth": target, "brain_mask": brain}}
    ssim, psnr = BrainSynthesisMetric("SSIM"), BrainSynthesisMetric("PSNR")
    for metric in (ssim, psnr):
        metric(*SynthOutput()(output))
    expected = [
        synthesis_metrics(pred[b, c].numpy(), target[b, c].numpy(), brain[b, 0].numpy() > 0)
        for b in range(2)
        for c in range(2)
    ]
    assert float(ssim.aggregate()) == pytest.approx(np.mean([e["SSIM_brain"] for e in expected]), rel=1e-6)
    assert float(psnr.aggregate()) == pytest.approx(np.mean([e["PSNR_brain"] for e in expected]), rel=1e-6)
    # A perfect synthesis scores SSIM 1 whatever the background holds.
    perfect = BrainSynthesisMetric("SSIM")
    perfect(*SynthOutput()({"pred": {"synth": target + 5 * (1 - brain)}, "label": output["label"]}))
    assert float(perfect.aggregate()) == pytest.approx(1.0)


def test_fresh_runs_are_not_announced_as_resumptions(caplog):
    import logging

    from medmtl.engine_logs import quiet_engine_logs

    quiet_engine_logs()
    quiet_engine_logs()  # idempotent: one filter per logger
    log = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
    assert len(log.filters) == 1
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("Engine run resuming from iteration 0, epoch 0 until 600 epochs")
        log.info("Engine run resuming from iteration 882, epoch 49 until 600 epochs")
        log.info("Epoch[1] Complete. Time taken: 00:00:52")
    assert [r.getMessage()[:30] for r in caplog.records] == [
        "Engine run resuming from itera",
        "Epoch[1] Complete. Time taken:",
    ]
    assert "882" in caplog.records[0].getMessage()


def test_refine_stage_trains_a_full_resolution_head_over_a_frozen_coarse_model(phantom_data, tmp_path):
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    _run(_train_cmd(phantom_data, coarse, "plain", 1))
    root, datalist = phantom_data
    weights = coarse / "models" / "model.pt"
    proc = _run([
        sys.executable, "-m", "medmtl.cli", "train", "--dataset-dir", str(root), "--datalist", str(datalist),
        "--out", str(fine), "--stage", "refine", "--preset", "cpu", "--epochs", "1", "--set",
        "num_workers=0", "val_interval=5", "log_interval=1", f"coarse_weights={json.dumps(str(weights))}",
    ])  # fmt: skip
    # No validation ran in one epoch: the weights written are the last epoch's, and it says so.
    assert "no validation ran" in proc.stdout, proc.stdout[-2000:]
    config = json.loads((fine / "models" / "model_config.json").read_text())
    coarse_config = json.loads((coarse / "models" / "model_config.json").read_text())
    assert config["network_kwargs"] == {
        **coarse_config["network_kwargs"],
        "refinement": config["network_kwargs"]["refinement"],
    }
    assert config["input_contrasts"] == coarse_config["input_contrasts"] and config["stage"] == "refine"
    state, coarse_state = _state(fine / "models" / "model.pt"), _state(weights)
    # The coarse model is frozen: its weights come through bit for bit; the head learnt something.
    assert all(torch.equal(state[f"base.{k}"], v) for k, v in coarse_state.items())
    assert any(k.startswith("head.out") and v.abs().sum() > 0 for k, v in state.items())


def test_unlabelled_studies_train_end_to_end_through_prepare_and_the_bundle(tmp_path):
    from monai.bundle import ConfigParser

    from data_prep.datalist import prepare
    from data_prep.phantoms import write_phantoms

    root = tmp_path / "data"
    cases = write_phantoms(root, n=4, shape=(48, 48, 32), layout="brats2023", seed=3)
    for case in cases[2:]:  # two studies without a label map
        next(Path(case).glob("*-seg.nii.gz")).unlink()
    datalist = root / "datalist.json"
    report = prepare(root, datalist, folds=2, seed=0, unlabelled="train")
    assert (report["training"], report["unlabelled_training"]) == (4, 2)
    run_dir = tmp_path / "run"
    # batch 2 of the two training cases (one labelled, one not): one mixed batch per epoch
    out = _run(_train_cmd((root, datalist), run_dir, "plain", 1, {"batch_size": 2}))
    log = out.stdout + out.stderr
    assert (run_dir / "models" / "model.pt").is_file(), log[-3000:]
    left_out = "1 of 2 training cases in folds [0] of datalist.json have no label and are left out"
    assert left_out in log, log[-3000:]
    assert re.search(r"loss_seg=[0-9.]+.*labelled=0\.5000", log), log[-3000:]  # both kinds in the batch
    assert "val_mean_dice" in log  # validation ran on the labelled case
    state = torch.load(latest_checkpoint(run_dir / "models"), map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 1

    # stages without a synthesis loss train on the labelled cases only: an unlabelled study adds nothing
    def entries(*configs: str) -> list[dict]:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
        parser.update({"datalist": str(datalist), "dataset_dir": str(root)})
        return parser.get_parsed_content("train#datalist_entries")

    assert ["label" in e for e in entries("train.json", "seg_only.json")] == [True]
    assert sorted("label" in e for e in entries("train.json")) == [False, True]


def test_labelled_fraction_fixes_the_share_of_labelled_draws(tmp_path):
    """labelled_fraction draws labelled cases at that rate, however few they are among the studies."""
    from medmtl.datalist import labelled_sampler

    entries = [{"image": f"c{i}", **({"label": f"l{i}"} if i < 2 else {})} for i in range(20)]
    torch.manual_seed(0)
    sampler = labelled_sampler(entries, 0.5)
    drawn = [i for _ in range(200) for i in sampler]
    assert len(list(sampler)) == len(entries)
    share = sum(i < 2 for i in drawn) / len(drawn)
    assert abs(share - 0.5) < 0.03
    assert labelled_sampler(entries, None) is None
    assert sorted(labelled_sampler(entries[:2], 0.5)) == [0, 1]  # all labelled: plain shuffling
    with pytest.raises(ValueError, match="labelled_fraction"):
        labelled_sampler(entries, 1.0)


def test_train_config_takes_labelled_fraction(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["labelled_fraction"] = 0.5
    parser["train#datalist_entries"] = [{"image": "a", "label": "b"}, {"image": "c"}, {"image": "d"}]
    sampler = parser.get_parsed_content("train#dataloader#sampler")
    assert sampler is not None and parser.get_parsed_content("train#dataloader#shuffle") is False
    parser2 = ConfigParser()
    parser2.read_config(str(BUNDLE / "configs" / "train.json"))
    assert parser2.get_parsed_content("train#dataloader#shuffle") is True


def test_train_config_passes_the_ssim_range_to_the_loss():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    assert parser.get_parsed_content("loss").gen_loss.ssim_range == "minmax"
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["ssim_range"] = "percentile"
    assert parser.get_parsed_content("loss").gen_loss.ssim_range == "percentile"


def test_few_labels_fine_tunes_segmentation_from_synthesis_pretraining(phantom_data, tmp_path):
    run_dir = tmp_path / "few"
    _run(_train_cmd(phantom_data, run_dir, "synth_only", 1))
    pretrained = _state(run_dir / "models" / "ablation" / "synth_only" / "model.pt")
    _run(_train_cmd(phantom_data, run_dir, "few_labels", 1))
    tuned = _state(run_dir / "models" / "model.pt")
    config = json.loads((run_dir / "models" / "model_config.json").read_text())
    assert config["stage"] == "few_labels"
    # it starts from the pretrained network: the synthesis decoder (no loss, frozen) comes through bit
    # for bit, while the encoder and the segmentation decoder learn from the labelled cases.
    synth = [k for k in pretrained if k.startswith("synth_decoder.")]
    assert synth and all(torch.equal(tuned[k], pretrained[k]) for k in synth)
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in pretrained if k.startswith("encoder."))
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in pretrained if k.startswith("seg_decoder."))

"""Tests of medmtl.export: TorchScript / ONNX files match PyTorch, and run through the inference config."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_net_with_metadata

from medmtl.bundle_config import read_model_config
from medmtl.commands.export import add_arguments, main
from medmtl.export import (
    OnnxNetwork,
    bundle_network,
    export_bundle,
    inference_overrides,
    load_exported,
)
from medmtl.inference import MultiTaskModel

torch.set_num_threads(1)

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxruntime and onnxscript are not installed")
TOL = 1e-4


def eager_outputs(bundle: Path, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    net, _, _ = bundle_network(bundle)
    with torch.no_grad():
        return net(x, mask)


def assert_outputs_close(found: dict, expected: dict) -> None:
    assert set(found) == {"seg", "synth"}
    for key in ("seg", "synth"):
        assert found[key].shape == expected[key].shape, key
        torch.testing.assert_close(found[key], expected[key], rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def torchscript_file(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(tiny_bundle, "torchscript", out=tmp_path_factory.mktemp("ts") / "model.ts").path


@pytest.fixture(scope="module")
def onnx_file(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_ONNX:
        pytest.skip("onnx, onnxruntime and onnxscript are not installed")
    return export_bundle(tiny_bundle, "onnx", out=tmp_path_factory.mktemp("onnx") / "model.onnx").path


def test_torchscript_matches_pytorch_at_any_size(tiny_bundle, torchscript_file):
    # scripting keeps the network's padding and cropping: an odd size and a batch of two both work
    x = torch.randn(2, 3, 20, 33, 17, generator=torch.Generator().manual_seed(1))
    module = load_exported(torchscript_file)
    with torch.no_grad():
        found = module(x)
    assert_outputs_close(found, eager_outputs(tiny_bundle, x))
    assert found["seg"].shape == (2, 3, 20, 33, 17) and found["synth"].shape == (2, 1, 20, 33, 17)


def test_torchscript_embeds_bundle_metadata_and_model_config(tiny_bundle, torchscript_file):
    _, meta, extra = load_net_with_metadata(
        str(torchscript_file), more_extra_files=("model_config.json", "export.json")
    )
    bundle_meta = json.loads((tiny_bundle / "configs" / "metadata.json").read_text())
    assert meta["name"] == bundle_meta["name"] and meta["version"] == bundle_meta["version"]
    assert json.loads(extra["model_config.json"]) == read_model_config(
        tiny_bundle / "models" / "model_config.json"
    )
    info = json.loads(extra["export.json"])
    assert info["outputs"] == ["seg", "synth"] and info["inputs"] == ["image"]
    assert (info["in_channels"], info["seg_channels"], info["synth_channels"]) == (3, 3, 1)


@needs_onnx
@pytest.mark.parametrize(("batch", "size"), [(1, (16, 16, 16)), (2, (32, 16, 48))])
def test_onnx_matches_pytorch(tiny_bundle, onnx_file, batch, size):
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        found = OnnxNetwork(onnx_file)(x)
    assert_outputs_close(found, eager_outputs(tiny_bundle, x))


@needs_onnx
def test_onnx_names_and_refuses_sizes_it_cannot_take(onnx_file):
    import onnx

    model = onnx.load(str(onnx_file))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["seg", "synth"]
    assert not list(onnx_file.parent.glob("*.data")), "weights must be inside the one .onnx file"
    with pytest.raises(ValueError, match="multiples of 8"):
        OnnxNetwork(onnx_file)(torch.zeros(1, 3, 20, 16, 16))


def test_masked_network_exports_with_its_channel_mask(masked_bundle, tmp_path):
    out = export_bundle(masked_bundle, "torchscript", out=tmp_path / "m.ts").path
    x = torch.randn(2, 3, 16, 24, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    with torch.no_grad():
        found = load_exported(out)(x, mask)
    expected = eager_outputs(masked_bundle, x, mask)
    assert_outputs_close(found, expected)
    # the mask matters: with all contrasts present the outputs differ
    assert not torch.allclose(expected["seg"], eager_outputs(masked_bundle, x)["seg"])


@needs_onnx
def test_masked_network_onnx_takes_the_mask_as_second_input(masked_bundle, tmp_path):
    out = export_bundle(masked_bundle, "onnx", out=tmp_path / "m.onnx").path
    x = torch.randn(2, 3, 16, 16, 24, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # one mask row for the whole batch, as the inferer passes it
    network = OnnxNetwork(out)
    with torch.no_grad():
        found = network(x, mask)
    assert_outputs_close(found, eager_outputs(masked_bundle, x, mask))
    with pytest.raises(ValueError, match="one channel mask for the whole batch"):
        network(x, torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))


def test_single_branch_export_and_its_refusal_for_inference(tiny_bundle, tmp_path):
    result = export_bundle(tiny_bundle, "torchscript", out=tmp_path / "seg.ts", branch="seg")
    assert result.outputs == ("seg",)
    x = torch.randn(1, 3, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    module = torch.jit.load(str(result.path))
    with torch.no_grad():
        seg = module(x)
    torch.testing.assert_close(seg, eager_outputs(tiny_bundle, x)["seg"], rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="two-output network"):
        load_exported(result.path)


def test_exported_file_from_another_model_config_is_refused(tiny_bundle, torchscript_file):
    config = read_model_config(tiny_bundle / "models" / "model_config.json")
    with pytest.raises(ValueError, match=r"spacing: file \[2.0, 2.0, 2.0\], bundle \[1.0, 1.0, 1.0\]"):
        load_exported(torchscript_file, model_config={**config, "spacing": [1.0, 1.0, 1.0]})
    assert load_exported(torchscript_file, model_config=config) is not None


def test_inference_runs_the_exported_torchscript(tiny_bundle, torchscript_file, write_phantom_case, tmp_path):
    case = write_phantom_case(tmp_path / "cases", 7)
    eager = MultiTaskModel(tiny_bundle, device="cpu").predict(case)
    exported = MultiTaskModel(tiny_bundle, device="cpu", **inference_overrides(torchscript_file))
    assert isinstance(exported.network, torch.jit.ScriptModule)
    pred = exported.predict(case)
    np.testing.assert_allclose(pred.probabilities, eager.probabilities, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(pred.synth["t1c"], eager.synth["t1c"], rtol=TOL, atol=TOL)
    assert np.array_equal(pred.affine, eager.affine)
    assert pred.seg.shape == eager.seg.shape
    # labels can flip only where a probability sits within the tolerance of the threshold
    near = (np.abs(eager.probabilities - 0.5) < TOL).any(axis=0)
    assert np.array_equal(pred.seg[~near], eager.seg[~near])


def test_bundle_run_writes_the_same_files_from_the_exported_network(
    tiny_bundle, torchscript_file, write_phantom_case, tmp_path
):
    # the path of `medmtl infer`: monai.bundle.run on configs/inference.json with overrides
    from monai.bundle import run

    from medmtl.inference import case_entry

    case = write_phantom_case(tmp_path / "cases", 8)
    outputs = {}
    for name, extra in (("eager", {}), ("exported", inference_overrides(torchscript_file))):
        run(
            config_file=str(tiny_bundle / "configs" / "inference.json"),
            meta_file=str(tiny_bundle / "configs" / "metadata.json"),
            bundle_root=str(tiny_bundle),
            cases=[case_entry(case)],
            output_dir=str(tmp_path / name),
            device="$torch.device('cpu')",
            num_workers=0,
            **extra,
        )
        outputs[name] = sorted((tmp_path / name).glob("*.nii.gz"))
    assert [p.name for p in outputs["eager"]] == [p.name for p in outputs["exported"]] and outputs["eager"]
    for a, b in zip(outputs["eager"], outputs["exported"]):
        img_a, img_b = nib.load(a), nib.load(b)
        np.testing.assert_allclose(img_b.affine, img_a.affine)
        np.testing.assert_allclose(np.asanyarray(img_b.dataobj), np.asanyarray(img_a.dataobj), atol=TOL)


@needs_onnx
def test_inference_runs_the_exported_onnx(tiny_bundle, onnx_file, write_phantom_case, tmp_path):
    case = write_phantom_case(tmp_path / "cases", 9)
    eager = MultiTaskModel(tiny_bundle, device="cpu").predict(case)
    pred = MultiTaskModel(tiny_bundle, device="cpu", **inference_overrides(onnx_file)).predict(case)
    np.testing.assert_allclose(pred.probabilities, eager.probabilities, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(pred.synth["t1c"], eager.synth["t1c"], rtol=TOL, atol=TOL)


def parse_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_writes_into_the_bundle_and_refuses_to_overwrite(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    assert main(parse_cli("--bundle", str(bundle), "--format", "torchscript")) == 0
    written = bundle / "models" / "model.ts"
    assert written.is_file() and "max |difference| to PyTorch" in capsys.readouterr().out
    before = written.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="model.ts exists"):
        main(parse_cli("--bundle", str(bundle), "--format", "torchscript"))
    assert written.stat().st_mtime_ns == before
    assert main(parse_cli("--bundle", str(bundle), "--format", "torchscript", "--overwrite")) == 0


def test_failed_write_leaves_no_file(tiny_bundle, tmp_path, monkeypatch):
    import monai.data

    def failing_save(jit_obj, filename, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(monai.data, "save_net_with_metadata", failing_save)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError, match="disk full"):
        export_bundle(tiny_bundle, "torchscript", out=out / "m.ts")
    assert list(out.iterdir()) == []


def test_bundle_without_weights_is_a_clear_error(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.pt not found"):
        export_bundle(bundle, "torchscript", out=tmp_path / "m.ts")
    with pytest.raises(ValueError, match="unknown export format"):
        export_bundle(tiny_bundle, "tensorrt", out=tmp_path / "m.trt")

"""A non-editable install carries the shipped bundle: `medmtl infer` works with no source checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILES = [
    "configs/inference.json",
    "configs/train.json",
    "configs/metadata.json",
    "configs/logging.conf",
    "models/model.pt",
    "models/model_config.json",
    "docs/model_card.md",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (without dependencies) into a plain folder."""
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("needs the source tree")
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp),
            str(REPO),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-300:]}")
    wheel = next(tmp.glob("medmtl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in BUNDLE_FILES:
        assert f"medmtl/bundles/brats_mtl/{f}" in names, f
    target = tmp / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    return target


def run_installed(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m medmtl.cli ARGS`` with only the installed package on the path, run in ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "medmtl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )


def test_installed_package_infers_with_its_own_bundle(installed, phantom_cases, tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed), OMP_NUM_THREADS="1")
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import medmtl, medmtl.inference as i; print(medmtl.__file__); print(i.DEFAULT_BUNDLE)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    ).stdout.split()
    assert Path(where[0]).is_relative_to(installed), where  # the installed copy, not the checkout
    assert (
        Path(where[1]).is_relative_to(installed) and (Path(where[1]) / "configs" / "inference.json").is_file()
    )
    case = phantom_cases["brats2023"]
    out = tmp_path / "pred"
    run = run_installed(installed, tmp_path, "infer", str(case), "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    sidecar = json.loads((out / f"{case.name}.json").read_text())
    assert sidecar["weights"] == "model.pt" and (out / f"{case.name}_seg.nii.gz").is_file()


def test_every_package_of_the_source_tree_is_listed_for_installation() -> None:
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("medmtl", "data_prep")
        for init in (REPO / top).rglob("__init__.py")
    }
    assert found <= listed, f"packages a wheel would leave out: {sorted(found - listed)}"


def test_every_submodule_is_reachable_from_bundle_configs() -> None:
    """Bundle configs only ``$import medmtl``: each submodule must load through ``medmtl.<name>``."""
    import medmtl

    names = {p.stem for p in (REPO / "medmtl").glob("*.py") if p.stem not in {"__init__", "cli"}}
    names |= {p.parent.name for p in (REPO / "medmtl").glob("*/__init__.py")}
    missing = sorted(n for n in names if not hasattr(medmtl, n))
    assert not missing, f"medmtl.<name> fails for {missing}: add them to medmtl._SUBMODULES"


def test_installed_package_inpaints_with_its_shipped_local_weights(
    installed, phantom_cases, tmp_path
) -> None:
    """`medmtl inpaint` finds the shipped local-synthesis weights in an installed package, run elsewhere."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    case = phantom_cases["brats2023"]
    t1n = nib.load(str(next(case.glob("*-t1n.nii.gz"))))
    label = np.asanyarray(nib.load(str(next(case.glob("*-seg.nii.gz")))).dataobj) > 0
    healthy = ndimage.binary_erosion(np.asanyarray(t1n.dataobj) != 0, iterations=2)
    healthy &= ~ndimage.binary_dilation(label, iterations=3)
    centre = np.argwhere(healthy)[len(np.argwhere(healthy)) // 2]
    mask = np.zeros(healthy.shape, np.uint8)
    mask[tuple(slice(max(0, i - 1), i + 2) for i in centre)] = 1
    mask &= healthy.astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, t1n.affine), str(tmp_path / "mask.nii.gz"))
    out = tmp_path / "inpainted"
    run = run_installed(installed, tmp_path, "inpaint", str(case), "--mask", "mask.nii.gz", "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    sidecar = json.loads((out / f"{case.name}_inpaint.json").read_text())
    assert Path(sidecar["model"]).is_relative_to(installed), sidecar["model"]


def _imports(path: Path) -> list[str]:
    """Modules a source file imports (``medmtl:NAME`` for ``from medmtl import NAME``)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"medmtl:{a.name}" for a in node.names] if node.module == "medmtl" else [node.module]
    return found


def test_dependencies_run_one_way() -> None:
    """No library module imports the CLI or the package's face; inference does not import export;
    networks know tensors, not files (no bundle, io or data module); data_prep uses only medmtl's
    leaf tables."""
    leaf_tables = {"medmtl.contrasts", "medmtl.labels", "medmtl.io"}
    wrong = []
    for path in sorted((REPO / "medmtl").rglob("*.py")) + sorted((REPO / "data_prep").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in ("medmtl/__init__.py", "medmtl/cli.py") or rel.startswith("medmtl/commands/"):
            continue
        for mod in _imports(path):
            if mod == "medmtl" or mod.startswith("medmtl:"):
                wrong.append(f"{rel}: the package's __init__ ({mod})")
            elif mod == "medmtl.cli" or mod.startswith("medmtl.commands"):
                wrong.append(f"{rel}: the command line ({mod})")
            elif rel.startswith("medmtl/inference/") and mod.startswith("medmtl.export"):
                wrong.append(f"{rel}: export (export builds on inference)")
            elif (
                rel.startswith("medmtl/networks/")
                and mod.startswith("medmtl")
                and not mod.startswith("medmtl.networks")
            ):
                wrong.append(f"{rel}: {mod} (networks import only medmtl.networks)")
            elif rel.startswith("data_prep/") and mod.startswith("medmtl") and mod not in leaf_tables:
                wrong.append(f"{rel}: {mod} (data_prep uses only {sorted(leaf_tables)})")
    assert not wrong, wrong

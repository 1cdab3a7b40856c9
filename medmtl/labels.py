"""BraTS label conventions and the label <-> region conversions.

Label maps come in three conventions:

* ``brats2021`` (BraTS 2018-2021, UPENN-GBM): 1 necrotic / non-enhancing core (NETC),
  2 peritumoral oedema (SNFH), 4 enhancing tumour (ET);
* ``brats2023`` (BraTS 2023 and later): the same with ET = 3;
* ``msd`` (Medical Segmentation Decathlon Task01): 1 oedema, 2 non-enhancing tumour, 3 enhancing.

Networks work on the nested BraTS regions in the channel order (TC, WT, ET), as MONAI's
:class:`~monai.transforms.ConvertToMultiChannelBasedOnBratsClasses` produces them:
TC = NETC + ET, WT = NETC + SNFH + ET, ET.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, MapLabelValue, MapTransform

from medmtl.conventions import (  # noqa: F401 - re-exported
    COLOURS,
    CONVENTIONS,
    OUTPUT_CONVENTIONS,
    REGIONS,
    writable_convention,
)


def check_convention(convention: str) -> str:
    """Validate a convention name.

    Args:
        convention: one of :data:`CONVENTIONS`.

    Returns:
        The name, unchanged.

    Raises:
        ValueError: for an unknown name.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown label convention {convention!r}; expected one of {list(CONVENTIONS)}")
    return convention


def allowed_values(convention: str) -> set[int]:
    """Label values (background included) that a label map in ``convention`` may hold."""
    return {0, *CONVENTIONS[check_convention(convention)].values()}


def detect_convention(values: Iterable[int], default: str | None = None) -> str | None:
    """Decide a label convention from the set of values found in a label map.

    The enhancing-tumour value is the only difference between BraTS 2018-21 (4) and 2023+ (3). A map
    with neither (no enhancing tumour) cannot tell, and the ``default`` (usually the layout's
    convention) is returned. MSD cannot be told from BraTS 2023 by values; it is declared by layout.

    Args:
        values: the distinct values of a label map.
        default: what to return when the values do not decide it.

    Returns:
        ``"brats2021"``, ``"brats2023"`` or ``default``.

    Raises:
        ValueError: when the values fit no convention (e.g. both 3 and 4, 5, or a non-integer like 2.5).
    """
    raw = {float(v) for v in values}
    fractional = sorted(v for v in raw if not v.is_integer())
    if fractional:
        raise ValueError(f"label values {fractional[:5]} are not integers; a label map holds integer labels")
    vals = {int(v) for v in raw}
    unknown = vals - {0, 1, 2, 3, 4}
    if unknown or {3, 4} <= vals:
        raise ValueError(
            f"label values {sorted(vals)} fit no BraTS convention "
            "(expected {0,1,2,4} for BraTS 2018-2021 or {0,1,2,3} for BraTS 2023+)"
        )
    if 4 in vals:
        return "brats2021"
    if 3 in vals:
        return "brats2023"
    return default


def resolve_convention(values: Iterable[int], declared: str | None = None, default: str = "brats2023") -> str:
    """The label convention of one label map: the declared one, else the one its values show.

    A map without enhancing tumour gives the same regions in every convention, so ``default`` only
    decides the name such a map is reported in.

    Args:
        values: the distinct values of the label map.
        declared: the convention its dataset declares (a datalist's ``label_convention``), if any.
        default: the convention when nothing is declared and the values do not tell.

    Returns:
        A convention name of :data:`CONVENTIONS`.

    Raises:
        ValueError: for an unknown declared name, or values that do not fit the convention.
    """
    values = list(values)
    # Detection also refuses what fits no convention at all (fractions, 5, both 3 and 4).
    found = detect_convention(values, default=None)
    conv = check_convention(declared) if declared else found or check_convention(default)
    vals = {int(float(v)) for v in values}
    if not vals <= allowed_values(conv):
        raise ValueError(
            f"label values {sorted(vals)} do not fit the convention {conv} "
            f"(expected a subset of {sorted(allowed_values(conv))})"
        )
    return conv


def _to_brats2021(label: Any, convention: str) -> Any:
    src = CONVENTIONS[check_convention(convention)]
    dst = CONVENTIONS["brats2021"]
    if src == dst:
        return label
    names = list(src)
    return MapLabelValue(orig_labels=[src[n] for n in names], target_labels=[dst[n] for n in names])(label)


def check_label_values(label: Any, convention: str) -> None:
    """Refuse a label map holding values outside its convention.

    Such values would be dropped or counted as the wrong class by :func:`label_to_regions` (e.g. a
    BraTS 2023 map, ET = 3, declared BraTS 2018-21 loses its enhancing tumour).

    Args:
        label: label map, numpy or torch.
        convention: the convention it is declared in.

    Raises:
        ValueError: naming the stray values and the values allowed.
    """
    allowed = sorted(allowed_values(convention))
    if isinstance(label, torch.Tensor):
        outside = label[~torch.isin(label, torch.tensor(allowed, dtype=label.dtype, device=label.device))]
        stray = sorted({float(v) for v in torch.unique(outside).tolist()})
    else:
        arr = np.asarray(label)
        stray = sorted({float(v) for v in np.unique(arr[~np.isin(arr, allowed)]).tolist()})
    if stray:
        raise ValueError(
            f"label values {stray} do not belong to the {convention} convention "
            f"(expected a subset of {allowed})"
        )


def label_to_regions(label: Any, convention: str, strict: bool = False) -> Any:
    """Turn a label map into the nested region masks (TC, WT, ET).

    Args:
        label: label map, shape (H, W, D) or (1, H, W, D), numpy or torch.
        convention: the label convention of ``label``.
        strict: refuse values outside ``convention`` (see :func:`check_label_values`); otherwise
            they belong to no region, except a 4 in a BraTS 2023 / MSD map, which counts as ET.

    Returns:
        Boolean masks of shape (3, H, W, D) in the order of :data:`REGIONS`.

    Raises:
        ValueError: with ``strict``, when the map holds values outside ``convention``.
    """
    if strict:
        check_label_values(label, convention)
    return ConvertToMultiChannelBasedOnBratsClasses(et_label=4)(_to_brats2021(label, convention))


def regions_to_label(regions: Any, convention: str, dtype: Any = None) -> Any:
    """Turn region masks (TC, WT, ET) back into a label map.

    Regions are applied from the outside in (WT -> SNFH, TC -> NETC, ET), so predictions that are
    not perfectly nested still give a valid BraTS map in which ET wins over TC over WT.

    Args:
        regions: binary masks, shape (3, H, W, D), channel order :data:`REGIONS`.
        convention: the output convention (``brats2021`` or ``brats2023``; ``msd`` is accepted too).
        dtype: output dtype; uint8 by default.

    Returns:
        A label map of shape (1, H, W, D), the same array type as ``regions``.
    """
    if regions.shape[0] != len(REGIONS):
        raise ValueError(
            f"expected {len(REGIONS)} region channels {REGIONS}, got shape {tuple(regions.shape)}"
        )
    values = CONVENTIONS[check_convention(convention)]
    tc, wt, et = (regions[i] > 0.5 for i in range(3))
    if isinstance(regions, torch.Tensor):
        out = torch.zeros(regions.shape[1:], dtype=dtype or torch.uint8, device=regions.device)
    else:
        out = np.zeros(regions.shape[1:], dtype=dtype or np.uint8)
    out[wt] = values["SNFH"]
    out[tc] = values["NETC"]
    out[et] = values["ET"]
    return out[None]


def convert_convention(label: Any, source: str, target: str) -> Any:
    """Re-express a label map from one convention in another (e.g. MSD -> BraTS 2023).

    Args:
        label: label map of any shape.
        source: its convention.
        target: the wanted convention.

    Returns:
        The relabelled map (same shape and array type).
    """
    src, dst = CONVENTIONS[check_convention(source)], CONVENTIONS[check_convention(target)]
    if src == dst:
        return label
    names = list(src)
    return MapLabelValue(orig_labels=[src[n] for n in names], target_labels=[dst[n] for n in names])(label)


class _ConventionMixin:
    def _convention(self, d: Mapping[Hashable, Any]) -> str:
        conv = d.get(self.convention_key) if self.convention_key else None
        conv = conv or self.convention
        if conv is None:
            raise ValueError(
                f"no label convention: set `convention` or give the data key {self.convention_key!r}"
            )
        return str(conv)


class LabelToRegionsd(MapTransform, _ConventionMixin):
    """Dictionary transform: BraTS label map -> (TC, WT, ET) region channels.

    The convention is read per case from ``data[convention_key]`` (the pipelines copy a datalist's
    ``label_convention`` there, because MONAI's spatial transforms treat keys named ``label_*`` as
    meta dictionaries), falling back to ``convention``. Uses MONAI's
    ``ConvertToMultiChannelBasedOnBratsClasses``. A value outside the convention is an error, so a
    wrongly declared convention cannot silently drop or mislabel a tumour class.

    Args:
        keys: keys of the label maps.
        convention: default convention when the data carry none.
        convention_key: data key holding the per-case convention.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | None = None,
        convention_key: str | None = "convention",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = check_convention(convention) if convention else None
        self.convention_key = convention_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        conv = self._convention(d)
        for key in self.key_iterator(d):
            regions = label_to_regions(d[key], conv, strict=True)
            d[key] = regions.float() if isinstance(regions, torch.Tensor) else regions.astype(np.float32)
            if hasattr(data[key], "meta") and hasattr(d[key], "meta"):
                d[key].meta = data[key].meta  # keep affine and filename for inversion / saving
        return d


class RegionsToLabeld(MapTransform, _ConventionMixin):
    """Dictionary transform: (TC, WT, ET) region masks or probabilities -> BraTS label map.

    Args:
        keys: keys of the region tensors (3 channels, thresholded at 0.5).
        convention: output convention when the data carry none.
        convention_key: data key with the per-case convention (outputs follow the input's convention).
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        convention: str | None = "brats2023",
        convention_key: str | None = "convention",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.convention = check_convention(convention) if convention else None
        self.convention_key = convention_key

    def _convention(self, d: Mapping[Hashable, Any]) -> str:
        return writable_convention(super()._convention(d))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        conv = self._convention(d)
        for key in self.key_iterator(d):
            out = regions_to_label(d[key], conv)
            if hasattr(d[key], "meta"):
                from monai.data import MetaTensor

                out = MetaTensor(out, meta=d[key].meta)
            d[key] = out
        return d


def region_voxel_counts(regions: Any) -> dict[str, int]:
    """Voxel count of each region in a (3, ...) region tensor, keyed by :data:`REGIONS`."""
    return {name: int((regions[i] > 0.5).sum()) for i, name in enumerate(REGIONS)}


def label_voxel_counts(label: Any, convention: str) -> dict[str, int]:
    """Voxel count of each tissue class (NETC, SNFH, ET) in a label map."""
    arr = np.asarray(label)
    return {name: int((arr == v).sum()) for name, v in CONVENTIONS[check_convention(convention)].items()}


__all__: Sequence[str] = (
    "REGIONS",
    "CONVENTIONS",
    "OUTPUT_CONVENTIONS",
    "COLOURS",
    "check_convention",
    "allowed_values",
    "detect_convention",
    "resolve_convention",
    "check_label_values",
    "label_to_regions",
    "regions_to_label",
    "convert_convention",
    "LabelToRegionsd",
    "RegionsToLabeld",
    "region_voxel_counts",
    "label_voxel_counts",
)

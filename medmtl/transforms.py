"""MONAI dictionary transforms and the train / validation / inference pipelines of medmtl.

Data flow of one case (keys as in DESIGN.md)::

    datalist entry {"image": [t1n, t1c, t2w, t2f] | 4D file, "contrasts": [...], "label", "label_convention"}
      -> LoadImaged + EnsureChannelFirstd          image (C, H, W, D), label (1, H, W, D)
      -> (inference) BrainMaskd                    "source_brain_mask" in the scan's own voxels
      -> ReorderContrastsd                         image in canonical order t1n, t1c, t2w, t2f; "available"
      -> Orientationd(RAS) + Spacingd              (bilinear images, nearest labels)
      -> BrainMaskd                                "brain_mask": voxels where any contrast is non-zero
      -> LabelToRegionsd                           label -> (TC, WT, ET)
      -> NormalizeIntensityd(nonzero, channel-wise) z-score inside the brain, 0 outside
      -> (train) LabelPresenced                    "has_label"; an empty label for an unlabelled study
      -> CropForegroundd                           crop to the brain
      -> SplitTaskd                                "image" = input contrasts, "synth_target" = targets,
                                                   "channel_mask" = which inputs are real
      -> (train) RandCropByPosNegLabeld, flips, intensity jitter on the inputs, RandDropContrastsd
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    CopyItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    MaskIntensityd,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    Spacingd,
    SpatialPadd,
)

from medmtl.contrasts import CONTRASTS, canonical_list
from medmtl.labels import REGIONS, LabelToRegionsd
from medmtl.lesion_augment import RandSyntheticLesiond

#: The default task: synthesise T1 post-contrast from the non-contrast scans, and segment.
DEFAULT_INPUTS: tuple[str, ...] = ("t1n", "t2w", "t2f")
DEFAULT_TARGETS: tuple[str, ...] = ("t1c",)


class LoadImagesd(LoadImaged):
    """MONAI's ``LoadImaged`` that also takes images already in memory.

    A value that is a tensor (one image, channel first) or a list of 3D tensors (one per contrast,
    stacked as channels as ``LoadImage`` stacks a list of files) is kept as it is, with the affine of
    its ``MetaTensor``; file names are read by MONAI. Arrays reach the inference pipeline this way,
    with nothing written to temporary files.

    Args:
        keys: keys to load.
        allow_missing_keys: don't raise for absent keys.
        kwargs: passed to :class:`monai.transforms.LoadImaged`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys=True, **kwargs)
        self.strict = not allow_missing_keys

    @staticmethod
    def _in_memory(value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return True
        listed = isinstance(value, (list, tuple)) and bool(value)
        return listed and all(isinstance(v, torch.Tensor) for v in value)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        if self.strict:
            missing = [k for k in self.keys if k not in d]
            if missing:
                raise KeyError(f"keys {missing} are not in the data")
        held = {k: d.pop(k) for k in list(self.keys) if k in d and self._in_memory(d[k])}
        if any(k in d for k in self.keys):
            try:
                d = dict(super().__call__(d, reader))
            except Exception as err:  # noqa: BLE001 - named below by file, or raised as it was
                raise self._read_error(d, err) from err
        for key, value in held.items():
            if isinstance(value, (list, tuple)):
                first = value[0]
                plain = [v.as_tensor() if isinstance(v, MetaTensor) else v for v in value]
                value = MetaTensor(torch.stack(plain), meta=dict(getattr(first, "meta", {})))
                value.meta["original_channel_dim"] = 0
            d[key] = value
        for key in self.key_iterator(d):
            source = held.get(key, data.get(key))
            names = (
                [getattr(v, "meta", {}).get("filename_or_obj", v) for v in source]
                if isinstance(source, (list, tuple))
                else [getattr(source, "meta", {}).get("filename_or_obj", source)]
            )
            _check_finite(d[key], [str(n) for n in names])
        return d

    def _read_error(self, data: Mapping[Hashable, Any], err: Exception) -> Exception:
        """The file that could not be read, named, for a damaged file; ``err`` itself otherwise."""
        import nibabel as nib

        for key in self.keys:
            value = data.get(key)
            for f in value if isinstance(value, (list, tuple)) else [value]:
                if not isinstance(f, str) or not f:
                    continue
                try:
                    np.asanyarray(nib.load(f).dataobj)
                except Exception as cause:  # noqa: BLE001 - every way a damaged file fails to read
                    return ValueError(
                        f"{f}: cannot read the voxel data, the file is truncated or corrupt "
                        f"({type(cause).__name__}: {cause})"
                    )
        return err


def _check_finite(image: Any, names: Sequence[str]) -> None:
    """Raise, naming the file, when a loaded image holds NaN or infinite voxels.

    Args:
        image: the loaded image; channels first when it was stacked from several files.
        names: the file (or in-memory image) behind each channel; one name for a single file.
    """
    t = torch.as_tensor(image)
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return
    channels = t if len(names) > 1 else t[None]
    for i, channel in enumerate(channels):
        bad = int(channel.numel() - torch.isfinite(channel).sum())
        if bad:
            name = names[i] if i < len(names) else names[0]
            raise ValueError(f"{name}: {bad} voxels are NaN or infinite (expected finite intensities)")


class ReorderContrastsd(MapTransform):
    """Put the channels of a multi-contrast image into canonical order (t1n, t1c, t2w, t2f).

    The channel order of the loaded image is read per case from ``data[contrasts_key]`` (MSD stores
    FLAIR, T1w, T1gd, T2w in one 4D file; a case with missing contrasts holds fewer channels).
    Missing contrasts become zero channels and ``data[available_key]`` records which are real. A
    channel that is constant (all zeros, say) carries no image: it counts as missing, is zero-filled,
    and its name is listed under ``data["unusable"]``.

    Args:
        keys: image keys to reorder.
        contrasts_key: data key with the loaded channel order; canonical order when absent.
        available_key: output key for the (4,) float availability vector.
        allow_missing: if False, a case lacking a contrast raises an error naming the case.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        contrasts_key: str = "contrasts",
        available_key: str = "available",
        allow_missing: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.contrasts_key = contrasts_key
        self.available_key = available_key
        self.allow_missing = allow_missing

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        order = canonical_list(d.get(self.contrasts_key) or CONTRASTS)
        missing = [c for c in CONTRASTS if c not in order]
        if missing and not self.allow_missing:
            raise ValueError(f"case {d.get('case_id', '?')}: missing contrasts {missing}")
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(order):
                raise ValueError(
                    f"case {d.get('case_id', '?')}: image has {img.shape[0]} channels but its "
                    f"contrast list {order} names {len(order)}"
                )
            present = [c for c in order if not _constant(img[order.index(c)])]
            unusable = [c for c in order if c not in present]
            # a string, not a list, so that batches of cases collate
            d["unusable"] = ",".join(unusable)
            if unusable:
                if not self.allow_missing:
                    raise ValueError(
                        f"case {d.get('case_id', '?')}: contrast(s) {unusable} are constant images "
                        "(empty or blank); expected real images"
                    )
            if order == list(CONTRASTS) and not unusable:
                continue
            channels = [
                img[order.index(c)] if c in present else torch.zeros_like(torch.as_tensor(img[0]))
                for c in CONTRASTS
            ]
            out = torch.stack([torch.as_tensor(c) for c in channels])
            d[key] = MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
            order = present
        d.setdefault("unusable", "")
        d[self.available_key] = torch.tensor([float(c in order) for c in CONTRASTS])
        d[self.contrasts_key] = list(CONTRASTS)
        return d


def _constant(channel: Any) -> bool:
    # A blank or constant channel is no image: its z-score is undefined and its "brain" is everything.
    t = torch.as_tensor(channel)
    return bool(t.numel() == 0 or t.max() == t.min())


class BrainMaskd(MapTransform):
    """Brain mask of a skull-stripped scan: voxels where any contrast is non-zero.

    BraTS images are skull-stripped with exact zeros outside the brain, which is also what
    ``NormalizeIntensityd(nonzero=True)`` relies on.

    Args:
        keys: image key(s) the mask is computed from (the first present one is used).
        mask_key: output key (1, H, W, D) float.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self, keys: KeysCollection = "image", mask_key: str = "brain_mask", allow_missing_keys=False
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if isinstance(img, torch.Tensor):
                mask = (img != 0).any(dim=0, keepdim=True).float()
                d[self.mask_key] = MetaTensor(mask, meta=img.meta) if isinstance(img, MetaTensor) else mask
            else:
                d[self.mask_key] = np.any(np.asarray(img) != 0, axis=0, keepdims=True).astype(np.float32)
            break
        return d


class SplitTaskd(MapTransform):
    """Split the canonical 4-channel image into network inputs and synthesis targets.

    Args:
        keys: the canonical image key (``image``); replaced by the input channels.
        inputs: contrasts fed to the network, in this order.
        targets: contrasts the synthesis branch predicts (``synth_target``); empty for seg-only.
        target_key: output key of the targets.
        mask_key: output key of the (len(inputs),) channel mask: 1 where the input contrast is real.
        available_key: key of the availability vector written by :class:`ReorderContrastsd`.
        require_inputs: raise an error naming the case when an input contrast is missing (for models
            that cannot be told which inputs are absent); otherwise it stays zero and is flagged.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        inputs: Sequence[str] = DEFAULT_INPUTS,
        targets: Sequence[str] = DEFAULT_TARGETS,
        target_key: str = "synth_target",
        mask_key: str = "channel_mask",
        available_key: str = "available",
        require_inputs: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.inputs = canonical_list(inputs)
        self.targets = canonical_list(targets)
        self.in_idx = [CONTRASTS.index(c) for c in self.inputs]
        self.tg_idx = [CONTRASTS.index(c) for c in self.targets]
        self.target_key, self.mask_key, self.available_key = target_key, mask_key, available_key
        self.require_inputs = require_inputs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        available = d.get(self.available_key, torch.ones(len(CONTRASTS)))
        if self.require_inputs:
            absent = [c for c, i in zip(self.inputs, self.in_idx) if float(available[i]) <= 0]
            if absent:
                raise ValueError(
                    f"case {d.get('case_id', '?')}: input contrast(s) {absent} missing; this model needs "
                    f"all of {self.inputs} (it was trained without an input mask)"
                )
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != len(CONTRASTS):
                raise ValueError(
                    f"{key} must hold the {len(CONTRASTS)} canonical contrasts, got {img.shape[0]}"
                )
            if self.targets:
                d[self.target_key] = img[self.tg_idx]
            d[key] = img[self.in_idx]
        d[self.mask_key] = torch.as_tensor(available)[self.in_idx].float()
        if self.targets:
            d["synth_available"] = torch.as_tensor(available)[self.tg_idx].float()
        return d


class RandDropContrastsd(Randomizable, MapTransform):
    """Randomly drop whole input contrasts (zero-fill) and update the channel mask.

    Trains one model for any subset of acquired contrasts: the synthesis branch learns to restore
    what is missing and the segmentation branch to work without it (cf. HeMIS, Havaei et al.,
    MICCAI 2016; and the missing-modality BraTS literature).

    Args:
        keys: input image key.
        prob: probability that a case has any contrast dropped.
        max_drop: largest number of channels dropped at once (at least one always stays).
        mask_key: channel mask key, updated in place.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.5,
        max_drop: int = 2,
        mask_key: str = "channel_mask",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob, self.max_drop, self.mask_key = prob, max_drop, mask_key
        self._drop: list[int] = []

    def randomize(self, n_channels: int, present: Sequence[int]) -> None:
        self._drop = []
        if self.R.random_sample() >= self.prob or len(present) <= 1:
            return
        k = int(self.R.randint(1, min(self.max_drop, len(present) - 1) + 1))
        self._drop = sorted(int(i) for i in self.R.choice(present, size=k, replace=False))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mask = torch.as_tensor(d.get(self.mask_key, torch.ones(img.shape[0]))).clone().float()
            self.randomize(img.shape[0], [i for i in range(img.shape[0]) if mask[i] > 0])
            if self._drop:
                img = img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
                img[self._drop] = 0
                mask[self._drop] = 0
            d[key], d[self.mask_key] = img, mask
        return d


class WithholdContrastd(MapTransform):
    """Withhold one real input contrast per case, the same one every time (validation of synthesis).

    Model selection must score the synthesis of a contrast the network does not see, not the
    restoration of its inputs. Each case loses one of its real inputs, chosen from a checksum of its
    ``case_id`` (so a validation set covers every contrast and the choice never changes between
    epochs); the channel is zero-filled and flagged absent in the channel mask. A case with a single
    real input keeps it.

    Args:
        keys: input image key.
        mask_key: channel mask key, updated in place.
        id_key: key of the case identifier.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_key: str = "channel_mask",
        id_key: str = "case_id",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key, self.id_key = mask_key, id_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            mask = torch.as_tensor(d.get(self.mask_key, torch.ones(img.shape[0]))).clone().float()
            present = [i for i in range(img.shape[0]) if mask[i] > 0]
            if len(present) <= 1:
                continue
            drop = present[zlib.crc32(str(d.get(self.id_key, "")).encode()) % len(present)]
            img = img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
            img[drop] = 0
            mask[drop] = 0
            d[key], d[self.mask_key] = img, mask
        return d


class SynthWeightd(MapTransform):
    """Per-target weights of the synthesis loss: what the network must restore counts most.

    A target contrast the case lacks weighs 0 (nothing to compare with); one that is also a real
    input weighs ``present_weight`` (reconstructing what the network sees is easy and teaches little);
    one that is absent from the inputs (never an input, or dropped by :class:`RandDropContrastsd`)
    weighs 1. This is the masked-modality reconstruction objective of M3AE (Liu et al., "M3AE:
    Multimodal Representation Learning for Brain Tumor Segmentation with Missing Modalities",
    AAAI 2023), as a per-channel loss weight.

    Args:
        keys: the channel mask key (which inputs are real after dropping).
        inputs: the network's input contrasts, in order.
        targets: the synthesised contrasts, in order.
        present_weight: weight of a target contrast that is also a real input.
        available_key: key of the (len(targets),) availability of the targets (``synth_available``).
        weight_key: output key of the (len(targets),) weights.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "channel_mask",
        inputs: Sequence[str] = DEFAULT_INPUTS,
        targets: Sequence[str] = DEFAULT_TARGETS,
        present_weight: float = 0.2,
        available_key: str = "synth_available",
        weight_key: str = "synth_weight",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if present_weight < 0:
            raise ValueError(f"present_weight must be >= 0, found {present_weight}")
        self.inputs, self.targets = canonical_list(inputs), canonical_list(targets)
        self.present_weight = float(present_weight)
        self.available_key, self.weight_key = available_key, weight_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = torch.as_tensor(d[key]).float()
            available = torch.as_tensor(d.get(self.available_key, torch.ones(len(self.targets)))).float()
            weight = available.clone()
            for j, c in enumerate(self.targets):
                if c in self.inputs and mask[self.inputs.index(c)] > 0:
                    weight[j] *= self.present_weight
            d[self.weight_key] = weight
        return d


class RegionClassesd(MapTransform):
    """Disjoint tumour classes from the TC / WT / ET regions, for class-balanced patch sampling.

    Writes a (1, ...) map: 0 elsewhere, 1 NETC (TC without ET), 2 SNFH (WT without TC), 3 ET, so
    that :class:`monai.transforms.RandCropByLabelClassesd` can centre patches on each class in
    chosen ratios (nnU-Net oversamples foreground classes, Isensee et al., Nature Methods 2021).

    Args:
        keys: the region key (``label``, channels TC, WT, ET).
        classes_key: output key.
        allow_missing_keys: don't raise for absent keys.
    """

    def __init__(
        self, keys: KeysCollection = "label", classes_key: str = "crop_classes", allow_missing_keys=False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.classes_key = classes_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            r = torch.as_tensor(d[key]) > 0.5
            tc, wt, et = r[0], r[1], r[2]
            classes = torch.zeros_like(tc, dtype=torch.uint8)
            classes[wt & ~tc] = 2
            classes[tc & ~et] = 1
            classes[et] = 3
            d[self.classes_key] = classes[None]
        return d


class LabelPresenced(MapTransform):
    """Mark whether a case is labelled; give an unlabelled case an empty region label.

    A datalist entry without a ``label`` is an unlabelled study: it trains the synthesis loss only.
    This writes ``has_label`` (1.0 or 0.0), which :class:`medmtl.losses.MultiTaskLoss` uses to
    leave the sample out of the segmentation loss, and for an unlabelled case a zero ``(3, ...)``
    region volume on the brain mask's grid (placed before the crop to the brain), so that the spatial
    transforms treat both kinds alike and labelled and unlabelled samples collate into one batch.

    Args:
        keys: the region label key (``label``, channels TC, WT, ET).
        flag_key: output key of the flag.
        like_key: key whose grid (and meta data) the empty label takes (the brain mask).
    """

    def __init__(
        self, keys: KeysCollection = "label", flag_key: str = "has_label", like_key: str = "brain_mask"
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.flag_key, self.like_key = flag_key, like_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            labelled = d.get(key) is not None
            d[self.flag_key] = torch.tensor(1.0 if labelled else 0.0)
            if not labelled:
                like = d[self.like_key]
                zeros = torch.zeros((len(REGIONS), *like.shape[1:]), dtype=torch.float32)
                # The same meta keys as a loaded label (both come from the image files), or batches
                # mixing labelled and unlabelled cases would not collate.
                d[key] = MetaTensor(zeros, meta=dict(like.meta)) if isinstance(like, MetaTensor) else zeros
        return d


class UnlabelledCropCentresd(MapTransform):
    """Draw the patch centres of an unlabelled case from the whole brain, whatever the class ratios.

    Placed after :class:`monai.transforms.ClassesToIndicesd` on the :class:`RegionClassesd` map: an
    unlabelled case (``has_label`` 0) has an empty label, so all its brain voxels are healthy (class
    0) and the tumour classes have no voxel; ratios that exclude healthy brain (e.g. ``(0, 0, 0, 1)``)
    would then leave no class to draw from. Every class is given the brain's voxels instead, so
    ``RandCropByLabelClassesd`` falls back to brain-foreground crops for such a case.

    Args:
        keys: the cached per-class indices (``crop_classes_cls_indices``).
        flag_key: the labelled flag written by :class:`LabelPresenced`.
    """

    def __init__(
        self, keys: KeysCollection = "crop_classes_cls_indices", flag_key: str = "has_label"
    ) -> None:
        super().__init__(keys)
        self.flag_key = flag_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if float(d.get(self.flag_key, 1.0)) > 0:
            return d
        for key in self.key_iterator(d):
            brain = d[key][0]  # class 0 of an empty label, inside the brain mask: the whole brain
            d[key] = [brain] * len(d[key])
        return d


def _load_and_canonicalise(
    keys: Sequence[str],
    spacing: Sequence[float] | None,
    allow_missing_contrasts: bool,
    source_mask_key: str | None = None,
) -> list:
    label_keys = [k for k in keys if k != "image"]
    xforms: list = [
        # MONAI's spatial transforms take any "label_*" key for a meta dict: move it out of the way.
        CopyItemsd(keys="label_convention", names="convention", allow_missing_keys=True),
        # Variable-length lists do not collate into batches; "contrasts" is canonical after reordering.
        DeleteItemsd(keys=["label_convention", "missing"]),
        LoadImagesd(keys=list(keys), image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys=list(keys), allow_missing_keys=True),
        EnsureTyped(keys=list(keys), dtype=torch.float32, allow_missing_keys=True),
    ]
    xforms.append(ReorderContrastsd(keys="image", allow_missing=allow_missing_contrasts))
    if source_mask_key:
        # The brain in the scan's own voxels: outputs are masked with it exactly, which a mask
        # resampled to the model's grid and back would not do at the brain's edge. After the
        # reordering, so that a constant (unusable) contrast does not make the whole volume "brain".
        xforms.append(BrainMaskd(keys="image", mask_key=source_mask_key))
    xforms.append(Orientationd(keys=list(keys), axcodes="RAS", allow_missing_keys=True))
    if spacing is not None:
        modes = ["bilinear"] + ["nearest"] * len(label_keys)
        xforms.append(Spacingd(keys=list(keys), pixdim=spacing, mode=modes, allow_missing_keys=True))
    xforms += [
        BrainMaskd(keys="image"),
        # other label-like keys (a region mask) are resampled with the labels but keep their values
        LabelToRegionsd(keys="label", allow_missing_keys=True) if "label" in label_keys else None,
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ]
    return [x for x in xforms if x is not None]


def brain_crop_transforms(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    allow_missing_contrasts: bool = False,
    source_mask_key: str | None = None,
    flag_unlabelled: bool = False,
) -> list:
    """The common start of every pipeline: load, canonicalise, resample, normalise, crop to the brain.

    Args:
        keys: ``image`` first, then label-like keys (resampled with nearest neighbour; only ``label``
            becomes TC / WT / ET regions).
        spacing: voxel size in mm (None keeps the native grid).
        allow_missing_contrasts: zero-fill absent contrasts instead of raising.
        source_mask_key: also keep the brain mask in the scan's own voxels under this key.
        flag_unlabelled: accept cases without ``label`` (unlabelled studies, in training): write
            ``has_label`` and give such a case an empty label (:class:`LabelPresenced`).

    Returns:
        A list of MONAI transforms (to extend and wrap in ``Compose``).
    """
    xforms = _load_and_canonicalise(list(keys), spacing, allow_missing_contrasts, source_mask_key)
    if flag_unlabelled and "label" in keys:
        # Before the crop, so that an empty label is cropped with the brain like a loaded one.
        xforms.append(LabelPresenced(keys="label"))
    crop = CropForegroundd(keys=[*keys, "brain_mask"], source_key="brain_mask", allow_smaller=True)
    return [*xforms, crop]


def patch_transforms(
    keys: Sequence[str],
    label_key: str,
    roi_size: Sequence[int],
    num_samples: int,
    pos: float = 1.0,
    neg: float = 1.0,
    flip_prob: float = 0.5,
) -> list:
    """Patch sampling of the training pipelines: pad, crop balanced on a mask, random flips.

    Args:
        keys: keys cropped and flipped together.
        label_key: mask whose voxels centre the positive patches (``RandCropByPosNegLabeld``).
        roi_size: patch size.
        num_samples: patches per case.
        pos: weight of patches centred in the mask.
        neg: weight of patches centred elsewhere in the brain.
        flip_prob: flip probability per axis.

    Returns:
        A list of MONAI transforms.
    """
    keys = list(keys)
    crop = RandCropByPosNegLabeld(
        keys=keys, label_key=label_key, spatial_size=roi_size, pos=pos, neg=neg, num_samples=num_samples,
        image_key="brain_mask", image_threshold=0.5,
    )  # fmt: skip
    flips = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(len(roi_size))]
    return [SpatialPadd(keys=keys, spatial_size=roi_size), crop, *flips]


#: Augmentation recipes of :func:`train_transforms`.
AUGMENTATIONS: tuple[str, ...] = ("nnunet", "light")


def augment_transforms(
    spatial_keys: Sequence[str],
    roi_size: Sequence[int],
    recipe: str = "nnunet",
    flip_prob: float = 0.5,
    intensity_prob: float = 0.5,
) -> list:
    """The augmentation of training patches: MONAI transforms after the nnU-Net recipe.

    ``nnunet`` follows the default data augmentation of nnU-Net (Isensee et al., "nnU-Net: a
    self-configuring method for deep learning-based biomedical image segmentation", Nature Methods
    18, 2021, supplementary note 4), with its probabilities: rotation (+-30 degrees) and scaling
    (0.7-1.4) with ``RandAffined`` on a patch sampled 1.25x larger and cropped back to ``roi_size``
    (no empty corners), Gaussian noise, Gaussian blur, brightness, contrast, simulated low
    resolution, gamma and mirroring. Intensity changes touch the network inputs only (synthesis
    targets stay clean) and are masked back to the brain. Elastic deformation is left out: on a CPU
    it costs more than the network's step. ``light`` is flips and intensity jitter only.

    Args:
        spatial_keys: keys deformed together (``image`` first; ``label``/``brain_mask`` use nearest).
        roi_size: the patch size the network sees.
        recipe: one of :data:`AUGMENTATIONS`.
        flip_prob: flip probability per axis.
        intensity_prob: probability of the ``light`` recipe's scale / shift jitter.

    Returns:
        A list of MONAI transforms, applied after patch sampling.
    """
    if recipe not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {recipe!r}; expected one of {list(AUGMENTATIONS)}")
    keys = list(spatial_keys)
    flips = [RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(len(roi_size))]
    if recipe == "light":
        return [
            *flips,
            RandScaleIntensityd(keys="image", factors=0.1, prob=intensity_prob),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=intensity_prob),
        ]
    modes = ["nearest" if k in ("label", "brain_mask") else "bilinear" for k in keys]
    angle = np.deg2rad(30.0)
    return [
        RandAffined(
            keys=keys,
            spatial_size=list(roi_size),
            prob=0.36,
            rotate_range=[angle] * len(roi_size),
            scale_range=[(-0.3, 0.4)] * len(roi_size),
            mode=modes,
            padding_mode="zeros",
        ),  # fmt: skip
        RandGaussianNoised(keys="image", prob=0.1, mean=0.0, std=0.1),
        RandGaussianSmoothd(
            keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
        ),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15, channel_wise=True),
        RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.5, 1.0)),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
        MaskIntensityd(keys="image", mask_key="brain_mask"),
        *flips,
    ]


def train_transforms(
    inputs: Sequence[str] = DEFAULT_INPUTS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    roi_size: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    drop_contrasts_prob: float = 0.0,
    max_drop: int | None = None,
    flip_prob: float = 0.5,
    intensity_prob: float = 0.5,
    synthetic_lesion_prob: float = 0.0,
    lesion_donors: Sequence[Any] | None = None,
    augment: str = "light",
    crop: str = "posneg",
    class_ratios: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    present_weight: float = 1.0,
) -> Compose:
    """Training pipeline: load, canonicalise, normalise, crop to brain, sample patches, augment.

    An entry without a ``label`` is an unlabelled study (:class:`LabelPresenced`): it gets an empty
    label and ``has_label`` 0, so it trains the synthesis loss only, and its patches are centred
    anywhere in the brain with either ``crop`` (``posneg`` finds no tumour voxel and draws brain
    centres only; ``classes`` draws every class from the brain, :class:`UnlabelledCropCentresd`).

    Args:
        inputs: contrasts fed to the network.
        targets: contrasts to synthesise (empty for a seg-only model).
        roi_size: patch size.
        spacing: target voxel size in mm (None keeps the native grid; (2, 2, 2) for CPU presets).
        num_samples: patches per case and iteration.
        pos: weight of tumour-centred patches (``crop="posneg"``).
        neg: weight of background-centred patches (``crop="posneg"``).
        drop_contrasts_prob: probability of dropping input contrasts (random missing-contrast mode).
        max_drop: most contrasts dropped at once; default all but one (any non-empty subset).
        flip_prob: flip probability per axis.
        intensity_prob: probability of intensity scale / shift jitter (``augment="light"``).
        synthetic_lesion_prob: probability of pasting a synthetic glioma into a case
            (:class:`~medmtl.lesion_augment.RandSyntheticLesiond`, applied to the whole canonical
            4-contrast image before the task split and patch sampling); 0 leaves the pipeline as it was.
        lesion_donors: tumours to paste instead of procedural lesions: region masks (3, x, y, z) or BraTS
            label maps (x, y, z), numpy or torch, on the grid of ``spacing``; None for procedural ones.
        augment: augmentation recipe, one of :data:`AUGMENTATIONS` (see :func:`augment_transforms`).
        crop: ``posneg`` (tumour / brain patch centres, ``RandCropByPosNegLabeld``) or ``classes``
            (centres drawn per class: healthy brain, NETC, SNFH, ET in ``class_ratios``, with
            ``RandCropByLabelClassesd``, so that the small ET and NETC are common).
        class_ratios: ratios of patch centres in healthy brain, NETC, SNFH and ET (``crop="classes"``).
        present_weight: synthesis-loss weight of a target contrast that is also a real input
            (:class:`SynthWeightd`); 1 weighs every target alike.

    Returns:
        A MONAI ``Compose``.
    """
    if crop not in ("posneg", "classes"):
        raise ValueError(f"unknown crop {crop!r}; expected 'posneg' or 'classes'")
    keys = ["image", "label"]
    patch_keys = (
        ["image", "label", "synth_target", "brain_mask"] if targets else ["image", "label", "brain_mask"]
    )
    # The affine augmentation rotates a larger patch and crops it back: no empty corners.
    sample_size = [int(round(r * 1.25)) for r in roi_size] if augment == "nnunet" else list(roi_size)
    # A case without a label (an unlabelled study) trains the synthesis loss only.
    xforms = brain_crop_transforms(keys, spacing, flag_unlabelled=True)
    if synthetic_lesion_prob > 0:
        # Before the split, so the lesion is painted into every contrast, synthesis targets included.
        xforms.append(RandSyntheticLesiond(prob=synthetic_lesion_prob, donors=lesion_donors))
    xforms.append(SplitTaskd(keys="image", inputs=inputs, targets=targets))
    xforms.append(SpatialPadd(keys=patch_keys, spatial_size=sample_size))
    if crop == "classes":
        xforms += [
            RegionClassesd(keys="label"),
            # The voxels of each class, found once and cached with the case (a whole-volume scan
            # per patch otherwise, which costs as much as the network's step on a 1 mm volume).
            ClassesToIndicesd(
                keys="crop_classes", num_classes=4, image_key="brain_mask", image_threshold=0.5
            ),
            UnlabelledCropCentresd(keys="crop_classes_cls_indices"),
            RandCropByLabelClassesd(
                keys=patch_keys,
                label_key="crop_classes",
                spatial_size=sample_size,
                ratios=list(class_ratios),
                num_classes=4,
                num_samples=num_samples,
                indices_key="crop_classes_cls_indices",
                warn=False,
            ),  # fmt: skip
            DeleteItemsd(keys=["crop_classes", "crop_classes_cls_indices"]),
        ]
    else:
        xforms.append(
            RandCropByPosNegLabeld(
                keys=patch_keys,
                label_key="label",
                spatial_size=sample_size,
                pos=pos,
                neg=neg,
                num_samples=num_samples,
                image_key="brain_mask",
                image_threshold=0.5,
            )  # fmt: skip
        )
    xforms += augment_transforms(patch_keys, roi_size, augment, flip_prob, intensity_prob)
    if drop_contrasts_prob > 0:
        n_drop = len(canonical_list(inputs)) - 1 if max_drop is None else max_drop
        xforms.append(RandDropContrastsd(keys="image", prob=drop_contrasts_prob, max_drop=n_drop))
    if targets:
        xforms.append(SynthWeightd(inputs=inputs, targets=targets, present_weight=present_weight))
    return Compose(xforms)


def val_transforms(
    inputs: Sequence[str] = DEFAULT_INPUTS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    withhold: bool = False,
) -> Compose:
    """Validation pipeline: whole volumes (cropped to the brain) with label and synthesis targets.

    Args:
        inputs: contrasts fed to the network.
        targets: contrasts to synthesise.
        spacing: target voxel size in mm, as in training.
        withhold: withhold one input contrast per case (:class:`WithholdContrastd`) and weight the
            synthesis targets 1 where absent, 0 where they are inputs (``synth_weight``), so that
            ``SynthOutput(absent_only=True)`` scores the synthesis of missing contrasts only.

    Returns:
        A MONAI ``Compose``.
    """
    xforms = [
        *brain_crop_transforms(["image", "label"], spacing),
        SplitTaskd(keys="image", inputs=inputs, targets=targets),
    ]
    if withhold:
        xforms += [
            WithholdContrastd(keys="image"),
            SynthWeightd(inputs=inputs, targets=targets, present_weight=0.0),
        ]
    return Compose(xforms)


#: Key of the brain mask in the scan's own grid, kept beside the transformed image by inference.
SOURCE_MASK_KEY = "source_brain_mask"


def infer_transforms(
    inputs: Sequence[str] = DEFAULT_INPUTS,
    targets: Sequence[str] = DEFAULT_TARGETS,
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    allow_missing_inputs: bool = False,
) -> Compose:
    """Inference pipeline: images only, every step invertible so outputs return to the scan's grid.

    Missing target contrasts are expected (they are what the model synthesises). A missing input
    contrast is zero-filled and flagged in ``channel_mask`` when ``allow_missing_inputs`` (models
    trained with an input mask), and an error otherwise. ``source_brain_mask`` holds the brain mask
    in the scan's own voxels (not resampled), for masking the outputs there.

    Args:
        inputs: contrasts fed to the network.
        targets: contrasts the model synthesises (kept as ``synth_target`` when the case has them).
        spacing: target voxel size in mm, as in training.
        allow_missing_inputs: accept cases lacking an input contrast.

    Returns:
        A MONAI ``Compose``.
    """
    xforms = brain_crop_transforms(
        ["image"], spacing, allow_missing_contrasts=True, source_mask_key=SOURCE_MASK_KEY
    )
    split = SplitTaskd(keys="image", inputs=inputs, targets=targets, require_inputs=not allow_missing_inputs)
    return Compose([*xforms, split])

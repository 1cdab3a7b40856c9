"""Named network presets and the factory that builds them."""

from __future__ import annotations

from typing import Any

from medmtl.networks.guided import GuidedSynthesisUNet, guided_field_channels
from medmtl.networks.multitask_unet import MultiTaskUNet
from medmtl.networks.refinement import RefinedMultiTaskUNet

__all__ = ["PRESETS", "get_network"]

#: preset name -> MultiTaskUNet keyword arguments.
PRESETS: dict[str, dict[str, Any]] = {
    # Small widths for training on 2 mm resampled volumes on a CPU.
    "cpu": {"features": (8, 16, 32, 64), "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 0)},
    # BraTS at full resolution; the encoder of MONAI's BraTS SegResNet (init_filters 16, blocks 1-2-2-4)
    # and light decoders (see MultiTaskUNet), both outputs within a single-output SegResNet's budget.
    "default": {"features": (16, 32, 64, 128), "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 0)},
}


def get_network(
    name_or_preset: str = "default",
    refinement: dict[str, Any] | None = None,
    guided: dict[str, Any] | None = None,
    **kwargs: Any,
) -> MultiTaskUNet | RefinedMultiTaskUNet | GuidedSynthesisUNet:
    """Build a :class:`MultiTaskUNet` from a named preset, with keyword overrides.

    Args:
        name_or_preset: a key of :data:`PRESETS` (``"cpu"``, ``"default"``).
        refinement: when given, the preset runs at ``1/factor`` of the input resolution inside a
            :class:`~medmtl.networks.refinement.RefinedMultiTaskUNet` with these arguments
            (``factor``, ``features``, ``layers``).
        guided: when given, the preset runs at ``1/factor`` of the input resolution inside a
            :class:`~medmtl.networks.guided.GuidedSynthesisUNet` with these arguments (``factor``):
            its synthesis branch predicts coefficient fields applied to the full-resolution inputs.
        **kwargs: any :class:`MultiTaskUNet` argument; overrides the preset's value.

    Returns:
        The network.

    Raises:
        ValueError: for an unknown preset name, or both ``refinement`` and ``guided``.
    """
    key = name_or_preset.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown network preset {name_or_preset!r}; expected one of {sorted(PRESETS)}")
    if refinement is not None and guided is not None:
        raise ValueError("a network is either refined or guided, not both")
    args = {**PRESETS[key], **kwargs}
    if guided is not None:
        args["synth_channels"] = guided_field_channels(
            args.get("in_channels", 3), args.get("synth_channels", 1)
        )
        return GuidedSynthesisUNet(MultiTaskUNet(**args), **guided)
    net = MultiTaskUNet(**args)
    return net if refinement is None else RefinedMultiTaskUNet(net, **refinement)

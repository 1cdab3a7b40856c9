"""Single-tensor and tuple views of a :class:`MultiTaskUNet`, for export and bundle checks."""

from __future__ import annotations

import torch
import torch.nn as nn

from medmtl.networks.multitask_unet import MultiTaskUNet

__all__ = ["BranchView", "TupleView"]

_BRANCHES = ("seg", "synth")


class BranchView(nn.Module):
    """One branch of a :class:`MultiTaskUNet` as a module returning one tensor.

    For ``monai.bundle`` ``verify_net_in_out``, ``torch.jit.trace`` / ``torch.jit.script`` and ONNX
    export, which expect a tensor output. It shares the wrapped network's parameters (no copy) and
    returns the inference outputs whatever the mode (no deep-supervision or VAE terms).

    Args:
        net: the multi-task network.
        branch: ``"seg"`` or ``"synth"``.
    """

    def __init__(self, net: MultiTaskUNet, branch: str) -> None:
        super().__init__()
        if branch not in _BRANCHES:
            raise ValueError(f"branch must be one of {_BRANCHES}, found {branch!r}")
        self.net = net
        self.branch = branch
        self.index = _BRANCHES.index(branch)

    def forward(self, x: torch.Tensor, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the network and return the chosen branch.

        Args:
            x: ``(B, in_channels, *S)`` input.
            channel_mask: optional ``(B, in_channels)`` 0/1 mask (networks built with ``input_mask``).

        Returns:
            The branch's output at the input's spatial size.
        """
        return self.net.forward_tuple(x, channel_mask)[self.index]


class TupleView(nn.Module):
    """A :class:`MultiTaskUNet` returning the tuple ``(seg, synth)`` instead of a dict.

    Args:
        net: the multi-task network.
    """

    def __init__(self, net: MultiTaskUNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self, x: torch.Tensor, channel_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network.

        Args:
            x: ``(B, in_channels, *S)`` input.
            channel_mask: optional ``(B, in_channels)`` 0/1 mask.

        Returns:
            ``(seg logits, synthesised contrasts)``.
        """
        return self.net.forward_tuple(x, channel_mask)

"""Optional adversarial term for the synthesis branch: a patch discriminator with its own optimiser."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator

__all__ = ["AdversarialTerm"]


class AdversarialTerm:
    """A PatchGAN discriminator, its criterion and its optimiser (pix2pix, Isola et al., CVPR 2017).

    Deliberately not an ``nn.Module``: the discriminator's parameters must not appear in the owning
    loss's ``parameters()``, which the generator's optimiser takes (for learned task weights). Save and
    restore it with :meth:`state_dict` / :meth:`load_state_dict`. The discriminator is unconditional
    (it sees only the synthesised or real contrasts, masked to the brain by the caller).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: synthesised contrasts.
        channels: filters of the first discriminator layer.
        num_layers: strided convolution layers of the discriminator.
        norm: discriminator norm (instance norm: training batches are small).
        criterion: ``"least_squares"`` (LSGAN, Mao et al., ICCV 2017), ``"bce"`` or ``"hinge"``.
        lr: discriminator learning rate (Adam).
        betas: Adam betas.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        channels: int = 32,
        num_layers: int = 3,
        norm: str | tuple = "INSTANCE",
        criterion: str = "least_squares",
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        self.discriminator = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=num_layers,
            norm=norm,
        )
        self.criterion = PatchAdversarialLoss(criterion=criterion, reduction="mean")
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def _to(self, like: torch.Tensor) -> None:
        # Follows the data's device lazily: the term is not a registered module, so ``loss.to()``
        # does not move it.
        p = next(self.discriminator.parameters())
        if p.device != like.device:
            self.discriminator.to(like.device)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator(x)[-1]

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial loss (fake judged as real); no gradient reaches the discriminator.

        Args:
            fake: synthesised images ``(B, C, *S)``.

        Returns:
            A scalar tensor with a gradient path to ``fake``.
        """
        self._to(fake)
        self.discriminator.requires_grad_(False)
        try:
            return self.criterion(self._logits(fake), target_is_real=True, for_discriminator=False)
        finally:
            self.discriminator.requires_grad_(True)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        """One optimiser step of the discriminator on a batch of real and synthesised images.

        Args:
            real: target images ``(B, C, *S)``.
            fake: synthesised images (detached here).

        Returns:
            The discriminator loss ``(L(real, 1) + L(fake, 0)) / 2`` before the step.
        """
        self._to(real)
        self.discriminator.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_real = self.criterion(self._logits(real.detach()), target_is_real=True, for_discriminator=True)
        loss_fake = self.criterion(self._logits(fake.detach()), target_is_real=False, for_discriminator=True)
        loss = 0.5 * (loss_real + loss_fake)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """Discriminator and optimiser state, for checkpoints.

        Returns:
            ``{"discriminator": ..., "optimizer": ...}``.
        """
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Args:
            state: a dict from :meth:`state_dict`.
        """
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])

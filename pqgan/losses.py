"""PQGAN training losses: L1 + perceptual + adaptive-weight PatchGAN + the quantiser's loss (VQGAN recipe).

    crit = PQGANLoss(config.loss)
    recon, q = model(img)
    g_loss, g_logs = crit.generator_loss(img, recon, q.loss, step, model.last_layer)   # backward -> model
    d_loss, d_logs = crit.discriminator_loss(img, recon, step)                          # backward -> crit.discriminator

Before ``disc_start`` the discriminator is not run: the generator loss has no GAN term and ``discriminator_loss``
returns a zero leaf that is safe to ``backward()`` (it touches no parameter). The perceptual network is frozen, moves
with ``.to()``, and is NOT part of ``state_dict()`` (only the discriminator is).
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .discriminator import NLayerDiscriminator
from .image_checks import check_image_pair
from .perceptual import build_perceptual


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)): zero once real >= 1 and fake <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean softplus(-real) + mean softplus(fake)): the non-saturating BCE loss on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """||d nll / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, max_weight], detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Temporarily stop ``module``'s parameters from accumulating gradients (the generator step)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class PQGANLoss(nn.Module):
    """Holds the discriminator (trained by its own optimiser over ``self.discriminator.parameters()``) and the
    frozen perceptual network (``self.perceptual``, None when disabled; ``self.perceptual_name`` says which)."""

    def __init__(self, config: Union[LossConfig, dict[str, Any], None] = None, in_channels: int = 3):
        super().__init__()
        if config is None:
            config = LossConfig()
        elif isinstance(config, dict):
            config = LossConfig(**config)
        if not isinstance(config, LossConfig):
            raise TypeError(f"config must be a LossConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.discriminator = NLayerDiscriminator(in_channels, config.disc_ndf, config.disc_layers,
                                                 norm=config.disc_norm)
        perceptual = build_perceptual(config.perceptual, config.perceptual_net) \
            if config.perceptual_weight > 0 else None
        object.__setattr__(self, "perceptual", perceptual)  # not a registered submodule: kept out of state_dict
        self.perceptual_name = perceptual.name if perceptual is not None else "none"
        self._d_loss = hinge_d_loss if config.disc_loss == "hinge" else vanilla_d_loss

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.perceptual is not None:
            self.perceptual._apply(fn, *args, **kwargs)
        return self

    def disc_active(self, step: int) -> bool:
        """Whether the GAN terms are on at ``step``."""
        return self.config.disc_weight > 0 and self.config.disc_factor > 0 and step >= self.config.disc_start

    def reconstruction_loss(self, img: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """l1_weight * mean |img - recon| + perceptual_weight * mean perceptual distance (float32 scalars)."""
        check_image_pair(img, recon)
        l1 = (img.float() - recon.float()).abs().mean()
        total = self.config.l1_weight * l1
        logs = {"l1": l1.detach()}
        if self.perceptual is not None:
            p = self.perceptual(img.float(), recon.float()).mean()
            total = total + self.config.perceptual_weight * p
            logs["perceptual"] = p.detach()
        return total, logs

    def generator_loss(self, img: torch.Tensor, recon: torch.Tensor, quant_loss: torch.Tensor, step: int,
                       last_layer: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Autoencoder objective: nll + d_weight * disc_factor * g_loss + codebook_loss_weight * quant_loss.

        d_weight = disc_weight * adaptive_weight(nll, g_loss, last_layer) when gradients are enabled and
        ``last_layer`` is given, else disc_weight (no_grad evaluation).
        """
        nll, logs = self.reconstruction_loss(img, recon)
        quant_loss = quant_loss.float().mean()
        total = nll + self.config.codebook_loss_weight * quant_loss
        logs["nll"] = nll.detach()
        logs["quant"] = quant_loss.detach()
        zero = torch.zeros((), device=nll.device)
        d_weight, g_loss = zero, zero
        if self.disc_active(step):
            with _frozen(self.discriminator):
                g_loss = -self.discriminator(recon).float().mean()
            if torch.is_grad_enabled() and last_layer is not None and g_loss.requires_grad:
                d_weight = adaptive_weight(nll, g_loss, last_layer, self.config.adaptive_weight_max)
            else:
                d_weight = torch.ones((), device=nll.device)
            d_weight = d_weight * self.config.disc_weight
            total = total + d_weight * self.config.disc_factor * g_loss
        logs["g_loss"] = g_loss.detach()
        logs["d_weight"] = d_weight.detach()
        logs["disc_factor"] = torch.tensor(self.config.disc_factor if self.disc_active(step) else 0.0)
        logs["total"] = total.detach()
        return total, logs

    def discriminator_loss(self, img: torch.Tensor, recon: torch.Tensor,
                           step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """disc_factor * hinge (or vanilla) loss on D(img) vs D(recon.detach()); a zero leaf before disc_start."""
        check_image_pair(img, recon)
        if not self.disc_active(step):
            zero = torch.zeros((), device=img.device, requires_grad=True)
            return zero, {"d_loss": zero.detach(), "logits_real": zero.detach(), "logits_fake": zero.detach()}
        logits_real = self.discriminator(img.detach()).float()
        logits_fake = self.discriminator(recon.detach()).float()
        loss = self.config.disc_factor * self._d_loss(logits_real, logits_fake)
        return loss, {"d_loss": loss.detach(), "logits_real": logits_real.mean().detach(),
                      "logits_fake": logits_fake.mean().detach()}


__all__ = ["PQGANLoss", "adaptive_weight", "hinge_d_loss", "vanilla_d_loss"]

"""PatchGAN discriminator (pix2pix / VQGAN): (B, 3, H, W) -> (B, 1, H', W') real/fake logits per patch.

With n_layers=3 and 256x256 input the output is 30x30, each logit seeing a 70x70 receptive field.
"""
from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine normalisation initialised from the first batch so outputs have zero mean, unit std."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                mean = x.mean((0, 2, 3), keepdim=True)
                std = x.std((0, 2, 3), keepdim=True)
                self.loc.copy_(-mean)
                self.scale.copy_(1.0 / (std + self.eps))
                self.initialized.fill_(True)
        return self.scale * (x + self.loc)


def weights_init(module: nn.Module) -> None:
    """Convs ~ N(0, 0.02); BatchNorm weight ~ N(1, 0.02), bias 0 (the DCGAN/pix2pix initialisation)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """Conv(4, s2)+LeakyReLU, then n_layers-1 Conv(4, s2)+Norm+LeakyReLU (widths ndf*min(2^n, 8)), then a stride-1
    Conv+Norm+LeakyReLU and a stride-1 Conv to one channel."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "act"):
            raise ValueError(f"norm must be 'batch' or 'act', got {norm!r}")
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"n_layers and ndf must be >= 1, got {n_layers}, {ndf}")
        Norm = nn.BatchNorm2d if norm == "batch" else ActNorm
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       Norm(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


__all__ = ["ActNorm", "NLayerDiscriminator", "weights_init"]

"""Layer factories with the official initialisation, so both frameworks build identical nets.

The official models use torch's defaults except where noted (docs/official_models.md,
"Initialisation and framework facts"); the Paddle mirror (``paddle_impl/layers.py``) spells
the same initialisers out explicitly.
"""

from __future__ import annotations

import torch.nn as nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # torch convention: weight of the NEW batch statistic


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    init: str = "default",
) -> nn.Conv2d:
    """A Conv2d initialised as the official code initialises it.

    init: "default" (torch's kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))),
    "kaiming_uniform_a1" (FPN: gain 1, bias 0), "kaiming_normal_fan_out" (ResNet, torchvision).
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
    if init == "kaiming_uniform_a1":
        nn.init.kaiming_uniform_(conv.weight, a=1)
        if bias:
            nn.init.zeros_(conv.bias)
    elif init == "kaiming_normal_fan_out":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif init != "default":
        raise ValueError(f"unknown init {init!r}")
    return conv


def batch_norm2d(num_features: int) -> nn.BatchNorm2d:
    """BatchNorm with the official eps and momentum; weight 1, bias 0."""
    return nn.BatchNorm2d(num_features, eps=BN_EPS, momentum=BN_MOMENTUM)


def upsample_bilinear(scale_factor: int) -> nn.Module:
    """Bilinear upsampling with align_corners=True, as every upsample in both models."""
    return nn.UpsamplingBilinear2d(scale_factor=scale_factor)

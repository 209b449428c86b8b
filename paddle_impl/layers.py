"""Layer factories with the official initialisation, so both frameworks build identical nets.

Mirror of ``torch_ref/layers.py``. Paddle's own defaults differ from torch's (normal weights,
zero bias), so every initialiser the official code relies on is spelled out here
(docs/official_models.md, "Initialisation and framework facts").
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.nn.initializer import Constant, Normal, Uniform

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Paddle convention: weight of the OLD running value (= torch momentum 0.1)


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    init: str = "default",
) -> nn.Conv2D:
    """A Conv2D initialised as the official (torch) code initialises it.

    init: "default" (torch's kaiming-uniform a=sqrt(5) = U(+-1/sqrt(fan_in)), bias likewise),
    "kaiming_uniform_a1" (FPN: U(+-sqrt(3/fan_in)), bias 0), "kaiming_normal_fan_out"
    (ResNet, torchvision: N(0, sqrt(2/fan_out))).
    """
    fan_in = in_channels * kernel_size * kernel_size
    fan_out = out_channels * kernel_size * kernel_size
    if init == "default":
        bound = 1.0 / math.sqrt(fan_in)
        weight_init, bias_init = Uniform(-bound, bound), Uniform(-bound, bound)
    elif init == "kaiming_uniform_a1":
        bound = math.sqrt(3.0 / fan_in)
        weight_init, bias_init = Uniform(-bound, bound), Constant(0.0)
    elif init == "kaiming_normal_fan_out":
        weight_init, bias_init = Normal(0.0, math.sqrt(2.0 / fan_out)), Constant(0.0)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nn.Conv2D(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        weight_attr=ParamAttr(initializer=weight_init),
        bias_attr=ParamAttr(initializer=bias_init) if bias else False,
    )


def batch_norm2d(num_features: int) -> nn.BatchNorm2D:
    """BatchNorm with the official eps and momentum; weight 1, bias 0."""
    return nn.BatchNorm2D(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPS)


def _align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] linear-interpolation weights for align_corners=True, in float64."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    source = np.arange(out_size, dtype=np.float64) * scale
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1.0 - frac)
    np.add.at(weights, (rows, upper), frac)
    return weights


class UpsamplingBilinear2D(nn.Layer):
    """Bilinear upsampling, align_corners=True.

    Paddle 3.3.1's CPU bilinear kernel computes its source coordinates in float32 even for
    float64 tensors (about 1e-6 relative error per upsample), which would hide porting bugs in
    a float64 alignment run. For float64 inputs this layer therefore interpolates with exact
    float64 weight matrices (two matmuls, same w-then-h order as torch's kernel); float32 and
    lower precisions use Paddle's own kernel unchanged (speed, export).
    """

    def __init__(self, scale_factor: int) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.dtype == paddle.float64:
            height, width = x.shape[-2:]
            rows = paddle.to_tensor(_align_corners_matrix(height, height * self.scale_factor))
            cols = paddle.to_tensor(_align_corners_matrix(width, width * self.scale_factor).T)
            return paddle.matmul(rows, paddle.matmul(x, cols))
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)


def upsample_bilinear(scale_factor: int) -> nn.Layer:
    """Bilinear upsampling with align_corners=True, as every upsample in both models."""
    return UpsamplingBilinear2D(scale_factor)

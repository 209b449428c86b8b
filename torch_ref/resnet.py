"""ResNet-50 v1.5 encoder returning c2..c5 (He et al., "Deep Residual Learning", CVPR 2016).

v1.5: the stride of a down-sampling bottleneck sits on its 3x3 conv (torchvision's layout, whose
ImageNet weights the official models start from). Output stride 32, no dilation, no ``fc``,
nothing frozen: every BatchNorm trains.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from .layers import batch_norm2d, conv2d

RESNET50_BLOCKS = (3, 4, 6, 3)
ENCODER_CHANNELS = (256, 512, 1024, 2048)  # c2..c5, strides 4/8/16/32


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = conv2d(in_channels, width, 1, bias=False, init="kaiming_normal_fan_out")
        self.bn1 = batch_norm2d(width)
        self.conv2 = conv2d(width, width, 3, stride=stride, padding=1, bias=False, init="kaiming_normal_fan_out")
        self.bn2 = batch_norm2d(width)
        self.conv3 = conv2d(width, out_channels, 1, bias=False, init="kaiming_normal_fan_out")
        self.bn3 = batch_norm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv2d(in_channels, out_channels, 1, stride=stride, bias=False, init="kaiming_normal_fan_out"),
                batch_norm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """The torchvision ResNet-50 trunk without ``avgpool``/``fc`` (same attribute names)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv2d(3, 64, 7, stride=2, padding=3, bias=False, init="kaiming_normal_fan_out")
        self.bn1 = batch_norm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (num_blocks, width) in enumerate(zip(RESNET50_BLOCKS, (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(Bottleneck(in_channels, width, stride if block_index == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*blocks))


class ResNetEncoder(nn.Module):
    """Wraps the trunk as ``<prefix>.resnet`` (the official key prefix) and returns [c2, c3, c4, c5]."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet50()

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c2 = r.layer1(x)
        c3 = r.layer2(c2)
        c4 = r.layer3(c3)
        c5 = r.layer4(c4)
        return [c2, c3, c4, c5]

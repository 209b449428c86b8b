"""Torchvision-free ResNet-18 / ResNet-50-like pairs (torch and Paddle, same names).

Written for this project's benchmarks (the float32 floor, speed and memory of align on a
ResNet-50-sized pair) and usable as SPECs: ``resnet_zoo.py:torch_resnet18`` /
``resnet_zoo.py:paddle_resnet18`` and the same for ``resnet50``. Names follow torchvision's
(``conv1``, ``layer3.1.bn2``, ``fc``) so pairing by name works; the weights are torch's default
initialisation with trained-looking BatchNorms (seeded locally).
"""

from __future__ import annotations

from typing import Any, List, Type

import numpy as np
import paddle
import torch

SEED = 2024
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------------- torch
class TorchBasic(torch.nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = torch.nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.downsample = _torch_downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(torch.nn.Module):
    """1x1, 3x3 (stride), 1x1 x4 (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = torch.nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(width)
        self.conv3 = torch.nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = torch.nn.BatchNorm2d(cout)
        self.relu = torch.nn.ReLU()
        self.downsample = _torch_downsample(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _torch_downsample(cin: int, cout: int, stride: int) -> Any:
    if stride == 1 and cin == cout:
        return None
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout))


class TorchResNet(torch.nn.Module):
    """torchvision's ResNet layout: 7x7 stem, max-pool, four stages, pool, fc."""

    def __init__(self, block: Type[torch.nn.Module], depths: List[int], base: int = 64) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(base)
        self.relu = torch.nn.ReLU()
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        cin = base
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, base * 2**i, 2 if (j == 0 and i > 0) else 1))
                cin = base * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(*blocks))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Trained-looking BatchNorms (random affine and statistics), deterministic."""
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)))
    return model


def _torch(block: Type[torch.nn.Module], depths: List[int], base: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return _trained_like(TorchResNet(block, depths, base))


def torch_resnet18() -> torch.nn.Module:
    """ResNet-18 layout at half width (base 32): 5.6 M parameters."""
    return _torch(TorchBasic, [2, 2, 2, 2], 32)


def torch_resnet50() -> torch.nn.Module:
    """ResNet-50 (full width, 10 classes): 23.5 M parameters."""
    return _torch(TorchBottleneck, [3, 4, 6, 3], 64)


# --------------------------------------------------------------------------------------- paddle
def _paddle_downsample(cin: int, cout: int, stride: int) -> Any:
    if stride == 1 and cin == cout:
        return None
    return paddle.nn.Sequential(paddle.nn.Conv2D(cin, cout, 1, stride, bias_attr=False), paddle.nn.BatchNorm2D(cout))


class PaddleBasic(paddle.nn.Layer):
    """TorchBasic in Paddle."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = paddle.nn.Conv2D(cin, width, 3, stride, 1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(width)
        self.conv2 = paddle.nn.Conv2D(width, cout, 3, 1, 1, bias_attr=False)
        self.bn2 = paddle.nn.BatchNorm2D(cout)
        self.relu = paddle.nn.ReLU()
        self.downsample = _paddle_downsample(cin, cout, stride)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class PaddleBottleneck(paddle.nn.Layer):
    """TorchBottleneck in Paddle."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = paddle.nn.Conv2D(cin, width, 1, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(width)
        self.conv2 = paddle.nn.Conv2D(width, width, 3, stride, 1, bias_attr=False)
        self.bn2 = paddle.nn.BatchNorm2D(width)
        self.conv3 = paddle.nn.Conv2D(width, cout, 1, bias_attr=False)
        self.bn3 = paddle.nn.BatchNorm2D(cout)
        self.relu = paddle.nn.ReLU()
        self.downsample = _paddle_downsample(cin, cout, stride)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class PaddleResNet(paddle.nn.Layer):
    """TorchResNet in Paddle, same names."""

    def __init__(self, block: Any, depths: List[int], base: int = 64) -> None:
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, base, 7, 2, 3, bias_attr=False)
        self.bn1 = paddle.nn.BatchNorm2D(base)
        self.relu = paddle.nn.ReLU()
        self.maxpool = paddle.nn.MaxPool2D(3, 2, 1)
        cin = base
        for i, depth in enumerate(depths):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, base * 2**i, 2 if (j == 0 and i > 0) else 1))
                cin = base * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", paddle.nn.Sequential(*blocks))
        self.avgpool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(paddle.flatten(self.avgpool(x), 1))


def paddle_resnet18() -> paddle.nn.Layer:
    """The Paddle port of ``torch_resnet18``."""
    return PaddleResNet(PaddleBasic, [2, 2, 2, 2], 32)


def paddle_resnet50() -> paddle.nn.Layer:
    """The Paddle port of ``torch_resnet50``."""
    return PaddleResNet(PaddleBottleneck, [3, 4, 6, 3], 64)


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy."""
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy."""
    return paddle.nn.functional.cross_entropy(output, target)


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD momentum 0.9, weight decay 1e-4 (the ImageNet recipe), lr 0.01."""
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)


def paddle_optimizer(model: paddle.nn.Layer) -> Any:
    """The same in Paddle."""
    return paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=model.parameters(), weight_decay=1e-4)


# As a pair file (the names tests/test_align_any.py and benchmarks/padiff_compare.py use): the
# ResNet-18-like pair at 64x64, the deepest clean pair of the comparison.
INPUTS = "2x3x64x64"
TARGETS = "2:0:10"
torch_model = torch_resnet18
paddle_model = paddle_resnet18

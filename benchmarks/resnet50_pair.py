"""A ResNet-50-sized classifier pair for benchmarks/align_pair_speed.py (SPECs point here).

torch_ref's and paddle_impl's ResNet-50 trunk (same names) + global average pool + Linear(2048, 10),
a cross-entropy loss and SGD with momentum on each side.
"""

from __future__ import annotations

import paddle
import torch

from paddle_impl.resnet import ResNetEncoder as PaddleEncoder
from torch_ref.resnet import ResNetEncoder as TorchEncoder


class TorchClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = TorchEncoder()
        self.fc = torch.nn.Linear(2048, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x)[-1].mean((2, 3)))


class PaddleClassifier(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = PaddleEncoder()
        self.fc = paddle.nn.Linear(2048, 10)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.fc(self.encoder(x)[-1].mean((2, 3)))


def torch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TorchClassifier()


def paddle_model() -> paddle.nn.Layer:
    return PaddleClassifier()


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    return paddle.nn.functional.cross_entropy(output, target)


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def paddle_optimizer(model: paddle.nn.Layer) -> paddle.optimizer.Optimizer:
    return paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=model.parameters())

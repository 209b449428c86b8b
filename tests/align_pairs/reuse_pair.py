"""A CNN that calls one block twice (shared weights) and one activation module three times.

Pairing must go call by call: ``shared`` runs twice, ``act`` three times; a record per module
name would keep only one call. ``paddle_model_renamed`` uses other names for all of it.
Planted bug: the Paddle port subtracts the residual where torch adds it, so the first divergent
record is the THIRD call of ``act`` (its first two calls agree).
"""

from __future__ import annotations

from typing import Any, Dict

import paddle
import torch

INPUTS = "2x3x12x12"
TARGETS = "2:0:4"
SEED = 5

BUGS: Dict[str, Dict[str, Any]] = {
    "residual_sign": {"stage": "forward", "paddle": "paddle_model_residual_sign", "layer": "act", "call": 3},
}


class TorchReuse(torch.nn.Module):
    """stem -> act -> shared -> act -> shared -> act -> pool -> fc (``shared`` and ``act`` reused)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.shared = torch.nn.Sequential(torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.Tanh())
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.shared(x))
        x = self.act(self.shared(x) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


def torch_model() -> torch.nn.Module:
    """The reference model, seeded locally."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return TorchReuse()


class PaddleReuse(paddle.nn.Layer):
    """TorchReuse in Paddle; ``residual_sign`` plants the bug."""

    def __init__(self, residual_sign: float = 1.0) -> None:
        super().__init__()
        self.residual_sign = residual_sign
        self.stem = paddle.nn.Conv2D(3, 6, 3, padding=1)
        self.shared = paddle.nn.Sequential(paddle.nn.Conv2D(6, 6, 3, padding=1), paddle.nn.Tanh())
        self.act = paddle.nn.ReLU()
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(6, 4)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.shared(x))
        x = self.act(self.shared(x) + self.residual_sign * x)
        return self.fc(paddle.flatten(self.pool(x), 1))


def paddle_model() -> paddle.nn.Layer:
    """The correct port, same names."""
    return PaddleReuse()


def paddle_model_residual_sign() -> paddle.nn.Layer:
    """Bug: the residual is subtracted before the third ``act`` call."""
    return PaddleReuse(residual_sign=-1.0)


class PaddleRenamedReuse(paddle.nn.Layer):
    """The same computation under other names: ``entry``, ``block``, ``relu``, ``gap``, ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = paddle.nn.Conv2D(3, 6, 3, padding=1)
        self.block = paddle.nn.Sequential(paddle.nn.Conv2D(6, 6, 3, padding=1), paddle.nn.Tanh())
        self.relu = paddle.nn.ReLU()
        self.gap = paddle.nn.AdaptiveAvgPool2D(1)
        self.classifier = paddle.nn.Linear(6, 4)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu(self.entry(x))
        x = self.relu(self.block(x))
        x = self.relu(self.block(x) + x)
        return self.classifier(paddle.flatten(self.gap(x), 1))


def paddle_model_renamed() -> paddle.nn.Layer:
    """The correct port under other names."""
    return PaddleRenamedReuse()


RENAMED_PAIRING: Dict[str, str] = {
    "stem": "entry",
    "shared": "block",
    "shared.0": "block.0",
    "shared.1": "block.1",
    "act": "relu",
    "pool": "gap",
    "fc": "classifier",
}


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy."""
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy."""
    return paddle.nn.functional.cross_entropy(output, target)


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (its state is per parameter: a shared block must update once per step)."""
    return torch.optim.Adam(model.parameters(), lr=1e-2)


def paddle_optimizer(model: paddle.nn.Layer) -> Any:
    """Adam with torch's defaults (Paddle's epsilon default is 1e-8 too)."""
    return paddle.optimizer.Adam(learning_rate=1e-2, parameters=model.parameters())

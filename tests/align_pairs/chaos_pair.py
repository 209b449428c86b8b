"""A tiny, clean pair whose training is chaotic: a Linear layer followed by sin(GAIN * h).

A clean port's optimiser leaves the parameters a rounding apart (Paddle's Momentum: 2e-9
relative after step 2 in float64, measured); ``sin`` at a high gain turns that into step-3
gradients 4e-4 apart, above the drift threshold. Deep networks do the same (the clean ResNet-50
pair at 224 px in float64: parameters 1.65e-8 apart after step 1, step-2 gradients 1.3e-2).
``python -m align.backward`` must still pass it: every step starts from the same parameters
(``align.engine.STEP_START``); ``--step-start none`` shows the chaos (exit 1 at step 3).
float64 only: in float32 the phase GAIN * h itself is not representable to better than ~1e-2.
"""

from __future__ import annotations

import paddle
import torch

INPUTS = "4x6"
TARGETS = "4:0:2"
SEED = 5
GAIN = 1.0e5  # the phase's sensitivity to the Linear weights
LR = 1.0e-6  # an update of ~1e-1 per weight at this gain


class TorchChaos(torch.nn.Module):
    """Linear(6, 4), then sin(GAIN * h)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(GAIN * self.fc(x))


class PaddleChaos(paddle.nn.Layer):
    """TorchChaos in Paddle."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = paddle.nn.Linear(6, 4)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.sin(GAIN * self.fc(x))


def torch_model() -> torch.nn.Module:
    """The reference (torch's default initialisation, seeded locally)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return TorchChaos()


def paddle_model() -> paddle.nn.Layer:
    """The port (weights copied from torch by align)."""
    return PaddleChaos()


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of every output to the sample's target (0 or 1)."""
    return ((output - target.to(output.dtype).unsqueeze(1)) ** 2).mean()


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """The same in Paddle."""
    return ((output - target.astype(output.dtype).unsqueeze(1)) ** 2).mean()


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def paddle_optimizer(model: paddle.nn.Layer) -> paddle.optimizer.Optimizer:
    """The same in Paddle."""
    return paddle.optimizer.Momentum(learning_rate=LR, momentum=0.9, parameters=model.parameters())

"""An MLP classifier head in torch and Paddle: Paddle ``nn.Linear`` ([in, out] weights) and
``paddle.compat.nn.Linear`` (torch's [out, in] layout, what PaConvert may emit).

The weight copy must decide the transpose from the Paddle parameter's shape, not from the
module type: a rule that transposes every Linear breaks the compat port (and Paddle's
``set_state_dict`` only returns the mismatch). Planted bugs: an activation at a known layer and
label smoothing combined with ``ignore_index`` (Paddle computes a different value, silently).
"""

from __future__ import annotations

from typing import Any, Dict

import paddle
import torch

INPUTS = "4x12"
TARGETS = "4:0:5"
NUM_CLASSES = 5
SEED = 11
LABEL_SMOOTHING = 0.1
IGNORE_INDEX = 0  # a class index inside [0, C): torch and Paddle disagree on what it means here

BUGS: Dict[str, Dict[str, Any]] = {
    "activation": {"stage": "forward", "paddle": "paddle_model_activation", "layer": "act2"},
    "compat_activation": {"stage": "forward", "paddle": "paddle_model_compat_activation", "layer": "act2"},
    "label_smoothing": {
        "stage": "backward",
        "torch_loss": "torch_loss_smoothing",
        "paddle_loss": "paddle_loss_smoothing",
        "step": 1,
        "kind": "loss",
    },
}


class TorchMLP(torch.nn.Module):
    """Linear, ReLU, Linear, LayerNorm, GELU, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(12, 32)
        self.act1 = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(32, 24)
        self.norm = torch.nn.LayerNorm(24)
        self.act2 = torch.nn.ReLU()
        self.head = torch.nn.Linear(24, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.norm(self.fc2(self.act1(self.fc1(x))))))


def torch_model() -> torch.nn.Module:
    """The reference model (torch's default initialisation, seeded locally)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = TorchMLP()
        with torch.no_grad():  # a trained LayerNorm is not the identity
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.normal_(0.0, 0.2)
        return model


class PaddleMLP(paddle.nn.Layer):
    """TorchMLP in Paddle; ``linear`` is ``paddle.nn.Linear`` or ``paddle.compat.nn.Linear``."""

    def __init__(self, linear: Any = paddle.nn.Linear, bug: str = "") -> None:
        super().__init__()
        self.fc1 = linear(12, 32)
        self.act1 = paddle.nn.ReLU()
        self.fc2 = linear(32, 24)
        self.norm = paddle.nn.LayerNorm(24)
        self.act2 = paddle.nn.LeakyReLU(0.2) if bug == "activation" else paddle.nn.ReLU()
        self.head = linear(24, NUM_CLASSES)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.head(self.act2(self.norm(self.fc2(self.act1(self.fc1(x))))))


def paddle_model() -> paddle.nn.Layer:
    """The port with ``paddle.nn.Linear`` (weights [in, out])."""
    return PaddleMLP()


def paddle_model_compat() -> paddle.nn.Layer:
    """The port with ``paddle.compat.nn.Linear`` (weights [out, in], as torch)."""
    return PaddleMLP(paddle.compat.nn.Linear)


def paddle_model_activation() -> paddle.nn.Layer:
    """Bug: ``act2`` is a LeakyReLU(0.2)."""
    return PaddleMLP(bug="activation")


def paddle_model_compat_activation() -> paddle.nn.Layer:
    """Bug: ``act2`` is a LeakyReLU(0.2), compat Linear layers."""
    return PaddleMLP(paddle.compat.nn.Linear, bug="activation")


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy."""
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy."""
    return paddle.nn.functional.cross_entropy(output, target)


def torch_loss_smoothing(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing 0.1 and ignore_index 0."""
    return torch.nn.functional.cross_entropy(output, target, label_smoothing=LABEL_SMOOTHING, ignore_index=IGNORE_INDEX)


def paddle_loss_smoothing(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Bug (what a literal port writes): the same arguments give a different value in Paddle."""
    return paddle.nn.functional.cross_entropy(
        output, target, label_smoothing=LABEL_SMOOTHING, ignore_index=IGNORE_INDEX
    )


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Plain SGD."""
    return torch.optim.SGD(model.parameters(), lr=0.1)


def paddle_optimizer(model: paddle.nn.Layer) -> Any:
    """Plain SGD."""
    return paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())

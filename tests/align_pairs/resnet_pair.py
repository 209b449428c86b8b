"""A small ResNet-like classifier in torch and Paddle, with planted porting bugs.

``torch_model`` / ``paddle_model``: the same module tree and names (stem, two residual stages,
global pool, ``fc``). ``paddle_model_renamed``: the same computation re-nested under other names
(``stem.0``, ``stages.1.c1``, ``head``), so only execution order, type and shapes can pair it.
Each ``paddle_model_*`` bug factory differs from ``paddle_model`` in ONE place, recorded in
``BUGS``. Loss and optimiser factories take ``(output, target)`` and ``(model)``; the optimiser
is SGD with momentum, weight decay, a lower learning rate for the backbone (a parameter group)
and a polynomial schedule stepped after every optimiser step.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import paddle
import torch

INPUTS = "2x3x16x16"
TARGETS = "2:0:10"
NUM_CLASSES = 10
SEED = 7
BASE_LR = 0.1
BACKBONE_LR_SCALE = 0.1  # the backbone group trains at 0.1 x BASE_LR
WEIGHT_DECAY = 5e-4
DECAY_STEPS = 2  # the polynomial schedule reaches its end at step 3

# Where each planted bug must be named. Forward bugs: the first divergent layer, torch and Paddle
# qualified names. Backward bugs: step (1-based), kind and the parameters it may name.
BUGS: Dict[str, Dict[str, Any]] = {
    "padding_mode": {"stage": "forward", "paddle": "paddle_model_padding_mode", "layer": "layer2.0.conv1"},
    "activation": {"stage": "forward", "paddle": "paddle_model_activation", "layer": "layer2.0.relu1"},
    "bn_eps": {"stage": "forward", "paddle": "paddle_model_bn_eps", "layer": "layer1.0.bn2"},
    "bn_momentum": {
        "stage": "backward",
        "paddle": "paddle_model_bn_momentum",
        "step": 1,
        "kind": "buffer",
        "torch_parameters": ["layer2.0.bn2.running_mean", "layer2.0.bn2.running_var"],
        "paddle_parameters": ["layer2.0.bn2._mean", "layer2.0.bn2._variance"],
    },
    "group_lr": {
        "stage": "backward",
        "paddle_optimizer": "paddle_optimizer_group_lr",
        "step": 1,
        "kind": "param",
        "parameters": "backbone",  # the group whose "lr" key Paddle ignores
    },
    "poly_end_lr": {
        "stage": "backward",
        "paddle_optimizer": "paddle_optimizer_poly_end_lr",
        "step": 2,  # lr of step 1 agrees; the schedule's first step differs by end_lr / DECAY_STEPS
        "kind": "param",
        "parameters": "all",
        # Moves step-2 parameters by 1.8e-4 relative: far above float64's floor, below float32's
        # (parameters after one step: 1.4e-3 on ResNet-18-like, benchmarks/results/align_floor.json).
        "float32": False,
    },
    "weight_decay": {
        "stage": "backward",
        "paddle_optimizer": "paddle_optimizer_no_weight_decay",
        "step": 1,
        "kind": "param",
        "parameters": "all",
        "float32": False,  # lr x weight decay = 5e-5 relative: below float32's floor (see above)
    },
}


# ---------------------------------------------------------------------------------------- torch
class TorchBlock(torch.nn.Module):
    """A basic residual block (two 3x3 convolutions), a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.relu2 = torch.nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 1, stride, bias=False), torch.nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class TorchResNet(torch.nn.Module):
    """Stem, two stages, global average pool, linear classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.layer1 = torch.nn.Sequential(TorchBlock(8, 8, 1))
        self.layer2 = torch.nn.Sequential(TorchBlock(8, 16, 2))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def trained_like(model: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """Give every BatchNorm non-trivial affine values and running statistics (a trained model's
    look: fresh statistics make eval-mode BatchNorm nearly the identity and hide eps bugs)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.02, 0.5, c)))
    return model


def torch_model() -> torch.nn.Module:
    """The reference model, deterministic (seeded without touching the global generator)."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return trained_like(TorchResNet())


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch."""
    return torch.nn.functional.cross_entropy(output, target)


def last_linear_params(model: Any, linear_types: Tuple[type, ...]) -> List[Any]:
    """The parameters of the model's last Linear layer (the head group of the optimiser)."""
    linears = [
        m for m in (model.modules() if hasattr(model, "modules") else model.sublayers()) if isinstance(m, linear_types)
    ]
    return list(linears[-1].parameters())


def split_groups(model: Any, linear_types: Tuple[type, ...]) -> Tuple[List[Any], List[Any]]:
    """(backbone parameters, head parameters), in the model's parameter order."""
    head_ids = {id(p) for p in last_linear_params(model, linear_types)}
    params = list(model.parameters())
    return [p for p in params if id(p) not in head_ids], [p for p in params if id(p) in head_ids]


class TorchPolySGD(torch.optim.SGD):
    """SGD whose ``step`` also steps a ``PolynomialLR`` schedule (power 1, ends at 0)."""

    def __init__(self, groups: List[Dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(groups, **kwargs)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self, total_iters=DECAY_STEPS, power=1.0)

    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = super().step(closure)
        self.scheduler.step()
        return loss


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD momentum 0.9, weight decay, backbone at 0.1 x lr (group "lr"), polynomial decay."""
    backbone, head = split_groups(model, (torch.nn.Linear,))
    groups = [{"params": backbone, "lr": BASE_LR * BACKBONE_LR_SCALE}, {"params": head}]
    return TorchPolySGD(groups, lr=BASE_LR, momentum=0.9, weight_decay=WEIGHT_DECAY)


# --------------------------------------------------------------------------------------- paddle
def paddle_bn(channels: int, momentum: float = 0.9, epsilon: float = 1e-5) -> paddle.nn.Layer:
    """Paddle BatchNorm2D; Paddle's momentum is torch's 1 - momentum (0.9 <-> 0.1)."""
    return paddle.nn.BatchNorm2D(channels, momentum=momentum, epsilon=epsilon)


class PaddleBlock(paddle.nn.Layer):
    """TorchBlock in Paddle; ``bug`` plants one difference at a known layer."""

    def __init__(self, cin: int, cout: int, stride: int, bug: str = "") -> None:
        super().__init__()
        padding_mode = "reflect" if bug == "padding_mode" else "zeros"
        self.conv1 = paddle.nn.Conv2D(cin, cout, 3, stride, 1, padding_mode=padding_mode, bias_attr=False)
        self.bn1 = paddle_bn(cout)
        self.relu1 = paddle.nn.LeakyReLU(0.1) if bug == "activation" else paddle.nn.ReLU()
        self.conv2 = paddle.nn.Conv2D(cout, cout, 3, 1, 1, bias_attr=False)
        self.bn2 = paddle_bn(
            cout, momentum=0.1 if bug == "bn_momentum" else 0.9, epsilon=1e-3 if bug == "bn_eps" else 1e-5
        )
        self.relu2 = paddle.nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = paddle.nn.Sequential(
                paddle.nn.Conv2D(cin, cout, 1, stride, bias_attr=False), paddle_bn(cout)
            )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class PaddleResNet(paddle.nn.Layer):
    """TorchResNet in Paddle with the same names; ``bugs`` maps a stage name to a block bug."""

    def __init__(self, num_classes: int = NUM_CLASSES, bugs: Dict[str, str] = None) -> None:
        super().__init__()
        bugs = bugs or {}
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, 1, 1, bias_attr=False)
        self.bn1 = paddle_bn(8)
        self.relu = paddle.nn.ReLU()
        self.layer1 = paddle.nn.Sequential(PaddleBlock(8, 8, 1, bugs.get("layer1", "")))
        self.layer2 = paddle.nn.Sequential(PaddleBlock(8, 16, 2, bugs.get("layer2", "")))
        self.avgpool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.nn.Linear(16, num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(paddle.flatten(self.avgpool(x), 1))


def paddle_model() -> paddle.nn.Layer:
    """The correct port (weights come from the torch model through align)."""
    return PaddleResNet()


def paddle_model_padding_mode() -> paddle.nn.Layer:
    """Bug: ``layer2.0.conv1`` pads by reflection instead of zeros (same shapes)."""
    return PaddleResNet(bugs={"layer2": "padding_mode"})


def paddle_model_activation() -> paddle.nn.Layer:
    """Bug: ``layer2.0.relu1`` is a LeakyReLU(0.1) instead of a ReLU."""
    return PaddleResNet(bugs={"layer2": "activation"})


def paddle_model_bn_eps() -> paddle.nn.Layer:
    """Bug: ``layer1.0.bn2`` has epsilon 1e-3 (a TensorFlow habit) instead of 1e-5."""
    return PaddleResNet(bugs={"layer1": "bn_eps"})


def paddle_model_bn_momentum() -> paddle.nn.Layer:
    """Bug: ``layer2.0.bn2`` copies torch's momentum 0.1 literally (Paddle's convention is 0.9):
    invisible in the forward, its running statistics leave torch's after the first train step."""
    return PaddleResNet(bugs={"layer2": "bn_momentum"})


class PaddleRenamedBlock(paddle.nn.Layer):
    """The same block under other names (c1/n1/a1, c2/n2/a2, proj)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = paddle.nn.Conv2D(cin, cout, 3, stride, 1, bias_attr=False)
        self.n1 = paddle_bn(cout)
        self.a1 = paddle.nn.ReLU()
        self.c2 = paddle.nn.Conv2D(cout, cout, 3, 1, 1, bias_attr=False)
        self.n2 = paddle_bn(cout)
        self.a2 = paddle.nn.ReLU()
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = paddle.nn.Sequential(paddle.nn.Conv2D(cin, cout, 1, stride, bias_attr=False), paddle_bn(cout))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.n2(self.c2(self.a1(self.n1(self.c1(x)))))
        return self.a2(out + (x if self.proj is None else self.proj(x)))


class PaddleRenamedResNet(paddle.nn.Layer):
    """The same network re-nested: ``stem`` (Sequential), ``stages`` (LayerList), ``pool``, ``head``."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = paddle.nn.Sequential(
            paddle.nn.Conv2D(3, 8, 3, 1, 1, bias_attr=False), paddle_bn(8), paddle.nn.ReLU()
        )
        self.stages = paddle.nn.LayerList([PaddleRenamedBlock(8, 8, 1), PaddleRenamedBlock(8, 16, 2)])
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.head = paddle.nn.Linear(16, num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(paddle.flatten(self.pool(x), 1))


def paddle_model_renamed() -> paddle.nn.Layer:
    """The correct port under other names and nesting (pairing by name cannot work)."""
    return PaddleRenamedResNet()


# Every torch layer and the Paddle layer of ``paddle_model_renamed`` it must be paired with.
RENAMED_PAIRING: Dict[str, str] = {
    "conv1": "stem.0",
    "bn1": "stem.1",
    "relu": "stem.2",
    "fc": "head",
    "avgpool": "pool",
}
for _i in range(2):
    for _t, _p in (("conv1", "c1"), ("bn1", "n1"), ("relu1", "a1"), ("conv2", "c2"), ("bn2", "n2"), ("relu2", "a2")):
        RENAMED_PAIRING[f"layer{_i + 1}.0.{_t}"] = f"stages.{_i}.{_p}"
RENAMED_PAIRING.update({"layer2.0.downsample.0": "stages.1.proj.0", "layer2.0.downsample.1": "stages.1.proj.1"})


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy over the batch ([N, C] logits: Paddle's default axis -1 is right)."""
    return paddle.nn.functional.cross_entropy(output, target)


class PaddlePolyMomentum(paddle.optimizer.Momentum):
    """Momentum whose ``step`` also steps its ``PolynomialDecay`` schedule."""

    def step(self) -> None:  # noqa: D102
        super().step()
        self._learning_rate.step()


def _paddle_optimizer(model: paddle.nn.Layer, group_key: str, end_lr: float, weight_decay: Any) -> Any:
    backbone, head = split_groups(model, (paddle.nn.Linear,))
    # Paddle reads a group's "learning_rate" as a MULTIPLIER of the global rate; "lr" is ignored.
    scale = BACKBONE_LR_SCALE if group_key == "learning_rate" else BASE_LR * BACKBONE_LR_SCALE
    schedule = paddle.optimizer.lr.PolynomialDecay(BASE_LR, decay_steps=DECAY_STEPS, end_lr=end_lr, power=1.0)
    groups = [{"params": backbone, group_key: scale}, {"params": head}]
    return PaddlePolyMomentum(learning_rate=schedule, momentum=0.9, parameters=groups, weight_decay=weight_decay)


def paddle_optimizer(model: paddle.nn.Layer) -> Any:
    """The correct port of ``torch_optimizer``."""
    return _paddle_optimizer(model, "learning_rate", 0.0, WEIGHT_DECAY)


def paddle_optimizer_group_lr(model: paddle.nn.Layer) -> Any:
    """Bug: the backbone group keeps torch's ``"lr"`` key, which Paddle ignores (full lr)."""
    return _paddle_optimizer(model, "lr", 0.0, WEIGHT_DECAY)


def paddle_optimizer_poly_end_lr(model: paddle.nn.Layer) -> Any:
    """Bug: ``PolynomialDecay``'s default ``end_lr=1e-4`` (torch's ``PolynomialLR`` ends at 0)."""
    return _paddle_optimizer(model, "learning_rate", 1e-4, WEIGHT_DECAY)


def paddle_optimizer_no_weight_decay(model: paddle.nn.Layer) -> Any:
    """Bug: weight decay left out."""
    return _paddle_optimizer(model, "learning_rate", 0.0, None)

"""Tiny torch models and Paddle ports for tests/test_align_engine.py (SPECs point here).

``TorchNet``: conv-BN-ReLU twice (the second conv and ReLU reused: a module called twice), a
pool and a Linear head. Ports: ``paddle_same`` (same names), ``paddle_renamed`` (other names,
re-nested), ``paddle_compat`` (``paddle.compat.nn.Linear``, torch's [out, in] layout), and
planted bugs: ``paddle_bad_act`` (sigmoid for the second ReLU: a forward bug at ``block.act``),
``paddle_bad_momentum`` optimiser (momentum 0.5 instead of 0.9: a step-1 parameter bug at the
first parameter in backward order), ``paddle_bad_loss`` (label smoothing).
"""

from __future__ import annotations

import paddle
import torch


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.block = TorchBlock()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem_bn(self.stem(x)))
        x = self.block(x)
        x = self.relu(x)  # the reused module: a second call
        return self.fc(torch.flatten(self.pool(x), 1))


class PaddleBlock(paddle.nn.Layer):
    def __init__(self, bad_act: bool = False, bad_code: bool = False) -> None:
        super().__init__()
        self.conv = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.bn = paddle.nn.BatchNorm2D(8)
        self.act = paddle.nn.Sigmoid() if bad_act else paddle.nn.ReLU()
        self.bad_code = bad_code

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.act(self.bn(self.conv(x)))
        return out + x if self.bad_code else out  # the planted bug: a residual torch does not have


class PaddleNet(paddle.nn.Layer):
    def __init__(self, bad_act: bool = False, compat: bool = False, bad_code: bool = False) -> None:
        super().__init__()
        self.stem = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.stem_bn = paddle.nn.BatchNorm2D(8)
        self.relu = paddle.nn.ReLU()
        self.block = PaddleBlock(bad_act, bad_code)
        self.pool = paddle.nn.AdaptiveAvgPool2D(1)
        self.fc = paddle.compat.nn.Linear(8, 5) if compat else paddle.nn.Linear(8, 5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu(self.stem_bn(self.stem(x)))
        x = self.block(x)
        x = self.relu(x)
        return self.fc(paddle.flatten(self.pool(x), 1))


class PaddleRenamed(paddle.nn.Layer):
    """The same network with other names and nesting (a PaConvert-style rewrite)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = paddle.nn.Sequential(
            paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.BatchNorm2D(8), paddle.nn.ReLU()
        )
        self.body = PaddleBlock()
        self.head_act = paddle.nn.ReLU()
        self.gap = paddle.nn.AdaptiveAvgPool2D(1)
        self.classifier = paddle.nn.Linear(8, 5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.body(self.features(x))
        x = self.head_act(x)
        return self.classifier(paddle.flatten(self.gap(x), 1))


def torch_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = TorchNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (net.stem_bn, net.block.bn):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return net


def paddle_same() -> paddle.nn.Layer:
    return PaddleNet()


def paddle_renamed() -> paddle.nn.Layer:
    return PaddleRenamed()


def paddle_compat() -> paddle.nn.Layer:
    return PaddleNet(compat=True)


def paddle_bad_act() -> paddle.nn.Layer:
    return PaddleNet(bad_act=True)


def paddle_bad_block() -> paddle.nn.Layer:
    """A bug in a block's own code (no layer inside the block differs)."""
    return PaddleNet(bad_code=True)


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    return paddle.nn.functional.cross_entropy(output, target)


def paddle_bad_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    return paddle.nn.functional.cross_entropy(output, target, label_smoothing=0.1)


def torch_sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def paddle_sgd(model: paddle.nn.Layer) -> paddle.optimizer.Optimizer:
    return paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=model.parameters())


def paddle_bad_momentum(model: paddle.nn.Layer) -> paddle.optimizer.Optimizer:
    return paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.5, parameters=model.parameters())


class TorchMLP(torch.nn.Module):
    """Square Linear layers: only the layer type says whether a weight is transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(6, 6)
        self.act = torch.nn.Tanh()
        self.out = torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.hidden(x)))


class PaddleMLP(paddle.nn.Layer):
    def __init__(self, compat: bool = False, extra: bool = False) -> None:
        super().__init__()
        linear = paddle.compat.nn.Linear if compat else paddle.nn.Linear
        self.hidden = linear(6, 6)
        self.act = paddle.nn.Tanh()
        self.out = linear(6, 6)
        self.extra = paddle.nn.Linear(6, 6) if extra else None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.act(self.hidden(x))
        return self.out(self.extra(x) if self.extra is not None else x)


def torch_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return TorchMLP()


def paddle_mlp() -> paddle.nn.Layer:
    return PaddleMLP()


def paddle_mlp_compat() -> paddle.nn.Layer:
    return PaddleMLP(compat=True)


def paddle_mlp_extra() -> paddle.nn.Layer:
    """A Linear layer the torch model does not have."""
    return PaddleMLP(extra=True)


class TorchTokens(torch.nn.Module):
    """Token ids in (integer inputs), and a reshape that only works on a batch of 2."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)).reshape(2, -1))


class PaddleTokens(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.embed = paddle.nn.Embedding(11, 4)
        self.norm = paddle.nn.LayerNorm(4)
        self.head = paddle.nn.Linear(12, 3)

    def forward(self, ids: paddle.Tensor) -> paddle.Tensor:
        return self.head(self.norm(self.embed(ids)).reshape([2, -1]))


def torch_tokens() -> torch.nn.Module:
    torch.manual_seed(0)
    return TorchTokens()


def paddle_tokens() -> paddle.nn.Layer:
    return PaddleTokens()

"""A small encoder-decoder segmenter (BatchNorm, max-pool, bilinear x2 upsampling, skip
concatenations) in torch and Paddle.

``up2`` upsamples with ``align_corners=False`` (torch's default), ``up1`` with
``align_corners=True`` (FarSeg's choice; Paddle's CPU kernel computes its coordinates in float32,
a known framework floor in float64). 16 classes at 16x16: the class axis has the size of the
width, so a cross-entropy that forgets ``axis=1`` runs in Paddle and is silently wrong.
Planted bugs: ``up1`` with ``align_corners=False``; the loss without ``axis=1``.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import paddle
import torch

INPUTS = "2x3x16x16"
TARGETS = "2x16x16:0:16"
NUM_CLASSES = 16
SEED = 3

BUGS: Dict[str, Dict[str, Any]] = {
    "align_corners": {"stage": "forward", "paddle": "paddle_model_align_corners", "layer": "up1"},
    "loss_no_axis": {"stage": "backward", "paddle_loss": "paddle_loss_no_axis", "step": 1, "kind": "loss"},
}


def _torch_cbr(cin: int, cout: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()
    )


class TorchEncDec(torch.nn.Module):
    """enc1 -> pool -> enc2 -> pool -> mid -> up2 (+enc2) -> dec2 -> up1 (+enc1) -> dec1 -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _torch_cbr(3, 8)
        self.pool1 = torch.nn.MaxPool2d(2)
        self.enc2 = _torch_cbr(8, 12)
        self.pool2 = torch.nn.MaxPool2d(2)
        self.mid = _torch_cbr(12, 12)
        self.up2 = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2 = _torch_cbr(24, 8)
        self.up1 = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.dec1 = _torch_cbr(16, 8)
        self.classifier = torch.nn.Conv2d(8, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        m = self.mid(self.pool2(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.classifier(d1)


def torch_model() -> torch.nn.Module:
    """The reference model: torch's default init, trained-looking BatchNorms, seeded locally."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = TorchEncDec()
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c)))
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c)))
                module.running_var.copy_(torch.from_numpy(rng.uniform(0.05, 0.5, c)))
    return model


def _paddle_cbr(cin: int, cout: int) -> paddle.nn.Sequential:
    return paddle.nn.Sequential(
        paddle.nn.Conv2D(cin, cout, 3, padding=1, bias_attr=False), paddle.nn.BatchNorm2D(cout), paddle.nn.ReLU()
    )


class PaddleEncDec(paddle.nn.Layer):
    """TorchEncDec in Paddle with the same names; ``up1_align_corners`` plants the bug."""

    def __init__(self, up1_align_corners: bool = True) -> None:
        super().__init__()
        self.enc1 = _paddle_cbr(3, 8)
        self.pool1 = paddle.nn.MaxPool2D(2)
        self.enc2 = _paddle_cbr(8, 12)
        self.pool2 = paddle.nn.MaxPool2D(2)
        self.mid = _paddle_cbr(12, 12)
        self.up2 = paddle.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec2 = _paddle_cbr(24, 8)
        self.up1 = paddle.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=up1_align_corners)
        self.dec1 = _paddle_cbr(16, 8)
        self.classifier = paddle.nn.Conv2D(8, NUM_CLASSES, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        m = self.mid(self.pool2(e2))
        d2 = self.dec2(paddle.concat([self.up2(m), e2], 1))
        d1 = self.dec1(paddle.concat([self.up1(d2), e1], 1))
        return self.classifier(d1)


def paddle_model() -> paddle.nn.Layer:
    """The correct port, same names."""
    return PaddleEncDec()


def paddle_model_align_corners() -> paddle.nn.Layer:
    """Bug: ``up1`` with align_corners=False."""
    return PaddleEncDec(up1_align_corners=False)


class PaddleRenamedEncDec(paddle.nn.Layer):
    """The same network as ``down`` / ``bottleneck`` / ``up`` lists and a ``seg_head``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = paddle.nn.LayerList(
            [_paddle_cbr(3, 8), paddle.nn.MaxPool2D(2), _paddle_cbr(8, 12), paddle.nn.MaxPool2D(2)]
        )
        self.bottleneck = _paddle_cbr(12, 12)
        self.up = paddle.nn.LayerList(
            [
                paddle.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                _paddle_cbr(24, 8),
                paddle.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                _paddle_cbr(16, 8),
            ]
        )
        self.seg_head = paddle.nn.Conv2D(8, NUM_CLASSES, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        e1 = self.down[0](x)
        e2 = self.down[2](self.down[1](e1))
        m = self.bottleneck(self.down[3](e2))
        d2 = self.up[1](paddle.concat([self.up[0](m), e2], 1))
        d1 = self.up[3](paddle.concat([self.up[2](d2), e1], 1))
        return self.seg_head(d1)


def paddle_model_renamed() -> paddle.nn.Layer:
    """The correct port under other names and nesting."""
    return PaddleRenamedEncDec()


RENAMED_PAIRING: Dict[str, str] = {
    "pool1": "down.1",
    "pool2": "down.3",
    "up2": "up.0",
    "up1": "up.2",
    "classifier": "seg_head",
}
for _t, _p in (("enc1", "down.0"), ("enc2", "down.2"), ("mid", "bottleneck"), ("dec2", "up.1"), ("dec1", "up.3")):
    RENAMED_PAIRING[_t] = _p
    for _k in range(3):
        RENAMED_PAIRING[f"{_t}.{_k}"] = f"{_p}.{_k}"


def torch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy on NCHW logits (torch's class axis is 1)."""
    return torch.nn.functional.cross_entropy(output, target)


def paddle_loss(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Per-pixel cross-entropy on NCHW logits: Paddle needs ``axis=1``."""
    return paddle.nn.functional.cross_entropy(output, target, axis=1)


def paddle_loss_no_axis(output: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Bug (PaConvert's literal conversion): Paddle's default axis=-1 takes the WIDTH as classes."""
    return paddle.nn.functional.cross_entropy(output, target)


def torch_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum."""
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def paddle_optimizer(model: paddle.nn.Layer) -> Any:
    """Momentum, the same settings."""
    return paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters())

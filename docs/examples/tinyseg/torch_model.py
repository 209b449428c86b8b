"""A tiny segmentation model in PyTorch: the starting point of docs/align_your_model.md.

Factories for ``python -m align.forward`` / ``python -m align.backward``: ``model()``,
``loss(output, target)`` and ``optimizer(model)``.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 16


class TinySeg(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fuse = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        s = self.stem(x)
        d = self.up(self.down(s))
        return self.head(self.fuse(torch.cat([d, s], dim=1)))


def model():
    torch.manual_seed(0)
    return TinySeg()


def loss(output, target):
    return F.cross_entropy(output, target)


class ScheduledSGD(torch.optim.SGD):
    """SGD that steps its PolynomialLR schedule (to 0 over 2 steps) after each step."""

    def __init__(self, groups, **kwargs):
        super().__init__(groups, **kwargs)
        self.scheduler = torch.optim.lr_scheduler.PolynomialLR(self, total_iters=2, power=1.0)

    def step(self, closure=None):
        result = super().step(closure)
        self.scheduler.step()
        return result


def optimizer(model):
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return ScheduledSGD([{"params": backbone, "lr": 0.01}, {"params": head}], lr=0.1, momentum=0.9)

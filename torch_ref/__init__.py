"""PyTorch re-implementations of FarSeg and FactSeg that load the official checkpoints unchanged."""
from __future__ import annotations

import torch.nn as nn

from .factseg import FactSeg
from .farseg import FarSeg

MODELS = {"farseg": FarSeg, "factseg": FactSeg}


def build_model(name: str, num_classes: int = 16) -> nn.Module:
    """Build ``name`` ("farseg" or "factseg") with the official initialisation."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes)


__all__ = ["FarSeg", "FactSeg", "build_model", "MODELS"]

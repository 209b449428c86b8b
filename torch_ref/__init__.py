"""PyTorch re-implementations of FarSeg and FactSeg that load the official checkpoints unchanged."""

from __future__ import annotations

import torch.nn as nn

from weights import check_model_name

from .factseg import FactSeg
from .farseg import FarSeg

MODELS = {"farseg": FarSeg, "factseg": FactSeg}
# The modules whose outputs are each model's pre-softmax logits (FactSeg: multi-class head, then
# binary head): hooks on them read the logits of the very forward that gives the probabilities.
LOGIT_MODULES = {"farseg": ("upsample4x_op",), "factseg": ("fg_upsample", "bi_upsample")}


def build_model(name: str, num_classes: int = 16) -> nn.Module:
    """Build ``name`` ("farseg" or "factseg") with the official initialisation."""
    return MODELS[check_model_name(name, choices=tuple(MODELS))](num_classes=num_classes)


__all__ = ["FarSeg", "FactSeg", "build_model", "MODELS", "LOGIT_MODULES"]

"""PaddlePaddle ports of FarSeg and FactSeg, mirroring ``torch_ref`` name for name."""

from __future__ import annotations

import warnings

# Paddle 3.3.1 warns at import time that ccache is missing (it matters only for building C++
# extensions, which this project does not do): silence that one message for every CLI.
warnings.filterwarnings("ignore", message="No ccache found")

import paddle.nn as nn  # noqa: E402

from weights import check_model_name  # noqa: E402

from .factseg import FactSeg  # noqa: E402
from .farseg import FarSeg  # noqa: E402

MODELS = {"farseg": FarSeg, "factseg": FactSeg}
# The modules whose outputs are each model's pre-softmax logits (FactSeg: multi-class head, then
# binary head): hooks on them read the logits of the very forward that gives the probabilities.
LOGIT_MODULES = {"farseg": ("upsample4x_op",), "factseg": ("fg_upsample", "bi_upsample")}


def build_model(name: str, num_classes: int = 16) -> nn.Layer:
    """Build ``name`` ("farseg" or "factseg") with the official initialisation."""
    return MODELS[check_model_name(name, choices=tuple(MODELS))](num_classes=num_classes)


__all__ = ["FarSeg", "FactSeg", "build_model", "MODELS", "LOGIT_MODULES"]

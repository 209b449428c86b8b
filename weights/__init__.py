"""What is known about each checkpoint: the official state-dict layouts.

The layouts are the key -> shape maps (state-dict order, buffers included) of the
official FarSeg and FactSeg ResNet-50 checkpoints. They are the contract for
``torch_ref`` (same keys, order and shapes) and for ``convert`` (validation).
"""

from __future__ import annotations

import functools
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple, Type

WEIGHTS_DIR = Path(__file__).resolve().parent

MODEL_NAMES = ("farseg", "factseg")

LAYOUT_FILES = {
    "farseg": WEIGHTS_DIR / "farseg50_official_keys.json",
    "factseg": WEIGHTS_DIR / "factseg50_official_keys.json",
}

# Module type owning each layout key, and what each type is (batchnorm / linear / other):
# what the converter maps by, recorded from torch_ref so that converting needs no torch.
MODULE_TYPES_FILE = WEIGHTS_DIR / "module_types.json"

# Prefix under which each model keeps its ResNet-50 (torchvision key names follow it).
ENCODER_PREFIX = {"farseg": "en.resnet.", "factseg": "resencoder.resnet."}

# Official figures (mIoU over 16 classes incl. background) and the seed Paddle reproductions.
OFFICIAL_MIOU = {"farseg": 63.71, "factseg": 64.80}
SEED_REPRODUCTION_MIOU = {"farseg": 63.09, "factseg": 64.64}


def check_model_name(
    name: str, choices: Sequence[str] = MODEL_NAMES, error: Type[Exception] = ValueError, what: str = "model"
) -> str:
    """Return ``name`` if it is one of ``choices``, else raise ``error`` naming them (one line).

    The one model-name check of the project: callers pass their own exception type (e.g.
    ``AlignInputError``), wider ``choices`` (the converter's ``auto``) or ``what`` ("target").
    """
    if not isinstance(name, str) or name not in choices:
        raise error(f"unknown {what} {name!r}: expected one of {', '.join(choices)}")
    return name


def load_layout(name: str) -> "OrderedDict[str, Tuple[int, ...]]":
    """The official torch state-dict layout of ``name``: key -> shape, in state-dict order."""
    check_model_name(name)
    with open(LAYOUT_FILES[name], encoding="utf-8") as f:
        raw: Dict[str, list] = json.load(f, object_pairs_hook=OrderedDict)
    return OrderedDict((k, tuple(v)) for k, v in raw.items())


@functools.lru_cache(maxsize=None)
def _module_types() -> Dict[str, Any]:
    with open(MODULE_TYPES_FILE, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=OrderedDict)


def load_module_types(name: str) -> Tuple["OrderedDict[str, str]", Dict[str, str]]:
    """(key -> owning module type in state-dict order, module type -> kind) of model ``name``."""
    check_model_name(name)
    table = _module_types()
    return OrderedDict(table["models"][name]), dict(table["kinds"])

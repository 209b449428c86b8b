"""Checkpoint converter between the official/torch_ref (PyTorch) and paddle_impl (Paddle)
state dicts of FarSeg and FactSeg, plus torchvision's ImageNet ResNet-50 as encoder init.

Command line: ``python -m convert IN [-o OUT] [--model ...] [--to ...] [--target ...]``
(``python -m convert --help``). Python API::

    from convert import load_state_dict_file, convert_file, torch_to_paddle
    state = load_state_dict_file("farseg50.pth")        # safe, wrapper/prefix stripped
    paddle_model.set_state_dict(torch_to_paddle(state, "farseg"))

Nothing here imports torch or Paddle to read, detect, validate, convert or write (torch
files are parsed by ``convert.torch_pickle`` and written in torch's zip format by
``convert.writers``, the module types come from ``weights/module_types.json``); torch is
imported only to take the rules of a torch module (``rules_from_module``) or to make tensors
(``as_torch``). This package imports neither model package (``torch_ref.module_types`` writes
the module-type table).
"""

from __future__ import annotations

from .api import (
    ConversionResult,
    convert_file,
    default_output_path,
    detect_architecture,
    imagenet_encoder_state,
    run_conversion,
)
from .checkpoint import load_state_dict_file, read_checkpoint
from .errors import CheckpointError
from .rules import (
    KeyRule,
    as_numpy,
    as_torch,
    detect_model,
    expected_layout,
    imagenet_resnet50_to,
    model_rules,
    paddle_layout,
    paddle_to_torch,
    rules_from_module,
    torch_layout,
    torch_to_paddle,
    validate,
)
from .safe_load import LoadedCheckpoint
from .writers import atomic_write, save_paddle, save_torch

__all__ = [
    "CheckpointError",
    "ConversionResult",
    "KeyRule",
    "LoadedCheckpoint",
    "as_numpy",
    "as_torch",
    "atomic_write",
    "convert_file",
    "default_output_path",
    "detect_architecture",
    "detect_model",
    "expected_layout",
    "imagenet_encoder_state",
    "imagenet_resnet50_to",
    "load_state_dict_file",
    "model_rules",
    "paddle_layout",
    "paddle_to_torch",
    "read_checkpoint",
    "rules_from_module",
    "run_conversion",
    "save_paddle",
    "save_torch",
    "torch_layout",
    "torch_to_paddle",
    "validate",
]

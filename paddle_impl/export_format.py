"""What an export of ``python -m paddle_impl.export`` holds, and how to read its ``model.yml``.

Written by :mod:`paddle_impl.export`, read by :mod:`paddle_impl.infer` (and through it by
``python -m paddle_impl.predict --model-dir``): the facts both sides need live here, so that
export imports infer (to check what it wrote) and infer never imports export.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import yaml

EXPORT_PROG = "python -m paddle_impl.export"
PROGRAM_FILE = "model.json"
PARAMS_FILE = "model.pdiparams"
CONFIG_FILE = "model.yml"
INPUT_NAME = "x"
FORMAT = "paddle-inference-pir"  # model.json + model.pdiparams, Paddle >= 3.0


class ExportError(Exception):
    """The export could not be written or did not pass its check; one line."""


def read_deploy_config(model_dir: str) -> Dict[str, object]:
    """Read ``DIR/model.yml`` (yaml.safe_load); ExportError if the folder is not an export."""
    program = os.path.join(model_dir, PROGRAM_FILE)
    params = os.path.join(model_dir, PARAMS_FILE)
    config_path = os.path.join(model_dir, CONFIG_FILE)
    missing = [p for p in (program, params, config_path) if not os.path.isfile(p)]
    if missing:
        raise ExportError(f"{model_dir}: not an export of python -m paddle_impl.export (missing"
                          f" {', '.join(os.path.basename(p) for p in missing)})")
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise ExportError(f"{config_path}: cannot read ({' '.join(str(error).split())})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or "input" not in config:
        raise ExportError(f"{config_path}: not a model.yml written by {EXPORT_PROG}")
    return config


def fixed_size(config: Dict[str, object]) -> Optional[Tuple[int, int]]:
    """(H, W) of a fixed-size export, None for a dynamic one."""
    height, width = config["input"]["shape"][2:]  # type: ignore[index]
    return None if height == -1 or width == -1 else (int(height), int(width))

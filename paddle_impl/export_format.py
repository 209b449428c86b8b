"""What an export of ``python -m paddle_impl.export`` holds, and how to read its ``model.yml``.

Written by :mod:`paddle_impl.export`, read by :mod:`paddle_impl.infer` (and through it by
``python -m paddle_impl.predict --model-dir``): the facts both sides need live here, so that
export imports infer (to check what it wrote) and infer never imports export. ``model.yml``
itself, its check against the program, and ONNX exports are framework-free
(:mod:`app.exported`, shared with ``torch_ref.export``).
"""

from __future__ import annotations

from app.exported import (
    CONFIG_FILE,
    FORMAT_FILES,
    INPUT_NAME,
    PADDLE_FORMAT,
    ExportError,
    fixed_size,
    read_deploy_config,
)

EXPORT_PROG = "python -m paddle_impl.export"
FORMAT = PADDLE_FORMAT  # model.json + model.pdiparams, Paddle >= 3.0
PROGRAM_FILE, PARAMS_FILE = FORMAT_FILES[FORMAT]

__all__ = [
    "CONFIG_FILE",
    "EXPORT_PROG",
    "FORMAT",
    "INPUT_NAME",
    "PARAMS_FILE",
    "PROGRAM_FILE",
    "ExportError",
    "fixed_size",
    "read_deploy_config",
]

"""What the environment report (``python -m align.env``) reads from torch, through the same
functions the ``python -m torch_ref.*`` commands use.

:mod:`app.environment` writes the report once for both frameworks; this module gives it
torch's facts (build, devices, cuDNN, CPU kernels), the dtype one convolution really computes
in under torch's autocast, the trainer's own device resolution and the evaluate/predict
backend.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict

import torch
import torch.nn.functional as F

from app.backend import Backend
from app.config import Config

from .sliding_window import AMP_DTYPES

NAME = "torch"
PACKAGE = "torch_ref"
VERSION = torch.__version__


def read_facts() -> Dict[str, Any]:
    """torch's build, devices, cuDNN and CPU kernels."""
    info: Dict[str, Any] = {
        "installed": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available(),
        "onednn_version": None,
        "devices": [],
    }
    for line in torch.__config__.show().splitlines():
        if "MKL-DNN" in line or "oneDNN" in line:
            info["onednn_version"] = line.strip(" -").split("(")[0].strip()
    with warnings.catch_warnings(record=True) as caught:  # a too-new build warns here
        warnings.simplefilter("always")
        info["cuda_available"] = torch.cuda.is_available()
    if caught and not info["cuda_available"]:
        info["cuda_error"] = str(caught[0].message).strip().splitlines()[0][:200]
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                }
            )
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    onednn = f"{info['onednn_version'] or 'oneDNN'} {'on' if info['onednn'] else 'off'}"
    info["cpu_kernels"] = f"CPU kernels {info['cpu_capability']}, {onednn}"
    return info


def autocast_dtype(device: str, amp: str) -> str:
    """The dtype one convolution produces under torch's autocast for ``amp`` on ``device``
    (the engine's own ``AMP_DTYPES`` table)."""
    x = torch.ones(1, 3, 8, 8, device=device)
    w = torch.ones(4, 3, 3, 3, device=device)
    with torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp]):
        return str(F.conv2d(x, w).dtype).replace("torch.", "")


def train_device(config: Config) -> str:
    """The device ``python -m torch_ref.train`` trains ``config`` on: its own ``setup_runtime``
    (raises its own refusal)."""
    from .train import setup_runtime  # the trainer pulls in the data pipeline: only when asked

    return str(setup_runtime(config).device)


def backend() -> Backend:
    """The object ``python -m torch_ref.evaluate`` and ``.predict`` run on."""
    from .backend import BACKEND

    return BACKEND

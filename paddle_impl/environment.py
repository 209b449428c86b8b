"""What the environment report (``python -m align.env``) reads from Paddle, through the same
functions the ``python -m paddle_impl.*`` commands use.

:mod:`app.environment` writes the report once for both frameworks; this module gives it
Paddle's facts (build, devices, cuDNN, oneDNN), the dtype one convolution really computes in
under Paddle's autocast, the trainer's own device resolution and the evaluate/predict backend.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict

import paddle
import paddle.nn.functional as F

from app.backend import Backend
from app.config import Config

from .sliding_window import AMP_DTYPES

NAME = "paddle"
PACKAGE = "paddle_impl"
VERSION = paddle.__version__


def read_facts() -> Dict[str, Any]:
    """Paddle's build, devices, cuDNN and oneDNN."""
    compiled = bool(paddle.device.is_compiled_with_cuda())
    info: Dict[str, Any] = {
        "installed": True,
        "version": paddle.__version__,
        "compiled_with_cuda": compiled,
        "cuda_build": paddle.version.cuda() if compiled else None,
        "cudnn": paddle.version.cudnn() if compiled else None,
        "devices": [],
        "gpu_count": 0,
    }
    core = getattr(getattr(paddle, "base", None), "core", None)
    for probe in ("is_compiled_with_onednn", "is_compiled_with_mkldnn"):
        if core is not None and hasattr(core, probe):
            info["onednn"] = bool(getattr(core, probe)())
            break
    info["cpu_kernels"] = f"oneDNN {'compiled in' if info.get('onednn') else 'absent'}"
    if compiled:
        try:
            info["gpu_count"] = paddle.device.cuda.device_count()
            for index in range(info["gpu_count"]):
                props = paddle.device.cuda.get_device_properties(index)
                info["devices"].append(
                    {
                        "name": props.name,
                        "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1),
                    }
                )
        except Exception as error:  # noqa: BLE001 - a broken CUDA set-up is a fact too
            lines = str(error).strip().splitlines()
            info["cuda_error"] = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
    return info


def autocast_dtype(device: str, amp: str) -> str:
    """The dtype one convolution produces under Paddle's autocast for ``amp`` on ``device``
    (the engine's own ``AMP_DTYPES`` table)."""
    paddle.set_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with paddle.amp.auto_cast(enable=True, dtype=AMP_DTYPES[amp], level="O1"):
            out = F.conv2d(paddle.ones([1, 3, 8, 8]), paddle.ones([4, 3, 3, 3]))
    return str(out.dtype).replace("paddle.", "")


def train_device(config: Config) -> str:
    """The device ``python -m paddle_impl.train`` trains ``config`` on: its own
    ``setup_runtime`` (raises its own refusal)."""
    from .train import setup_runtime  # the trainer pulls in the data pipeline: only when asked

    return str(setup_runtime(config).device)


def backend() -> Backend:
    """The object ``python -m paddle_impl.evaluate`` and ``.predict`` run on."""
    from .backend import BACKEND

    return BACKEND

"""The Paddle side of the shared commands: ``BACKEND`` implements :class:`app.backend.Backend`.

``python -m paddle_impl.evaluate`` and ``python -m paddle_impl.predict`` are ``app``'s runners
over this object; everything framework-specific they need (devices, building the engine,
the confusion matrix on the device, tensors back to the host, and an exported program run
by Paddle Inference for ``predict --model-dir``) is here and nowhere else.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from app.exported import ExportedModel, engine_window

from . import build_model
from .engine_cache import ENGINES, CacheEntryError, open_inference_engine
from .export_format import ExportError
from .infer import InferenceError, create_predictor
from .metrics import confusion_matrix
from .sliding_window import SlidingWindowInference, gpu_available, load_weights, resolve_device


class DeployedLayer(nn.Layer):
    """An export run by Paddle Inference (or onnxruntime), as a layer the sliding-window engine can drive.

    The engine moves its model to the device, sets eval mode and reads the dtype of the first
    parameter; an export has no dynamic-graph parameters, so this layer carries one float32
    marker parameter for that. Each window batch goes to the predictor through host memory.
    """

    def __init__(self, deployed: ExportedModel) -> None:
        super().__init__()
        self.deployed = deployed
        self.dtype_marker = self.create_parameter([1], dtype="float32")  # read by the engine only

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.to_tensor(self.deployed(x.numpy()), place=x.place)


class PaddleBackend:
    """:class:`app.backend.Backend` for PaddlePaddle (dynamic graph, or an export)."""

    name = "paddle"
    display_name = "PaddlePaddle"
    version = paddle.__version__
    gpu_name = "gpu"
    supports_model_dir = True
    deploy_backends: Tuple[str, ...] = ("auto", "onednn", "onednn-bf16", "native", "paddle-default", "onnxruntime")
    # --engine for --weights: auto (Paddle Inference oneDNN on the CPU, the dynamic graph on a GPU
    # or in float64), inference, dygraph (see paddle_impl.engine_cache)
    engines: Tuple[str, ...] = ENGINES
    engine_errors: Tuple[type, ...] = (ValueError, ExportError, InferenceError, CacheEntryError)
    run_errors: Tuple[type, ...] = (InferenceError,)

    def gpu_available(self) -> bool:
        return gpu_available()

    def resolve_device(self, device: str) -> str:
        return resolve_device(device)

    def resolve_engine(self, engine: str, device: str, dtype: str = "float32", amp: Optional[str] = None) -> str:
        """The engine ``--engine`` names for this run: "auto" is Paddle Inference (oneDNN) on the
        CPU in float32 or bf16 and the dynamic graph otherwise (GPU, float64, fp16); an explicit
        "inference" it cannot serve is a ValueError (one line)."""
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
        inference_serves = resolve_device(device) == "cpu" and dtype == "float32" and amp in (None, "bf16")
        if engine == "auto":
            return "inference" if inference_serves else "dygraph"
        if engine == "inference" and not inference_serves:
            raise ValueError(
                "--engine inference runs on the CPU in float32 (or --amp bf16); use --engine dygraph"
                " for --device gpu, --dtype float64 or --amp fp16"
            )
        return engine

    def check_amp(self, device: str, amp: Optional[str], engine: str = "auto") -> Optional[str]:
        engine = self.resolve_engine(engine, device, "float32", amp)
        if engine == "inference":
            return f"Paddle Inference oneDNN {amp}" if amp else None
        if amp is not None and resolve_device(device) == "cpu":
            # Measured: paddle.amp.auto_cast(dtype="bfloat16") on the CPU returns float32
            # probabilities identical to float32 (Paddle 3.3.1 has no CPU autocast lists).
            raise ValueError(
                f"--amp {amp}: Paddle 3.3.1's dynamic graph has no CPU mixed precision (it would"
                " run float32); for oneDNN bf16 use --engine inference (the default) or --model-dir DIR"
            )
        return None

    def build_engine(
        self,
        model_name: str,
        weights: str,
        window: int,
        stride: int,
        device: str,
        batch_size: int = 1,
        amp: Optional[str] = None,
        dtype: str = "float32",
        exact_float32: bool = True,
        engine: str = "auto",
        engine_cache: Optional[str] = None,
    ) -> Tuple[SlidingWindowInference, str]:
        """The sliding-window engine over ``model_name`` with ``weights``.

        ``engine``: "dygraph" (Paddle's dynamic graph), "inference" (the model saved as a
        static program and run by Paddle Inference with oneDNN, float32 or bf16 with ``amp``,
        cached in ``engine_cache``: :mod:`paddle_impl.engine_cache`), or "auto": inference on
        the CPU in float32 / bf16, the dynamic graph otherwise (GPU, float64).
        """
        engine = self.resolve_engine(engine, device, dtype, amp)
        self.check_amp(device, amp, engine)
        model = build_model(model_name)
        how = load_weights(model, model_name, weights)
        if engine == "inference":
            paddle.set_device("cpu")
            deployed, runs = open_inference_engine(model, model_name, weights, how, amp, engine_cache)
            return SlidingWindowInference(DeployedLayer(deployed), window, stride, device, batch_size), f"{how}; {runs}"
        if dtype == "float64":
            model = model.to(dtype="float64")
        # (exact_float32: Paddle's cuDNN/cuBLAS TF32 switches are build-dependent flags, left at
        # Paddle's defaults either way.)
        return SlidingWindowInference(model, window, stride, device, batch_size, amp), f"{how}; dynamic graph"

    def build_deployed_engine(
        self,
        model_dir: str,
        window: Optional[int],
        stride: Optional[int],
        device: str,
        batch_size: int,
        backend: str,
        amp: str,
    ) -> Tuple[SlidingWindowInference, str]:
        if amp == "bf16" and backend in ("auto", "onednn", "onednn-bf16") and resolve_device(device) == "cpu":
            backend = "onednn-bf16"  # Paddle Inference's oneDNN bf16 passes
        elif amp != "none":
            raise ValueError(
                f"--amp {amp} with --model-dir: only bf16 on the CPU (oneDNN backends) is supported;"
                " otherwise an export runs in float32"
            )
        deployed = create_predictor(model_dir, device, backend)
        window, stride = engine_window(deployed.config, window, stride)
        engine = SlidingWindowInference(DeployedLayer(deployed), window, stride, device, batch_size)
        runtime = "onnxruntime" if deployed.backend == "onnxruntime" else f"Paddle Inference {deployed.backend} backend"
        return engine, f"{deployed.config['model']} export {model_dir}, {runtime}"

    def new_confusion(self, engine: SlidingWindowInference, num_classes: int) -> paddle.Tensor:
        return paddle.zeros([num_classes, num_classes], dtype="int64")

    def confusion_matrix(self, classes: paddle.Tensor, target: paddle.Tensor, num_classes: int) -> paddle.Tensor:
        return confusion_matrix(classes, target, num_classes)

    def to_host(self, tensor: paddle.Tensor) -> np.ndarray:
        return tensor.numpy()

    def classes_to_host(self, classes: paddle.Tensor) -> np.ndarray:
        return classes.astype("uint8").numpy()


BACKEND = PaddleBackend()

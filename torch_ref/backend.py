"""The PyTorch side of the shared commands: ``BACKEND`` implements :class:`app.backend.Backend`.

``python -m torch_ref.evaluate`` and ``python -m torch_ref.predict`` are ``app``'s runners
over this object; everything framework-specific they need (devices, building the engine,
the confusion matrix on the device, tensors back to the host, and an ONNX export run by
onnxruntime for ``--model-dir``) is here and nowhere else.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from app.exported import ONNX_FORMAT, ExportError, OnnxModel, engine_window, read_deploy_config

from . import build_model
from .metrics import confusion_matrix
from .sliding_window import DeployedModule, SlidingWindowInference, gpu_available, load_weights, resolve_device


class TorchBackend:
    """:class:`app.backend.Backend` for PyTorch (dynamic graph, or an ONNX export by onnxruntime)."""

    name = "torch"
    display_name = "PyTorch"
    version = torch.__version__
    gpu_name = "cuda"
    supports_model_dir = True
    deploy_backends: Tuple[str, ...] = ("auto", "onnxruntime")
    engines: Tuple[str, ...] = ()  # one engine (the dynamic graph): no --engine option
    engine_errors: Tuple[type, ...] = (ValueError, ExportError)
    run_errors: Tuple[type, ...] = (ExportError,)

    def gpu_available(self) -> bool:
        return gpu_available()

    def resolve_device(self, device: str) -> torch.device:
        return resolve_device(device)

    def check_amp(self, device: str, amp: Optional[str], engine: str = "auto") -> Optional[str]:
        # torch autocasts on every device (on a CPU in bfloat16 or float16 kernels): nothing refused.
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
        if engine != "auto":  # one engine here, the dynamic graph (no --engine option)
            raise ValueError(f"unknown engine {engine!r}: torch_ref has one engine (auto)")
        self.check_amp(device, amp)
        model = build_model(model_name)
        how = load_weights(model, model_name, weights)
        if dtype == "float64":
            model = model.to(torch.float64)
        if exact_float32 and resolve_device(device).type == "cuda" and amp is None:
            # float32 means float32: cuDNN and cuBLAS would otherwise round convolution and
            # matmul inputs to TF32 (10-bit mantissa) on Ampere and later GPUs.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        return SlidingWindowInference(model, window, stride, device, batch_size, amp), how

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
        config = read_deploy_config(model_dir)
        if config["format"] != ONNX_FORMAT:
            raise ValueError(
                f"{model_dir} is a Paddle Inference export: run it with python -m paddle_impl.predict"
                " (or export ONNX: python -m torch_ref.export --format onnx)"
            )
        if amp != "none":
            raise ValueError("--amp: an ONNX export runs in float32 under onnxruntime")
        if resolve_device(device).type != "cpu":
            raise ValueError("--model-dir with an ONNX export runs on the CPU (onnxruntime's CPU provider)")
        window, stride = engine_window(config, window, stride)
        deployed = OnnxModel(model_dir, config=config)
        # The export is NCHW float32; the engine's channels-last input would only add a copy.
        engine = SlidingWindowInference(
            DeployedModule(deployed), window, stride, "cpu", batch_size, channels_last=False
        )
        return engine, f"{config['model']} ONNX export {model_dir}, onnxruntime"

    def new_confusion(self, engine: SlidingWindowInference, num_classes: int) -> torch.Tensor:
        return torch.zeros([num_classes, num_classes], dtype=torch.int64, device=engine.device)

    def confusion_matrix(self, classes: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
        return confusion_matrix(classes, target, num_classes)

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        return tensor.cpu().numpy()

    def classes_to_host(self, classes: torch.Tensor) -> np.ndarray:
        return classes.to(torch.uint8).cpu().numpy()


BACKEND = TorchBackend()

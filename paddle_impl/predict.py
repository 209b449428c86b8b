"""Predict the classes of a scene of any size, streamed by row bands (PaddlePaddle).

Usage::

    python -m paddle_impl.predict --weights farseg50.pdparams --image scene.tif --out classes.tif
        [--window 896 --stride 512] [--color colour.png] [--device cpu|gpu] [--batch-size N]
    python -m paddle_impl.predict --model-dir deploy/farseg --image scene.tif --out classes.tif

With ``--model-dir`` the windows run through Paddle Inference on an export of
``python -m paddle_impl.export`` (backend chosen as :mod:`paddle_impl.infer` does) instead of
the dynamic graph; everything else is the same.

The official sliding-window protocol (:mod:`paddle_impl.inference`): probabilities averaged where
windows overlap, argmax; rows are written as soon as no later window covers them. A GeoTIFF
input is read by windows and its CRS and affine transform are written into a GeoTIFF output;
memory depends on the scene's width, not its height (:mod:`app.raster` says what is bounded
and what is not). Bad input gives one line on stderr, exit status 2 and no output file.
``python -m paddle_impl.predict --help`` lists every option.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from convert import CheckpointError, detect_architecture
from app.raster import RasterError, run_predictor

from . import build_model
from .export_format import ExportError
from .infer import DeployedModel, InferenceError, create_predictor
from .inference import SlidingWindowInference, gpu_available, load_weights, resolve_device

FRAMEWORK = "PaddlePaddle"
GPU_NAME = "gpu"
PROG = "python -m paddle_impl.predict"
DEFAULT_WINDOW, DEFAULT_STRIDE = 896, 512


class DeployedLayer(nn.Layer):
    """An export run by Paddle Inference, as a layer the sliding-window engine can drive.

    The engine moves its model to the device, sets eval mode and reads the dtype of the first
    parameter; an export has no dynamic-graph parameters, so this layer carries one float32
    marker parameter for that. Each window batch goes to the predictor through host memory.
    """

    def __init__(self, deployed: DeployedModel) -> None:
        super().__init__()
        self.deployed = deployed
        self.dtype_marker = self.create_parameter([1], dtype="float32")  # read by the engine only

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return paddle.to_tensor(self.deployed(x.numpy()), place=x.place)


def build_engine(args) -> Tuple[SlidingWindowInference, str]:
    """The sliding-window engine over the model the options name; CheckpointError / ValueError."""
    if args.model_dir is not None:
        deployed = create_predictor(args.model_dir, args.device, args.backend)
        window = args.window or deployed.config["sliding_window"]["window"]
        stride = args.stride or deployed.config["sliding_window"]["stride"]
        if args.amp != "none":
            raise ValueError("--amp applies to the dynamic graph; an export runs in float32")
        engine = SlidingWindowInference(DeployedLayer(deployed), window, stride, args.device, args.batch_size)
        return engine, f"{deployed.config['model']} export {args.model_dir}, Paddle Inference {deployed.backend} backend"
    name = detect_architecture(args.weights) if args.model == "auto" else args.model
    model = build_model(name)
    how = load_weights(model, name, args.weights)
    engine = SlidingWindowInference(model, args.window or DEFAULT_WINDOW, args.stride or DEFAULT_STRIDE,
                                    args.device, args.batch_size, None if args.amp == "none" else args.amp)
    return engine, f"{name}, {how}"


def class_bands(engine: SlidingWindowInference, progress: bool) -> Callable[..., Iterator[Tuple[int, int, np.ndarray]]]:
    """The engine's bands as host uint8 rows (only the class indices leave the device)."""

    def bands(height: int, width: int, read_window) -> Iterator[Tuple[int, int, np.ndarray]]:
        for row_start, row_end, classes in engine.run(height, width, read_window, progress):
            yield row_start, row_end, classes.astype("uint8").numpy()

    return bands


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_predictor(argv, PROG, FRAMEWORK, GPU_NAME, gpu_available=gpu_available,
                         resolve_device=resolve_device, build_engine=build_engine,
                         class_bands=class_bands, checkpoint_error=CheckpointError,
                         engine_errors=(ValueError, ExportError, InferenceError),
                         band_errors=(RasterError, InferenceError), model_dir=True)


if __name__ == "__main__":
    sys.exit(main())

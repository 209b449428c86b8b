"""Predict the classes of a scene of any size, streamed by row bands (PyTorch).

Usage::

    python -m torch_ref.predict --weights farseg50.pth --image scene.tif --out classes.tif
        [--window 896 --stride 512] [--color colour.png] [--device cpu|cuda] [--batch-size N]

The official sliding-window protocol (:mod:`torch_ref.inference`): probabilities averaged where
windows overlap, argmax; rows are written as soon as no later window covers them. A GeoTIFF
input is read by windows and its CRS and affine transform are written into a GeoTIFF output;
memory depends on the scene's width, not its height (:mod:`app.raster` says what is bounded
and what is not). Bad input gives one line on stderr, exit status 2 and no output file.
``python -m torch_ref.predict --help`` lists every option.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from convert import CheckpointError, detect_architecture
from app.raster import RasterError, run_predictor

from . import build_model
from .inference import SlidingWindowInference, gpu_available, load_weights, resolve_device

FRAMEWORK = "PyTorch"
GPU_NAME = "cuda"
PROG = "python -m torch_ref.predict"
DEFAULT_WINDOW, DEFAULT_STRIDE = 896, 512


def build_engine(args) -> Tuple[SlidingWindowInference, str]:
    """The sliding-window engine over the model the options name; CheckpointError / ValueError."""
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
            yield row_start, row_end, classes.to(torch.uint8).cpu().numpy()

    return bands


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_predictor(argv, PROG, FRAMEWORK, GPU_NAME, gpu_available=gpu_available,
                         resolve_device=resolve_device, build_engine=build_engine,
                         class_bands=class_bands, checkpoint_error=CheckpointError,
                         engine_errors=(ValueError,), band_errors=(RasterError,))


if __name__ == "__main__":
    sys.exit(main())

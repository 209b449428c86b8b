"""Evaluate FarSeg / FactSeg on whole iSAID images with the official protocol (PyTorch).

Usage::

    python -m torch_ref.evaluate --model farseg --weights farseg50.pth \\
        --images OUT/val/images --masks OUT/val/labels [--window 896 --stride 512] \\
        [--json result.json] [--expect official [--tolerance 0.3]] [--device cpu|cuda] [--limit N]

One 16x16 confusion matrix over all pixels of all images, counted on the device band by band
as the engine (:mod:`torch_ref.inference`) emits rows; only the label rows travel to the
device and only the final 16x16 matrix comes back. Inputs, report, JSON and the expectation
check are shared with the Paddle evaluator (:mod:`app.evaluation`); ``python -m
torch_ref.evaluate --help`` lists every option. Exit status 0 done, 1 ``--expect`` failed,
2 bad input (one line per problem on stderr; no JSON written).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from convert import CheckpointError
from app.evaluation import Scene, SceneTotals, iter_loaded_scenes, run_evaluator, total_windows
from isaid.palette import NUM_CLASSES
from isaid.windows import num_windows

from . import build_model
from .inference import SlidingWindowInference, gpu_available, load_weights, resolve_device
from .metrics import confusion_matrix

FRAMEWORK = "torch"
FRAMEWORK_VERSION = torch.__version__
GPU_NAME = "cuda"
PROG = "python -m torch_ref.evaluate"


def evaluate_scenes(engine: SlidingWindowInference, scenes: Sequence[Scene],
                    num_classes: int = NUM_CLASSES, progress: bool = True,
                    prefetch: bool = True) -> "tuple[np.ndarray, SceneTotals]":
    """Run ``engine`` over ``scenes``; return (confusion int64 [C,C] rows = truth, totals).

    The matrix stays on the device until the end; raises ImageReadError / InputError for a
    scene that cannot be read.
    """
    confusion = torch.zeros([num_classes, num_classes], dtype=torch.int64, device=engine.device)
    totals = SceneTotals()
    bar = tqdm(total=total_windows(scenes, engine.window, engine.stride), unit="win",
               desc="evaluate", disable=not progress, file=sys.stderr)
    with bar:
        for loaded in iter_loaded_scenes(scenes, prefetch):
            image, label = loaded.image, loaded.label
            height, width = label.shape
            for row_start, row_end, classes in engine.run(
                    height, width, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], progress=bar):
                target = engine.to_device(label[row_start:row_end])
                confusion += confusion_matrix(classes, target, num_classes)
            totals.add(loaded, num_windows(height, width, engine.window, engine.stride))
            del image, label, loaded
    return confusion.cpu().numpy(), totals


def build_engine(model_name: str, weights: str, window: int = 896, stride: int = 512,
                 device: str = "cpu", batch_size: int = 1, amp: Optional[str] = None,
                 dtype: str = "float32") -> "tuple[SlidingWindowInference, str]":
    """Build ``model_name``, load ``weights`` (CheckpointError), wrap it in the engine."""
    model = build_model(model_name)
    how = load_weights(model, model_name, weights)
    if dtype == "float64":
        model = model.to(torch.float64)
    if resolve_device(device).type == "cuda" and amp is None:
        # float32 means float32: cuDNN and cuBLAS would otherwise round convolution and
        # matmul inputs to TF32 (10-bit mantissa) on Ampere and later GPUs.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    engine = SlidingWindowInference(model, window, stride, device, batch_size, amp)
    return engine, how


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_evaluator(argv, PROG, FRAMEWORK, FRAMEWORK_VERSION, GPU_NAME,
                         gpu_available=gpu_available, resolve_device=resolve_device,
                         build_engine=build_engine, evaluate_scenes=evaluate_scenes,
                         checkpoint_error=CheckpointError)


if __name__ == "__main__":
    sys.exit(main())

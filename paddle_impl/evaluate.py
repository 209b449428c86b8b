"""Evaluate FarSeg / FactSeg on whole iSAID images with the official protocol (PaddlePaddle).

Usage::

    python -m paddle_impl.evaluate --model farseg --weights farseg50.pdparams \\
        --images OUT/val/images --masks OUT/val/labels [--window 896 --stride 512] \\
        [--json result.json] [--expect official [--tolerance 0.3]] [--device cpu|gpu] [--limit N]

One 16x16 confusion matrix over all pixels of all images, counted on the device band by band
as the engine (:mod:`paddle_impl.sliding_window`) emits rows; only the label rows travel to the
device and only the final 16x16 matrix comes back. Inputs, report, JSON and the expectation
check are written once for both frameworks (:mod:`app.evaluation`); ``python -m
paddle_impl.evaluate --help`` lists every option. Exit status 0 done, 1 ``--expect`` failed,
2 bad input (one line per problem on stderr; no JSON written).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence, Tuple

import numpy as np

from app import evaluation
from app.evaluation import SceneTotals, run_evaluator
from app.val_scenes import Scene
from isaid.palette import NUM_CLASSES

from .backend import BACKEND
from .sliding_window import SlidingWindowInference

PROG = "python -m paddle_impl.evaluate"


def evaluate_scenes(
    engine: SlidingWindowInference,
    scenes: Sequence[Scene],
    num_classes: int = NUM_CLASSES,
    progress: bool = True,
    prefetch: bool = True,
) -> Tuple[np.ndarray, SceneTotals]:
    """Run ``engine`` over ``scenes``; return (confusion int64 [C,C] rows = truth, totals)."""
    return evaluation.evaluate_scenes(BACKEND, engine, scenes, num_classes, progress, prefetch)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_evaluator(argv, PROG, BACKEND)


if __name__ == "__main__":
    sys.exit(main())

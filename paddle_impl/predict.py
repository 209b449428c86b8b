"""Predict the classes of a scene of any size, streamed by row bands (PaddlePaddle).

Usage::

    python -m paddle_impl.predict --weights farseg50.pdparams --image scene.tif --out classes.tif
        [--window 896 --stride 512] [--color colour.png] [--device cpu|gpu] [--batch-size N]
    python -m paddle_impl.predict --model-dir deploy/farseg --image scene.tif --out classes.tif

With ``--model-dir`` the windows run through Paddle Inference on an export of
``python -m paddle_impl.export`` (backend chosen as :mod:`paddle_impl.infer` does) instead of
the dynamic graph; everything else is the same.

The official sliding-window protocol (:mod:`paddle_impl.sliding_window`): probabilities averaged where
windows overlap, argmax; rows are written as soon as no later window covers them. A GeoTIFF
input is read by windows and its CRS and affine transform are written into a GeoTIFF output;
memory depends on the scene's width, not its height (:mod:`app.raster` says what is bounded
and what is not). Bad input gives one line on stderr, exit status 2 and no output file.
``python -m paddle_impl.predict --help`` lists every option.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from app.predict import run_predictor

from .backend import BACKEND

PROG = "python -m paddle_impl.predict"


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_predictor(argv, PROG, BACKEND)


if __name__ == "__main__":
    sys.exit(main())

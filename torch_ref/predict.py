"""Predict the classes of a scene of any size, streamed by row bands (PyTorch).

Usage::

    python -m torch_ref.predict --weights farseg50.pth --image scene.tif --out classes.tif
        [--window 896 --stride 512] [--color colour.png] [--device cpu|cuda] [--batch-size N]

The official sliding-window protocol (:mod:`torch_ref.sliding_window`): probabilities averaged where
windows overlap, argmax; rows are written as soon as no later window covers them. A GeoTIFF
input is read by windows and its CRS and affine transform are written into a GeoTIFF output;
memory depends on the scene's width, not its height (:mod:`app.raster` says what is bounded
and what is not). Bad input gives one line on stderr, exit status 2 and no output file.
``python -m torch_ref.predict --help`` lists every option.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from app.predict import run_predictor

from .backend import BACKEND

PROG = "python -m torch_ref.predict"


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_predictor(argv, PROG, BACKEND)


if __name__ == "__main__":
    sys.exit(main())

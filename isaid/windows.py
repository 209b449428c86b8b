"""Sliding-window arithmetic for training patches and whole-image evaluation.

Reproduces the window positions of the official code (SimpleCV
``simplecv/data/_np_preprocess.py::sliding_window``, used by FarSeg ``data/patch_base.py``
for training patches and ``isaid_eval.py`` for evaluation). Facts read from that code:

- a window larger than the image is first shrunk to the image in that dimension, so an image
  smaller than the window gives one smaller window there;
- window starts are ``0, stride, 2*stride, ...`` and there are
  ``ceil((size - window) / stride) + 1`` of them per dimension; a window that would cross
  the border is shifted back so that it ends on the border (the last one; the arithmetic
  never produces two identical windows);
- order is row-major (``np.meshgrid`` of columns and rows, raveled): all windows of the
  first row of windows, left to right, then the next row.

The official function returns ``(x1, y1, x2, y2)``; here windows are ``(y0, x0, y1, x1)``
with exclusive ends, i.e. ``image[y0:y1, x0:x1]``.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np

Window = Tuple[int, int, int, int]  # (y0, x0, y1, x1), ends exclusive


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def window_starts(size: int, window: int, stride: int) -> List[int]:
    """Start offsets of the windows along one dimension of length ``size``.

    Raises ``ValueError`` when ``stride > window``: the official arithmetic would then leave
    strips of pixels in no window, which evaluation must never do silently.
    """
    _check_positive(size=size, window=window, stride=stride)
    if stride > window:
        raise ValueError(f"stride {stride} larger than window {window} leaves pixels uncovered")
    window = min(window, size)
    count = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(count)]


def num_windows(height: int, width: int, window: int = 896, stride: int = 512) -> int:
    """Number of windows :func:`sliding_windows` gives, without building the list."""
    return len(window_starts(height, window, stride)) * len(window_starts(width, window, stride))


def sliding_windows(height: int, width: int, window: int = 896, stride: int = 512) -> List[Window]:
    """Windows ``(y0, x0, y1, x1)`` covering an image of ``height`` x ``width``, row-major.

    Every window is ``min(window, height)`` x ``min(window, width)`` and lies inside the
    image; together they cover every pixel. 800x800 with 896/512 gives one 800x800 window,
    896x896 one window, 897x897 four.
    """
    _check_positive(height=height, width=width, window=window, stride=stride)
    window_h = min(window, height)
    window_w = min(window, width)
    return [
        (y0, x0, y0 + window_h, x0 + window_w)
        for y0 in window_starts(height, window, stride)
        for x0 in window_starts(width, window, stride)
    ]


def pad_to_multiple(height: int, width: int, multiple: int = 32) -> Tuple[int, int]:
    """Rows and columns to add at the bottom/right so both sides become multiples of ``multiple``.

    The official evaluation pads each normalised window this way (``size_divisor=32``)
    before the forward pass and crops the output back.
    """
    _check_positive(height=height, width=width, multiple=multiple)
    return (-height) % multiple, (-width) % multiple


def pad_bottom_right(array: np.ndarray, height: int, width: int, fill: int | float) -> np.ndarray:
    """Pad ``array`` ([H,W] or [H,W,C]) at the bottom/right to ``height`` x ``width`` with ``fill``.

    Used for patches smaller than the window: images are padded with 0, labels with 255
    (ignored by the loss), as the official ``FixedPad`` does. Returns ``array`` itself when it
    already has that size; raises if it is larger.
    """
    array = np.asarray(array)
    h, w = array.shape[:2]
    if h > height or w > width:
        raise ValueError(f"cannot pad {h}x{w} to the smaller {height}x{width}")
    if (h, w) == (height, width):
        return array
    padded = np.full((height, width) + array.shape[2:], fill, dtype=array.dtype)
    padded[:h, :w] = array
    return padded

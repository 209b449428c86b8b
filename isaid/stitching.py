"""Band planning for streaming sliding-window inference (framework-free, numpy only).

The official evaluation averages the class probabilities of overlapping windows over the
whole image and takes the argmax. Holding a [16, H, W] float32 map for a 13,000 x 13,000
scene needs 10.8 GB, so the engines in ``torch_ref.sliding_window`` / ``paddle_impl.sliding_window``
stream instead, by horizontal *bands*: a band is one row of windows (all windows with the
same top row ``y0``; :func:`isaid.windows.sliding_windows` lists them row-major). Window tops
only grow from band to band, so once a band has been accumulated every row above the next
band's top is final and can be averaged, argmax'ed and emitted.

Arithmetic the engines rely on (checked by :func:`plan_bands` and the tests):

- band ``k`` covers rows ``[top_k, bottom_k)`` (``bottom_k - top_k`` = the window height);
- the rows not yet emitted when band ``k`` starts are exactly ``[top_k, ...)``, so an
  accumulator of ``window height`` rows whose row 0 is image row ``top_k`` holds everything
  that is still open;
- after band ``k`` the rows ``[top_k, emit_until_k)`` are emitted (``emit_until_k =
  top_{k+1}``, or ``height`` for the last band) and the ``carry_k = bottom_k -
  emit_until_k`` rows below them move to the top of the accumulator for band ``k + 1``;
- the emitted ranges partition ``[0, height)`` in order, each row exactly once.

The number of windows covering a pixel is separable: ``rows(y) * cols(x)`` with
:func:`coverage_counts` along each axis, so the engines need no count accumulator; the
values are small integers, exact in float32, equal to the official per-pixel count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from .windows import Window, sliding_windows, window_starts


@dataclass(frozen=True)
class Band:
    """One row of windows and what becomes final after it.

    ``windows``: the windows ``(y0, x0, y1, x1)`` of this row, left to right (all share
    ``y0 = top`` and ``y1 = bottom``). ``emit_until``: after all of them are accumulated,
    every row ``< emit_until`` is final. ``top`` / ``bottom``: the rows the windows span;
    ``top`` is also the first row not yet emitted, i.e. the image row of accumulator row 0.
    """

    windows: List[Window]
    emit_until: int
    top: int
    bottom: int

    @property
    def emit_rows(self) -> int:
        """Rows emitted after this band: ``[top, emit_until)``."""
        return self.emit_until - self.top

    @property
    def carry(self) -> int:
        """Rows ``[emit_until, bottom)`` that stay open and move to the next band's accumulator."""
        return self.bottom - self.emit_until


def plan_bands(height: int, width: int, window: int = 896, stride: int = 512) -> List[Band]:
    """Group the official windows of an ``height`` x ``width`` image into bands (rows of windows).

    Raises ``ValueError`` for non-positive sizes or ``stride > window`` (as
    :func:`isaid.windows.sliding_windows` does).
    """
    windows = sliding_windows(height, width, window, stride)
    rows: List[List[Window]] = []
    for win in windows:
        if rows and rows[-1][0][0] == win[0]:
            rows[-1].append(win)
        else:
            rows.append([win])
    bands: List[Band] = []
    for k, row in enumerate(rows):
        top, bottom = row[0][0], row[0][2]
        emit_until = rows[k + 1][0][0] if k + 1 < len(rows) else height
        # The streaming scheme is only correct if tops strictly increase and the next band
        # starts inside this one (stride <= window); sliding_windows guarantees both.
        if not top < emit_until <= bottom:
            raise AssertionError(f"band {k}: rows [{top}, {bottom}) cannot emit until {emit_until}")
        bands.append(Band(windows=row, emit_until=emit_until, top=top, bottom=bottom))
    return bands


def accumulator_rows(bands: List[Band]) -> int:
    """Rows the band accumulator needs: the window height (every band spans that many rows)."""
    return max(band.bottom - band.top for band in bands)


def coverage_counts(size: int, window: int = 896, stride: int = 512) -> np.ndarray:
    """int32 [size]: how many window positions along one axis cover each coordinate.

    The windows covering pixel ``(y, x)`` number ``coverage_counts(H)[y] *
    coverage_counts(W)[x]`` (the window grid is the product of the two axes' positions).
    """
    extent = min(window, size)
    counts = np.zeros(size + 1, dtype=np.int32)
    for start in window_starts(size, window, stride):
        counts[start] += 1
        counts[start + extent] -= 1
    return np.cumsum(counts[:-1], dtype=np.int32)


def emitted_ranges(bands: List[Band]) -> List[Tuple[int, int]]:
    """``(row_start, row_end)`` emitted after each band, in order (they partition ``[0, H)``)."""
    return [(band.top, band.emit_until) for band in bands]

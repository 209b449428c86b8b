"""Colour renderings of class maps: the streamed, subsampled preview of ``--color`` and the
side-by-side panels with a class legend (also used for the documentation picture).

Framework-free (numpy, PIL). :class:`ColourPreview` takes the class rows band by band as the
predict driver (:mod:`app.predict`) writes them, keeps every ``step``-th row and column so
that its longer side is at most ``max_side`` pixels, and counts each class's share at full
resolution for the legend.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from isaid.imageio import write_png_atomic
from isaid.palette import CLASS_NAMES, NUM_CLASSES, PALETTE, colorize

DEFAULT_PREVIEW_SIDE = 2048


class ColourPreview:
    """A subsampled colour rendering of a class map that arrives band by band.

    Keeps every ``step``-th row and column (nearest neighbour, ``step`` chosen so the longer
    side is at most ``max_side``) and the per-class pixel counts of the FULL-resolution map,
    so memory is ``max_side``^2 bytes plus the counts whatever the scene size.
    """

    def __init__(self, height: int, width: int, max_side: int = DEFAULT_PREVIEW_SIDE) -> None:
        if max_side <= 0:
            raise ValueError(f"max_side must be positive, got {max_side}")
        self.height, self.width = height, width
        self.step = max(1, math.ceil(max(height, width) / max_side))
        self.index = np.zeros((math.ceil(height / self.step), math.ceil(width / self.step)), dtype=np.uint8)
        self.counts = np.zeros(256, dtype=np.int64)

    def add_rows(self, row_start: int, rows: np.ndarray) -> None:
        """Take in image rows ``row_start .. row_start + len(rows)`` (uint8 [n, width])."""
        rows = np.asarray(rows)
        self.counts += np.bincount(rows.reshape(-1), minlength=256)[:256]
        first = -(-row_start // self.step) * self.step  # first kept row at or after row_start
        kept = np.arange(first, row_start + rows.shape[0], self.step)
        if kept.size:
            self.index[kept // self.step] = rows[kept - row_start, :: self.step]

    @property
    def nodata_pixels(self) -> int:
        """Pixels written as nodata (255), left out of :meth:`fractions`."""
        return int(self.counts[255])

    def fractions(self) -> np.ndarray:
        """float64 [NUM_CLASSES]: share of each class among the predicted (not nodata) pixels."""
        total = max(int(self.counts[:NUM_CLASSES].sum()), 1)
        return self.counts[:NUM_CLASSES] / total

    def render(self, legend: bool = True, title: Optional[str] = None) -> np.ndarray:
        """The colour rendering [h, w, 3] uint8, with a legend strip on the right."""
        colour = colorize(self.index)
        if not legend:
            return colour
        caption = title or (
            f"prediction {self.width}x{self.height}" + (f" (1:{self.step} subsampled)" if self.step > 1 else "")
        )
        return compose_panels([(caption, colour)], fractions=self.fractions())

    def save(self, path: str, legend: bool = True, title: Optional[str] = None) -> None:
        """Write :meth:`render` as an RGB PNG, atomically."""
        write_png_atomic(path, self.render(legend, title))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def render_legend(height: int, fractions: Optional[Sequence[float]] = None, font_size: int = 14) -> np.ndarray:
    """A white legend strip [max(height, needed), w, 3]: one swatch and class name per class.

    With ``fractions`` (share of each class), each line also gives the percentage, and
    classes that do not occur are greyed out.
    """
    font = _font(font_size)
    line = font_size + 8
    swatch = font_size + 2
    labels = []
    for index, name in enumerate(CLASS_NAMES):
        text = f"{index:2d} {name}"
        if fractions is not None:
            text += f"  {100.0 * float(fractions[index]):.2f}%"
        labels.append(text)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(int(probe.textlength(text, font=font)) for text in labels)
    width = 12 + swatch + 8 + text_width + 12
    needed = 12 + line * (NUM_CLASSES + 1)
    canvas = Image.new("RGB", (width, max(height, needed)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((12, 8), "class (share of pixels)" if fractions is not None else "class", fill=(0, 0, 0), font=font)
    for index, text in enumerate(labels):
        top = 12 + line * (index + 1)
        colour = tuple(int(c) for c in PALETTE[index])
        draw.rectangle([12, top, 12 + swatch, top + swatch], fill=colour, outline=(128, 128, 128))
        absent = fractions is not None and float(fractions[index]) == 0.0
        draw.text((12 + swatch + 8, top), text, fill=(160, 160, 160) if absent else (0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def compose_panels(
    panels: Sequence[Tuple[str, np.ndarray]],
    legend: bool = True,
    fractions: Optional[Sequence[float]] = None,
    gap: int = 8,
    font_size: int = 14,
    caption: Optional[str] = None,
) -> np.ndarray:
    """Place RGB panels side by side with a title above each and the class legend on the right.

    Used for the predict ``--color`` rendering (one panel) and for the documentation picture
    (image, ground truth, prediction). ``caption``: one line of text under everything.
    """
    font = _font(font_size)
    title_height = font_size + 10
    body = max(panel.shape[0] for _, panel in panels)
    pieces: List[np.ndarray] = []
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for title, panel in panels:
        panel = np.asarray(panel, dtype=np.uint8)
        tile_width = max(panel.shape[1], int(probe.textlength(title, font=font)) + 4)
        tile = Image.new("RGB", (tile_width, title_height + body), (255, 255, 255))
        tile.paste(Image.fromarray(np.ascontiguousarray(panel)), (0, title_height))
        ImageDraw.Draw(tile).text((2, 3), title, fill=(0, 0, 0), font=font)
        pieces.append(np.asarray(tile))
    if legend:
        pieces.append(render_legend(title_height + body, fractions, font_size))
    height = max(piece.shape[0] for piece in pieces)
    width = sum(piece.shape[1] for piece in pieces) + gap * (len(pieces) - 1)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    left = 0
    for piece in pieces:
        canvas[: piece.shape[0], left : left + piece.shape[1]] = piece
        left += piece.shape[1] + gap
    if caption:
        caption_width = int(probe.textlength(caption, font=font)) + 8
        framed = Image.new("RGB", (max(width, caption_width), height + title_height), (255, 255, 255))
        framed.paste(Image.fromarray(canvas), (0, 0))
        ImageDraw.Draw(framed).text((4, height + 3), caption, fill=(0, 0, 0), font=font)
        canvas = np.asarray(framed)
    return canvas

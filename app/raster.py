"""Windowed raster input/output for large-scene prediction (framework-free: numpy, PIL, rasterio).

``python -m torch_ref.predict`` and ``python -m paddle_impl.predict`` read a scene through
:func:`open_raster`, hand its ``read_window`` to the sliding-window engine, write each finished
row band with a :class:`ClassMapWriter` as the engine yields it, and feed the same rows to a
:class:`ColourPreview`. What is bounded, and by what:

- GeoTIFF / TIFF input (rasterio, any GDAL-readable TIFF): read by windows. The reader keeps
  one strip of ``window`` rows x full width (3 bytes a pixel: 35 MB for a 13,000-px-wide
  scene at window 896), so memory depends on the scene's WIDTH, never on its height.
- PNG / JPEG / BMP input (PIL): these formats cannot be decoded by windows with PIL, so the
  image is decoded whole (3 bytes a pixel: 507 MB for 13,000 x 13,000). Convert a scene that
  does not fit in memory to a tiled GeoTIFF first.
- GeoTIFF output (``.tif`` / ``.tiff``): written by row bands with rasterio (1 band, uint8,
  deflate, 256 x 256 tiles, BigTIFF when needed), with the input's CRS and affine transform,
  the iSAID colour table and the class names in the metadata.
- PNG output (``.png``): written by row bands too, by the small streaming PNG encoder below
  (PIL can only write a whole image): a palette PNG whose pixel values are the class
  indices and whose palette is the iSAID one. PNG carries no CRS or transform.
- Every output is written to a temporary file next to the target and renamed only when every
  row has been written (:meth:`ClassMapWriter.commit`); an error leaves no partial file.
- The colour rendering (:class:`ColourPreview`) is subsampled (nearest neighbour) so that its
  longer side is at most ``max_side`` pixels, and carries a legend with the class names and
  each class's share of the full-resolution prediction.

Errors: :class:`RasterError`, one line that starts with the file name (unreadable or corrupt
file, band count other than 3, non-8-bit bands, unsupported output extension).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import struct
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from isaid.imageio import (ImageReadError, atomic_output, publish, read_rgb_with_mode, temporary_path_beside,
                           write_png_atomic)
from isaid.palette import CLASS_NAMES, NUM_CLASSES, PALETTE, colorize, index_png_palette

from .cli import OneLineArgumentParser, positive_int

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
GEOTIFF_EXTENSIONS = (".tif", ".tiff")
PNG_EXTENSIONS = (".png",)
OUTPUT_EXTENSIONS = GEOTIFF_EXTENSIONS + PNG_EXTENSIONS
GEOTIFF_BLOCK = 256  # tile side of the written GeoTIFF (GDAL's usual choice)
_PNG_IDAT_BYTES = 1 << 20  # flush compressed PNG data in chunks of about 1 MB
DEFAULT_PREVIEW_SIDE = 2048


class RasterError(Exception):
    """A raster that cannot be read or written as asked; the message is one line naming the file."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and "previous exception" in text:
        # rasterio's "Read failed. See previous exception for details." hides GDAL's reason
        # in the chained exception; show that instead.
        text = " ".join(str(cause).split()) or text
    return text


def _import_rasterio(path: str, purpose: str):
    try:
        import rasterio  # noqa: F401  (imported lazily: only GeoTIFF users need it)
        import rasterio.windows  # noqa: F401
    except ImportError:
        raise RasterError(f"{path}: {purpose} needs rasterio (pip install rasterio, or the"
                          " project's [geo] extra)") from None
    return rasterio


def is_tiff(path: str) -> bool:
    """Whether ``path`` starts with a TIFF/BigTIFF signature (decided by content, not name)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) in TIFF_MAGICS
    except OSError:
        return False


# --------------------------------------------------------------------------------- reading


class RasterReader:
    """An RGB scene opened for windowed reading.

    ``height``, ``width``; ``crs`` and ``transform`` (rasterio objects, or None when the file
    has no georeferencing); ``kind`` ("GeoTIFF" / "TIFF" / "PNG" / ...); ``bounded`` tells
    whether reading is windowed (True) or the file was decoded whole (False).
    """

    path: str
    height: int
    width: int
    crs = None
    transform = None
    kind: str = ""
    bounded: bool = False

    def read_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """uint8 [y1 - y0, x1 - x0, 3] RGB pixels of rows y0..y1, columns x0..x1 (ends exclusive)."""
        raise NotImplementedError

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    def describe(self) -> str:
        """E.g. ``GeoTIFF 8000x6000, EPSG:32633, read by windows``."""
        parts = [f"{self.kind} {self.width}x{self.height}"]
        if self.crs is not None:
            parts.append(str(self.crs.to_string() if hasattr(self.crs, "to_string") else self.crs))
        parts.append("read by windows" if self.bounded else "decoded whole")
        return ", ".join(parts)

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> "RasterReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WholeImageReader(RasterReader):
    """PNG/JPEG/BMP through PIL: decoded whole (PIL cannot decode these formats by windows)."""

    def __init__(self, path: str) -> None:
        try:
            self._pixels, mode, file_format = read_rgb_with_mode(path)
        except ImageReadError as error:
            raise RasterError(str(error)) from None
        self.path = path
        self.height, self.width = self._pixels.shape[:2]
        self.kind = file_format or "image"
        self.mode = mode

    def read_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return self._pixels[y0:y1, x0:x1]

    def close(self) -> None:
        self._pixels = np.empty((0, 0, 3), dtype=np.uint8)


class _WindowedTiffReader(RasterReader):
    """A TIFF/GeoTIFF through rasterio, read by windows.

    The engine asks for the windows of one band (same rows, left to right) before moving
    down, so the reader reads the band's rows over the full width once and slices the
    windows out of that strip: each pixel is read about window/stride times instead of
    (window/stride)^2 times, and memory stays at one strip.
    """

    def __init__(self, path: str) -> None:
        rasterio = _import_rasterio(path, "reading a TIFF")
        self._rasterio = rasterio
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain TIFFs
                self._dataset = rasterio.open(path)
        except rasterio.errors.RasterioError as error:
            raise RasterError(f"{path}: cannot open raster ({_one_line(error)})") from None
        dataset = self._dataset
        self.path = path
        try:
            if dataset.count != 3:
                raise RasterError(f"{path}: {dataset.count} band{'s' if dataset.count != 1 else ''};"
                                  " expected 3 (RGB). Select the RGB bands first (e.g. gdal_translate"
                                  " -b 1 -b 2 -b 3)")
            dtypes = set(dataset.dtypes)
            if dtypes != {"uint8"}:
                raise RasterError(f"{path}: band data type {', '.join(sorted(dtypes))}; expected"
                                  " uint8 (the models were trained on 8-bit RGB: rescale to 0..255"
                                  " first)")
        except RasterError:
            dataset.close()
            raise
        self.height, self.width = dataset.height, dataset.width
        self.crs = dataset.crs
        self.transform = dataset.transform if not dataset.transform.is_identity else None
        self.kind = "GeoTIFF" if (self.crs is not None or self.transform is not None) else "TIFF"
        self.bounded = True
        self._strip: Optional[np.ndarray] = None
        self._strip_rows = (0, 0)

    def read_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        top, bottom = self._strip_rows
        if self._strip is None or not (top <= y0 and y1 <= bottom):
            self._strip = None  # free the previous strip before reading the next one
            window = self._rasterio.windows.Window(0, y0, self.width, y1 - y0)
            try:
                bands = self._dataset.read(window=window)  # [3, rows, width]
            except self._rasterio.errors.RasterioError as error:
                raise RasterError(f"{self.path}: cannot read rows {y0}..{y1}"
                                  f" ({_one_line(error)})") from None
            self._strip = np.ascontiguousarray(bands.transpose(1, 2, 0))
            self._strip_rows = (y0, y1)
            top = y0
        return self._strip[y0 - top:y1 - top, x0:x1]

    def close(self) -> None:
        self._strip = None
        self._dataset.close()


def open_raster(path: str) -> RasterReader:
    """Open an RGB scene for :meth:`RasterReader.read_window`.

    TIFF files (decided by their first bytes) are read by windows with rasterio and must have
    exactly 3 uint8 bands; other images (PNG, JPEG, BMP) are decoded whole with PIL and
    converted to RGB the way the official loader does (greyscale replicated, alpha dropped).
    Raises :class:`RasterError` (one line naming the file).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RasterError(f"{path}: file not found")
    if os.path.isdir(path):
        raise RasterError(f"{path}: is a folder, not an image")
    if is_tiff(path):
        return _WindowedTiffReader(path)
    return _WholeImageReader(path)


# --------------------------------------------------------------------------------- writing


class ClassMapWriter:
    """Writes a uint8 class map [height, width] band by band, atomically.

    Call :meth:`write_rows` with consecutive row ranges starting at 0 (the engine's order),
    then :meth:`commit`, which checks that every row was written and renames the temporary
    file to ``path``. :meth:`abort` (or leaving a ``with`` block by an exception) removes the
    temporary file and leaves ``path`` untouched.
    """

    def __init__(self, path: str, height: int, width: int) -> None:
        self.path, self.height, self.width = os.fspath(path), height, width
        self.temporary = temporary_path_beside(self.path)
        self.rows_written = 0
        self._done = False

    def write_rows(self, row_start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (uint8 [n, width]) as image rows ``row_start .. row_start + n``."""
        rows = np.asarray(rows)
        if row_start != self.rows_written:
            raise ValueError(f"rows must arrive in order: expected row {self.rows_written}, got {row_start}")
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected uint8 rows [n, {self.width}], got {rows.dtype} {list(rows.shape)}")
        if row_start + rows.shape[0] > self.height:
            raise ValueError(f"rows {row_start}..{row_start + rows.shape[0]} exceed the height {self.height}")
        self._write(row_start, np.ascontiguousarray(rows))
        self.rows_written += rows.shape[0]

    def commit(self) -> None:
        """Finish the file and move it to ``path`` (only if all rows were written)."""
        if self.rows_written != self.height:
            self.abort()
            raise RuntimeError(f"{self.path}: only {self.rows_written} of {self.height} rows were"
                               " written; no output file was created")
        try:
            self._finish()
            publish(self.temporary, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):
            self._close_quietly()
        with contextlib.suppress(OSError):
            os.remove(self.temporary)

    def __enter__(self) -> "ClassMapWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    # subclasses
    def _write(self, row_start: int, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _close_quietly(self) -> None:
        pass


class GeoTiffClassMapWriter(ClassMapWriter):
    """1-band uint8 GeoTIFF (deflate, 256 x 256 tiles) with the given CRS and transform."""

    def __init__(self, path: str, height: int, width: int, crs=None, transform=None) -> None:
        rasterio = _import_rasterio(path, "writing a GeoTIFF")
        super().__init__(path, height, width)
        self._rasterio = rasterio
        profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                       compress="deflate", predictor=1, tiled=True, blockxsize=GEOTIFF_BLOCK,
                       blockysize=GEOTIFF_BLOCK, BIGTIFF="IF_SAFER", photometric="palette")
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for a PNG input
                self._dataset = rasterio.open(self.temporary, "w", **profile)
            # Class colours and names travel with the file: GIS software shows the iSAID
            # colours while the stored values stay the class indices.
            self._dataset.write_colormap(1, {i: tuple(int(c) for c in PALETTE[i]) + (255,)
                                             for i in range(NUM_CLASSES)})
            self._dataset.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(CLASS_NAMES)})
            self._dataset.set_band_description(1, "class index (iSAID)")
        except rasterio.errors.RasterioError as error:
            with contextlib.suppress(OSError):
                os.remove(self.temporary)
            raise RasterError(f"{path}: cannot create GeoTIFF ({_one_line(error)})") from None

    def _write(self, row_start: int, rows: np.ndarray) -> None:
        window = self._rasterio.windows.Window(0, row_start, self.width, rows.shape[0])
        self._dataset.write(rows[None], window=window)

    def _finish(self) -> None:
        self._dataset.close()

    def _close_quietly(self) -> None:
        self._dataset.close()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PngClassMapWriter(ClassMapWriter):
    """8-bit palette PNG written row band by row band (values = class indices, iSAID palette).

    A minimal PNG encoder (signature, IHDR, PLTE, IDAT stream, IEND; filter type 0 on every
    row): the compressor keeps a 32 KB window, so memory is one band plus about 1 MB of
    pending output whatever the image height. Any PNG reader reads it (the tests use PIL).
    """

    def __init__(self, path: str, height: int, width: int, compress_level: int = 6) -> None:
        super().__init__(path, height, width)
        self._file = open(self.temporary, "wb")
        self._compressor = zlib.compressobj(compress_level)
        self._pending: List[bytes] = []
        self._pending_bytes = 0
        # width, height, bit depth 8, colour type 3 (palette), deflate, filter method 0, no interlace
        header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
        palette = bytes(index_png_palette())
        self._file.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"PLTE", palette))

    def _emit(self, data: bytes, force: bool = False) -> None:
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._pending_bytes >= _PNG_IDAT_BYTES or (force and self._pending_bytes):
            self._file.write(_png_chunk(b"IDAT", b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0

    def _write(self, row_start: int, rows: np.ndarray) -> None:
        filtered = np.zeros((rows.shape[0], self.width + 1), dtype=np.uint8)  # column 0: filter 0
        filtered[:, 1:] = rows
        self._emit(self._compressor.compress(filtered.tobytes()))

    def _finish(self) -> None:
        self._emit(self._compressor.flush(), force=True)
        self._file.write(_png_chunk(b"IEND", b""))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _close_quietly(self) -> None:
        self._file.close()


def create_class_map_writer(path: str, height: int, width: int, crs=None,
                            transform=None) -> ClassMapWriter:
    """A :class:`ClassMapWriter` chosen by the extension of ``path``.

    ``.tif`` / ``.tiff``: :class:`GeoTiffClassMapWriter` (keeps ``crs`` and ``transform``);
    ``.png``: :class:`PngClassMapWriter` (no georeferencing). Anything else (JPEG is lossy
    and would change class indices) raises :class:`RasterError`.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in GEOTIFF_EXTENSIONS:
        return GeoTiffClassMapWriter(path, height, width, crs, transform)
    if extension in PNG_EXTENSIONS:
        return PngClassMapWriter(path, height, width)
    raise RasterError(f"{path}: unsupported output extension {extension or '(none)'!r}; use .tif"
                      " (GeoTIFF, keeps the georeferencing) or .png")


# --------------------------------------------------------------------------------- colour rendering


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
            self.index[kept // self.step] = rows[kept - row_start, ::self.step]

    def fractions(self) -> np.ndarray:
        """float64 [NUM_CLASSES]: share of each class in the full-resolution map."""
        total = max(int(self.counts.sum()), 1)
        return self.counts[:NUM_CLASSES] / total

    def render(self, legend: bool = True, title: Optional[str] = None) -> np.ndarray:
        """The colour rendering [h, w, 3] uint8, with a legend strip on the right."""
        colour = colorize(self.index)
        if not legend:
            return colour
        caption = title or (f"prediction {self.width}x{self.height}"
                            + (f" (1:{self.step} subsampled)" if self.step > 1 else ""))
        return compose_panels([(caption, colour)], fractions=self.fractions())

    def save(self, path: str, legend: bool = True, title: Optional[str] = None) -> None:
        """Write :meth:`render` as an RGB PNG, atomically."""
        write_png_atomic(path, self.render(legend, title))


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def render_legend(height: int, fractions: Optional[Sequence[float]] = None,
                  font_size: int = 14) -> np.ndarray:
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
    draw.text((12, 8), "class (share of pixels)" if fractions is not None else "class", fill=(0, 0, 0),
              font=font)
    for index, text in enumerate(labels):
        top = 12 + line * (index + 1)
        colour = tuple(int(c) for c in PALETTE[index])
        draw.rectangle([12, top, 12 + swatch, top + swatch], fill=colour, outline=(128, 128, 128))
        absent = fractions is not None and float(fractions[index]) == 0.0
        draw.text((12 + swatch + 8, top), text, fill=(160, 160, 160) if absent else (0, 0, 0), font=font)
    return np.asarray(canvas, dtype=np.uint8)


def compose_panels(panels: Sequence[Tuple[str, np.ndarray]], legend: bool = True,
                   fractions: Optional[Sequence[float]] = None, gap: int = 8,
                   font_size: int = 14, caption: Optional[str] = None) -> np.ndarray:
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
        canvas[:piece.shape[0], left:left + piece.shape[1]] = piece
        left += piece.shape[1] + gap
    if caption:
        caption_width = int(probe.textlength(caption, font=font)) + 8
        framed = Image.new("RGB", (max(width, caption_width), height + title_height), (255, 255, 255))
        framed.paste(Image.fromarray(canvas), (0, 0))
        ImageDraw.Draw(framed).text((4, height + 3), caption, fill=(0, 0, 0), font=font)
        canvas = np.asarray(framed)
    return canvas


# --------------------------------------------------------------------------------- test scenes


def write_geotiff_by_windows(path: str, height: int, width: int, fill, crs="EPSG:32633",
                             transform=None, block_rows: int = 512) -> None:
    """Write a 3-band uint8 GeoTIFF of ``height`` x ``width`` without holding it in memory.

    ``fill(row_start, row_end) -> uint8 [rows, width, 3]`` produces the pixels of each block
    of rows. ``transform`` defaults to a 0.5 m north-up grid at an arbitrary UTM origin. Used
    by the tests and the prediction benchmark to build large georeferenced scenes.
    """
    rasterio = _import_rasterio(path, "writing a GeoTIFF")
    from rasterio.transform import Affine

    if transform is None:
        transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4649776.0)
    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=crs,
                   transform=transform, tiled=True, blockxsize=GEOTIFF_BLOCK,
                   blockysize=GEOTIFF_BLOCK, compress="deflate", BIGTIFF="IF_SAFER",
                   photometric="rgb")
    with atomic_output(path) as temporary:
        with rasterio.open(temporary, "w", **profile) as dataset:
            for row_start in range(0, height, block_rows):
                row_end = min(height, row_start + block_rows)
                pixels = np.asarray(fill(row_start, row_end), dtype=np.uint8)
                window = rasterio.windows.Window(0, row_start, width, row_end - row_start)
                dataset.write(pixels.transpose(2, 0, 1), window=window)


def read_georeference(path: str) -> Dict[str, object]:
    """``{"height", "width", "count", "dtype", "crs", "transform"}`` of a raster (rasterio)."""
    rasterio = _import_rasterio(path, "reading a GeoTIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as dataset:
            return {"height": dataset.height, "width": dataset.width, "count": dataset.count,
                    "dtype": dataset.dtypes[0], "crs": dataset.crs, "transform": dataset.transform,
                    "compress": dataset.compression.value if dataset.compression else None,
                    "tiled": dataset.profile.get("tiled", False)}


# --------------------------------------------------------------------------------- the prediction driver
# Written once here and used by both ``torch_ref/predict.py`` and ``paddle_impl/predict.py``:
# the command line, the checks before any model is built, the loop that writes bands, and
# the command's main (:func:`run_predictor`).


def build_predict_parser(prog: str, framework: str, gpu_name: str,
                         model_dir: bool = False) -> argparse.ArgumentParser:
    """The predict CLI's parser; ``model_dir`` adds Paddle's ``--model-dir`` / ``--backend``."""
    source = "--weights W" + (" or --model-dir DIR" if model_dir else "")
    parser = OneLineArgumentParser(
        prog=prog,
        description=(
            f"Predict the iSAID classes of a scene of any size with FarSeg / FactSeg ({framework}):"
            " the official sliding windows (896 at stride 512, probabilities averaged where"
            " windows overlap, argmax), streamed by row bands. Output: a uint8 class-index raster"
            " (0..15). GeoTIFF in, GeoTIFF out keeps the CRS and affine transform. Memory: a"
            " GeoTIFF/TIFF input is read by windows (one strip of --window rows), the output is"
            " written band by band (GeoTIFF or PNG), and the device holds one band of"
            " probabilities (16 x window x width float32), so memory depends on the scene's"
            " width, not its height; a PNG/JPEG input is decoded whole (3 bytes a pixel):"
            " convert huge scenes to a tiled GeoTIFF. Output files appear only when complete."
            f" Model: {source}. Exit status 0 done, 2 bad input (one line on stderr)."))
    parser.add_argument("--weights", metavar="FILE",
                        help="checkpoint: a torch .pth (official training wrapper and 'module.'"
                             " prefix accepted) or a Paddle .pdparams; the other framework's file"
                             " is converted in memory. Loaded without executing code"
                             + ("; or use --model-dir" if model_dir else ""))
    if model_dir:
        parser.add_argument("--model-dir", metavar="DIR",
                            help="an export of python -m paddle_impl.export, run with Paddle"
                                 " Inference instead of the dynamic graph (window and stride default"
                                 " to the values in DIR/model.yml)")
    parser.add_argument("--model", choices=("auto", "farseg", "factseg"), default="auto",
                        help="architecture of --weights (default auto: detected from the"
                             " checkpoint's keys)")
    parser.add_argument("--image", required=True, metavar="FILE",
                        help="RGB scene: a 3-band uint8 GeoTIFF/TIFF (read by windows) or a"
                             " PNG / JPEG / BMP (decoded whole; greyscale is replicated and alpha"
                             " dropped, as the official loader does)")
    parser.add_argument("--out", required=True, metavar="OUT.tif|OUT.png",
                        help="class-index raster, 1 band uint8 (0..15): .tif/.tiff writes a"
                             " deflate-compressed, 256x256-tiled GeoTIFF with the input's CRS and"
                             " transform and the iSAID colour table; .png a palette PNG (values"
                             " = classes, iSAID colours; no georeferencing). Both are written band"
                             " by band to a temporary file renamed at the end")
    parser.add_argument("--window", type=positive_int, metavar="PX",
                        help="window side (default 896, the official value)")
    parser.add_argument("--stride", type=positive_int, metavar="PX",
                        help="window stride, at most --window (default 512, the official value)")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="windows per forward pass (default 1; larger is faster on a GPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "gpu"), default="auto",
                        help=f"cpu, {gpu_name} (cuda and gpu both name the GPU), or auto ({gpu_name}"
                             f" when available; default)")
    parser.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none",
                        help="mixed precision on a GPU (default none)")
    if model_dir:
        parser.add_argument("--backend", default="auto",
                            choices=("auto", "onednn", "native", "paddle-default"),
                            help="Paddle Inference CPU backend for --model-dir (default auto; see"
                                 " python -m paddle_impl.infer --help)")
    parser.add_argument("--color", metavar="COLOUR.png",
                        help="also write a colour rendering in the iSAID palette with a legend"
                             " (class names and each class's share of the pixels)")
    parser.add_argument("--color-max-side", type=positive_int, default=DEFAULT_PREVIEW_SIDE,
                        metavar="PX",
                        help=f"the colour rendering is subsampled (nearest neighbour) so that its"
                             f" longer side is at most PX (default {DEFAULT_PREVIEW_SIDE}); the"
                             f" class shares are computed at full resolution")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar over windows on stderr (default on)")
    return parser


def check_predict_args(args: argparse.Namespace) -> List[str]:
    """Problems with the options that argparse cannot see (empty list when fine)."""
    problems: List[str] = []
    has_dir = getattr(args, "model_dir", None) is not None
    if has_dir == (args.weights is not None):
        problems.append("give exactly one of --weights and --model-dir" if hasattr(args, "model_dir")
                        else "--weights is required")
    if has_dir and args.model != "auto":
        problems.append("--model is read from DIR/model.yml with --model-dir; leave it out")
    if args.window is not None and args.stride is not None and args.stride > args.window:
        problems.append(f"--stride {args.stride} is larger than --window {args.window}, which would"
                        " leave pixels in no window")
    extension = os.path.splitext(args.out)[1].lower()
    if extension not in OUTPUT_EXTENSIONS:
        problems.append(f"--out {args.out}: unsupported extension {extension or '(none)'!r}; use .tif"
                        " (GeoTIFF, keeps the georeferencing) or .png")
    if args.color is not None and not args.color.lower().endswith(".png"):
        problems.append(f"--color {args.color}: must end in .png")
    if args.color is not None and os.path.abspath(args.color) == os.path.abspath(args.out):
        problems.append("--color and --out name the same file")
    if os.path.abspath(args.out) == os.path.abspath(args.image):
        problems.append("--out would overwrite --image")
    return problems


@dataclass
class PredictionResult:
    """What :func:`predict_to_files` wrote, for the CLI's summary line."""

    image: str
    out: str
    colour: Optional[str]
    height: int
    width: int
    seconds: float
    input_description: str
    georeferenced_output: bool
    class_fractions: np.ndarray

    def summary(self) -> str:
        megapixels = self.height * self.width / 1e6
        geo = "CRS and transform kept" if self.georeferenced_output else "no georeferencing"
        top = np.argsort(-self.class_fractions)[:4]
        classes = ", ".join(f"{CLASS_NAMES[c]} {100 * self.class_fractions[c]:.1f}%"
                            for c in top if self.class_fractions[c] > 0)
        colour = f"; colour rendering {self.colour}" if self.colour else ""
        return (f"{self.image} ({self.input_description}) -> {self.out} (uint8 classes, {geo}) in"
                f" {self.seconds:.1f}s, {megapixels / max(self.seconds, 1e-9):.3f} Mpx/s; top classes:"
                f" {classes}{colour}")


def predict_to_files(reader: RasterReader, out_path: str,
                     bands: Callable[[int, int, Callable[..., np.ndarray]], Iterator[Tuple[int, int, np.ndarray]]],
                     colour_path: Optional[str] = None,
                     colour_max_side: int = DEFAULT_PREVIEW_SIDE) -> PredictionResult:
    """Run ``bands(height, width, read_window)`` (the engine, yielding ``(row_start, row_end,
    uint8 rows [n, width])`` on the host) over ``reader`` and write each band as it arrives.

    The class map goes to ``out_path`` (:func:`create_class_map_writer`; the input's CRS and
    transform when it is a GeoTIFF), the subsampled colour rendering to ``colour_path``.
    Nothing is left at ``out_path`` if anything fails (RasterError from the reader, an engine
    error, Ctrl-C): the temporary file is removed and the exception propagates.
    """
    start = time.perf_counter()
    writer = create_class_map_writer(out_path, reader.height, reader.width, reader.crs, reader.transform)
    preview = ColourPreview(reader.height, reader.width, colour_max_side)
    with writer:
        for row_start, row_end, rows in bands(reader.height, reader.width, reader.read_window):
            if rows.shape != (row_end - row_start, reader.width):
                raise ValueError(f"engine yielded rows {row_start}..{row_end} of shape {list(rows.shape)}")
            writer.write_rows(row_start, rows)
            preview.add_rows(row_start, rows)
        writer.commit()
    if colour_path is not None:
        preview.save(colour_path, title=f"{os.path.basename(reader.path)}: prediction"
                     + (f" (1:{preview.step})" if preview.step > 1 else ""))
    georeferenced = isinstance(writer, GeoTiffClassMapWriter) and reader.crs is not None
    return PredictionResult(reader.path, out_path, colour_path, reader.height, reader.width,
                            time.perf_counter() - start, reader.describe(), georeferenced,
                            preview.fractions())


def print_error(prog: str, message: str) -> None:
    """``prog: error: message`` on stderr, on one line."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def run_predictor(argv: Optional[Sequence[str]], prog: str, framework: str, gpu_name: str, *,
                  gpu_available: Callable[[], bool], resolve_device: Callable[[str], Any],
                  build_engine: Callable[[argparse.Namespace], Tuple[Any, str]],
                  class_bands: Callable[[Any, bool], Callable[..., Iterator[Tuple[int, int, np.ndarray]]]],
                  checkpoint_error: Type[Exception],
                  engine_errors: Tuple[Type[Exception], ...],
                  band_errors: Tuple[Type[Exception], ...],
                  model_dir: bool = False) -> int:
    """The predict command line, given one framework's parts; returns the exit status.

    ``build_engine(args)`` returns (engine, what model it runs) or raises ``checkpoint_error``
    (convert's CheckpointError: its ``headline()`` is reported) or one of ``engine_errors``;
    ``class_bands(engine, progress)`` is the ``bands`` of :func:`predict_to_files`, which
    reports ``band_errors``. ``model_dir`` adds Paddle's ``--model-dir`` / ``--backend``.
    """
    args = build_predict_parser(prog, framework, gpu_name, model_dir=model_dir).parse_args(argv)
    problems = check_predict_args(args)
    if args.device == "auto":
        args.device = gpu_name if gpu_available() else "cpu"
    for problem in problems:
        print_error(prog, problem)
    if problems:
        return 2
    try:
        resolve_device(args.device)
        reader: RasterReader = open_raster(args.image)  # header and band checks before the model
    except (RasterError, ValueError) as error:
        print_error(prog, error)
        return 2
    with reader:
        try:
            engine, how = build_engine(args)
        except checkpoint_error as error:
            print_error(prog, error.headline())  # type: ignore[attr-defined]
            return 2
        except engine_errors as error:
            print_error(prog, error)
            return 2
        if reader.georeferenced and not args.out.lower().endswith((".tif", ".tiff")):
            print(f"note: {args.image} is georeferenced but {args.out} is a PNG, which cannot keep"
                  " the CRS and transform; use a .tif output to keep them", file=sys.stderr)
        print(f"model: {how}; device {engine.device}; window {engine.window}, stride {engine.stride}",
              file=sys.stderr, flush=True)
        try:
            result = predict_to_files(reader, args.out, class_bands(engine, args.progress), args.color,
                                      args.color_max_side)
        except band_errors as error:
            print_error(prog, error)
            return 2
    print(result.summary(), flush=True)
    return 0

"""Windowed raster input/output for large-scene prediction (framework-free: numpy, PIL, rasterio).

The predict driver (:mod:`app.predict`, behind ``python -m torch_ref.predict`` and ``python -m
paddle_impl.predict``) reads a scene through :func:`open_raster`, hands its ``read_window`` to
the sliding-window engine, and writes each finished row band with a :class:`ClassMapWriter`
as the engine yields it (and to the colour preview of :mod:`app.preview`). What is bounded,
and by what:

- GeoTIFF / TIFF input (rasterio, any GDAL-readable TIFF): read by windows. The reader keeps
  one strip of ``window`` rows x full width (3 bytes a pixel: 35 MB for a 13,000-px-wide
  scene at window 896), so memory depends on the scene's WIDTH, never on its height.
- PNG / JPEG / BMP input (PIL): these formats cannot be decoded by windows with PIL, so the
  image is decoded whole (3 bytes a pixel: 507 MB for 13,000 x 13,000). Convert a scene that
  does not fit in memory to a tiled GeoTIFF first.
- GeoTIFF output (``.tif`` / ``.tiff``): written by row bands with rasterio (1 band, uint8,
  deflate, 256 x 256 tiles, BigTIFF when needed), with the input's CRS and affine transform
  (or, for a scene georeferenced by ground-control points or RPCs, those points and their
  CRS: same pixel grid), the iSAID colour table and the class names in the metadata.
- PNG output (``.png``): written by row bands too, by the small streaming PNG encoder below
  (PIL can only write a whole image): a palette PNG whose pixel values are the class
  indices and whose palette is the iSAID one. PNG carries no CRS or transform.
- Every output is written to a temporary file next to the target (:mod:`common.atomic`), read
  back and compared row by row (CRC-32) with what was written, and renamed only then
  (:meth:`ClassMapWriter.commit`): an error, including one GDAL only logged (a full disk),
  leaves the earlier file untouched and no temporary file.
- Pixels the input GeoTIFF marks as nodata (a nodata value in all three bands, or a mask) are
  reported by :meth:`RasterReader.nodata_rows`; the predict driver writes them as
  :data:`NODATA_CLASS` (the output GeoTIFF's nodata value).
- A PNG/JPEG decoded whole is checked against the memory available first.

Errors: :class:`RasterError`, one line that starts with the file name (unreadable or corrupt
file, band count other than 3, non-8-bit bands, unsupported output extension).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
import warnings
import zlib
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np

from common.atomic import describe_os_error
from common.resources import MemoryBudgetError, check_memory
from isaid.imageio import (
    ImageReadError,
    publish,
    read_rgb_with_mode,
    read_size,
    require_regular_file,
    temporary_path_beside,
)
from isaid.palette import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, index_png_palette

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
GEOTIFF_EXTENSIONS = (".tif", ".tiff")
PNG_EXTENSIONS = (".png",)
OUTPUT_EXTENSIONS = GEOTIFF_EXTENSIONS + PNG_EXTENSIONS
GEOTIFF_BLOCK = 256  # tile side of the written GeoTIFF (GDAL's usual choice)
_PNG_IDAT_BYTES = 1 << 20  # flush compressed PNG data in chunks of about 1 MB
# Output value of pixels the input marks as nodata (a GeoTIFF nodata value or mask): the
# ignore index, which is also the output GeoTIFF's nodata value and rendered white.
NODATA_CLASS = IGNORE_INDEX
# Bytes a pixel of a PNG/JPEG input costs while it is decoded whole (PIL's 4-byte RGBX
# image plus the numpy RGB copy).
WHOLE_IMAGE_BYTES_PER_PIXEL = 7


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
        import rasterio.enums  # noqa: F401
        import rasterio.windows  # noqa: F401
    except ImportError:
        raise RasterError(
            f"{path}: {purpose} needs rasterio (pip install rasterio, or the project's [geo] extra)"
        ) from None
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
    has_nodata: bool = False  # the file marks pixels as nodata (a nodata value or a mask)
    # Georeferencing without an affine transform: ground-control points ``(points, crs)``
    # and rational polynomial coefficients (rasterio objects), or None.
    gcps = None
    rpcs = None

    def nodata_rows(self, y0: int, y1: int) -> Optional[np.ndarray]:
        """bool [y1 - y0, width]: True where the input marks the pixel as nodata (None: none)."""
        return None

    def read_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """uint8 [y1 - y0, x1 - x0, 3] RGB pixels of rows y0..y1, columns x0..x1 (ends exclusive)."""
        raise NotImplementedError

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.gcps is not None or self.rpcs is not None

    def georeference(self) -> str:
        """What places the scene on the ground: ``CRS and transform``, ``12 GCPs (EPSG:4326)``,
        ``RPCs``, joined by ``, ``; ``""`` when nothing does."""
        parts = []
        if self.crs is not None:
            parts.append("CRS and transform" if self.transform is not None else "CRS")
        if self.gcps is not None:
            points, gcp_crs = self.gcps
            crs = gcp_crs.to_string() if hasattr(gcp_crs, "to_string") else gcp_crs
            parts.append(f"{len(points)} GCPs" + (f" ({crs})" if crs else " (no CRS)"))
        if self.rpcs is not None:
            parts.append("RPCs")
        return ", ".join(parts)

    def describe(self) -> str:
        """E.g. ``GeoTIFF 8000x6000, EPSG:32633, read by windows``."""
        parts = [f"{self.kind} {self.width}x{self.height}"]
        if self.crs is not None:
            parts.append(str(self.crs.to_string() if hasattr(self.crs, "to_string") else self.crs))
        if self.gcps is not None or self.rpcs is not None:
            parts.append(self.georeference().replace("CRS and transform, ", ""))
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
            height, width = read_size(path)
            check_memory(
                WHOLE_IMAGE_BYTES_PER_PIXEL * height * width,
                f"{path}: decoding this {width}x{height} image whole",
                "convert it to a tiled GeoTIFF, which is read by windows",
            )
        except ImageReadError as error:
            raise RasterError(str(error)) from None
        except MemoryBudgetError as error:
            raise RasterError(str(error)) from None
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
                raise RasterError(
                    f"{path}: {dataset.count} band{'s' if dataset.count != 1 else ''};"
                    " expected 3 (RGB). Select the RGB bands first (e.g. gdal_translate"
                    " -b 1 -b 2 -b 3)"
                )
            dtypes = set(dataset.dtypes)
            if dtypes != {"uint8"}:
                raise RasterError(
                    f"{path}: band data type {', '.join(sorted(dtypes))}; expected"
                    " uint8 (the models were trained on 8-bit RGB: rescale to 0..255"
                    " first)"
                )
        except RasterError:
            dataset.close()
            raise
        self.height, self.width = dataset.height, dataset.width
        self.crs = dataset.crs
        self.transform = dataset.transform if not dataset.transform.is_identity else None
        points, gcp_crs = dataset.gcps
        self.gcps = (list(points), gcp_crs) if points else None
        self.rpcs = dataset.rpcs or None
        self.kind = "GeoTIFF" if (self.transform is not None or self.georeferenced) else "TIFF"
        self.bounded = True
        self._strip: Optional[np.ndarray] = None
        self._strip_rows = (0, 0)
        # GDAL's per-band mask flags: all_valid alone means "no nodata value, no mask".
        all_valid = rasterio.enums.MaskFlags.all_valid
        self.has_nodata = dataset.nodata is not None or any(
            list(flags) != [all_valid] for flags in dataset.mask_flag_enums
        )

    def nodata_rows(self, y0: int, y1: int) -> Optional[np.ndarray]:
        if not self.has_nodata:
            return None
        window = self._rasterio.windows.Window(0, y0, self.width, y1 - y0)
        try:
            masks = self._dataset.read_masks(window=window)  # [3, rows, width], 0 = nodata
        except self._rasterio.errors.RasterioError as error:
            raise RasterError(
                f"{self.path}: cannot read the nodata mask of rows {y0}..{y1} ({_one_line(error)})"
            ) from None
        # A pixel is nodata when every band says so (a per-dataset mask, or the nodata value
        # in all three bands): one dark channel alone is still a valid pixel.
        return (masks == 0).all(axis=0)

    def read_window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        top, bottom = self._strip_rows
        if self._strip is None or not (top <= y0 and y1 <= bottom):
            self._strip = None  # free the previous strip before reading the next one
            window = self._rasterio.windows.Window(0, y0, self.width, y1 - y0)
            try:
                bands = self._dataset.read(window=window)  # [3, rows, width]
            except self._rasterio.errors.RasterioError as error:
                raise RasterError(f"{self.path}: cannot read rows {y0}..{y1} ({_one_line(error)})") from None
            self._strip = np.ascontiguousarray(bands.transpose(1, 2, 0))
            self._strip_rows = (y0, y1)
            top = y0
        return self._strip[y0 - top : y1 - top, x0:x1]

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
    try:
        require_regular_file(path, path)  # a FIFO would block the first read for ever
    except ImageReadError as error:
        raise RasterError(str(error)) from None
    if is_tiff(path):
        return _WindowedTiffReader(path)
    return _WholeImageReader(path)


# --------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def native_stderr_captured(lines: List[str]) -> Iterator[None]:
    """Collect what native code (GDAL, libtiff) prints straight to file descriptor 2 into
    ``lines`` instead of the terminal: a failed write then ends in one line of ours that quotes
    GDAL's reason, not in a screenful of libtiff messages followed by it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                with contextlib.suppress(OSError):
                    capture.seek(0)
                    text = capture.read(1 << 16).decode("utf-8", "replace")
                    lines.extend(line.strip() for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)


class ClassMapWriter:
    """Writes a uint8 class map [height, width] band by band, atomically, and verifies it.

    Call :meth:`write_rows` with consecutive row ranges starting at 0 (the engine's order),
    then :meth:`commit`, which checks that every row was written, flushes the temporary file
    to disk, reads it back (a CRC of every row must match what was written: a write error
    that the library only logged, e.g. GDAL's on a full disk, is caught here) and renames it
    to ``path``. :meth:`abort` (or leaving a ``with`` block by an exception) removes the
    temporary file and leaves ``path`` untouched. Write failures raise :class:`RasterError`.
    """

    kind = "raster"

    def __init__(self, path: str, height: int, width: int) -> None:
        self.path, self.height, self.width = os.fspath(path), height, width
        try:
            self.temporary = temporary_path_beside(self.path)
        except OSError as error:
            raise RasterError(f"{self.path}: cannot write here ({describe_os_error(error)})") from None
        self.rows_written = 0
        self._crc = 0
        self._done = False
        self._native: List[str] = []  # what GDAL/libtiff printed while writing (quoted on failure)

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        """Run a subclass step with native stderr captured; lines printed by a step that
        succeeds are passed on to stderr (they are warnings the user should see)."""
        lines: List[str] = []
        try:
            with native_stderr_captured(lines):
                return method(*args)
        finally:
            self._native.extend(lines[:20])

    def _failure(self, message: str) -> RasterError:
        """The one-line error of a failed write, quoting the first thing GDAL printed."""
        if self._native:
            message += f" (GDAL said: {self._native[0]})"
        return RasterError(message + "; the earlier file, if any, is untouched")

    def write_rows(self, row_start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (uint8 [n, width]) as image rows ``row_start .. row_start + n``."""
        rows = np.asarray(rows)
        if row_start != self.rows_written:
            raise ValueError(f"rows must arrive in order: expected row {self.rows_written}, got {row_start}")
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected uint8 rows [n, {self.width}], got {rows.dtype} {list(rows.shape)}")
        if row_start + rows.shape[0] > self.height:
            raise ValueError(f"rows {row_start}..{row_start + rows.shape[0]} exceed the height {self.height}")
        rows = np.ascontiguousarray(rows)
        try:
            self._call(self._write, row_start, rows)
        except Exception as error:  # noqa: BLE001 - OSError, GDAL's errors: one line, no traceback
            self.abort()
            raise self._failure(
                f"{self.path}: write failed at rows {row_start}..{row_start + rows.shape[0]} ({self._reason(error)})"
            ) from None
        self._crc = zlib.crc32(rows, self._crc)
        self.rows_written += rows.shape[0]

    def commit(self) -> None:
        """Finish the file, verify it and move it to ``path`` (only if all rows were written)."""
        if self.rows_written != self.height:
            self.abort()
            raise RuntimeError(
                f"{self.path}: only {self.rows_written} of {self.height} rows were written; no output file was created"
            )
        try:
            self._call(self._finish)
            publish(self.temporary, self.path, verify=lambda temporary: self._call(self._verify, temporary))
        except BaseException as error:
            self.abort()
            if isinstance(error, RasterError):
                raise self._failure(str(error)) from None
            if isinstance(error, Exception):
                raise self._failure(f"{self.path}: write failed ({self._reason(error)})") from None
            raise
        self._done = True
        for line in self._native[:5]:  # GDAL warnings of a write that verified fine
            print(f"{self.path}: {line}", file=sys.stderr)

    def _verify(self, temporary: str) -> None:
        """Read the written file back and compare the CRC of its rows with what was written."""
        height, width, crc = self._read_back(temporary)
        if (height, width) != (self.height, self.width):
            raise RasterError(
                f"{self.path}: the {self.kind} written reads back as {width}x{height}, not {self.width}x{self.height}"
            )
        if crc != self._crc:
            raise RasterError(
                f"{self.path}: the {self.kind} written does not read back as written (CRC"
                " mismatch: a write error, e.g. a full disk)"
            )

    @staticmethod
    def _reason(error: BaseException) -> str:
        return describe_os_error(error) if isinstance(error, OSError) else _one_line(error)

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception), native_stderr_captured([]):  # closing a failed GDAL file complains
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

    def _read_back(self, temporary: str) -> Tuple[int, int, int]:
        """(height, width, CRC-32 of all rows in order) of the file written."""
        raise NotImplementedError

    def _close_quietly(self) -> None:
        pass


class GeoTiffClassMapWriter(ClassMapWriter):
    """1-band uint8 GeoTIFF (deflate, 256 x 256 tiles) with the given CRS and transform."""

    kind = "GeoTIFF"

    def __init__(
        self,
        path: str,
        height: int,
        width: int,
        crs=None,
        transform=None,
        nodata: Optional[int] = None,
        gcps=None,
        rpcs=None,
    ) -> None:
        rasterio = _import_rasterio(path, "writing a GeoTIFF")
        self._gcps, self._rpcs = gcps, rpcs
        super().__init__(path, height, width)
        self._rasterio = rasterio
        profile = dict(
            driver="GTiff",
            height=height,
            width=width,
            count=1,
            dtype="uint8",
            compress="deflate",
            predictor=1,
            tiled=True,
            blockxsize=GEOTIFF_BLOCK,
            blockysize=GEOTIFF_BLOCK,
            BIGTIFF="IF_SAFER",
            photometric="palette",
        )
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = transform
        if nodata is not None:
            profile["nodata"] = nodata
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for a PNG input
                self._dataset = rasterio.open(self.temporary, "w", **profile)
            # Class colours and names travel with the file: GIS software shows the iSAID
            # colours while the stored values stay the class indices.
            self._dataset.write_colormap(1, {i: tuple(int(c) for c in PALETTE[i]) + (255,) for i in range(NUM_CLASSES)})
            self._dataset.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(CLASS_NAMES)})
            self._dataset.set_band_description(1, "class index (iSAID)")
            # A scene placed by ground-control points (or RPCs) has no affine transform: its
            # class map keeps the same points, in the same pixel grid, and their CRS.
            if gcps is not None:
                self._dataset.gcps = gcps
            if rpcs is not None:
                self._dataset.rpcs = rpcs
        except rasterio.errors.RasterioError as error:
            with contextlib.suppress(Exception):
                self._dataset.close()
            with contextlib.suppress(OSError):
                os.remove(self.temporary)
            raise RasterError(f"{path}: cannot create GeoTIFF ({_one_line(error)})") from None

    def _write(self, row_start: int, rows: np.ndarray) -> None:
        window = self._rasterio.windows.Window(0, row_start, self.width, rows.shape[0])
        self._dataset.write(rows[None], window=window)

    def _finish(self) -> None:
        self._dataset.close()

    def _read_back(self, temporary: str) -> Tuple[int, int, int]:
        rasterio = self._rasterio
        crc = 0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(temporary) as dataset:
                    if dataset.count != 1 or dataset.dtypes[0] != "uint8":
                        raise RasterError(
                            f"{self.path}: the GeoTIFF written has {dataset.count} band(s) of"
                            f" {dataset.dtypes[0]}, not 1 of uint8"
                        )
                    if self._gcps is not None and len(dataset.gcps[0]) != len(self._gcps[0]):
                        raise RasterError(
                            f"{self.path}: the GeoTIFF written holds {len(dataset.gcps[0])} ground-control"
                            f" points, not the input's {len(self._gcps[0])}"
                        )
                    for top in range(0, dataset.height, GEOTIFF_BLOCK * 4):
                        rows = min(GEOTIFF_BLOCK * 4, dataset.height - top)
                        block = dataset.read(1, window=rasterio.windows.Window(0, top, dataset.width, rows))
                        crc = zlib.crc32(np.ascontiguousarray(block), crc)
                    return dataset.height, dataset.width, crc
        except rasterio.errors.RasterioError as error:
            raise RasterError(f"{self.path}: the GeoTIFF written does not read back ({_one_line(error)})") from None

    def _close_quietly(self) -> None:
        self._dataset.close()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def read_back_palette_png(path: str) -> Tuple[int, int, int]:
    """(height, width, CRC-32 of the pixel rows) of a PNG written by :class:`PngClassMapWriter`,
    streamed (one row at a time in memory): every chunk's CRC is checked, the IDAT stream is
    inflated and each row's filter byte must be 0 (the only filter that writer uses)."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            raise RasterError(f"{path}: not a PNG signature")
        height = width = None
        inflate = zlib.decompressobj()
        pending = b""
        crc, rows = 0, 0
        while True:
            head = handle.read(8)
            if len(head) != 8:
                raise RasterError(f"{path}: truncated PNG (no IEND chunk)")
            length, kind = struct.unpack(">I4s", head)
            data = handle.read(length)
            stored = handle.read(4)
            if len(data) != length or len(stored) != 4 or struct.unpack(">I", stored)[0] != zlib.crc32(kind + data):
                raise RasterError(f"{path}: PNG chunk {kind!r} is truncated or fails its CRC")
            if kind == b"IHDR":
                width, height = struct.unpack(">II", data[:8])
            elif kind == b"IDAT":
                if width is None:
                    raise RasterError(f"{path}: PNG data before its header")
                pending += inflate.decompress(data)
                stride = width + 1
                full = len(pending) // stride * stride
                block = np.frombuffer(pending[:full], dtype=np.uint8).reshape(-1, stride)
                if block.size and block[:, 0].any():
                    raise RasterError(f"{path}: unexpected PNG row filter")
                crc = zlib.crc32(np.ascontiguousarray(block[:, 1:]), crc)
                rows += block.shape[0]
                pending = pending[full:]
            elif kind == b"IEND":
                break
        if pending or not inflate.eof:
            raise RasterError(f"{path}: PNG pixel data is incomplete")
        if width is None:
            raise RasterError(f"{path}: PNG without a header")
        return rows, width, crc


class PngClassMapWriter(ClassMapWriter):
    """8-bit palette PNG written row band by row band (values = class indices, iSAID palette).

    A minimal PNG encoder (signature, IHDR, PLTE, IDAT stream, IEND; filter type 0 on every
    row): the compressor keeps a 32 KB window, so memory is one band plus about 1 MB of
    pending output whatever the image height. Any PNG reader reads it (the tests use PIL).
    """

    kind = "PNG"

    def __init__(self, path: str, height: int, width: int, compress_level: int = 6) -> None:
        super().__init__(path, height, width)
        try:
            self._file = open(self.temporary, "wb")
        except OSError as error:
            with contextlib.suppress(OSError):
                os.remove(self.temporary)
            raise RasterError(f"{path}: cannot write here ({describe_os_error(error)})") from None
        self._compressor = zlib.compressobj(compress_level)
        self._pending: List[bytes] = []
        self._pending_bytes = 0
        # width, height, bit depth 8, colour type 3 (palette), deflate, filter method 0, no interlace
        header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
        palette = bytes(index_png_palette())
        try:
            self._file.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"PLTE", palette))
        except OSError as error:
            self.abort()
            raise self._failure(f"{path}: write failed ({describe_os_error(error)})") from None

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
        self._file.close()

    def _read_back(self, temporary: str) -> Tuple[int, int, int]:
        return read_back_palette_png(temporary)

    def _close_quietly(self) -> None:
        self._file.close()


def create_class_map_writer(
    path: str,
    height: int,
    width: int,
    crs=None,
    transform=None,
    nodata: Optional[int] = None,
    gcps=None,
    rpcs=None,
) -> ClassMapWriter:
    """A :class:`ClassMapWriter` chosen by the extension of ``path``.

    ``.tif`` / ``.tiff``: :class:`GeoTiffClassMapWriter` (keeps ``crs`` and ``transform``, or
    the ground-control points ``gcps`` with their CRS, and ``rpcs``);
    ``.png``: :class:`PngClassMapWriter` (no georeferencing). Anything else (JPEG is lossy
    and would change class indices) raises :class:`RasterError`.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension in GEOTIFF_EXTENSIONS:
        return GeoTiffClassMapWriter(path, height, width, crs, transform, nodata, gcps, rpcs)
    if extension in PNG_EXTENSIONS:
        return PngClassMapWriter(path, height, width)
    raise RasterError(
        f"{path}: unsupported output extension {extension or '(none)'!r}; use .tif"
        " (GeoTIFF, keeps the georeferencing) or .png"
    )

"""Reading and writing iSAID images and masks with PIL (no deep-learning framework).

Every reader raises :class:`ImageReadError` with a one-line message that starts with the
file name, for corrupt, truncated or non-image files and for unexpected band layouts, so
callers can report ``error: <file>: <problem>`` without a traceback.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from typing import BinaryIO, Dict, Iterator, NamedTuple, Optional, Tuple, Union

import numpy as np
from PIL import Image

from common.atomic import (  # noqa: F401  (re-exported: the project's one atomic writer)
    OutputError,
    atomic_output,
    current_umask,
    publish,
    temporary_path_beside,
    write_bytes_atomic,
)
from common.resources import MemoryBudgetError, check_memory

from .palette import (
    IGNORE_INDEX,
    NUM_CLASSES,
    decode_color_mask_details,
    index_png_palette,
)

Source = Union[str, "os.PathLike[str]", BinaryIO]

# PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS (about 179 Mpx) as "decompression
# bombs" and warns above half that. iSAID/DOTA scenes reach about 13000 x 13000 = 169 Mpx,
# so the default would warn on the largest real scenes and leaves almost no margin. The
# readers here raise the limit to 20000 x 20000 (with PIL's hard stop at twice that) only
# while they open a file, so other PIL users in the process keep the default guard and a
# truly absurd file is still refused.
MAX_IMAGE_PIXELS = 20000 * 20000

# Modes accepted as photographs: converted to RGB the way the official loader does
# (PIL ``convert("RGB")``: grey is replicated, alpha dropped, palette expanded).
_PHOTO_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1"}
_INDEX_MODES = {"L", "P"}
_COLOUR_MASK_MODES = {"RGB", "RGBA", "RGBX"}


# Bytes a pixel costs while a reader here decodes an image and hands it over as numpy: PIL's
# 4-byte RGBX buffer, a converted copy and the uint8 array (the colour-mask decoder adds its
# index); the guard refuses before decoding what cannot fit (issue 17: a 19000^2 PNG bomb).
DECODE_BYTES_PER_PIXEL = 12


class ImageReadError(Exception):
    """A file could not be read as the expected kind of image; the message is one line."""


def _display_name(source: Source, name: Optional[str]) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", "<stream>")


@contextlib.contextmanager
def _large_images_allowed() -> Iterator[None]:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def require_regular_file(source: Source, name: str) -> None:
    """ImageReadError unless a path ``source`` is a regular file: a FIFO or a device would
    block the reader for ever (file objects are the caller's business)."""
    if not isinstance(source, (str, os.PathLike)):
        return
    try:
        mode = os.stat(source).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except OSError as error:
        raise ImageReadError(f"{name}: cannot read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise ImageReadError(f"{name}: is {kind}, not a regular image file")


def check_image_memory(
    height: int, width: int, name: str, bytes_per_pixel: float = DECODE_BYTES_PER_PIXEL, doing: str = "", hint: str = ""
) -> None:
    """The memory guard of every image reader: ImageReadError (one line naming ``name``, the
    size, the need and the limit) when ``bytes_per_pixel`` x ``height`` x ``width`` does not
    fit what this process may still allocate (:func:`common.resources.check_memory`).

    Called from the header, before any pixel is decoded: :func:`_open_loaded` calls it for
    every PIL read here; commands that hold more per pixel (a whole-image forward pass, a
    scene's patches) call it with their own cost, as ``isaid.prepare``, ``paddle_impl.infer``
    and ``app.evaluation`` do (``align`` may call it for its input images too).
    """
    try:
        check_memory(
            int(bytes_per_pixel * height * width),
            f"{name}: {doing or 'decoding'} this {width}x{height} image",
            hint,
        )
    except MemoryBudgetError as error:
        raise ImageReadError(str(error)) from None


def _open_loaded(source: Source, name: str) -> Image.Image:
    """Open and fully decode an image; every failure becomes one ImageReadError line. The
    size in the header is checked against the memory available before decoding."""
    require_regular_file(source, name)
    try:
        with _large_images_allowed():
            image = Image.open(source)
            check_image_memory(image.height, image.width, name)
            image.load()  # decode now, so truncation is found here and not later
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"{name}: image too large ({_one_line(error)})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # PIL reports truncated or corrupt data as OSError / SyntaxError / ValueError.
        raise ImageReadError(f"{name}: corrupt or truncated image ({_one_line(error)})") from None
    return image


def read_size(source: Source, name: Optional[str] = None) -> Tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    name = _display_name(source, name)
    require_regular_file(source, name)
    try:
        with _large_images_allowed(), Image.open(source) as image:
            return image.height, image.width
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{name}: cannot read image header ({_one_line(error)})") from None


def read_rgb_with_mode(source: Source, name: Optional[str] = None) -> Tuple[np.ndarray, str, str]:
    """Like :func:`read_rgb`, also returning the file's PIL mode and format (e.g. "RGB", "PNG")."""
    name = _display_name(source, name)
    image = _open_loaded(source, name)
    mode, file_format = image.mode, image.format or ""
    if mode not in _PHOTO_MODES:
        raise ImageReadError(
            f"{name}: unsupported band layout (PIL mode {mode}, {len(image.getbands())} bands);"
            " expected 8-bit RGB or greyscale"
        )
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8), mode, file_format


def read_rgb(source: Source, name: Optional[str] = None) -> np.ndarray:
    """Read a photograph as uint8 [H,W,3] RGB.

    8-bit greyscale, palette and RGBA files are converted as the official loader does
    (grey replicated, alpha dropped). Other layouts (16-bit, CMYK, float, multi-band) raise
    :class:`ImageReadError`, as do corrupt, truncated and non-image files. ``source`` is a
    path or a binary file object; ``name`` is used in messages.
    """
    return read_rgb_with_mode(source, name)[0]


def _check_index_values(index: np.ndarray, name: str) -> None:
    values = np.unique(index)
    bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ImageReadError(
            f"{name}: index mask has values {bad.tolist()[:5]} outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}"
        )


def read_index_mask(source: Source, name: Optional[str] = None) -> np.ndarray:
    """Read an index-label PNG (mode "L" or "P": pixel value = class, 255 = ignore) as uint8 [H,W].

    For mode "P" the stored indices are returned when the palette is the project's own; a
    palette PNG with other colours is refused (it is a colour mask, see :func:`read_mask`).
    """
    name = _display_name(source, name)
    image = _open_loaded(source, name)
    if image.mode not in _INDEX_MODES:
        raise ImageReadError(f"{name}: not an index mask (PIL mode {image.mode}; expected L or P)")
    index = np.asarray(image, dtype=np.uint8)
    if image.mode == "P" and not palette_is_ours(image, np.unique(index)):
        raise ImageReadError(
            f"{name}: palette PNG whose colours are not the project's label palette: a"
            " colour mask, not class indices (decode it with isaid.prepare)"
        )
    _check_index_values(index, name)
    return index


def palette_is_ours(image: Image.Image, values: Optional[np.ndarray] = None) -> bool:
    """Whether a mode "P" image's palette gives every pixel value it uses (``values``; all
    256 when None) the colour of the project's own label palette (:func:`index_png_palette`):
    then its pixel values are class indices. Any other palette (an iSAID colour mask saved as
    a palette PNG, say) means the colours are the labels."""
    palette = image.getpalette() or []
    ours = index_png_palette()
    used = range(256) if values is None else [int(v) for v in values]
    for value in used:
        if palette[3 * value : 3 * value + 3] != ours[3 * value : 3 * value + 3]:
            return False  # another colour, or no palette entry at all for a used value
    return True


class MaskDetails(NamedTuple):
    """Result of :func:`read_mask_details`."""

    index: np.ndarray  # uint8 [H,W]
    n_unknown: int  # pixels whose colour is outside the palette
    unknown_colours: Dict[Tuple[int, int, int], int]  # those colours -> pixel counts
    is_colour_mask: bool  # True for a colour mask (RGB, or palette PNG with foreign colours), False for indices
    unknown_as_class: int  # off-palette pixels the official decoding labels as a class, not 0


def read_mask_details(source: Source, name: Optional[str] = None) -> MaskDetails:
    """Read a label like :func:`read_mask`, with the unknown colours listed.

    ``unknown_as_class`` counts the off-palette pixels that the official weighted-sum rule
    (:func:`isaid.palette.decode_color_mask_official`) labels as a class rather than background.
    """
    name = _display_name(source, name)
    image = _open_loaded(source, name)
    if image.mode in _INDEX_MODES:
        index = np.asarray(image, dtype=np.uint8)
        if image.mode == "P" and not palette_is_ours(image, np.unique(index)):
            image = image.convert("RGB")  # a colour mask stored with a palette: decode its colours
        else:
            _check_index_values(index, name)
            return MaskDetails(index, 0, {}, False, 0)
    if image.mode in _COLOUR_MASK_MODES:
        rgb = np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)
        del image
        decoded = decode_color_mask_details(rgb)
        as_class = 0
        if decoded.n_unknown:
            from .palette import PALETTE  # local: only needed on this rare path

            off_palette = ~(rgb[..., None, :3] == PALETTE).all(-1).any(-1)
            as_class = int(np.count_nonzero(off_palette & (decoded.index != 0)))
        return MaskDetails(decoded.index, decoded.n_unknown, decoded.unknown_colours, True, as_class)
    raise ImageReadError(
        f"{name}: unsupported mask layout (PIL mode {image.mode}); expected an RGB colour mask or an L/P index mask"
    )


def read_mask(source: Source, name: Optional[str] = None) -> Tuple[np.ndarray, int]:
    """Read a label as (index uint8 [H,W], n_unknown_pixels).

    Decided by the PIL mode: "RGB"/"RGBA" files are official colour masks
    (``*_instance_color_RGB.png``) decoded with :func:`isaid.palette.decode_color_mask`
    (colours outside the palette -> 0, counted); "L" files and "P" files whose palette is the
    project's own (:func:`palette_is_ours`) are index masks (values 0..15 and 255; n_unknown
    is 0); other "P" files are colour masks stored with a palette and decoded by their
    colours. Anything else raises :class:`ImageReadError`.
    """
    details = read_mask_details(source, name)
    return details.index, details.n_unknown


def read_colour_mask_rgb(source: Source, name: Optional[str] = None) -> np.ndarray:
    """Read an official colour mask as raw uint8 [H,W,3] RGB, without decoding it."""
    name = _display_name(source, name)
    image = _open_loaded(source, name)
    if image.mode not in _COLOUR_MASK_MODES:
        raise ImageReadError(f"{name}: not a colour mask (PIL mode {image.mode}; expected RGB)")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def write_png_atomic(
    path: Union[str, "os.PathLike[str]"],
    array: np.ndarray,
    *,
    index_palette: bool = False,
    compress_level: int = 6,
) -> None:
    """Write a uint8 array as PNG atomically (temporary file in the same folder, then rename).

    [H,W,3] is written as RGB, [H,W] as greyscale "L", or, with ``index_palette=True``, as a
    palette PNG ("P") carrying the iSAID colours: the stored values stay the class indices
    (what :func:`read_index_mask` returns) while image viewers show the official colours.
    ``compress_level`` 0..9 trades speed for size (zlib level; lossless at every level).
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(np.ascontiguousarray(array))
    elif array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array))
        if index_palette:
            image.putpalette(index_png_palette())  # turns the "L" image into "P", same values
    else:
        raise ValueError(f"expected [H,W] or [H,W,3], got shape {array.shape}")
    with atomic_output(path, verify=lambda temporary: verify_png(temporary, array.shape)) as temporary:
        image.save(temporary, format="PNG", compress_level=compress_level)


def verify_png(path: str, shape: Tuple[int, ...]) -> None:
    """Decode the PNG ``path`` fully and check its size and band count against ``shape``
    (raises :class:`OutputError`): what :func:`write_png_atomic` checks before the rename."""
    try:
        with Image.open(path) as image:
            image.load()
            size, bands = (image.height, image.width), len(image.getbands())
    except Exception as error:  # noqa: BLE001 - any decoding failure means a bad file
        raise OutputError(f"the PNG written does not read back ({_one_line(error)})") from None
    want_bands = shape[2] if len(shape) == 3 else 1
    if size != tuple(shape[:2]) or bands != want_bands:
        raise OutputError(
            f"the PNG written reads back as {size[1]}x{size[0]}x{bands}, not {shape[1]}x{shape[0]}x{want_bands}"
        )


def png_bytes(array: np.ndarray, *, index_palette: bool = False, compress_level: int = 6) -> bytes:
    """Encode a uint8 array as PNG bytes (same rules as :func:`write_png_atomic`)."""
    array = np.asarray(array)
    image = Image.fromarray(np.ascontiguousarray(array))
    if array.ndim == 2 and index_palette:
        image.putpalette(index_png_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()

"""iSAID classes, colours and normalisation constants, and the colour-mask decoding.

The index order is the one the official FarSeg/FactSeg weights were trained with (the
``COLOR_MAP`` of FarSeg ``data/isaid.py``): the weights' output channel ``c`` means the class
whose colour is ``PALETTE[c]``. Do not reorder.

Pure numpy: no deep-learning framework is imported here.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import numpy as np

NUM_CLASSES = 16
IGNORE_INDEX = 255
# File name ending of an iSAID colour mask beside its image ``<name>.png`` (P0001.png ->
# P0001_instance_color_RGB.png): what prepare reads, synth writes and evaluate looks for.
COLOUR_MASK_SUFFIX = "_instance_color_RGB.png"

# RGB colours of the official semantic masks (``*_instance_color_RGB.png``), in weight order.
PALETTE = np.array(
    [
        (0, 0, 0),  # 0 background
        (0, 0, 63),  # 1 ship
        (0, 191, 127),  # 2 roundabout
        (0, 63, 0),  # 3 baseball diamond
        (0, 63, 127),  # 4 tennis court
        (0, 63, 191),  # 5 basketball court
        (0, 63, 255),  # 6 ground track field
        (0, 127, 63),  # 7 bridge
        (0, 127, 127),  # 8 large vehicle
        (0, 0, 127),  # 9 small vehicle
        (0, 0, 191),  # 10 helicopter
        (0, 0, 255),  # 11 swimming pool
        (0, 63, 63),  # 12 storage tank
        (0, 127, 191),  # 13 soccer ball field
        (0, 127, 255),  # 14 plane
        (0, 100, 155),  # 15 harbor
    ],
    dtype=np.uint8,
)
PALETTE.setflags(write=False)

# Names follow the real masks, not FarSeg's COLOR_MAP. FarSeg calls index 2 (colour
# (0,191,127)) "storage_tank" and index 12 (colour (0,63,63)) "roundabout"; in the iSAID
# masks (0,191,127) is roundabout and (0,63,63) is storage tank, as the iSAID devkit and
# mmsegmentation's converter agree. Only the names are swapped: the index order above is
# kept because the official weights depend on it.
CLASS_NAMES: Tuple[str, ...] = (
    "background",
    "ship",
    "roundabout",
    "baseball_diamond",
    "tennis_court",
    "basketball_court",
    "ground_track_field",
    "bridge",
    "large_vehicle",
    "small_vehicle",
    "helicopter",
    "swimming_pool",
    "storage_tank",
    "soccer_ball_field",
    "plane",
    "harbor",
)

# ImageNet statistics on RGB pixels in 0..255, as the official transforms use them
# (THMeanStdNormalize after ToTensor without rescaling to 0..1).
MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)
STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)

# Rendering colours for values that are not classes.
IGNORE_COLOUR = (255, 255, 255)
INVALID_COLOUR = (255, 0, 255)

# Rows decoded per block: bounds the temporaries for a 13000x13000 mask to a few times
# 2048*13000 bytes (about 27 MB each) instead of whole-mask arrays.
_DECODE_ROWS_PER_BLOCK = 2048
_UNKNOWN = 255  # sentinel in the lookup table for colours outside the palette


def normalize(image_hwc_uint8: np.ndarray) -> np.ndarray:
    """Turn an RGB image [H,W,3] with pixels in 0..255 into normalised float32 [3,H,W].

    Computes ``(pixel - MEAN) / STD`` per channel in float32, as the official transforms do.
    """
    image = np.asarray(image_hwc_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape [H,W,3], got {image.shape}")
    mean = np.asarray(MEAN, dtype=np.float32)
    std = np.asarray(STD, dtype=np.float32)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw -= mean[:, None, None]
    chw /= std[:, None, None]
    return chw


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Pack uint8 RGB [...,3] into int32 ``R<<16 | G<<8 | B`` (one number per colour)."""
    r = rgb[..., 0].astype(np.int32)
    r <<= 16
    g = rgb[..., 1].astype(np.int32)
    g <<= 8
    r |= g
    r |= rgb[..., 2]
    return r


class DecodedMask(NamedTuple):
    """Result of :func:`decode_color_mask_details`."""

    index: np.ndarray  # uint8 [H,W], class indices 0..15 (official decoding)
    n_unknown: int  # pixels whose colour is not in PALETTE
    unknown_colours: Dict[Tuple[int, int, int], int]  # colour -> pixel count


# Every iSAID colour has red 0, so a 65536-entry table over (green, blue) plus a "red is 0"
# test decodes exactly; it is about 3x faster than a binary search over packed RGB.
assert not PALETTE[:, 0].any(), "the fast decoder relies on red = 0 in every palette colour"
_GB_LOOKUP = np.full(1 << 16, _UNKNOWN, dtype=np.uint8)
_GB_LOOKUP[PALETTE[:, 1].astype(np.int32) << 8 | PALETTE[:, 2]] = np.arange(NUM_CLASSES)
_GB_LOOKUP.setflags(write=False)


def decode_color_mask_details(rgb: np.ndarray) -> DecodedMask:
    """Decode an official colour mask exactly as the official code does, listing off-palette colours.

    Every palette colour maps to its index. A colour outside the palette gets what the
    official decoder gives it (see :func:`decode_color_mask_official`): background 0 unless
    its weighted sum R + 2G + 3B happens to equal a palette colour's; either way it is counted
    and listed. Bit-exact with the official decoding keeps the labels the weights were trained
    and evaluated with. Works block by block with a lookup table, so a 13000x13000 mask needs
    no python loop over pixels and only bounded extra memory.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 colour mask [H,W,3], got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    index = np.empty((height, width), dtype=np.uint8)
    n_unknown = 0
    unknown: Dict[Tuple[int, int, int], int] = {}
    for y0 in range(0, height, _DECODE_ROWS_PER_BLOCK):
        block_rgb = rgb[y0 : y0 + _DECODE_ROWS_PER_BLOCK]
        green_blue = block_rgb[..., 1].astype(np.uint16)
        green_blue <<= 8
        green_blue |= block_rgb[..., 2]
        block = _GB_LOOKUP[green_blue]
        is_unknown = block == _UNKNOWN
        is_unknown |= block_rgb[..., 0] != 0
        block_unknown = int(np.count_nonzero(is_unknown))
        if block_unknown:
            block[is_unknown] = _official_index(block_rgb[is_unknown])
            n_unknown += block_unknown
            colours, counts = np.unique(_pack_rgb(block_rgb[is_unknown]), return_counts=True)
            for colour, count in zip(colours.tolist(), counts.tolist()):
                key = ((colour >> 16) & 255, (colour >> 8) & 255, colour & 255)
                unknown[key] = unknown.get(key, 0) + int(count)
        index[y0 : y0 + _DECODE_ROWS_PER_BLOCK] = block
    return DecodedMask(index, n_unknown, unknown)


def decode_color_mask(rgb: np.ndarray) -> Tuple[np.ndarray, int]:
    """Decode an official colour mask [H,W,3] uint8 to (index uint8 [H,W], n_unknown_pixels).

    Bit-exact with the official decoder; colours outside the palette (background 0 for
    almost all of them) are counted in ``n_unknown_pixels``.
    """
    decoded = decode_color_mask_details(rgb)
    return decoded.index, decoded.n_unknown


def decode_color_mask_official(rgb: np.ndarray) -> np.ndarray:
    """Reproduce the official decoder bit for bit (FarSeg ``RemoveColorMap``).

    The official code does not compare colours: it compares the weighted sum
    ``R*1 + G*2 + B*3`` with the sums of the 16 palette colours. The 16 palette sums are
    distinct, so palette colours decode the same as :func:`decode_color_mask`; but a colour
    outside the palette whose sum equals a palette sum (e.g. (3,0,62) sums to 189 like
    ship (0,0,63)) is decoded to that class instead of background. This whole-image version is
    the reference that :func:`decode_color_mask_details` (fast path for palette colours) is
    tested against.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 colour mask [H,W,3], got {rgb.dtype} {rgb.shape}")
    height = rgb.shape[0]
    index = np.empty(rgb.shape[:2], dtype=np.uint8)
    for y0 in range(0, height, _DECODE_ROWS_PER_BLOCK):
        index[y0 : y0 + _DECODE_ROWS_PER_BLOCK] = _official_index(rgb[y0 : y0 + _DECODE_ROWS_PER_BLOCK])
    return index


# Official rule: class of the palette colour with the same weighted sum R + 2G + 3B, else 0.
_SUM_LOOKUP = np.zeros(255 * 6 + 1, dtype=np.uint8)  # all weighted sums are in 0..1530
_SUM_LOOKUP[PALETTE.astype(np.int32) @ np.array([1, 2, 3], dtype=np.int32)] = np.arange(NUM_CLASSES)
_SUM_LOOKUP.setflags(write=False)


def _official_index(rgb: np.ndarray) -> np.ndarray:
    """Official class of each pixel of ``rgb`` [..., 3 or 4] uint8 (see the table above)."""
    weighted_sum = rgb[..., 0].astype(np.uint16)  # at most 1530: fits in uint16
    weighted_sum += 2 * rgb[..., 1].astype(np.uint16)
    weighted_sum += 3 * rgb[..., 2].astype(np.uint16)
    return _SUM_LOOKUP[weighted_sum]


def _colour_lookup() -> np.ndarray:
    """[256,3] uint8 table: palette colours for 0..15, white for 255, magenta otherwise."""
    table = np.empty((256, 3), dtype=np.uint8)
    table[:] = INVALID_COLOUR
    table[:NUM_CLASSES] = PALETTE
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table


_COLOUR_LOOKUP = _colour_lookup()


def colorize(index: np.ndarray) -> np.ndarray:
    """Render an index mask [H,W] as the official colour mask [H,W,3] uint8.

    Classes 0..15 get their palette colour (so ``decode_color_mask(colorize(x))`` gives
    ``x`` back); 255 (ignore / padding) is rendered white; any other value magenta, which
    is not a palette colour and therefore decodes to background and is counted as unknown.
    """
    index = np.asarray(index)
    if index.dtype != np.uint8:
        if index.size and (index.min() < 0 or index.max() > 255):
            raise ValueError("index values must lie in 0..255")
        index = index.astype(np.uint8)
    return _COLOUR_LOOKUP[index]


def index_png_palette() -> List[int]:
    """The flat 768-entry palette written into index-label PNGs (mode "P").

    Entry ``c`` is the class colour, 255 white, the rest magenta: viewers show the labels in
    the official colours while the stored pixel values stay the class indices.
    """
    return _COLOUR_LOOKUP.reshape(-1).tolist()


def legend_items() -> List[Tuple[int, str, Tuple[int, int, int]]]:
    """``(index, name, (r, g, b))`` for every class, in index order, for colour legends."""
    return [(index, name, tuple(int(v) for v in PALETTE[index])) for index, name in enumerate(CLASS_NAMES)]

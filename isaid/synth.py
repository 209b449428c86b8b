"""Synthetic iSAID-like scenes, written in the official download layout.

Usage::

    python -m isaid.synth OUT [--train 8] [--val 4] [--size 512] [--seed 0] [--no-zip]

Each scene is an RGB image on a textured background with small objects (ships, vehicles,
helicopters, planes, storage tanks, pools: 5-40 px) and large ones (fields, courts,
roundabouts, bridges, harbours: tens to hundreds of px) of every class, and its colour mask
``*_instance_color_RGB.png`` in the real iSAID palette. Every class has its own saturated
colour and stripe texture, far from the greyish background, so that a tiny CNN learns the
classes in a few hundred CPU iterations; that is the point: an end-to-end test can assert that
a trained model beats an untrained one. Output is deterministic for a given seed; scene ``i``
of a split does not depend on how many scenes the other split has.

Layout written (as downloaded from the iSAID site)::

    OUT/train/images/part1.zip, part2.zip    members images/P0000.png ...
    OUT/train/Semantic_masks/images.zip      members images/P0000_instance_color_RGB.png ...
    OUT/val/images/part1.zip
    OUT/val/Semantic_masks/images.zip

With ``--no-zip`` the same files lie in ``OUT/{split}/images/`` and
``OUT/{split}/Semantic_masks/`` directly.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.cli import int_in_range

from .palette import COLOUR_MASK_SUFFIX, NUM_CLASSES, colorize

# Image colour of each class (not the mask colour): saturated corners of the RGB cube, all at
# least 110 apart in some channel from each other and from the greyish background.
CLASS_IMAGE_COLOURS: Dict[int, Tuple[int, int, int]] = {
    1: (250, 250, 250),  # ship
    2: (250, 140, 30),  # roundabout
    3: (250, 30, 30),  # baseball diamond
    4: (30, 140, 250),  # tennis court
    5: (250, 30, 250),  # basketball court
    6: (140, 30, 30),  # ground track field
    7: (250, 250, 30),  # bridge
    8: (30, 250, 250),  # large vehicle
    9: (30, 30, 250),  # small vehicle
    10: (250, 140, 250),  # helicopter
    11: (30, 250, 140),  # swimming pool
    12: (140, 250, 30),  # storage tank
    13: (30, 140, 30),  # soccer ball field
    14: (140, 30, 250),  # plane
    15: (30, 30, 140),  # harbor
}
BACKGROUND_COLOUR = (120, 112, 96)

Mask = np.ndarray  # bool [h, w]


def _rect(rng: np.random.Generator, short: Tuple[int, int], long: Tuple[int, int]) -> Mask:
    a = int(rng.integers(short[0], short[1] + 1))
    b = int(rng.integers(long[0], long[1] + 1))
    h, w = (a, b) if rng.random() < 0.5 else (b, a)
    return np.ones((h, w), dtype=bool)


def _ellipse(rng: np.random.Generator, ry_range: Tuple[int, int], rx_range: Tuple[int, int]) -> Mask:
    ry = int(rng.integers(ry_range[0], ry_range[1] + 1))
    rx = int(rng.integers(rx_range[0], rx_range[1] + 1))
    if rng.random() < 0.5:
        ry, rx = rx, ry
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (y / max(ry, 1)) ** 2 + (x / max(rx, 1)) ** 2 <= 1.0


def _disc(rng: np.random.Generator, radius: Tuple[int, int]) -> Mask:
    r = int(rng.integers(radius[0], radius[1] + 1))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return y * y + x * x <= r * r


def _diamond(rng: np.random.Generator, radius: Tuple[int, int]) -> Mask:
    r = int(rng.integers(radius[0], radius[1] + 1))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return np.abs(y) + np.abs(x) <= r


def _cross(rng: np.random.Generator, span: Tuple[int, int]) -> Mask:
    """A plane or helicopter seen from above: a long body and a crossing bar."""
    n = int(rng.integers(span[0], span[1] + 1))
    thick = max(2, n // 5)
    mask = np.zeros((n, n), dtype=bool)
    c = n // 2
    mask[:, c - thick // 2 : c - thick // 2 + thick] = True
    wing_row = n // 3
    mask[wing_row : wing_row + thick, :] = True
    return mask if rng.random() < 0.5 else mask.T


@dataclass(frozen=True)
class _ObjectKind:
    shape: Callable[[np.random.Generator], Mask]
    pattern: str  # "flat", "hstripes", "vstripes", "checker", "diagonal"
    period: int  # stripe period in pixels
    large: bool


_KINDS: Dict[int, _ObjectKind] = {
    1: _ObjectKind(lambda r: _rect(r, (5, 8), (12, 22)), "flat", 0, False),
    2: _ObjectKind(lambda r: _disc(r, (15, 45)), "checker", 6, True),
    3: _ObjectKind(lambda r: _diamond(r, (20, 50)), "diagonal", 8, True),
    4: _ObjectKind(lambda r: _rect(r, (20, 40), (40, 70)), "hstripes", 4, True),
    5: _ObjectKind(lambda r: _rect(r, (20, 40), (35, 60)), "vstripes", 6, True),
    6: _ObjectKind(lambda r: _ellipse(r, (30, 60), (50, 100)), "hstripes", 10, True),
    7: _ObjectKind(lambda r: _rect(r, (8, 14), (60, 200)), "flat", 0, True),
    8: _ObjectKind(lambda r: _rect(r, (6, 9), (14, 22)), "hstripes", 3, False),
    9: _ObjectKind(lambda r: _rect(r, (5, 7), (8, 12)), "flat", 0, False),
    10: _ObjectKind(lambda r: _cross(r, (10, 16)), "flat", 0, False),
    11: _ObjectKind(lambda r: _rect(r, (8, 24), (10, 30)), "checker", 3, False),
    12: _ObjectKind(lambda r: _disc(r, (4, 12)), "flat", 0, False),
    13: _ObjectKind(lambda r: _rect(r, (40, 80), (60, 120)), "vstripes", 12, True),
    14: _ObjectKind(lambda r: _cross(r, (16, 40)), "flat", 0, False),
    15: _ObjectKind(lambda r: _rect(r, (30, 100), (60, 250)), "diagonal", 12, True),
}
_SMALL_CLASSES = [c for c, k in _KINDS.items() if not k.large]
_LARGE_CLASSES = [c for c, k in _KINDS.items() if k.large]


def _texture(kind: _ObjectKind, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Brightness offset (int16) of the class texture at absolute pixel coordinates."""
    if kind.pattern == "flat" or kind.period <= 0:
        return np.zeros(np.broadcast(ys, xs).shape, dtype=np.int16)
    p = kind.period
    if kind.pattern == "hstripes":
        on = (ys // p) % 2 + 0 * xs
    elif kind.pattern == "vstripes":
        on = (xs // p) % 2 + 0 * ys
    elif kind.pattern == "checker":
        on = ((ys // p) + (xs // p)) % 2
    else:  # diagonal
        on = ((ys + xs) // p) % 2
    return on.astype(np.int16) * 36 - 18


def _fit(mask: Mask, limit: int) -> Mask:
    """Crop an object so that it fits in scenes much smaller than the object."""
    return mask[:limit, :limit]


def _paint(
    rng: np.random.Generator,
    rgb: np.ndarray,
    index: np.ndarray,
    class_index: int,
    shape: Mask,
    top: int,
    left: int,
) -> None:
    height, width = index.shape
    y1 = min(top + shape.shape[0], height)
    x1 = min(left + shape.shape[1], width)
    shape = shape[: y1 - top, : x1 - left]
    if not shape.any():
        return
    kind = _KINDS[class_index]
    ys, xs = np.ogrid[top:y1, left:x1]
    colour = np.array(CLASS_IMAGE_COLOURS[class_index], dtype=np.int16)
    pixels = colour + _texture(kind, ys, xs)[..., None]
    pixels = pixels + rng.integers(-10, 11, size=pixels.shape, dtype=np.int16)
    np.clip(pixels, 0, 255, out=pixels)
    region_rgb = rgb[top:y1, left:x1]
    region_rgb[shape] = pixels[shape].astype(np.uint8)
    index[top:y1, left:x1][shape] = class_index


def _place(rng: np.random.Generator, rgb: np.ndarray, index: np.ndarray, class_index: int) -> None:
    height, width = index.shape
    limit = max(4, int(0.6 * min(height, width)))
    shape = _fit(_KINDS[class_index].shape(rng), limit)
    top = int(rng.integers(0, max(1, height - shape.shape[0] + 1)))
    left = int(rng.integers(0, max(1, width - shape.shape[1] + 1)))
    _paint(rng, rgb, index, class_index, shape, top, left)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Greyish terrain: smooth blotches (blocks of 32 px) plus fine noise, about 80..160."""
    cell = 32
    coarse = rng.integers(-22, 23, size=(height // cell + 2, width // cell + 2, 1), dtype=np.int16)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    base = np.array(BACKGROUND_COLOUR, dtype=np.int16)
    rows_per_block = 1024  # bounds the int16 temporaries for 8000x8000 scenes
    for y0 in range(0, height, rows_per_block):
        y1 = min(y0 + rows_per_block, height)
        rows = np.arange(y0, y1) // cell
        cols = np.arange(width) // cell
        block = base + coarse[rows][:, cols]
        block = block + rng.integers(-12, 13, size=(y1 - y0, width, 3), dtype=np.int16)
        np.clip(block, 0, 255, out=block)
        rgb[y0:y1] = block.astype(np.uint8)
    return rgb


def make_scene(rng: np.random.Generator, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic scene: (rgb uint8 [H,W,3], index uint8 [H,W] with classes 0..15).

    Object counts grow with the area (about one large object per 150x150 px and one small
    object per 40x40 px), so a 4000x4000 or 8000x8000 scene looks like a 256x256 one, only
    bigger. Every one of the 15 foreground classes is present whenever the scene is at least
    about 24x24. Deterministic for a given ``rng`` state.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"scene size must be positive, got {height}x{width}")
    rgb = _background(rng, height, width)
    index = np.zeros((height, width), dtype=np.uint8)
    area = height * width
    n_large = max(1, round(area / 150**2))
    n_small = max(1, round(area / 40**2))
    for class_index in rng.choice(_LARGE_CLASSES, size=n_large):
        _place(rng, rgb, index, int(class_index))
    for class_index in rng.choice(_SMALL_CLASSES, size=n_small):
        _place(rng, rgb, index, int(class_index))
    # Guarantee every class in every scene (so small validation sets give finite mIoU):
    # classes covered by later objects, or never drawn, get a small instance painted last.
    if min(height, width) >= 24:
        for _ in range(20):
            present = np.bincount(index.ravel(), minlength=NUM_CLASSES) > 0
            missing = [c for c in range(1, NUM_CLASSES) if not present[c]]
            if not missing:
                break
            for class_index in missing:
                size = int(rng.integers(6, 13))
                top = int(rng.integers(0, height - size + 1))
                left = int(rng.integers(0, width - size + 1))
                _paint(rng, rgb, index, class_index, np.ones((size, size), bool), top, left)
    return rgb, index


def scene_size(rng: np.random.Generator, size: int, first: bool) -> Tuple[int, int]:
    """Scene size around ``size``: exactly ``size`` for the first scene, else 0.6..1.25 x size.

    The jitter gives sizes that are not multiples of 32 and, for small ``size``, sides smaller
    than a window, so window edge cases are exercised.
    """
    if first:
        return size, size
    low, high = max(16, int(0.6 * size)), max(17, int(1.25 * size))
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _zip_member(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: reproducible zips
    info.compress_type = zipfile.ZIP_STORED  # PNG data is already compressed
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def write_split(
    out: str,
    split: str,
    names: Sequence[str],
    seed: int,
    size: int,
    zipped: bool,
    image_parts: int,
    split_id: int,
) -> List[Tuple[str, int, int]]:
    """Write the scenes ``names`` of one split; returns (name, height, width) per scene."""
    image_dir = os.path.join(out, split, "images")
    mask_dir = os.path.join(out, split, "Semantic_masks")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    written = []
    image_zips: List[zipfile.ZipFile] = []
    mask_zip: Optional[zipfile.ZipFile] = None
    try:
        if zipped:
            parts = max(1, min(image_parts, len(names)))
            image_zips = [zipfile.ZipFile(os.path.join(image_dir, f"part{p + 1}.zip"), "w") for p in range(parts)]
            mask_zip = zipfile.ZipFile(os.path.join(mask_dir, "images.zip"), "w")
        for number, name in enumerate(names):
            rng = np.random.default_rng([seed, split_id, number])
            height, width = scene_size(rng, size, first=number == 0)
            rgb, index = make_scene(rng, height, width)
            image_png, mask_png = _png(rgb), _png(colorize(index))
            if zipped:
                part = image_zips[number * len(image_zips) // len(names)]
                _zip_member(part, f"images/{name}.png", image_png)
                _zip_member(mask_zip, f"images/{name}{COLOUR_MASK_SUFFIX}", mask_png)
            else:
                with open(os.path.join(image_dir, f"{name}.png"), "wb") as handle:
                    handle.write(image_png)
                with open(os.path.join(mask_dir, f"{name}{COLOUR_MASK_SUFFIX}"), "wb") as handle:
                    handle.write(mask_png)
            written.append((name, height, width))
    finally:
        for archive in image_zips:
            archive.close()
        if mask_zip is not None:
            mask_zip.close()
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m isaid.synth",
        description="Write synthetic iSAID-like scenes (RGB images and official colour masks)"
        " in the iSAID download layout, for tests and demos without the real data.",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created; files are overwritten)")
    parser.add_argument(
        "--train",
        type=int_in_range(0, 1000, "a scene count"),
        default=8,
        metavar="N",
        help="number of training scenes (default 8)",
    )
    parser.add_argument(
        "--val",
        type=int_in_range(0, 1000, "a scene count"),
        default=4,
        metavar="M",
        help="number of validation scenes (default 4)",
    )
    parser.add_argument(
        "--size",
        type=int_in_range(64, 8192, "a scene side"),
        default=512,
        metavar="S",
        help="scene side in pixels: the first scene of each split is SxS, the"
        " others 0.6..1.25 S per side (default 512)",
    )
    parser.add_argument(
        "--seed",
        type=int_in_range(0, 2**32 - 1, "a seed"),
        default=0,
        metavar="K",
        help="random seed; the same seed gives the same files (default 0)",
    )
    parser.add_argument(
        "--zip",
        dest="zipped",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="zip like the official download: images/part1.zip (and part2.zip"
        " for train), Semantic_masks/images.zip (default); --no-zip writes"
        " the PNG files into the folders instead",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for option, value in (("--train", args.train), ("--val", args.val)):
        if value < 0:
            print(f"error: {option}: must be >= 0, got {value}", file=sys.stderr)
            return 2
    if args.size < 16:
        print(f"error: --size: must be >= 16, got {args.size}", file=sys.stderr)
        return 2
    train_names = [f"P{i:04d}" for i in range(args.train)]
    val_names = [f"P{i:04d}" for i in range(args.train, args.train + args.val)]
    for split_id, (split, names, parts) in enumerate((("train", train_names, 2), ("val", val_names, 1))):
        if not names:
            continue
        write_split(args.out, split, names, args.seed, args.size, args.zipped, parts, split_id)
    layout = "zipped" if args.zipped else "extracted"
    print(f"synth: wrote {args.train} train and {args.val} val scenes ({layout}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

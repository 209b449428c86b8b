"""The evaluation inputs: scenes found beside their masks, checked, and read one ahead.

``--images DIR`` holds whole scenes (``P0003.png``; PNG, JPEG, TIFF or BMP); ``--masks DIR``
holds, for each scene, the official colour mask ``P0003_instance_color_RGB.png`` (decoded with
:mod:`isaid.palette`; colours outside the palette become background, as in the official code)
or an index mask ``P0003.png`` as written by ``python -m isaid.prepare`` (values 0..15,
255 = ignored). When both exist the official colour mask is used. Headers are read and the
image and mask sizes compared before anything is decoded; every decode is checked against the
memory this process may still allocate first.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

import numpy as np

from isaid.imageio import (
    DECODE_BYTES_PER_PIXEL,
    ImageReadError,
    check_image_memory,
    read_mask_details,
    read_rgb,
    read_size,
)
from isaid.palette import COLOUR_MASK_SUFFIX
from isaid.windows import num_windows

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Files that sit beside images in some layouts and are labels, not scenes.
_LABEL_STEM_SUFFIXES = ("_instance_color_RGB", "_instance_id_RGB")
_MAX_LISTED_PROBLEMS = 20


class InputError(Exception):
    """Bad input found before or during evaluation; ``lines`` are one-line messages."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = [" ".join(str(line).split()) for line in lines]
        super().__init__("\n".join(self.lines))


# --------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Scene:
    """One image and its mask, with the size read from the image header."""

    name: str
    image: str
    mask: str
    height: int
    width: int


def _image_files(folder: str) -> List[str]:
    names = []
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in IMAGE_EXTENSIONS and not stem.endswith(_LABEL_STEM_SUFFIXES):
            if os.path.isfile(os.path.join(folder, entry)):
                names.append(entry)
    return names


def _mask_for(name: str, image_path: str, masks_dir: str) -> Optional[str]:
    """The mask of scene ``name``: the official colour mask first, then an index PNG."""
    for candidate in (name + COLOUR_MASK_SUFFIX, name + ".png"):
        path = os.path.join(masks_dir, candidate)
        if os.path.isfile(path) and not os.path.samefile(path, image_path):
            return path
    return None


def _limit_problems(problems: List[str]) -> List[str]:
    if len(problems) <= _MAX_LISTED_PROBLEMS:
        return problems
    extra = len(problems) - _MAX_LISTED_PROBLEMS
    return problems[:_MAX_LISTED_PROBLEMS] + [f"... and {extra} more problems like these"]


def find_scenes(images_dir: str, masks_dir: str, limit: Optional[int] = None) -> List[Scene]:
    """Pair every image of ``images_dir`` (sorted by name) with its mask and check both headers.

    Catches, before any model runs: missing folders, no images, a missing mask, unreadable
    headers, and a mask whose size differs from the image. Raises :class:`InputError` listing
    every problem, one line each, naming the file. ``limit`` keeps the first N scenes.
    """
    problems: List[str] = []
    for option, folder in (("--images", images_dir), ("--masks", masks_dir)):
        if not os.path.isdir(folder):
            problems.append(f"{folder}: {option} folder not found")
    if problems:
        raise InputError(problems)
    names = _image_files(images_dir)
    if not names:
        hint = ""
        nested = os.path.join(images_dir, "images")
        if os.path.isdir(nested) and _image_files(nested):
            hint = f" (the images seem to be in {nested})"
        raise InputError([f"{images_dir}: no images found (*.png, *.jpg, *.tif, *.bmp){hint}"])
    if limit is not None:
        names = names[:limit]
    scenes: List[Scene] = []
    for entry in names:
        name = os.path.splitext(entry)[0]
        image_path = os.path.join(images_dir, entry)
        mask_path = _mask_for(name, image_path, masks_dir)
        if mask_path is None:
            problems.append(f"{image_path}: no mask in {masks_dir} (expected {name}{COLOUR_MASK_SUFFIX} or {name}.png)")
            continue
        try:
            height, width = read_size(image_path)
            mask_size = read_size(mask_path)
        except ImageReadError as error:
            problems.append(str(error))
            continue
        if mask_size != (height, width):
            problems.append(
                f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} (HxW) but image {image_path} is {height}x{width}"
            )
            continue
        scenes.append(Scene(name, image_path, mask_path, height, width))
    if problems:
        raise InputError(_limit_problems(problems))
    return scenes


@dataclass
class LoadedScene:
    """A scene's pixels: ``image`` uint8 [H,W,3] RGB and ``label`` uint8 [H,W] (0..15, 255)."""

    scene: Scene
    image: np.ndarray
    label: np.ndarray
    is_colour_mask: bool
    unknown_pixels: int  # colour-mask pixels outside the palette (decoded to background)


def load_scene(scene: Scene) -> LoadedScene:
    """Read one scene; raises ImageReadError (corrupt file, or too large for the memory
    available: checked from the headers before decoding) or InputError (sizes differ)."""
    image_size, mask_size = read_size(scene.image), read_size(scene.mask)
    if mask_size != image_size:  # from the headers: neither file is decoded for a mismatch
        raise InputError(
            [
                f"{scene.mask}: mask is {mask_size[0]}x{mask_size[1]} (HxW) but"
                f" image {scene.image} is {image_size[0]}x{image_size[1]}"
            ]
        )
    # Image and mask are held together, and the engine's windows besides (the guard of each
    # reader sees one file only).
    check_image_memory(*image_size, str(scene.image), 2 * DECODE_BYTES_PER_PIXEL, "evaluating")
    image = read_rgb(scene.image)
    details = read_mask_details(scene.mask)
    return LoadedScene(scene, image, details.index, details.is_colour_mask, details.n_unknown)


def iter_loaded_scenes(scenes: Sequence[Scene], prefetch: bool = True) -> Iterator[LoadedScene]:
    """Yield the scenes read, in order; with ``prefetch`` the next one is read in a thread.

    PNG decoding releases the GIL, so reading scene ``i + 1`` overlaps evaluating scene ``i``
    (on a GPU the decoding otherwise dominates). Errors surface when the scene is reached.
    """
    if not prefetch or len(scenes) <= 1:
        for scene in scenes:
            yield load_scene(scene)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_scene, scenes[0])
        for following in list(scenes[1:]) + [None]:
            loaded = pending.result()
            pending = pool.submit(load_scene, following) if following is not None else None
            yield loaded
            del loaded


def total_windows(scenes: Sequence[Scene], window: int, stride: int) -> int:
    """Windows the official protocol runs over ``scenes``."""
    return sum(num_windows(s.height, s.width, window, stride) for s in scenes)

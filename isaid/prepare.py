"""Prepare iSAID for training and evaluation: decode the colour masks, cut the patches.

Usage::

    python -m isaid.prepare SRC OUT [--window 896] [--stride 512] [--splits train val]
                            [--workers N] [--no-patches] [--compress-level 1] [--no-progress]

SRC is the official download (``SRC/train/images/part1.zip`` ..., ``SRC/train/Semantic_masks/
images.zip``, the same for ``val``) or the same folders with the PNG files extracted (directly
inside, or one folder deeper as the zips extract, e.g. ``images/images/P0000.png``). Zip
members are read one by one; nothing is extracted to disk.

Written, for each split::

    OUT/{split}/images/P0000.png                  RGB image, full size (the source bytes
                                                  when the source is an RGB PNG)
    OUT/{split}/labels/P0000.png                  index label, full size: uint8 class 0..15
                                                  (palette PNG showing the iSAID colours)
    OUT/{split}/patches/images/P0000_{y0}_{x0}.png  window of the image; padded bottom/right
                                                  with 0 to window x window when the image is
                                                  smaller than the window
    OUT/{split}/patches/labels/P0000_{y0}_{x0}.png  same window of the label, padded with 255
    OUT/{split}/done/P0000.json                   completion marker = the scene's index entry
    OUT/{split}/index.json                        all scenes: sizes, windows, per-class pixel
                                                  counts, unknown-colour counts, totals

Windows are the official ones (896 at stride 512: see :mod:`isaid.windows`). Every file is
written atomically and a scene's marker last, so a killed run can be restarted: scenes whose
marker matches the settings and whose files all exist are skipped; the others are redone.

Problems are reported one line each on stderr, ``error: <file>: <problem>`` (the scene is
skipped, the run goes on) or ``warning: <file>: <problem>``; the run ends with a one-line
summary on stdout and exit status 2 if any scene failed or the input is unusable.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import multiprocessing
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.atomic import (
    InputOverwriteError,
    describe_os_error,
    refuse_folder_holding_inputs,
    refuse_overwriting_inputs,
    remove_stale_temporaries,
)
from common.bounded_json import read_json
from common.cli import stride_px, thread_count, window_side
from common.resources import MemoryBudgetError, check_memory

from .imageio import (
    ImageReadError,
    atomic_output,
    read_mask_details,
    read_rgb_with_mode,
    read_size,
    write_bytes_atomic,
    write_png_atomic,
)
from .palette import CLASS_NAMES, COLOUR_MASK_SUFFIX, IGNORE_INDEX, NUM_CLASSES, PALETTE
from .windows import pad_bottom_right, sliding_windows

# Peak bytes a pixel of a scene costs while it is prepared (image and colour mask decoded by
# PIL and copied to numpy, the decoded index, patches), used to refuse a scene that cannot fit
# before decoding it. Measured: 15.9 (peak RSS minus the import baseline, a synthetic
# 3000x3000 scene, /usr/bin/time -v); 20 leaves a margin.
PREPARE_BYTES_PER_PIXEL = 20
MAX_MARKER_BYTES = 16 << 20  # a scene's done/<name>.json (its index entry: windows, counts)
IMAGE_FOLDER = "images"
MASK_FOLDER = "Semantic_masks"
INDEX_VERSION = 1
OUTPUT_LAYOUT_HELP = """\
written for each split (paths relative to OUT):
  {split}/images/P0000.png       RGB image, full size
  {split}/labels/P0000.png       index label, full size, uint8 class 0..15 (palette PNG)
  {split}/patches/images/P0000_{y0}_{x0}.png   window of the image, padded with 0 to
                                 the window size when the image is smaller
  {split}/patches/labels/P0000_{y0}_{x0}.png   same window of the label, padded with 255
  {split}/done/P0000.json        completion marker (the scene's index entry)
  {split}/index.json             scenes, sizes, windows, per-class pixel counts, unknown
                                 colours, totals
Scenes already complete with the same --window/--stride/--no-patches are skipped.
Problems: one line each on stderr ("error: <file>: ..." skips the scene, "warning: ...");
exit status 2 if any scene failed or the input is unusable, else 0.
"""
# The folders of OUT/{split} that prepare writes into and cleans (see OUTPUT_LAYOUT_HELP).
OUTPUT_FOLDERS = ("images", "labels", "done", "patches")
# Unknown colours listed per scene in index.json (the count is always complete).
_UNKNOWN_COLOURS_LISTED = 20


@dataclass(frozen=True)
class FileRef:
    """A PNG either on disk (``member`` is None) or inside the zip file ``path``."""

    path: str
    member: Optional[str] = None

    @property
    def display(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path

    def open(self) -> "io.BufferedIOBase":
        """A binary stream of the file. A zip member is streamed from the archive (never read
        whole: only what the PNG decoder asks for is inflated), once its declared sizes pass
        :func:`check_zip_member`."""
        if self.member is None:
            return open(self.path, "rb")
        with zipfile.ZipFile(self.path) as archive:
            check_zip_member(archive.getinfo(self.member), self.display)
            return archive.open(self.member)  # keeps the archive's file open until it is closed


# A zip member is a PNG of one scene: the largest iSAID scene (about 13000 x 13000, RGB) is
# ~0.5 GB even uncompressed, and PNG data hardly deflates further. A member declaring more,
# or inflating more than MAX_ZIP_RATIO times, is not a scene (issue 17: a 64^2 PNG padded
# with 1.5 GB of zeros, 1.6 MB on disk).
MAX_ZIP_MEMBER_BYTES = 1 << 30
MAX_ZIP_RATIO = 50
ZIP_RATIO_FLOOR = 1 << 20  # small members (masks of a few colours) may compress well


class ZipMemberError(Exception):
    """A zip member whose declared sizes are not those of a scene PNG; one line."""


def check_zip_member(info: zipfile.ZipInfo, display: str) -> None:
    """ZipMemberError when a member declares more than :data:`MAX_ZIP_MEMBER_BYTES` or a
    compression ratio above :data:`MAX_ZIP_RATIO` (checked before a byte is inflated)."""
    if info.file_size > MAX_ZIP_MEMBER_BYTES:
        raise ZipMemberError(
            f"{display}: zip member declares {info.file_size} bytes uncompressed, more than the"
            f" {MAX_ZIP_MEMBER_BYTES} a scene PNG may have; not read"
        )
    if info.file_size > ZIP_RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise ZipMemberError(
            f"{display}: zip member inflates {info.compress_size} bytes to {info.file_size}"
            f" (ratio above {MAX_ZIP_RATIO}: a zip bomb, not a PNG); not read"
        )


@dataclass
class SceneSource:
    name: str
    image: FileRef
    mask: Optional[FileRef]


@dataclass
class Settings:
    window: int
    stride: int
    patches: bool

    def as_dict(self) -> Dict[str, object]:
        return {"window": self.window, "stride": self.stride, "patches": self.patches}


@dataclass
class SceneResult:
    name: str
    entry: Optional[Dict[str, object]]  # None when the scene failed
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    patches_written: int = 0


# ---------------------------------------------------------------------------- discovery


def _png_files(folder: str, problems: List[str]) -> List[FileRef]:
    """PNG files in ``folder``, one folder deeper, and inside zips found there."""
    found: List[FileRef] = []
    if not os.path.isdir(folder):
        return found
    candidates: List[str] = []
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            candidates += [os.path.join(full, e) for e in sorted(os.listdir(full))]
        else:
            candidates.append(full)
    for path in candidates:
        lower = path.lower()
        if lower.endswith(".png") and os.path.isfile(path):
            found.append(FileRef(path))
        elif lower.endswith(".zip") and os.path.isfile(path):
            try:
                with zipfile.ZipFile(path) as archive:
                    members = archive.namelist()
            except (zipfile.BadZipFile, OSError) as error:
                problems.append(f"error: {path}: cannot read zip file ({error})")
                continue
            for member in sorted(members):
                if member.endswith("/") or member.startswith("__MACOSX/"):
                    continue
                if member.lower().endswith(".png"):
                    found.append(FileRef(path, member))
    return found


def _stem(ref: FileRef) -> str:
    base = os.path.basename(ref.member if ref.member is not None else ref.path)
    return base[: -len(".png")] if base.lower().endswith(".png") else base


def discover_split(split_dir: str) -> Tuple[List[SceneSource], List[str]]:
    """Pair images with masks in one split folder. Returns (scenes sorted by name, messages).

    Images are the PNGs under ``images/`` (names without ``_instance_``); masks the
    ``*_instance_color_RGB.png`` under ``Semantic_masks/``. Messages are ready-made
    ``error:``/``warning:`` lines (unreadable zips, duplicates, masks without an image).
    """
    messages: List[str] = []
    images: Dict[str, FileRef] = {}
    for ref in _png_files(os.path.join(split_dir, IMAGE_FOLDER), messages):
        name = _stem(ref)
        if "_instance_" in name:
            continue
        if name in images:
            messages.append(f"warning: {ref.display}: duplicate of {images[name].display}; using the first")
            continue
        images[name] = ref
    masks: Dict[str, FileRef] = {}
    for ref in _png_files(os.path.join(split_dir, MASK_FOLDER), messages):
        base = os.path.basename(ref.member if ref.member is not None else ref.path)
        if not base.endswith(COLOUR_MASK_SUFFIX):
            continue
        name = base[: -len(COLOUR_MASK_SUFFIX)]
        if name in masks:
            messages.append(f"warning: {ref.display}: duplicate of {masks[name].display}; using the first")
            continue
        masks[name] = ref
    for name in sorted(set(masks) - set(images)):
        messages.append(f"warning: {masks[name].display}: mask without an image; ignored")
    scenes = [SceneSource(name, images[name], masks.get(name)) for name in sorted(images)]
    return scenes, messages


# ------------------------------------------------------------------------ one scene


def patch_name(scene: str, y0: int, x0: int) -> str:
    """File name of the patch of ``scene`` whose window starts at row ``y0``, column ``x0``."""
    return f"{scene}_{y0}_{x0}.png"


def scene_files(entry: Dict[str, object]) -> List[str]:
    """Paths (relative to the split folder) of every file a scene entry says was written."""
    files = [str(entry["image"]), str(entry["label"])]
    if entry.get("settings", {}).get("patches"):
        for y0, x0, _, _ in entry["patches"]:
            name = patch_name(str(entry["name"]), y0, x0)
            files.append(f"patches/images/{name}")
            files.append(f"patches/labels/{name}")
    return files


def _marker_path(out_split: str, name: str) -> str:
    return os.path.join(out_split, "done", f"{name}.json")


def _read_marker(out_split: str, name: str) -> Optional[Dict[str, object]]:
    try:  # a marker is a few KB; anything else (huge, deep, a FIFO) is not one: redo the scene
        entry = read_json(_marker_path(out_split, name), MAX_MARKER_BYTES, what="marker")
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("name") == name else None


def scene_is_complete(out_split: str, name: str, settings: Settings) -> bool:
    """True when the scene's marker matches ``settings`` and every file it lists exists."""
    entry = _read_marker(out_split, name)
    if entry is None or entry.get("settings") != settings.as_dict():
        return False
    return all(os.path.isfile(os.path.join(out_split, f)) for f in scene_files(entry))


def _remove_previous_outputs(out_split: str, name: str) -> None:
    """Forget an earlier (possibly different-settings) run of the scene before redoing it."""
    entry = _read_marker(out_split, name)
    marker = _marker_path(out_split, name)
    if os.path.exists(marker):
        os.remove(marker)
    if entry is None:
        return
    for relative in scene_files(entry):
        path = os.path.join(out_split, relative)
        if relative.startswith("patches/") and os.path.isfile(path):
            os.remove(path)


def remove_stray_temporaries(out_split: str) -> int:
    """Delete the hidden temporary files that killed runs left behind; returns how many.

    Only files whose writing process is gone are removed (:mod:`common.atomic` puts the process
    id in each name), so two prepares writing into one OUT never delete each other's files.
    """
    removed = 0
    for folder in ("images", "labels", "done", "patches/images", "patches/labels", "."):
        removed += len(remove_stale_temporaries(os.path.join(out_split, folder)))
    return removed


def _format_colour_counts(colours: Dict[Tuple[int, int, int], int], limit: int = 3) -> str:
    ranked = sorted(colours.items(), key=lambda item: (-item[1], item[0]))[:limit]
    text = ", ".join(f"({r},{g},{b}) x {n}" for (r, g, b), n in ranked)
    return text + (", ..." if len(colours) > limit else "")


def process_scene(scene: SceneSource, out_split: str, settings: Settings, compress_level: int) -> SceneResult:
    """Read, check and write one scene; every problem becomes a one-line message."""
    result = SceneResult(scene.name, None)
    if scene.mask is None:
        result.errors.append(f"error: {scene.image.display}: image without a mask ({scene.name}{COLOUR_MASK_SUFFIX})")
        return result
    try:
        # Both headers first: sizes compared and memory checked before anything is decoded (a
        # 19000^2 mask must not be decoded to find that it differs from its image).
        with scene.image.open() as stream:
            height, width = read_size(stream, scene.image.display)
        with scene.mask.open() as stream:
            mask_height, mask_width = read_size(stream, scene.mask.display)
        if (mask_height, mask_width) != (height, width):
            result.errors.append(
                f"error: {scene.mask.display}: mask size {mask_width}x{mask_height} differs from image size"
                f" {width}x{height} (width x height) of {scene.image.display}"
            )
            return result
        # A scene too large for this machine is one clear line, not an empty MemoryError
        # minutes later.
        check_memory(
            PREPARE_BYTES_PER_PIXEL * height * width,
            f"{scene.image.display}: preparing this {width}x{height} scene (decoded whole)",
            "prepare it on a machine with more memory, or with fewer --workers",
        )
        with scene.image.open() as stream:
            image, mode, file_format = read_rgb_with_mode(stream, scene.image.display)
        copy_source_bytes = mode == "RGB" and file_format == "PNG"
        with scene.mask.open() as stream:
            mask = read_mask_details(stream, scene.mask.display)
    except (ImageReadError, MemoryBudgetError, ZipMemberError) as error:
        result.errors.append(f"error: {error}")
        return result
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError) as error:
        result.errors.append(f"error: {scene.image.display}: cannot read ({' '.join(str(error).split())})")
        return result
    if mask.index.shape != (height, width) or image.shape[:2] != (height, width):
        result.errors.append(f"error: {scene.mask.display}: decoded sizes differ from the headers' ({width}x{height})")
        return result
    if mask.n_unknown:
        as_class = (
            f"; {mask.unknown_as_class} of them have the weighted sum R+2G+3B of a palette colour and"
            f" get its class, as in the official decoder"
            if mask.unknown_as_class
            else ""
        )
        result.warnings.append(
            f"warning: {scene.mask.display}: {mask.n_unknown} pixels with colours outside the"
            f" iSAID palette decoded as the official code does: background 0"
            f" ({_format_colour_counts(mask.unknown_colours)}){as_class}"
        )

    _remove_previous_outputs(out_split, scene.name)
    image_rel = f"images/{scene.name}.png"
    label_rel = f"labels/{scene.name}.png"
    image_path = os.path.join(out_split, image_rel)
    if copy_source_bytes:  # the source PNG as it is, streamed (a zip member is never held whole)
        with atomic_output(image_path) as temporary, scene.image.open() as source, open(temporary, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
    else:
        write_png_atomic(image_path, image, compress_level=compress_level)
    label = mask.index
    write_png_atomic(os.path.join(out_split, label_rel), label, index_palette=True, compress_level=compress_level)

    windows = sliding_windows(height, width, settings.window, settings.stride)
    if settings.patches:
        for y0, x0, y1, x1 in windows:
            name = patch_name(scene.name, y0, x0)
            image_patch = pad_bottom_right(image[y0:y1, x0:x1], settings.window, settings.window, 0)
            label_patch = pad_bottom_right(label[y0:y1, x0:x1], settings.window, settings.window, IGNORE_INDEX)
            write_png_atomic(
                os.path.join(out_split, "patches", "images", name), image_patch, compress_level=compress_level
            )
            write_png_atomic(
                os.path.join(out_split, "patches", "labels", name),
                label_patch,
                index_palette=True,
                compress_level=compress_level,
            )
            result.patches_written += 1

    # Counted on the array that was just written losslessly, i.e. on the written label.
    counts = np.bincount(label.reshape(-1), minlength=256)
    unknown_listed = sorted(mask.unknown_colours.items(), key=lambda item: (-item[1], item[0]))
    entry: Dict[str, object] = {
        "name": scene.name,
        "height": int(height),
        "width": int(width),
        "image": image_rel,
        "label": label_rel,
        "source_image": scene.image.display,
        "source_mask": scene.mask.display,
        "settings": settings.as_dict(),
        "patches": [list(w) for w in windows],
        "class_pixels": [int(c) for c in counts[:NUM_CLASSES]],
        "ignore_pixels": int(counts[IGNORE_INDEX]),
        "unknown_pixels": int(mask.n_unknown),
        "unknown_colours": {f"{r},{g},{b}": int(n) for (r, g, b), n in unknown_listed[:_UNKNOWN_COLOURS_LISTED]},
        "unknown_pixels_decoded_as_class": int(mask.unknown_as_class),
    }
    marker = _marker_path(out_split, scene.name)
    write_bytes_atomic(marker, (json.dumps(entry) + "\n").encode("utf-8"))
    result.entry = entry
    return result


def _process_scene_safely(scene: SceneSource, out_split: str, settings: Settings, compress_level: int) -> SceneResult:
    """:func:`process_scene`, turning unexpected failures (disk full, memory) into one line."""
    try:
        return process_scene(scene, out_split, settings, compress_level)
    except MemoryError:
        return SceneResult(
            scene.name,
            None,
            errors=[
                f"error: {scene.image.display}: out of memory while preparing this scene (about"
                f" {PREPARE_BYTES_PER_PIXEL} bytes a pixel are needed); use fewer --workers or more memory"
            ],
        )
    except Exception as error:  # noqa: BLE001 - reported by file name, the run goes on
        text = " ".join(str(error).split())
        return SceneResult(
            scene.name,
            None,
            errors=[f"error: {scene.image.display}: {type(error).__name__}: {text}"],
        )


# ---------------------------------------------------------------------------- index


def write_index(
    out_split: str, split: str, scenes: Sequence[SceneSource], settings: Settings, failed: Sequence[str]
) -> Dict[str, object]:
    """Assemble ``index.json`` of a split from the completion markers of ``scenes``."""
    entries = []
    for scene in scenes:
        entry = _read_marker(out_split, scene.name)
        if entry is not None and entry.get("settings") == settings.as_dict():
            entries.append(entry)
    class_totals = np.zeros(NUM_CLASSES, dtype=np.int64)
    for entry in entries:
        class_totals += np.asarray(entry["class_pixels"], dtype=np.int64)
    index = {
        "version": INDEX_VERSION,
        "split": split,
        "window": settings.window,
        "stride": settings.stride,
        "patches_written": settings.patches,
        "patch_files": "patches/{images,labels}/{name}_{y0}_{x0}.png for each window"
        " [y0, x0, y1, x1] (ends exclusive) in 'patches'",
        "label_values": "class index 0..15; 255 = ignore (only in padding of patches)",
        "num_classes": NUM_CLASSES,
        "class_names": list(CLASS_NAMES),
        "palette": PALETTE.tolist(),
        "scenes": entries,
        "failed": sorted(failed),
        "totals": {
            "scenes": len(entries),
            "patches": int(sum(len(e["patches"]) for e in entries)),
            "class_pixels": [int(c) for c in class_totals],
            "unknown_pixels": int(sum(int(e["unknown_pixels"]) for e in entries)),
        },
    }
    write_bytes_atomic(os.path.join(out_split, "index.json"), (json.dumps(index, indent=1) + "\n").encode("utf-8"))
    return index


# ------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m isaid.prepare",
        description="Turn the iSAID download into index labels and training patches.",
        epilog=OUTPUT_LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="iSAID download folder: SRC/{split}/images/*.zip and"
        " SRC/{split}/Semantic_masks/*.zip, or the same folders with the"
        " PNG files extracted (directly or one folder deeper)",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    parser.add_argument(
        "--window",
        type=window_side,
        default=896,
        help="window (patch) side in pixels (default 896, the official value)",
    )
    parser.add_argument(
        "--stride", type=stride_px, default=512, help="distance between window starts (default 512, the official value)"
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["train", "val"],
        metavar="SPLIT",
        help="splits to prepare, folder names under SRC (default: train val)",
    )
    parser.add_argument(
        "--workers",
        type=thread_count,
        default=1,
        help="parallel processes; each holds one scene in memory, up to ~2 GB"
        " for the largest 13000x13000 scenes (default 1)",
    )
    parser.add_argument(
        "--no-patches",
        dest="patches",
        action="store_false",
        help="write only full-size images and labels; windows are still listed in index.json",
    )
    parser.add_argument(
        "--compress-level",
        type=int,
        default=1,
        choices=range(10),
        metavar="{0..9}",
        help="PNG zlib level for the files written (lossless at every level;"
        " 1 is faster than PIL's default 6, files somewhat"
        " larger; default 1)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def _emit(message: str, progress_bar: object = None) -> None:
    if progress_bar is not None:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def refuse_outputs_over_inputs(out_split: str, scenes: Sequence[SceneSource]) -> None:
    """InputOverwriteError (one line) when a folder this split writes into (and cleans) holds
    an input file, e.g. OUT given as SRC: the source PNGs would be replaced or deleted."""
    inputs = [("SRC", ref.path) for scene in scenes for ref in (scene.image, scene.mask) if ref is not None]
    for folder in OUTPUT_FOLDERS:
        refuse_folder_holding_inputs(os.path.join(out_split, folder), "OUT", inputs)
    refuse_overwriting_inputs([("OUT", os.path.join(out_split, "index.json"))], inputs)


def _run_split(split: str, args: argparse.Namespace, settings: Settings, totals: Dict[str, int]) -> None:
    from tqdm import tqdm

    split_dir = os.path.join(args.src, split)
    if not os.path.isdir(split_dir):
        _emit(f"error: {split_dir}: split folder not found")
        totals["bad_input"] += 1
        return
    scenes, messages = discover_split(split_dir)
    for message in messages:
        _emit(message)
        if message.startswith("error:"):
            totals["bad_input"] += 1
    if not scenes:
        _emit(f"error: {os.path.join(split_dir, IMAGE_FOLDER)}: no images found")
        totals["bad_input"] += 1
        return
    out_split = os.path.join(args.out, split)
    refuse_outputs_over_inputs(out_split, scenes)
    os.makedirs(out_split, exist_ok=True)
    remove_stray_temporaries(out_split)
    todo = [s for s in scenes if not scene_is_complete(out_split, s.name, settings)]
    totals["skipped"] += len(scenes) - len(todo)
    failed: List[str] = []
    bar = tqdm(total=len(todo), desc=split, unit="scene", file=sys.stderr, disable=not args.progress or not todo)
    shown_bar = bar if not bar.disable else None

    def handle(result: SceneResult) -> None:
        for line in result.warnings + result.errors:
            _emit(line, shown_bar)
        if result.entry is None:
            failed.append(result.name)
            totals["failed"] += 1
        else:
            totals["written"] += 1
            totals["patches_written"] += result.patches_written
        bar.update(1)

    try:
        if args.workers <= 1 or len(todo) <= 1:
            for scene in todo:
                handle(_process_scene_safely(scene, out_split, settings, args.compress_level))
        else:
            # "spawn": workers start clean (no inherited tqdm thread or file handles).
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                futures = [
                    pool.submit(_process_scene_safely, scene, out_split, settings, args.compress_level)
                    for scene in todo
                ]
                for future in concurrent.futures.as_completed(futures):
                    handle(future.result())
    finally:
        bar.close()
    index = write_index(out_split, split, scenes, settings, failed)
    totals["patches"] += int(index["totals"]["patches"])
    totals["unknown_pixels"] += int(index["totals"]["unknown_pixels"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for option, value in (("--window", args.window), ("--stride", args.stride), ("--workers", args.workers)):
        if value <= 0:
            print(f"error: {option}: must be a positive integer, got {value}", file=sys.stderr)
            return 2
    if args.stride > args.window:
        print(
            f"error: --stride: {args.stride} is larger than --window {args.window}, which"
            " would leave pixels in no patch",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(args.src):
        print(f"error: {args.src}: SRC folder not found", file=sys.stderr)
        return 2
    settings = Settings(args.window, args.stride, args.patches)
    totals = dict(written=0, skipped=0, failed=0, bad_input=0, patches=0, patches_written=0, unknown_pixels=0)
    for split in args.splits:
        try:
            _run_split(split, args, settings, totals)
        except InputOverwriteError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return 2
        except OSError as error:  # e.g. index.json on a full disk: one line, the earlier file kept
            where = getattr(error, "filename", None) or os.path.join(args.out, split)
            print(f"error: {where}: cannot write ({describe_os_error(error)})", file=sys.stderr, flush=True)
            return 2
    print(
        f"summary: {'+'.join(args.splits)}: scenes written {totals['written']},"
        f" skipped {totals['skipped']}, failed {totals['failed']};"
        f" patches {totals['patches']} (written now {totals['patches_written']});"
        f" unknown-colour pixels {totals['unknown_pixels']}",
        flush=True,
    )
    return 2 if totals["failed"] or totals["bad_input"] else 0


if __name__ == "__main__":
    sys.exit(main())

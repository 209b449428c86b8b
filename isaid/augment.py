"""Training samples for both frameworks: which patch, which augmentation, in numpy only.

Everything random in training data is a pure function of ``(seed, position)``, where
``position`` is the global index of a sample in the stream of all samples the run will ever
draw (iteration ``k`` of a run with global batch ``B`` uses positions ``k*B .. k*B+B-1``).
From that:

- the patch: the stream walks through the patches epoch by epoch, each epoch in its own
  permutation drawn from ``(seed, epoch)`` (every patch once per epoch, as a shuffled sampler);
- the augmentation: horizontal flip, vertical flip, rotation by ``k*90`` degrees drawn from
  ``(seed, position)`` (in that order: docs/official_models.md, "Training recipe"), then
  bottom/right padding to the window (image 0, label 255);
- the process: with ``W`` processes, process ``r`` takes the ``r``-th slice of ``B/W``
  positions of each global batch.

Consequences (each is tested): a resumed run needs no DataLoader or RNG state to continue
with exactly the batches it would have seen; torch and Paddle see identical batches for the
same seed; and the global batch does not depend on how many processes share it.

Patches come from ``python -m isaid.prepare`` (``OUT/{split}/patches/{images,labels}/
{scene}_{y0}_{x0}.png``, already padded to the window). As the official loader crops each
window from the full image and pads only after flipping and rotating, the padding that
prepare added is cut off again here (the valid size is in ``index.json``) before augmenting.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .imageio import ImageReadError, read_index_mask, read_rgb
from .palette import IGNORE_INDEX, MEAN, STD
from .windows import pad_bottom_right

# Independent random streams derived from the seed (numpy SeedSequence entropy words), so
# that the patch order and the augmentation draws never share random numbers.
_STREAM_ORDER = 0x0DE5
_STREAM_AUGMENT = 0xA06E


class DataError(ValueError):
    """Training data that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class PatchRef:
    """One training patch: its files and the size of its valid (unpadded) part."""

    scene: str
    image_path: str
    label_path: str
    height: int  # valid rows (y1 - y0 of the window)
    width: int  # valid columns


@dataclass(frozen=True)
class AugmentParams:
    """The augmentation of one sample, applied in this order: hflip, vflip, rot90 k times."""

    hflip: bool
    vflip: bool
    k: int  # counter-clockwise quarter turns (np.rot90), 0..3


def load_patch_index(root: str, split: str = "train", window: Optional[int] = None) -> List[PatchRef]:
    """The patches listed in ``root/split/index.json`` (scene order, then window order).

    Checks that the index was written with patches and, when ``window`` is given, with that
    window. Files are not opened here (a missing one is reported when it is read).
    """
    split_dir = os.path.join(root, split)
    index_path = os.path.join(split_dir, "index.json")
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
    except FileNotFoundError:
        raise DataError(
            f"{index_path}: not found; prepare the data first with `python -m isaid.prepare SRC {root}`"
        ) from None
    except (OSError, ValueError) as error:
        raise DataError(f"{index_path}: cannot read ({' '.join(str(error).split())})") from None
    if not isinstance(index, dict) or not isinstance(index.get("scenes"), list):
        raise DataError(f"{index_path}: not an isaid.prepare index (no 'scenes' list)")
    if not index.get("patches_written", False):
        raise DataError(
            f"{index_path}: prepared with --no-patches; run isaid.prepare again"
            " without it to write the training patches"
        )
    if window is not None and index.get("window") != window:
        raise DataError(
            f"{index_path}: patches were cut with window {index.get('window')}, but data.window is {window}"
        )
    patches: List[PatchRef] = []
    for entry in index["scenes"]:
        try:
            name = str(entry["name"])
            windows = entry["patches"]
            for y0, x0, y1, x1 in windows:
                file_name = f"{name}_{y0}_{x0}.png"
                patches.append(
                    PatchRef(
                        scene=name,
                        image_path=os.path.join(split_dir, "patches", "images", file_name),
                        label_path=os.path.join(split_dir, "patches", "labels", file_name),
                        height=int(y1) - int(y0),
                        width=int(x1) - int(x0),
                    )
                )
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{index_path}: malformed scene entry {str(entry)[:80]!r}") from None
    if not patches:
        raise DataError(f"{index_path}: lists no patches")
    return patches


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The permutation of ``range(num_samples)`` used in ``epoch`` (int64)."""
    rng = np.random.default_rng([seed, _STREAM_ORDER, epoch])
    return rng.permutation(num_samples)


def draw_augment(seed: int, position: int, hflip: float = 0.5, vflip: float = 0.5, rot90: bool = True) -> AugmentParams:
    """The augmentation of the sample at global ``position``: three draws, always made in the
    same order (so that a probability of 0 changes no other draw)."""
    rng = np.random.default_rng([seed, _STREAM_AUGMENT, position])
    u_h, u_v = rng.random(2)
    k = int(rng.integers(0, 4))
    return AugmentParams(hflip=bool(u_h < hflip), vflip=bool(u_v < vflip), k=k if rot90 else 0)


def augment(image: np.ndarray, label: np.ndarray, params: AugmentParams, pad_to: int) -> Tuple[np.ndarray, np.ndarray]:
    """Flip, rotate, then pad bottom/right to ``pad_to`` (image 0, label 255). Contiguous."""
    if params.hflip:
        image, label = image[:, ::-1], label[:, ::-1]
    if params.vflip:
        image, label = image[::-1], label[::-1]
    if params.k:
        image = np.rot90(image, params.k, axes=(0, 1))
        label = np.rot90(label, params.k, axes=(0, 1))
    image = pad_bottom_right(image, pad_to, pad_to, 0)
    label = pad_bottom_right(label, pad_to, pad_to, IGNORE_INDEX)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def read_patch(ref: PatchRef, window: int) -> Tuple[np.ndarray, np.ndarray]:
    """The valid part of a prepared patch: (uint8 [h,w,3] RGB, uint8 [h,w] labels)."""
    try:
        image = read_rgb(ref.image_path)
        label = read_index_mask(ref.label_path)
    except ImageReadError as error:
        raise DataError(str(error)) from None
    for path, array in ((ref.image_path, image), (ref.label_path, label)):
        if array.shape[:2] != (window, window):
            raise DataError(
                f"{path}: patch is {array.shape[1]}x{array.shape[0]} (WxH), expected"
                f" {window}x{window} as written by isaid.prepare"
            )
    return image[: ref.height, : ref.width], label[: ref.height, : ref.width]


class SamplePlan:
    """Which samples each process uses at each iteration, and how they are augmented.

    ``batch_size`` is the GLOBAL batch; each of ``world_size`` processes gets
    ``batch_size // world_size`` consecutive positions of it (``rank`` picks the slice).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("no samples to draw from")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"train.batch_size {batch_size} is not divisible by the {world_size} processes")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90
        self._orders: Dict[int, np.ndarray] = {}

    def positions(self, iteration: int) -> List[int]:
        """Global positions of this process's samples at ``iteration`` (0-based)."""
        start = iteration * self.batch_size + self.rank * self.local_batch
        return list(range(start, start + self.local_batch))

    def sample_index(self, position: int) -> int:
        """Index of the patch drawn at ``position``."""
        epoch, offset = divmod(position, self.num_samples)
        order = self._orders.get(epoch)
        if order is None:
            # Keep only the current and the previous epoch (a batch can straddle two).
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            order = self._orders[epoch] = epoch_order(self.seed, epoch, self.num_samples)
        return int(order[offset])

    def augment_params(self, position: int) -> AugmentParams:
        """The augmentation of the sample at ``position``."""
        return draw_augment(self.seed, position, self.hflip, self.vflip, self.rot90)


def load_sample(
    patches: Sequence[PatchRef], plan: SamplePlan, position: int, window: int
) -> Tuple[np.ndarray, np.ndarray]:
    """The training sample at ``position``: (uint8 [window,window,3], uint8 [window,window]).

    Normalisation is left to the device (:func:`normalize_batch` is its numpy reference):
    moving uint8 is four times less data than float32.
    """
    ref = patches[plan.sample_index(position)]
    image, label = read_patch(ref, window)
    return augment(image, label, plan.augment_params(position), window)


# A sample that cannot be loaded travels to the training loop as a fixed-size error record
# (UTF-8 bytes of the one-line message, zero-padded) next to a dummy image and label, rather
# than as an exception: each framework's DataLoader handles a worker's exception its own way
# (Paddle's single-process loader thread dies and the loop waits forever; its worker
# processes end in a long traceback), while a third batch element is collated like any other.
SAMPLE_ERROR_BYTES = 512


def load_sample_checked(
    patches: Sequence[PatchRef], plan: SamplePlan, position: int, window: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`load_sample` plus an error record: uint8 [SAMPLE_ERROR_BYTES], all zero when the
    sample is fine, else the error's message (image and label are then zeros)."""
    record = np.zeros(SAMPLE_ERROR_BYTES, dtype=np.uint8)
    try:
        image, label = load_sample(patches, plan, position, window)
    except Exception as error:  # noqa: BLE001 - every failure reaches the loop as one line
        message = " ".join(str(error).split())
        if not isinstance(error, DataError):
            message = f"sample {position}: {type(error).__name__}: {message}"
        data = message.encode("utf-8")[:SAMPLE_ERROR_BYTES]
        record[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        image = np.zeros((window, window, 3), dtype=np.uint8)
        label = np.full((window, window), IGNORE_INDEX, dtype=np.uint8)
    return image, label, record


def raise_sample_errors(records: np.ndarray) -> None:
    """Raise :class:`DataError` with the first message in a batch of error records
    (uint8 [B, SAMPLE_ERROR_BYTES]); nothing when all are zero."""
    records = np.asarray(records)
    if not records.any():
        return
    first = records[np.flatnonzero(records.any(axis=1))[0]]
    raise DataError(bytes(first).rstrip(b"\0").decode("utf-8", "replace"))


def normalize_batch(images: np.ndarray) -> np.ndarray:
    """Reference of the on-device normalisation: uint8 [B,H,W,3] -> float32 [B,3,H,W].

    ``(pixel - MEAN) / STD`` in float32, subtraction then division, exactly as
    :func:`isaid.palette.normalize` computes it for one image.
    """
    chw = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32)
    chw -= np.asarray(MEAN, dtype=np.float32)[None, :, None, None]
    chw /= np.asarray(STD, dtype=np.float32)[None, :, None, None]
    return chw

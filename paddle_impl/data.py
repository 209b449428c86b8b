"""Training data in Paddle: the framework-free samples of ``isaid.augment`` behind a DataLoader.

The dataset is indexed by global sample POSITION (not by patch): position -> patch and
augmentation is decided by :class:`isaid.augment.SamplePlan`, so the loader holds no state a
resumed run would need, and the torch loader (``torch_ref/data.py``) yields the same
batches. Workers return uint8 images; :func:`to_device` normalises on the device.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import paddle
from paddle.io import DataLoader, Dataset, Sampler

from isaid.augment import PatchRef, SamplePlan, load_sample_checked, raise_sample_errors
from isaid.palette import MEAN, STD


class PatchDataset(Dataset):
    """``dataset[position]`` -> (uint8 [window,window,3] image, uint8 [window,window] label,
    uint8 error record): a sample that cannot be read is reported through the record (see
    :func:`isaid.augment.load_sample_checked`) and raised by :func:`to_device` in the training
    loop, the same one-line DataError with 0 or N workers."""

    def __init__(self, patches: Sequence[PatchRef], plan: SamplePlan, window: int) -> None:
        self.patches = list(patches)
        self.plan = plan
        self.window = window

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, position: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return load_sample_checked(self.patches, self.plan, int(position), self.window)


class IterationBatchSampler(Sampler):
    """Yields this process's positions for iterations ``start .. end-1``, one list each."""

    def __init__(self, plan: SamplePlan, start: int, end: int) -> None:
        self.plan = plan
        self.start = start
        self.end = end

    def __iter__(self) -> Iterator[List[int]]:
        for iteration in range(self.start, self.end):
            yield self.plan.positions(iteration)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def build_loader(
    patches: Sequence[PatchRef], plan: SamplePlan, window: int, start: int, end: int, num_workers: int
) -> DataLoader:
    """A DataLoader over iterations ``start .. end-1`` of ``plan``."""
    return DataLoader(
        PatchDataset(patches, plan, window),
        batch_sampler=IterationBatchSampler(plan, start, end),
        num_workers=num_workers,
        # Deep prefetch: decoding a 896x896 PNG pair takes longer than a GPU step's share.
        prefetch_factor=4,
    )


_NORMALISERS: Dict[str, Tuple[paddle.Tensor, paddle.Tensor]] = {}


def normaliser(place: "paddle.Place") -> Tuple[paddle.Tensor, paddle.Tensor]:
    """MEAN and STD as float32 [1,3,1,1] on ``place``, made once: creating them at every
    step would copy from pageable memory, which waits for the device."""
    key = str(place)
    if key not in _NORMALISERS:
        mean = paddle.to_tensor(MEAN, dtype="float32", place=place).reshape([1, 3, 1, 1])
        std = paddle.to_tensor(STD, dtype="float32", place=place).reshape([1, 3, 1, 1])
        _NORMALISERS[key] = (mean, std)
    return _NORMALISERS[key]


def to_device(batch: Sequence[paddle.Tensor], device: str) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """uint8 images [B,H,W,3] and labels [B,H,W] -> normalised float32 [B,3,H,W], int64 labels.

    A batch from :func:`build_loader` also holds the samples' error records: the first error
    is raised here as :class:`isaid.augment.DataError` (one line naming the file).

    The normalisation is ``(pixel - MEAN) / STD`` in float32 on the device, bit-identical to
    ``isaid.augment.normalize_batch``.
    """
    if len(batch) == 3:  # the error records of PatchDataset: a bad sample stops here
        raise_sample_errors(batch[2].numpy())
    images, labels = batch[0], batch[1]
    images = images.to(device, blocking=False)
    labels = labels.to(device, blocking=False)
    mean, std = normaliser(images.place)
    images = images.transpose([0, 3, 1, 2]).astype("float32")
    images = (images - mean) / std
    return images, labels.astype("int64")

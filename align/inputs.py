"""The input batch of an alignment run: synthetic iSAID-like scenes, or a user's ``.npy`` file.

numpy only, so that a bad ``--input`` file fails before torch and Paddle load.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from common.constants import SIZE_MULTIPLE  # noqa: F401  (align.config reads it from here)
from isaid.palette import IGNORE_INDEX


class AlignInputError(ValueError):
    """Bad input (options, files): the CLI prints ``error: <message>`` and exits 2."""


def make_inputs(batch: int, height: int, width: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(x float32 [B,3,H,W] normalised, y int64 [B,H,W] with ~10% ignore) from synthetic scenes."""
    from isaid.palette import normalize
    from isaid.synth import make_scene

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(batch):
        rgb, index = make_scene(rng, height, width)
        label = index.astype(np.int64)
        # An ignored rectangle (as unlabelled regions) and a bottom band (as training padding).
        h0, w0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        label[h0 : h0 + height // 4, w0 : w0 + width // 4] = IGNORE_INDEX
        label[height - max(1, height // 16) :] = IGNORE_INDEX
        xs.append(normalize(rgb))
        ys.append(label)
    return np.stack(xs), np.stack(ys)


def load_input(path: str) -> np.ndarray:
    """An input batch from ``path`` (.npy [B,3,H,W] or [3,H,W], float); AlignInputError if bad."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise AlignInputError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise AlignInputError(f"{path}: expected an array of shape [B,3,H,W] or [3,H,W], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AlignInputError(f"{path}: expected a float array (normalised image), got {x.dtype}")
    height, width = x.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or x.shape[0] < 1:
        raise AlignInputError(
            f"{path}: height and width must be multiples of {SIZE_MULTIPLE}, got "
            f"{height}x{width} (pad bottom/right as the evaluator does)"
        )
    if not np.isfinite(x).all():
        raise AlignInputError(f"{path}: the array holds NaN or inf")
    return x

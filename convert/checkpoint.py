"""The one checkpoint reader every entry point uses: the file read safely (``safe_load``), then a
published Paddle port's layout renamed to the official one (``foreign``)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Union

import numpy as np

from .foreign import recognise
from .safe_load import LoadedCheckpoint, read_state

PathLike = Union[str, Path]


def read_checkpoint(path: PathLike, allow_nonfinite: bool = False) -> LoadedCheckpoint:
    """Read any supported checkpoint safely (see ``convert.safe_load``). Raises CheckpointError.

    Non-finite values (NaN, +-Inf) are refused, naming the first such key, unless
    ``allow_nonfinite``; then their keys are listed in ``LoadedCheckpoint.nonfinite``.
    A Paddle file in a known port's layout (``convert.foreign``) comes back renamed to the
    official layout, as a ``RecognisedCheckpoint`` saying what was dropped or filled.
    """
    return recognise(read_state(path, allow_nonfinite))


def load_state_dict_file(path: PathLike, allow_nonfinite: bool = False) -> "OrderedDict[str, np.ndarray]":
    """The state dict in ``path`` as numpy arrays, loaded without executing code.

    Accepts PyTorch ``.pth``/``.pt``/``.bin`` (zip or legacy format) and Paddle ``.pdparams``;
    the official ``{"model": ..., "opt": ..., "global_step": ...}`` wrapper and a ``module.``
    prefix on every key are removed. Key names are returned as stored (torch or Paddle style).
    Arrays are views of a private (copy-on-write) map of the file where possible: writing into
    one never changes the file; non-contiguous views are read-only. NaN/Inf refused unless
    ``allow_nonfinite``.
    """
    return read_checkpoint(path, allow_nonfinite).state

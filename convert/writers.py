"""Atomic writers for Paddle (.pdparams) and torch (.pth) state dicts.

A file appears under its final name only once it is complete and on disk: it is written to
a temporary file in the same folder, fsync'ed, then ``os.replace``'d; on any failure the
temporary file is removed and an existing file of that name is left untouched.
"""
from __future__ import annotations

import os
import pickle
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Union

import numpy as np

from .rules import as_numpy, as_torch, contiguous
from .safe_load import import_torch

PathLike = Union[str, "os.PathLike[str]"]

# paddle.save's default protocol; a dict of numpy arrays is pickled as is (see save_paddle).
PADDLE_PICKLE_PROTOCOL = 4


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # os.open with 0o666: the final file gets the usual umask-derived mode (mkstemp's is 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save_paddle(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` (numpy arrays, or torch/Paddle tensors) as a ``.pdparams`` file.

    For a dict of numpy arrays ``paddle.save`` does nothing but ``pickle.dump(obj, f,
    protocol=4)`` (Paddle 3.3.1, ``_pickle_save``); we write exactly that, byte for byte (the
    tests compare with ``paddle.save``), without importing Paddle (~1.3 s). ``paddle.load``,
    ``Layer.set_state_dict`` and ``safe_load.load_state_dict_file`` read it.
    """
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state-dict keys must be str, got {key!r}")
        arrays[key] = contiguous(as_numpy(value))
    return atomic_write(path, lambda f: pickle.dump(arrays, f, protocol=PADDLE_PICKLE_PROTOCOL))


def save_torch(state: Mapping[str, Any], path: PathLike) -> Path:
    """Write ``state`` (numpy arrays or torch tensors) with ``torch.save`` as a plain dict of
    tensors: a bare state dict, no wrapper, no ``module.`` prefix, loadable with
    ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``."""
    torch = import_torch()
    tensors = as_torch(OrderedDict((k, contiguous(v) if isinstance(v, np.ndarray) else v)
                                   for k, v in state.items()))
    return atomic_write(path, lambda f: torch.save(tensors, f))

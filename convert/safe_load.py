"""Reading checkpoints without executing code.

Two loaders, chosen by the file's CONTENT (not its extension):

* PyTorch files (zip archives holding ``data.pkl``, and the legacy pre-1.6 pickle format with
  torch's magic number, e.g. torchvision's ``resnet50-19c8e357.pth``) go through
  ``torch_pickle.load_torch_file``: the same formats ``torch.load(weights_only=True)`` reads,
  parsed here without importing torch (~1-2 s saved per process), with a restricted unpickler
  whose stand-ins build numpy arrays (memory-mapped from the file). Anything it does not support
  is refused with one line; there is no fallback to ``torch.load``.
* ``.pdparams`` files are plain pickles of numpy arrays (that is what ``paddle.save`` writes for
  a state dict). ``paddle.load`` unpickles arbitrary objects, so we never call it: a restricted
  ``pickle.Unpickler`` resolves only the handful of globals such a file needs (listed in
  ``ALLOWED_GLOBALS``) and refuses everything else BEFORE anything is called.

Either way the result is an ``OrderedDict[str, np.ndarray]`` with the training wrapper
(``{"model": ..., "opt": ..., "global_step": ...}``) and a DDP ``module.`` prefix removed.
"""
from __future__ import annotations

import codecs
import collections
import os
import pickle
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .errors import CheckpointError
from .torch_pickle import UnsupportedTensor, load_torch_file

PathLike = Union[str, "os.PathLike[str]"]

# torch's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c
# (protocol 2, LONG1 of 10 bytes); nothing else starts like that.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
ZIP_MAGIC = b"PK\x03\x04"

# Keys Paddle's own save/load machinery adds next to the tensors.
PADDLE_NAME_TABLE = "StructuredToParameterName@@"  # structured name -> framework var name
PADDLE_BIG_PARAM_INFO = "UnpackBigParamInfor@@"  # protocol 2/3: big arrays split in slices

# Time spent importing torch inside this process (reported separately in the CLI summary,
# because it dwarfs the conversion itself). Reading and writing never import torch; only
# deriving rules from a torch module and ``as_torch`` do.
_TORCH_IMPORT_SECONDS: List[float] = []


def import_torch():
    """Import torch on first use (~1-2 s): only for torch-module rules and ``as_torch``."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"]
    start = time.perf_counter()
    import torch

    _TORCH_IMPORT_SECONDS.append(time.perf_counter() - start)
    return torch


def torch_import_seconds() -> float:
    """Seconds this process spent importing torch through ``import_torch`` (0 if it was not)."""
    return sum(_TORCH_IMPORT_SECONDS)


# ----------------------------------------------------------------------------------------------
# The restricted unpickler for .pdparams
# ----------------------------------------------------------------------------------------------

def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (``paddle.save(protocol=2)``).

    Only the latin-1 text->bytes use is allowed: other codecs (zlib, bz2, ...) are not needed
    by any checkpoint and would let a file trigger decompression work.
    """
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in (
            "latin1", "iso88591"):
        raise RefusedGlobal("_codecs", f"encode with codec {encoding!r}")
    return codecs.encode(text, "latin1")


# Exactly what ``paddle.save`` writes in Paddle 3.3.1 (checked with pickletools.dis):
#   state dict of tensors -> dict + numpy._core.multiarray._reconstruct, numpy.ndarray,
#   numpy.dtype (the arrays) + a nested dict of str (the name table);
#   dict/OrderedDict of numpy arrays -> the same, plus collections.OrderedDict.
# ``numpy.core.multiarray`` is the same function as written by numpy 1.x, and ``_codecs.encode``
# is how protocol 2 (``paddle.save(..., protocol=2)``) spells bytes.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Callable[[], Any]] = {
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside ``ALLOWED_GLOBALS``; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class NumpyOnlyUnpickler(pickle.Unpickler):
    """A C-speed ``pickle.Unpickler`` that can build dicts, numpy arrays and dtypes, nothing else.

    Every callable a pickle can invoke (REDUCE, NEWOBJ, INST, OBJ, BUILD via ``__setstate__``)
    is first looked up through ``find_class``; refusing there means no foreign code runs.
    Persistent ids (torch storages, protocol-5 buffers) are refused by the base class.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise RefusedGlobal(module, name)
        return factory()


def unpickle_numpy_only(path: PathLike) -> Any:
    """Unpickle ``path`` with ``NumpyOnlyUnpickler``; CheckpointError on anything unexpected."""
    try:
        with open(path, "rb") as f:
            return NumpyOnlyUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as exc:
        raise CheckpointError(
            f"refused to unpickle {exc.qualname}: a .pdparams file may only hold numpy arrays in "
            f"dicts, and loading this one could run code (nothing was executed)", path=path) from None
    except (EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"truncated or corrupt pickle ({exc or type(exc).__name__})",
                              path=path) from None
    except MemoryError:
        raise CheckpointError("corrupt pickle (asks for more memory than available)", path=path) from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"corrupt pickle ({type(exc).__name__}: {exc})", path=path) from None


# ----------------------------------------------------------------------------------------------
# Format sniffing
# ----------------------------------------------------------------------------------------------

def sniff_format(path: PathLike) -> str:
    """``"torch-zip"``, ``"torch-legacy"`` or ``"pickle"`` (.pdparams); CheckpointError otherwise.

    Decides from the first bytes, so a missing, empty, text or non-checkpoint zip file gets a
    precise one-line message instead of a framework traceback.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise CheckpointError("is a directory, not a checkpoint file", path=path)
        with open(p, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise CheckpointError("no such file", path=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if not head:
        raise CheckpointError("empty file, not a checkpoint", path=path)
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise CheckpointError(f"truncated or corrupt zip archive ({exc})", path=path) from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise CheckpointError(
                f"a zip archive but not a PyTorch checkpoint (no data.pkl inside; holds {shown or 'nothing'})",
                path=path)
        return "torch-zip"
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if b"\0" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            first = text.strip().splitlines()[0][:40] if text.strip() else ""
            raise CheckpointError(f"a text file, not a checkpoint (starts with {first!r})", path=path)
    raise CheckpointError(
        f"unrecognised file format (first bytes {head[:8].hex(' ')}); expected a PyTorch "
        f".pth/.pt/.bin or a Paddle .pdparams file", path=path)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk, reduced to its state dict (numpy arrays, file order)."""

    path: Path
    state: "OrderedDict[str, np.ndarray]"
    framework: str  # naming convention of the file: "torch" or "paddle"
    container: str  # "official wrapper", "'state_dict' wrapper" or "bare state dict"
    prefix: Optional[str] = None  # the DDP prefix that was stripped ("module.") or None
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """E.g. ``official wrapper, module. prefix`` (for the summary line)."""
        parts = [self.container]
        if self.prefix:
            parts.append(f"{self.prefix} prefix")
        return ", ".join(parts)


def _tensor_to_numpy(key: str, value: Any, path: Path) -> np.ndarray:
    """One state-dict value from ``torch_pickle``: an array, or a clear error naming ``key``."""
    if isinstance(value, UnsupportedTensor):
        raise CheckpointError(f"tensor {key!r} has dtype {value.dtype}, which numpy (and .pdparams) "
                              f"cannot hold", path=path)
    if not isinstance(value, np.ndarray):
        raise CheckpointError(f"not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor",
                              path=path)
    return value


def _is_tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (str, bytes))


def _unwrap(obj: Any, path: Path) -> Tuple[Mapping[str, Any], str]:
    """Find the state dict inside what the file holds: bare, or the training wrapper."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"not a state dict: the file holds a {type(obj).__name__}", path=path)
    values = [v for k, v in obj.items() if k not in (PADDLE_NAME_TABLE, PADDLE_BIG_PARAM_INFO)]
    if values and all(_is_tensor_like(v) or _is_paddle_tuple(v) for v in values):
        return obj, "bare state dict"
    for key, label in (("model", "official wrapper"), ("state_dict", "'state_dict' wrapper")):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(
                _is_tensor_like(v) or _is_paddle_tuple(v) or k in (PADDLE_NAME_TABLE, PADDLE_BIG_PARAM_INFO)
                for k, v in inner.items()):
            return inner, label
    if not obj:
        raise CheckpointError("not a state dict: the file holds an empty dict", path=path)
    bad = next((k, v) for k, v in obj.items() if not _is_tensor_like(v))
    keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
    raise CheckpointError(
        f"not a state dict: entry {bad[0]!r} is a {type(bad[1]).__name__}, and there is no "
        f"'model' or 'state_dict' entry holding only tensors (top-level keys: {keys})", path=path)


def _is_paddle_tuple(value: Any) -> bool:
    # Paddle 2.1 stored each tensor as (variable name, ndarray).
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def _paddle_state(raw: Mapping[str, Any], path: Path, notes: List[str]) -> "OrderedDict[str, np.ndarray]":
    state: "OrderedDict[str, Any]" = OrderedDict(raw)
    if PADDLE_NAME_TABLE in state:
        state.pop(PADDLE_NAME_TABLE)  # variable-name bookkeeping, no tensor data
    big = state.pop(PADDLE_BIG_PARAM_INFO, None)
    if big is not None:
        # Reassemble arrays that paddle.save(protocol=2/3) split into slices (as paddle.load does).
        try:
            for key, info in big.items():
                parts = [state.pop(part) for part in info["slices"]]
                state[key] = np.concatenate([np.ravel(p) for p in parts]).reshape(info["OriginShape"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"corrupt {PADDLE_BIG_PARAM_INFO} table ({exc})", path=path) from None
        notes.append(f"{len(big)} split arrays reassembled")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in state.items():
        if _is_paddle_tuple(value):
            value = value[1]
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"not a state dict: entry {key!r} is a {type(value).__name__}, "
                                  f"not an array", path=path)
        out[key] = value
    return out


def _strip_prefix(state: "OrderedDict[str, np.ndarray]", prefix: str = "module.") -> Tuple[
        "OrderedDict[str, np.ndarray]", Optional[str]]:
    # Strip only when EVERY key has it (DDP adds it to all); a partial prefix is left for the
    # validation report to show.
    if state and all(k.startswith(prefix) for k in state):
        return OrderedDict((k[len(prefix):], v) for k, v in state.items()), prefix
    return state, None


def read_checkpoint(path: PathLike) -> LoadedCheckpoint:
    """Read any supported checkpoint safely; see the module docstring. Raises CheckpointError.

    A Paddle file in a known port's layout (``convert.foreign``) comes back renamed to the
    official layout, as a ``RecognisedCheckpoint`` saying what was dropped or filled.
    """
    p = Path(path)
    fmt = sniff_format(p)
    notes: List[str] = []
    if fmt in ("torch-zip", "torch-legacy"):
        obj = load_torch_file(p, fmt)
        raw, container = _unwrap(obj, p)
        state = OrderedDict()
        for key, value in raw.items():
            if not isinstance(key, str):
                raise CheckpointError(f"not a state dict: key {key!r} is not a string", path=p)
            state[key] = _tensor_to_numpy(key, value, p)
        framework = "torch"
    else:
        obj = unpickle_numpy_only(p)
        raw, container = _unwrap(obj, p)
        if any(not isinstance(k, str) for k in raw):
            raise CheckpointError("not a state dict: a key is not a string", path=p)
        state = _paddle_state(raw, p, notes)
        framework = "paddle"
    for key, arr in state.items():
        if arr.dtype.hasobject:
            raise CheckpointError(f"array {key!r} holds Python objects, not numbers", path=p)
    state, prefix = _strip_prefix(state)
    # The published Paddle ports' layouts, renamed to the official one (convert/foreign.py);
    # imported here because foreign.py builds on the rules, which import this module.
    from .foreign import recognise

    return recognise(LoadedCheckpoint(p, state, framework, container, prefix, notes))


def load_state_dict_file(path: PathLike) -> "OrderedDict[str, np.ndarray]":
    """The state dict in ``path`` as numpy arrays, loaded without executing code.

    Accepts PyTorch ``.pth``/``.pt``/``.bin`` (zip or legacy format) and Paddle ``.pdparams``;
    the official ``{"model": ..., "opt": ..., "global_step": ...}`` wrapper and a ``module.``
    prefix on every key are removed. Key names are returned as stored (torch or Paddle style).
    Arrays from torch files are views of a private (copy-on-write) map of the file: writing
    into one never changes the file; strided views (transposed, broadcast) are read-only.
    """
    return read_checkpoint(path).state

"""Reading checkpoints without executing code, in bounded time and memory.

Every checkpoint file the project reads (convert, predict, evaluate, export, align
``--torch-ckpt``, the trainers' ImageNet initialisation and resume) comes through here:

* ``fileio.map_regular_file`` opens it once, without blocking, refuses anything that is not a
  regular non-empty file (a FIFO, a device, a directory) and maps it copy-on-write;
* the format is decided by the CONTENT (not the extension): PyTorch zip archives holding
  ``data.pkl`` and the legacy pre-1.6 format with torch's magic number (e.g. torchvision's
  ``resnet50-19c8e357.pth``) go to ``torch_pickle``, plain pickles (``.pdparams``, which
  ``paddle.save`` writes as a pickle of numpy arrays, and the Paddle trainer's checkpoints) to
  ``read_numpy_pickle``;
* both run the pickle with ``restricted_pickle``, never ``pickle.Unpickler``, ``torch.load``
  or ``paddle.load``: only data opcodes, only the globals listed (``ALLOWED_GLOBALS`` here,
  ``torch_pickle.ALLOWED``), resolved to inert stand-ins; dict keys are strings or integers;
  nesting and object counts are bounded. An array exists only after its description was
  checked: a numeric dtype (``NUMERIC_CODES``: never an object dtype), integer shape, and
  exactly the bytes that shape needs (or, for torch, a non-overlapping in-bounds view of a
  storage record whose size is checked before it is read); then ``np.frombuffer`` makes it.

``read_checkpoint`` then reduces the file to its state dict: an ``OrderedDict[str, np.ndarray]``
with the training wrapper (``{"model": ..., "opt": ..., "global_step": ...}``) and a DDP
``module.`` prefix removed, Paddle's split big arrays reassembled from checked slices, and
non-finite values refused unless asked for (``allow_nonfinite``).
"""

from __future__ import annotations

import os
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import restricted_pickle as rp
from .errors import CheckpointError
from .fileio import MappedFile, map_regular_file
from .torch_pickle import UnsupportedTensor, load_torch_file

PathLike = Union[str, "os.PathLike[str]"]

# torch's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c
# (protocol 2, LONG1 of 10 bytes); nothing else starts like that.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
ZIP_MAGIC = b"PK\x03\x04"

# Keys Paddle's own save/load machinery adds next to the tensors.
PADDLE_NAME_TABLE = "StructuredToParameterName@@"  # structured name -> framework var name
PADDLE_BIG_PARAM_INFO = "UnpackBigParamInfor@@"  # protocol 2/3: big arrays split in slices
MAX_SLICES = 4096  # slices of one split array (paddle.save cuts at 1 GiB)

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
# .pdparams: pickles of numpy arrays, read by restricted_pickle with inert stand-ins
# ----------------------------------------------------------------------------------------------

# The numpy type codes an array in a checkpoint may have: numbers and bool, nothing that holds
# Python objects, strings, records or dates. numpy pickles a dtype as dtype(code, False, True).
NUMERIC_CODES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"})


class _DtypeSpec(rp.Inert):
    """``numpy.dtype(code)``; its byte order arrives with BUILD."""

    __slots__ = ("code", "order")

    def __init__(self, code: str) -> None:
        self.code, self.order = code, None

    def describe(self) -> str:
        return f"dtype {self.code}"

    def build(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if self.order is not None or type(state) is not tuple or len(state) not in (8, 9):
            raise rp.PickleRefused(f"dtype {self.code} given the state {rp.short(state)}")
        if (
            state[1] not in ("<", ">", "|", "=")
            or any(v is not None for v in state[2:5])
            or (len(state) == 9 and state[8] not in (None, {}))
        ):
            raise rp.PickleRefused(f"dtype {self.code} with a structure (fields, subarray or metadata): refused")
        self.order = state[1]

    def dtype(self) -> np.dtype:
        if self.order is None:
            raise rp.PickleRefused(f"dtype {self.code} without its byte order")
        return np.dtype(self.code).newbyteorder(self.order if self.order in "<>" else "=")


class _DtypeFactory(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "numpy.dtype"

    def call(self, args: tuple) -> Any:
        code = args[0] if args else None
        if type(code) is not str or code not in NUMERIC_CODES or len(args) > 3:
            raise rp.PickleRefused(
                f"numpy dtype {rp.short(code)} refused: a checkpoint array holds "
                f"numbers (one of {', '.join(sorted(NUMERIC_CODES))}), never Python objects"
            )
        return _DtypeSpec(code)


class _NdarrayType(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


class ArraySpec(rp.Inert):
    """An array as the pickle declares it: dtype, shape, order and its bytes, checked to match
    exactly before ``finish`` makes it with ``np.frombuffer``."""

    __slots__ = ("dtype", "shape", "fortran", "raw")

    def __init__(self) -> None:
        self.dtype: Optional[np.dtype] = None

    def describe(self) -> str:
        return "numpy array"

    def set(self, shape: Any, dtype: Any, fortran: Any, raw: Any) -> None:
        if self.dtype is not None:
            raise rp.PickleRefused("a numpy array given its state twice")
        shape = rp.check_ints(shape, "shape")
        if not isinstance(dtype, _DtypeSpec):
            raise rp.PickleRefused(f"numpy array of dtype {rp.short(dtype)}")
        dtype = dtype.dtype()
        if type(fortran) is not bool:
            raise rp.PickleRefused(f"numpy array order flag {rp.short(fortran)}")
        if not isinstance(raw, rp.RawBytes):
            raise rp.PickleRefused(f"numpy array data is {rp.short(raw)}, not bytes")
        need = rp.product(shape) * dtype.itemsize
        if len(raw) != need:
            raise rp.PickleRefused(
                f"numpy array of shape {shape} and dtype {dtype} needs {need} bytes, the file gives {len(raw)}"
            )
        self.shape, self.dtype, self.fortran, self.raw = shape, dtype, fortran, raw

    def build(self, state: Any) -> None:
        # ndarray.__setstate__: (version, shape, dtype, is_fortran, data) or, older, without version
        if type(state) is not tuple or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise rp.PickleRefused(f"numpy array state {rp.short(state)}")
        self.set(*state[-4:])

    def array(self) -> np.ndarray:
        if self.dtype is None:
            raise rp.PickleRefused("a numpy array without data")
        count = rp.product(self.shape)
        native = self.dtype.newbyteorder("=")
        if count == 0:
            return np.zeros(self.shape, native)
        flat = np.frombuffer(self.raw.view, dtype=self.dtype, count=count)
        out = flat.reshape(self.shape, order="F" if self.fortran else "C")
        return out if self.dtype.isnative else out.astype(native)


class _Reconstruct(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "numpy _reconstruct"

    def call(self, args: tuple) -> Any:
        # _reconstruct(ndarray, (0,), b'b'): an empty array whose state BUILD then sets
        if len(args) != 3 or args[0] is not _NDARRAY:
            raise rp.PickleRefused(f"numpy _reconstruct of {rp.short(args[0] if args else None)}")
        return ArraySpec()


class _FromBuffer(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "numpy _frombuffer"

    def call(self, args: tuple) -> Any:
        # protocol 5: _frombuffer(buffer, dtype, shape, order)
        if len(args) != 4 or args[3] not in ("C", "F"):
            raise rp.PickleRefused("numpy _frombuffer with unexpected arguments")
        spec = ArraySpec()
        spec.set(args[2], args[1], args[3] == "F", args[0])
        return spec


class _Latin1Encode(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "_codecs.encode"

    def call(self, args: tuple) -> Any:
        # How protocol 2 (paddle.save(..., protocol=2)) spells bytes. Only latin-1 text -> bytes:
        # other codecs (zlib, bz2, ...) would let a file trigger decompression work.
        encoding = args[1] if len(args) == 2 else None
        if (
            len(args) != 2
            or type(args[0]) is not str
            or type(encoding) is not str
            or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591")
        ):
            raise rp.Refused("_codecs", f"encode with codec {rp.short(encoding)}")
        try:
            return rp.RawBytes(memoryview(args[0].encode("latin1")))
        except UnicodeEncodeError:
            raise rp.PickleRefused("latin-1 bytes with characters beyond latin-1") from None


class _EmptyBytes(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "builtins.bytes"

    def call(self, args: tuple) -> Any:
        # protocol 2 spells b"" (an empty array's data) as bytes()
        if args:
            raise rp.Refused("builtins", "bytes with arguments")
        return rp.RawBytes(memoryview(b""))


# Exactly what ``paddle.save`` writes in Paddle 3.3.1 (checked with pickletools.dis):
#   state dict of tensors -> dict + numpy._core.multiarray._reconstruct, numpy.ndarray,
#   numpy.dtype (the arrays) + a nested dict of str (the name table);
#   dict/OrderedDict of numpy arrays -> the same, plus collections.OrderedDict.
# ``numpy.core.multiarray`` is the same function as written by numpy 1.x, ``_codecs.encode``
# is how protocol 2 spells bytes (``bytes()`` the empty ones), ``_frombuffer`` how numpy pickles
# with protocol 5.
ALLOWED_GLOBALS: Dict[Tuple[str, str], rp.Inert] = {
    ("collections", "OrderedDict"): rp.OrderedDictType(),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeFactory(),
    ("numpy._core.multiarray", "_reconstruct"): _Reconstruct(),
    ("numpy.core.multiarray", "_reconstruct"): _Reconstruct(),
    ("numpy._core.numeric", "_frombuffer"): _FromBuffer(),
    ("numpy.core.numeric", "_frombuffer"): _FromBuffer(),
    ("_codecs", "encode"): _Latin1Encode(),
    ("builtins", "bytes"): _EmptyBytes(),
    ("__builtin__", "bytes"): _EmptyBytes(),
}


class NumpyProfile(rp.Profile):
    """A plain pickle of numpy arrays in dicts and lists (.pdparams, Paddle training checkpoints)."""

    globals = ALLOWED_GLOBALS
    string_encoding = "latin1"  # Python 2 str, as numpy's own loaders read them

    def finish(self, value: rp.Inert, depth: int) -> Any:
        if isinstance(value, ArraySpec):
            return value.array()
        if isinstance(value, _DtypeSpec):
            return value.dtype()
        raise rp.PickleRefused(f"{value.describe()} outside an array")


def _refused_pickle_message(exc: rp.Refused) -> str:
    return (
        f"refused to unpickle {exc.qualname}: a .pdparams file may only hold numpy arrays in "
        f"dicts, and loading this one could run code (nothing was executed)"
    )


def read_numpy_pickle(path: PathLike, mapped: Any = None) -> Any:
    """The object in the pickle file ``path`` (numpy arrays, dicts, lists, numbers, strings),
    read by ``restricted_pickle`` with ``NumpyProfile``; CheckpointError (one line) otherwise."""
    try:
        if mapped is None:
            mapped = map_regular_file(path)
        obj, end = rp.load(mapped, NumpyProfile())
        return rp.finalize(obj, NumpyProfile())
    except rp.Refused as exc:
        raise CheckpointError(_refused_pickle_message(exc), path=path) from None
    except rp.Truncated as exc:
        raise CheckpointError(f"truncated or corrupt pickle ({exc})", path=path) from None
    except rp.PickleRefused as exc:
        raise CheckpointError(f"corrupt or refused pickle ({exc})", path=path) from None
    except MemoryError:
        raise CheckpointError("corrupt pickle (asks for more memory than available)", path=path) from None


# ----------------------------------------------------------------------------------------------
# Format sniffing
# ----------------------------------------------------------------------------------------------


def _sniff(path: PathLike, mapped: Any) -> str:
    head = mapped[:512]
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(MappedFile(mapped)) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise CheckpointError(
                f"truncated or corrupt zip archive ({' '.join(str(exc).split())[:200]})", path=path
            ) from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            shown = ", ".join(rp.short(n, 40) for n in names[:3]) + (", ..." if len(names) > 3 else "")
            raise CheckpointError(
                f"a zip archive but not a PyTorch checkpoint (no data.pkl inside; holds {shown or 'nothing'})",
                path=path,
            )
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
        f".pth/.pt/.bin or a Paddle .pdparams file",
        path=path,
    )


def sniff_format(path: PathLike) -> str:
    """``"torch-zip"``, ``"torch-legacy"`` or ``"pickle"`` (.pdparams); CheckpointError otherwise.

    Decides from the first bytes, so a missing, empty, text or non-checkpoint zip file, or
    anything that is not a regular file, gets a precise one-line message.
    """
    return _sniff(path, map_regular_file(path))


def read_object(path: PathLike) -> Tuple[str, Any]:
    """(format, object) of any supported checkpoint file, tensors as numpy arrays, read
    without executing code and within bounded time and memory (the trainers' resume files).
    ``format`` as ``sniff_format``. Raises CheckpointError (one line naming ``path``)."""
    mapped = map_regular_file(path)
    fmt = _sniff(path, mapped)
    if fmt == "pickle":
        return fmt, read_numpy_pickle(path, mapped)
    return fmt, load_torch_file(path, fmt, mapped)


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
    nonfinite: List[str] = field(default_factory=list)  # keys holding NaN/Inf (allow_nonfinite=True)

    def describe(self) -> str:
        """E.g. ``official wrapper, module. prefix`` (for the summary line)."""
        parts = [self.container]
        if self.prefix:
            parts.append(f"{self.prefix} prefix")
        return ", ".join(parts)


def _tensor_to_numpy(key: str, value: Any, path: Path) -> np.ndarray:
    """One state-dict value: an array, or a clear error naming ``key``."""
    if isinstance(value, UnsupportedTensor):
        raise CheckpointError(
            f"tensor {key!r} has dtype {value.dtype}, which numpy (and .pdparams) cannot hold", path=path
        )
    if not isinstance(value, np.ndarray):
        raise CheckpointError(f"not a state dict: entry {key!r} is {rp.short(value)}, not a tensor", path=path)
    return value


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, (np.ndarray, UnsupportedTensor))


def _is_paddle_tuple(value: Any) -> bool:
    # Paddle 2.1 stored each tensor as (variable name, ndarray).
    return type(value) is tuple and len(value) == 2 and type(value[0]) is str and isinstance(value[1], np.ndarray)


def _unwrap(obj: Any, path: Path) -> Tuple[Mapping[Any, Any], str]:
    """Find the state dict inside what the file holds: bare, or the training wrapper."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"not a state dict: the file holds {rp.short(obj)}", path=path)
    bookkeeping = (PADDLE_NAME_TABLE, PADDLE_BIG_PARAM_INFO)
    values = [v for k, v in obj.items() if k not in bookkeeping]
    if values and all(_is_tensor_like(v) or _is_paddle_tuple(v) for v in values):
        return obj, "bare state dict"
    for key, label in (("model", "official wrapper"), ("state_dict", "'state_dict' wrapper")):
        inner = obj.get(key)
        if (
            isinstance(inner, dict)
            and inner
            and all(_is_tensor_like(v) or _is_paddle_tuple(v) or k in bookkeeping for k, v in inner.items())
        ):
            return inner, label
    if not obj:
        raise CheckpointError("not a state dict: the file holds an empty dict", path=path)
    bad = next((k, v) for k, v in obj.items() if not _is_tensor_like(v))
    keys = ", ".join(rp.short(k, 40) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
    raise CheckpointError(
        f"not a state dict: entry {rp.short(bad[0])} is {rp.short(bad[1])}, and there is no "
        f"'model' or 'state_dict' entry holding only tensors (top-level keys: {keys})",
        path=path,
    )


def _reassemble(state: "OrderedDict[str, Any]", table: Any, path: Path) -> int:
    """Join the arrays ``paddle.save(protocol=2/3)`` split into slices, as ``paddle.load`` does,
    from checked pieces only: each slice an array of one dtype, used once, and their total
    equal to the declared shape's size BEFORE anything is joined. Returns the count joined."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"corrupt {PADDLE_BIG_PARAM_INFO} table ({why})", path=path)

    if type(table) is not dict:
        raise bad(f"it is {rp.short(table)}")
    for key, info in table.items():
        if type(key) is not str or type(info) is not dict or type(info.get("slices")) not in (list, tuple):
            raise bad(f"entry {rp.short(key)} is not {{'OriginShape': ..., 'slices': [...]}}")
        try:
            shape = rp.check_ints(info.get("OriginShape"), "shape")
        except rp.PickleRefused as exc:
            raise bad(f"{key!r}: {exc}") from None
        names = info["slices"]
        if not 0 < len(names) <= MAX_SLICES or not all(type(n) is str for n in names) or len(set(names)) != len(names):
            raise bad(f"{key!r}: slices must be 1 to {MAX_SLICES} distinct key names")
        if key in state:
            raise bad(f"{key!r} is both a split array and an entry")
        parts = []
        for name in names:
            part = state.get(name)
            if not isinstance(part, np.ndarray):
                raise bad(f"slice {rp.short(name)} of {key!r} is {'missing' if part is None else rp.short(part)}")
            parts.append(part)
        if any(p.dtype != parts[0].dtype for p in parts):
            raise bad(f"the slices of {key!r} have different dtypes")
        total, need = sum(p.size for p in parts), rp.product(shape)
        if total != need:
            raise bad(f"the slices of {key!r} hold {total} elements, its shape {shape} needs {need}")
        for name in names:
            del state[name]
        state[key] = np.concatenate([p.reshape(-1) for p in parts]).reshape(shape)
    return len(table)


def _paddle_state(raw: Mapping[str, Any], path: Path, notes: List[str]) -> "OrderedDict[str, np.ndarray]":
    state: "OrderedDict[str, Any]" = OrderedDict(raw)
    state.pop(PADDLE_NAME_TABLE, None)  # variable-name bookkeeping, no tensor data
    if PADDLE_BIG_PARAM_INFO in state:
        joined = _reassemble(state, state.pop(PADDLE_BIG_PARAM_INFO), path)
        notes.append(f"{joined} split arrays reassembled")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in state.items():
        if _is_paddle_tuple(value):
            value = value[1]
        out[key] = _tensor_to_numpy(key, value, path)
    return out


def _strip_prefix(
    state: "OrderedDict[str, np.ndarray]", prefix: str = "module."
) -> Tuple["OrderedDict[str, np.ndarray]", Optional[str]]:
    # Strip only when EVERY key has it (DDP adds it to all); a partial prefix is left for the
    # validation report to show.
    if state and all(k.startswith(prefix) for k in state):
        return OrderedDict((k[len(prefix) :], v) for k, v in state.items()), prefix
    return state, None


def nonfinite_keys(state: Mapping[str, np.ndarray]) -> List[str]:
    """Keys of the floating-point (or complex) arrays holding NaN or +-Inf, in order."""
    return [key for key, arr in state.items() if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all()]


def nonfinite_message(state: Mapping[str, np.ndarray], keys: List[str]) -> str:
    """``tensor 'k' holds N NaN/Inf values (of M)``, plus how many other tensors do too."""
    first = state[keys[0]]
    count = int(first.size - np.count_nonzero(np.isfinite(first)))
    more = f" (and {len(keys) - 1} more tensors)" if len(keys) > 1 else ""
    return f"tensor {keys[0]!r} holds {count} NaN/Inf values of {first.size}{more}"


def read_state(path: PathLike, allow_nonfinite: bool = False) -> LoadedCheckpoint:
    """Read any supported checkpoint file safely, as stored; see the module docstring.
    Raises CheckpointError. ``convert.checkpoint.read_checkpoint`` adds the ports' layouts.

    Non-finite values (NaN, +-Inf) are refused, naming the first such key, unless
    ``allow_nonfinite``; then their keys are listed in ``LoadedCheckpoint.nonfinite``.
    """
    p = Path(path)
    fmt, obj = read_object(p)
    notes: List[str] = []
    raw, container = _unwrap(obj, p)
    if any(type(k) is not str for k in raw):
        bad = next(k for k in raw if type(k) is not str)
        raise CheckpointError(f"not a state dict: key {rp.short(bad)} is not a string", path=p)
    if fmt == "pickle":
        state = _paddle_state(raw, p, notes)
        framework = "paddle"
    else:
        state = OrderedDict((key, _tensor_to_numpy(key, value, p)) for key, value in raw.items())
        framework = "torch"
    for key, arr in state.items():  # by construction; checked again because it matters so much
        if arr.dtype.kind not in "biufc" or arr.dtype.hasobject:
            raise CheckpointError(f"array {key!r} has dtype {arr.dtype}, not a number type", path=p)
    bad_keys = nonfinite_keys(state)
    if bad_keys and not allow_nonfinite:
        raise CheckpointError(
            f"{nonfinite_message(state, bad_keys)}: refusing a checkpoint with "
            f"non-finite weights (python -m convert --allow-nonfinite converts it anyway)",
            path=p,
        )
    state, prefix = _strip_prefix(state)
    if prefix:
        bad_keys = [k[len(prefix) :] for k in bad_keys]
    return LoadedCheckpoint(p, state, framework, container, prefix, notes, bad_keys)

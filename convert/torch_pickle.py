"""Read PyTorch checkpoint files into numpy arrays without torch and without running their code.

Both on-disk formats of ``torch.save`` are read:

* zip (torch >= 1.6): ``<archive>/data.pkl`` is the pickled object; each storage it refers to
  is the raw record ``<archive>/data/<key>`` in the byte order named by ``<archive>/byteorder``
  (little when the record is absent). torch writes those records uncompressed and 64-byte
  aligned, so they are memory-mapped, not read: a tensor is a numpy view of a private
  (copy-on-write) map of the file, so writing into it never touches the file (copied only when
  its byte order is not the machine's; broadcast and other strided views are read-only).
* legacy (torch < 1.6, e.g. torchvision's ``resnet50-19c8e357.pth``): a run of pickles (magic
  number, protocol version 1001, system info, the object, the sorted list of storage keys)
  followed by each storage in that order as an 8-byte little-endian element count and the raw
  little-endian bytes.

The object pickle goes through ``TorchUnpickler``, a ``pickle.Unpickler`` whose ``find_class``
resolves only what a state dict of dense tensors needs (``ALLOWED``) to this module's own
stand-ins, which build numpy arrays; every other global is refused before anything is called.
Tensors come back as ``np.ndarray`` (same dtype, shape and strides as torch gives, storage
offsets and shared storages honoured) and ``nn.Parameter`` as its data.

Refused, each with one CheckpointError line and no fallback to ``torch.load`` (the converter
must never need torch to read): any global outside ``ALLOWED`` (code, custom classes, and also
torch objects that are not dense weights: quantized, sparse, nested or subclass tensors,
``torch.device``, ...), TorchScript archives, compressed or encrypted storage records that
``zipfile`` cannot read, the pre-1.0 tar format. Tensors whose dtype numpy has no type for
(bfloat16, float8) are read as ``UnsupportedTensor`` placeholders so the caller can name the
key in its error; they are never converted silently.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import mmap
import os
import pickle
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from .errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

_NATIVE = "<" if sys.byteorder == "little" else ">"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name len, extra len


class UnsupportedTensor(NamedTuple):
    """A tensor whose dtype numpy cannot hold (bfloat16, float8): shape and dtype only."""

    dtype: str  # torch's name, e.g. "torch.bfloat16"
    shape: Tuple[int, ...]


class _StorageType(NamedTuple):
    # Stand-in for torch.FloatStorage & co. (and for torch dtypes, which _rebuild_tensor_v3
    # receives): numpy dtype code (None: numpy has none) and element size in bytes.
    name: str
    dtype: str  # torch's dtype name, e.g. "torch.float32"
    code: Optional[str]
    itemsize: int


class _Storage(NamedTuple):
    # What persistent_load returns: the raw bytes of one storage (None while scouting the
    # legacy format, whose data follows the pickle) and its declared type and byte order.
    kind: _StorageType
    raw: Optional[np.ndarray]  # uint8, 1-D
    order: str  # "<" or ">"


# torch's legacy typed-storage classes (still what torch.save writes for the classic dtypes).
_STORAGE_TYPES = {name: _StorageType(f"torch.{name}", f"torch.{dtype}", code, size)
                  for name, dtype, code, size in [
    ("DoubleStorage", "float64", "f8", 8), ("FloatStorage", "float32", "f4", 4),
    ("HalfStorage", "float16", "f2", 2), ("LongStorage", "int64", "i8", 8),
    ("IntStorage", "int32", "i4", 4), ("ShortStorage", "int16", "i2", 2),
    ("CharStorage", "int8", "i1", 1), ("ByteStorage", "uint8", "u1", 1), ("BoolStorage", "bool", "?", 1),
    ("ComplexFloatStorage", "complex64", "c8", 8), ("ComplexDoubleStorage", "complex128", "c16", 16),
    ("BFloat16Storage", "bfloat16", None, 2),
]}
_UNTYPED = _StorageType("torch.UntypedStorage", "torch.uint8", "u1", 1)
# torch dtypes by their pickled name, for _rebuild_tensor_v3 (newer dtypes over an untyped storage).
_DTYPES = {name: _StorageType(f"torch.{name}", f"torch.{name}", code, size) for name, code, size in [
    ("float64", "f8", 8), ("float32", "f4", 4), ("float16", "f2", 2), ("int64", "i8", 8),
    ("int32", "i4", 4), ("int16", "i2", 2), ("int8", "i1", 1), ("uint8", "u1", 1),
    ("uint16", "u2", 2), ("uint32", "u4", 4), ("uint64", "u8", 8), ("bool", "?", 1),
    ("complex64", "c8", 8), ("complex128", "c16", 16), ("bfloat16", None, 2),
    ("float8_e4m3fn", None, 1), ("float8_e5m2", None, 1), ("float8_e4m3fnuz", None, 1),
    ("float8_e5m2fnuz", None, 1), ("float8_e8m0fnu", None, 1),
]}


class BadTensor(ValueError):
    """Tensor arguments that no torch.save would write (out of bounds, negative, wrong types)."""


def _ints(value: Any, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
        raise BadTensor(f"tensor {what} is not a tuple of integers: {value!r:.80}")
    if any(v < 0 for v in value):
        raise BadTensor(f"negative tensor {what} {tuple(value)}")
    return tuple(int(v) for v in value)


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any,
                 kind: Optional[_StorageType] = None) -> Union[np.ndarray, UnsupportedTensor, None]:
    """The array ``storage[offset:]`` seen with ``size``/``stride`` (in elements), bounds-checked.

    ``kind``: the element type when the storage is untyped (``_rebuild_tensor_v3``).
    """
    if not isinstance(storage, _Storage):
        raise BadTensor(f"tensor built from a {type(storage).__name__}, not a storage")
    if not isinstance(offset, int) or offset < 0:
        raise BadTensor(f"bad storage offset {offset!r:.40}")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(strides):
        raise BadTensor(f"tensor size {shape} and stride {strides} differ in length")
    kind = kind or storage.kind
    if storage.raw is None:  # legacy format, first pass: only the arguments are checked
        return None
    numel_storage = storage.raw.size // kind.itemsize
    numel = 1
    for n in shape:
        numel *= n
    if numel:
        # as_strided does no bounds checking: a crafted file must not make us read past the storage.
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= numel_storage:
            raise BadTensor(f"tensor of size {shape}, stride {strides} at offset {offset} reaches "
                            f"element {last} of a storage of {numel_storage}")
    elif offset > numel_storage:
        raise BadTensor(f"storage offset {offset} beyond a storage of {numel_storage} elements")
    if kind.code is None:
        return UnsupportedTensor(kind.dtype, shape)
    dtype = np.dtype(kind.code)  # numpy's shared instance: pickles (.pdparams) memoise it
    if storage.order != _NATIVE and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(storage.order)
    typed = storage.raw[: numel_storage * kind.itemsize].view(dtype)
    if not numel:
        arr = np.empty(shape, dtype)
    elif strides == c_strides(shape):
        arr = typed[offset: offset + numel].reshape(shape)  # the usual case: a plain view
    else:
        arr = np.lib.stride_tricks.as_strided(typed[offset:], shape, [s * dtype.itemsize for s in strides],
                                              writeable=False)
    if not dtype.isnative:
        arr = arr.astype(np.dtype(kind.code))  # the one case that must copy
    return arr


def c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Element strides of a C-contiguous tensor of ``shape`` (what torch stores for one)."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


# Stand-ins for torch's rebuild functions. Instances of slot-less classes, not plain
# functions: a pickle's BUILD opcode can set attributes on a function object, not on these.
class _StandIn:
    __slots__ = ()
    qualname = ""

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualname}>"


class _RebuildTensor(_StandIn):
    __slots__ = ()
    qualname = "torch._utils._rebuild_tensor"

    def __call__(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
        return _make_tensor(storage, storage_offset, size, stride)


class _RebuildTensorV2(_StandIn):
    __slots__ = ()
    qualname = "torch._utils._rebuild_tensor_v2"

    def __call__(self, storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                 backward_hooks: Any = None, metadata: Any = None) -> Any:
        # requires_grad, hooks (always empty when saved) and Python metadata do not change the values.
        return _make_tensor(storage, storage_offset, size, stride)


class _RebuildTensorV3(_StandIn):
    __slots__ = ()
    qualname = "torch._utils._rebuild_tensor_v3"

    def __call__(self, storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                 backward_hooks: Any, dtype: Any, metadata: Any = None) -> Any:
        if not isinstance(dtype, _StorageType) or dtype not in _DTYPE_KINDS:
            raise BadTensor(f"_rebuild_tensor_v3 given {dtype!r:.60} as dtype")
        return _make_tensor(storage, storage_offset, size, stride, kind=dtype)


class _RebuildParameter(_StandIn):
    __slots__ = ()
    qualname = "torch._utils._rebuild_parameter"

    def __call__(self, data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> Any:
        # (data is None only in the legacy format's first pass, which builds no arrays)
        if data is not None and not isinstance(data, (np.ndarray, UnsupportedTensor)):
            raise BadTensor(f"parameter built from a {type(data).__name__}, not a tensor")
        return data  # a Parameter is its data here: requires_grad/state are not weights


class _RebuildParameterWithState(_RebuildParameter):
    __slots__ = ()
    qualname = "torch._utils._rebuild_parameter_with_state"


_STORAGE_KINDS = frozenset(_STORAGE_TYPES.values()) | {_UNTYPED}
_DTYPE_KINDS = frozenset(_DTYPES.values())

ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _RebuildTensor(),
    ("torch._utils", "_rebuild_tensor_v2"): _RebuildTensorV2(),
    ("torch._utils", "_rebuild_tensor_v3"): _RebuildTensorV3(),
    ("torch._utils", "_rebuild_parameter"): _RebuildParameter(),
    ("torch._utils", "_rebuild_parameter_with_state"): _RebuildParameterWithState(),
    ("torch.storage", "UntypedStorage"): _UNTYPED,
    ("torch", "UntypedStorage"): _UNTYPED,
    **{("torch", name): kind for name, kind in _STORAGE_TYPES.items()},
    **{("torch", name): kind for name, kind in _DTYPES.items()},
}


class Refused(pickle.UnpicklingError):
    """The pickle names a global outside ``ALLOWED``; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # "__builtin__" -> "builtins"
        super().__init__(f"{module}.{name}")
        self.module, self.qualname = module, f"{module}.{name}"


def _refusal_message(exc: Refused) -> str:
    if exc.module.startswith("__torch__"):
        return (f"a TorchScript archive (torch.jit.save), not a state dict: it names {exc.qualname}; "
                f"save model.state_dict() with torch.save instead (nothing was executed)")
    if exc.module == "torch" or exc.module.startswith("torch."):
        return (f"refused to unpickle {exc.qualname}: this reader takes dicts of dense tensors only "
                f"(no quantized, sparse, nested or subclass tensors, no other torch objects); "
                f"nothing was executed")
    return (f"refused to unpickle {exc.qualname}: a checkpoint may only hold tensors, dicts and "
            f"numbers, and loading this one could run code (nothing was executed)")


def _text(value: Any) -> Any:
    # Python 2 era files pickled these ids as byte strings.
    return value.decode("ascii") if isinstance(value, bytes) else value


# (key, declared type, declared element count) -> the storage's bytes, or None (legacy first pass)
StorageSource = Callable[[str, _StorageType, int], Optional[np.ndarray]]


class TorchUnpickler(pickle.Unpickler):
    """The C ``pickle.Unpickler`` restricted to ``ALLOWED``; storages come from ``storages``.

    ``storages(key, kind, numel)`` returns the raw bytes of storage ``key`` (uint8 array) or
    None (legacy first pass); ``seen`` records every storage the pickle names.
    """

    def __init__(self, file: Any, storages: Optional[StorageSource] = None, order: str = "<") -> None:
        super().__init__(file, encoding="utf-8")  # what torch.load passes for Python 2 strings
        self._storages = storages
        self._order = order
        self.seen: Dict[str, Tuple[_StorageType, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise Refused(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._storages is None:
            raise pickle.UnpicklingError("unexpected persistent id in a plain pickle")
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _text(pid[0]) != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        kind, key, _location, numel = pid[1], _text(pid[2]), pid[3], pid[4]
        if not isinstance(kind, _StorageType) or kind not in _STORAGE_KINDS:
            raise pickle.UnpicklingError(f"persistent id names {kind!r:.60} as storage type")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        known = self.seen.setdefault(key, (kind, numel))
        if known[0].itemsize * known[1] != kind.itemsize * numel:
            raise pickle.UnpicklingError(f"storage {key!r} declared with two different sizes")
        raw = self._storages(key, kind, numel)
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy storage view: (view key, offset, size) in elements
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])
                    and view[1] >= 0 and view[2] >= 0):
                raise pickle.UnpicklingError(f"malformed storage view {view!r:.80}")
            start, stop = view[1] * kind.itemsize, (view[1] + view[2]) * kind.itemsize
            if stop > numel * kind.itemsize:
                raise pickle.UnpicklingError(f"storage view {view!r:.80} beyond its storage")
            raw = None if raw is None else raw[start:stop]
        return _Storage(kind, raw, self._order)


class _PlainUnpickler(TorchUnpickler):
    """No globals, no persistent ids: the legacy format's header pickles and key list."""

    def find_class(self, module: str, name: str) -> Any:
        raise Refused(module, name)


# ----------------------------------------------------------------------------------------------
# The two container formats
# ----------------------------------------------------------------------------------------------

def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        # ACCESS_COPY: pages are shared until written, and a write (e.g. into a tensor made
        # with torch.from_numpy) lands in a private copy, never in the file and never a crash.
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _zip_record(zf: zipfile.ZipFile, mapped: mmap.mmap, name: str) -> np.ndarray:
    """The bytes of record ``name``: a view of the mapped file when stored, else read."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"storage record {name!r} is missing from the archive (truncated or "
                              f"corrupt checkpoint)") from None
    if info.flag_bits & 0x1:
        raise CheckpointError(f"storage record {name!r} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        # torch never compresses, but other zip tools may have re-packed the file: zipfile
        # inflates and checks the CRC.
        try:
            return np.frombuffer(bytearray(zf.read(name)), dtype=np.uint8)  # writable, like the map
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, zlib.error) as exc:
            raise CheckpointError(f"cannot read storage record {name!r} ({exc})") from None
    head = mapped[info.header_offset: info.header_offset + _LOCAL_HEADER.size]
    if len(head) != _LOCAL_HEADER.size or not head.startswith(b"PK\x03\x04"):
        raise CheckpointError(f"corrupt zip archive (bad local header of {name!r})")
    _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if start + info.file_size > len(mapped):
        raise CheckpointError(f"truncated checkpoint: storage record {name!r} runs past the end of the file")
    return np.frombuffer(mapped, dtype=np.uint8, count=info.file_size, offset=start)


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CheckpointError("a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
        prefix = pkl[: -len("data.pkl")]
        if any(n.startswith(prefix + "code/") for n in names) or prefix + "constants.pkl" in names:
            raise CheckpointError("a TorchScript archive (torch.jit.save), not a state dict: save "
                                  "model.state_dict() with torch.save instead")
        order = "<"
        if prefix + "byteorder" in names:
            mark = zf.read(prefix + "byteorder")
            if mark not in (b"little", b"big"):
                raise CheckpointError(f"unknown byte order {mark[:20]!r} in the archive")
            order = "<" if mark == b"little" else ">"
        data = zf.read(pkl)
        mapped = _map(path)
        records: Dict[str, np.ndarray] = {}

        def storage(key: str, kind: _StorageType, numel: int) -> np.ndarray:
            raw = records.get(key)
            if raw is None:
                raw = records[key] = _zip_record(zf, mapped, f"{prefix}data/{key}")
            if raw.size < numel * kind.itemsize:
                raise BadTensor(f"storage record data/{key} holds {raw.size} bytes, the pickle says "
                                f"{numel} x {kind.itemsize}")
            return raw[: numel * kind.itemsize]  # tensors are bounds-checked against the declared size

        return _unpickle(TorchUnpickler(io.BytesIO(data), storage, order), "data.pkl")


def _unpickle(unpickler: TorchUnpickler, what: str) -> Any:
    """``unpickler.load()`` with every failure as one CheckpointError line."""
    try:
        return unpickler.load()
    except CheckpointError:  # from persistent_load: already one line
        raise
    except Refused as exc:
        raise CheckpointError(_refusal_message(exc)) from None
    except BadTensor as exc:
        raise CheckpointError(f"corrupt checkpoint ({exc})") from None
    except (EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"truncated or corrupt pickle in {what} ({exc or type(exc).__name__})") from None
    except MemoryError:
        raise CheckpointError(f"corrupt pickle in {what} (asks for more memory than available)") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
        raise CheckpointError(f"corrupt pickle in {what} ({type(exc).__name__}: {exc})") from None


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = _unpickle(_PlainUnpickler(f), "the header")
        if magic != LEGACY_MAGIC_NUMBER:
            raise CheckpointError("not a PyTorch checkpoint (wrong magic number)")
        version = _unpickle(_PlainUnpickler(f), "the header")
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"unsupported legacy checkpoint protocol version {version!r:.20}")
        _unpickle(_PlainUnpickler(f), "the header")  # sys_info: sizes of C types, byte order
        start = f.tell()
        # The storages follow the object pickle, whose length is known only once it is parsed:
        # a first pass checks the pickle and learns every storage's type and size, a second,
        # once the storages are located, builds the arrays (the pickle is small; twice is cheap).
        scout = TorchUnpickler(f, storages=lambda key, kind, numel: None)
        _unpickle(scout, "the checkpoint")
        keys = _unpickle(_PlainUnpickler(f), "the storage list")
        data_start = f.tell()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError("corrupt legacy checkpoint (the storage list is not a list of keys)")
    mapped = _map(path)
    records: Dict[str, np.ndarray] = {}
    pos = data_start
    for key in keys:
        if key not in scout.seen:
            raise CheckpointError(f"corrupt legacy checkpoint (storage {key!r} is listed but never used)")
        kind, numel = scout.seen[key]
        head = mapped[pos: pos + 8]
        if len(head) < 8:
            raise CheckpointError(f"truncated checkpoint: storage {key!r} is missing from the end of the file")
        count = int.from_bytes(head, "little", signed=True)
        if count != numel:
            raise CheckpointError(f"corrupt legacy checkpoint (storage {key!r} has {count} elements, "
                                  f"the pickle says {numel})")
        nbytes = count * kind.itemsize
        if pos + 8 + nbytes > len(mapped):
            raise CheckpointError(f"truncated checkpoint: storage {key!r} runs past the end of the file")
        records[key] = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=pos + 8)
        pos += 8 + nbytes
    missing = [k for k in scout.seen if k not in records]
    if missing:
        raise CheckpointError(f"corrupt legacy checkpoint (no data for storage {missing[0]!r})")
    with open(path, "rb") as f:
        f.seek(start)
        # Legacy storages are always written little-endian (torch swaps on big-endian machines).
        return _unpickle(TorchUnpickler(f, lambda key, kind, numel: records[key], "<"), "the checkpoint")


def load_torch_file(path: PathLike, fmt: str) -> Any:
    """The object ``torch.save`` wrote to ``path`` with tensors as numpy arrays.

    ``fmt``: ``"torch-zip"`` or ``"torch-legacy"`` (``safe_load.sniff_format``). Arrays are
    views of a private memory map of the file where possible. Raises CheckpointError (one
    line, naming ``path``) for anything refused, truncated or corrupt.
    """
    p = Path(path)
    try:
        if fmt == "torch-zip":
            return _load_zip(p)
        if fmt == "torch-legacy":
            return _load_legacy(p)
        raise ValueError(f"unknown torch format {fmt!r}")
    except CheckpointError as exc:
        raise exc.with_path(p) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"truncated or corrupt zip archive ({exc})", path=p) from None
    except (OSError, ValueError) as exc:  # unreadable file, mmap failures
        raise CheckpointError(f"cannot read: {exc}", path=p) from None


__all__ = ["ALLOWED", "LEGACY_MAGIC_NUMBER", "TorchUnpickler", "UnsupportedTensor", "load_torch_file"]

"""Read PyTorch checkpoint files into numpy arrays without torch and without running their code.

Both on-disk formats of ``torch.save`` are read:

* zip (torch >= 1.6): ``<archive>/data.pkl`` is the pickled object; each storage it refers to
  is the raw record ``<archive>/data/<key>`` in the byte order named by ``<archive>/byteorder``
  (little when the record is absent). torch writes those records uncompressed and 64-byte
  aligned, so they are views of a private (copy-on-write) map of the file, not copies:
  writing into an array never touches the file (copied only when its byte order is not the
  machine's; non-contiguous views are read-only).
* legacy (torch < 1.6, e.g. torchvision's ``resnet50-19c8e357.pth``): a run of pickles (magic
  number, protocol version 1001, system info, the object, the sorted list of storage keys)
  followed by each storage in that order as an 8-byte little-endian element count and the raw
  little-endian bytes.

The pickles are run by ``convert.restricted_pickle`` (no ``pickle.Unpickler``): the globals a
state dict of dense tensors needs (``ALLOWED``) resolve to inert stand-ins, so a tensor is
first a ``TensorSpec`` (storage key, declared storage size, offset, size, stride), checked
when it is made: integer sizes, strides at least 1 on every dimension longer than one and
not overlapping (no stride-0 broadcast, no aliasing within a tensor), and every element inside
the declared storage. Only after the whole pickle is read does ``finalize`` look up each storage
record, check that its size is exactly the declared one BEFORE reading it (a compressed record
is inflated only up to that size, and at most ``MAX_INFLATED`` bytes in all), and make the
array with ``np.frombuffer`` on those bytes. Tensors come back as ``np.ndarray`` (same dtype,
shape, strides and values as torch gives; storage offsets and shared storages honoured) and
``nn.Parameter`` as its data.

Refused, each with one CheckpointError line and no fallback to ``torch.load``: any global
outside ``ALLOWED`` (code, custom classes, and also torch objects that are not dense weights:
quantized, sparse, nested or subclass tensors, ``torch.device``, ...), TorchScript archives,
encrypted records, dict keys other than strings and integers, nesting deeper than
``restricted_pickle.MAX_DEPTH``, the pre-1.0 tar format. Tensors whose dtype numpy has no type
for (bfloat16, float8) are read as ``UnsupportedTensor`` placeholders so that the caller can
name the key in its error; they are never converted silently.
"""

from __future__ import annotations

import os
import struct
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import numpy as np

from . import restricted_pickle as rp
from .errors import CheckpointError
from .fileio import MappedFile, map_regular_file

PathLike = Union[str, "os.PathLike[str]"]

_NATIVE = "<" if sys.byteorder == "little" else ">"
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # zip local file header: signature ... name len, extra len
MAX_PICKLE_BYTES = 256 * 2**20  # data.pkl of a state dict is kilobytes, of a training checkpoint ~100 KB
# torch never compresses records; a re-packed (deflated) file is inflated up to this many bytes
# in all, so that a small file cannot claim gigabytes of zeros.
MAX_INFLATED = 1024 * 2**20
MAX_KEY_CHARS = 256  # storage keys are small decimal numbers


class UnsupportedTensor(NamedTuple):
    """A tensor whose dtype numpy cannot hold (bfloat16, float8): shape and dtype only."""

    dtype: str  # torch's name, e.g. "torch.bfloat16"
    shape: Tuple[int, ...]


class _StorageType(NamedTuple):
    # torch.FloatStorage & co. (and torch dtypes, which _rebuild_tensor_v3 receives): numpy
    # dtype code (None: numpy has none) and element size in bytes.
    name: str
    dtype: str  # torch's dtype name, e.g. "torch.float32"
    code: Optional[str]
    itemsize: int


class _Storage(NamedTuple):
    # The bytes of one storage once its record is checked, and their byte order.
    kind: _StorageType
    raw: np.ndarray  # uint8, 1-D, exactly the declared size
    order: str  # "<" or ">"


# torch's legacy typed-storage classes (still what torch.save writes for the classic dtypes).
_STORAGE_TYPES = {
    name: _StorageType(f"torch.{name}", f"torch.{dtype}", code, size)
    for name, dtype, code, size in [
        ("DoubleStorage", "float64", "f8", 8),
        ("FloatStorage", "float32", "f4", 4),
        ("HalfStorage", "float16", "f2", 2),
        ("LongStorage", "int64", "i8", 8),
        ("IntStorage", "int32", "i4", 4),
        ("ShortStorage", "int16", "i2", 2),
        ("CharStorage", "int8", "i1", 1),
        ("ByteStorage", "uint8", "u1", 1),
        ("BoolStorage", "bool", "?", 1),
        ("ComplexFloatStorage", "complex64", "c8", 8),
        ("ComplexDoubleStorage", "complex128", "c16", 16),
        ("BFloat16Storage", "bfloat16", None, 2),
    ]
}
_UNTYPED = _StorageType("torch.UntypedStorage", "torch.uint8", "u1", 1)
# torch dtypes by their pickled name, for _rebuild_tensor_v3 (newer dtypes over an untyped storage).
_DTYPES = {
    name: _StorageType(f"torch.{name}", f"torch.{name}", code, size)
    for name, code, size in [
        ("float64", "f8", 8),
        ("float32", "f4", 4),
        ("float16", "f2", 2),
        ("int64", "i8", 8),
        ("int32", "i4", 4),
        ("int16", "i2", 2),
        ("int8", "i1", 1),
        ("uint8", "u1", 1),
        ("uint16", "u2", 2),
        ("uint32", "u4", 4),
        ("uint64", "u8", 8),
        ("bool", "?", 1),
        ("complex64", "c8", 8),
        ("complex128", "c16", 16),
        ("bfloat16", None, 2),
        ("float8_e4m3fn", None, 1),
        ("float8_e5m2", None, 1),
        ("float8_e4m3fnuz", None, 1),
        ("float8_e5m2fnuz", None, 1),
        ("float8_e8m0fnu", None, 1),
    ]
}


def c_strides(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Element strides of a C-contiguous tensor of ``shape`` (what torch stores for one)."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


def layout_problem(shape: Tuple[int, ...], strides: Tuple[int, ...], offset: int, numel_storage: int) -> Optional[str]:
    """Why ``shape``/``strides`` at ``offset`` is not a safe view of ``numel_storage`` elements
    (None when it is): every element inside the storage, and no two elements at one place
    (no stride 0 on a dimension longer than one, no overlapping strides), so that a view
    never reads outside its bytes and never holds more elements than the storage."""
    if rp.product(shape) == 0:
        return (
            None if offset <= numel_storage else f"storage offset {offset} beyond a storage of {numel_storage} elements"
        )
    extent = 1  # elements spanned by the dimensions checked so far (ascending stride)
    for stride, n in sorted((s, n) for n, s in zip(shape, strides) if n > 1):
        if stride < extent:
            return (
                f"tensor of size {shape} with stride {strides} puts several elements at one "
                f"place (stride 0 or overlapping strides): refused"
            )
        extent += (n - 1) * stride
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if last >= numel_storage:
        return (
            f"tensor of size {shape}, stride {strides} at offset {offset} reaches element {last} "
            f"of a storage of {numel_storage}"
        )
    return None


def _make_tensor(
    storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], kind: Optional[_StorageType] = None
) -> Union[np.ndarray, UnsupportedTensor]:
    """The array ``storage[offset:]`` seen with ``size``/``stride`` (in elements).

    ``kind``: the element type when the storage is untyped (``_rebuild_tensor_v3``). The
    layout was checked when the tensor was read (``TensorSpec``); checked again here, since
    ``as_strided`` itself checks nothing.
    """
    kind = kind or storage.kind
    numel_storage = storage.raw.size // kind.itemsize
    problem = layout_problem(size, stride, offset, numel_storage)
    if problem:
        raise rp.PickleRefused(problem)
    if kind.code is None:
        return UnsupportedTensor(kind.dtype, size)
    dtype = np.dtype(kind.code)
    if storage.order != _NATIVE and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(storage.order)
    numel = rp.product(size)
    if not numel:
        arr = np.zeros(size, dtype)
    else:
        typed = storage.raw[: numel_storage * kind.itemsize].view(dtype)
        if stride == c_strides(size) or numel == 1:
            arr = typed[offset : offset + numel].reshape(size)  # the usual case: a plain view
        else:
            arr = np.lib.stride_tricks.as_strided(
                typed[offset:], size, [s * dtype.itemsize for s in stride], writeable=False
            )
    if not dtype.isnative:
        arr = arr.astype(np.dtype(kind.code))  # the one case that must copy
    return arr


# ----------------------------------------------------------------------------------------------
# Inert stand-ins for what a torch pickle names
# ----------------------------------------------------------------------------------------------


class _Kind(rp.Inert):
    """torch.FloatStorage & co., or a torch dtype: only ever an argument."""

    __slots__ = ("kind",)

    def __init__(self, kind: _StorageType) -> None:
        self.kind = kind

    def describe(self) -> str:
        return self.kind.name


class StorageRef(rp.Inert):
    """A storage named by a persistent id: key, type, declared size (elements), legacy view."""

    __slots__ = ("kind", "key", "numel", "view")

    def __init__(self, kind: _StorageType, key: str, numel: int, view: Optional[Tuple[int, int]]) -> None:
        self.kind, self.key, self.numel, self.view = kind, key, numel, view

    def describe(self) -> str:
        return f"storage {self.key!r}"

    @property
    def elements(self) -> int:
        """Elements a tensor may address (of the view, for a legacy storage view)."""
        return self.view[1] if self.view else self.numel


class TensorSpec(rp.Inert):
    """A tensor as the pickle declares it, already checked against its storage's declared size."""

    __slots__ = ("storage", "offset", "size", "stride", "kind")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, kind: Optional[_StorageType] = None) -> None:
        if not isinstance(storage, StorageRef):
            raise rp.PickleRefused(f"tensor built from {rp.short(storage)}, not a storage")
        if type(offset) is not int or offset < 0:
            raise rp.PickleRefused(f"bad storage offset {rp.short(offset)}")
        size, stride = rp.check_ints(size, "size"), rp.check_ints(stride, "stride")
        if len(size) != len(stride):
            raise rp.PickleRefused(f"tensor size {size} and stride {stride} differ in length")
        kind = kind or storage.kind
        numel_storage = storage.elements * storage.kind.itemsize // kind.itemsize
        problem = layout_problem(size, stride, offset, numel_storage)
        if problem:
            raise rp.PickleRefused(problem)
        self.storage, self.offset, self.size, self.stride, self.kind = storage, offset, size, stride, kind

    def describe(self) -> str:
        return f"tensor of size {self.size}"


class _RebuildTensor(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "torch._utils._rebuild_tensor"

    def call(self, args: tuple) -> Any:
        # (storage, offset, size, stride[, requires_grad, backward_hooks[, metadata]]): the
        # flags, hooks (always empty when saved) and Python metadata do not change the values.
        if not 4 <= len(args) <= 7:
            raise rp.PickleRefused(f"{self.describe()} with {len(args)} arguments")
        return TensorSpec(*args[:4])


class _RebuildTensorV3(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "torch._utils._rebuild_tensor_v3"

    def call(self, args: tuple) -> Any:
        # (storage, offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
        if len(args) not in (7, 8):
            raise rp.PickleRefused(f"{self.describe()} with {len(args)} arguments")
        dtype = args[6]
        if not isinstance(dtype, _Kind) or dtype.kind not in _DTYPE_KINDS:
            raise rp.PickleRefused(f"{self.describe()} given {rp.short(dtype)} as dtype")
        return TensorSpec(*args[:4], kind=dtype.kind)


class _RebuildParameter(rp.Inert):
    __slots__ = ()

    def describe(self) -> str:
        return "torch._utils._rebuild_parameter"

    def call(self, args: tuple) -> Any:
        # (data, requires_grad, backward_hooks[, state]): a Parameter is its data here.
        if len(args) not in (3, 4) or not isinstance(args[0], TensorSpec):
            raise rp.PickleRefused(f"parameter built from {rp.short(args[0] if args else None)}, not a tensor")
        return args[0]


_STORAGE_KINDS = frozenset(_STORAGE_TYPES.values()) | {_UNTYPED}
_DTYPE_KINDS = frozenset(_DTYPES.values())

ALLOWED: Dict[Tuple[str, str], Any] = {
    ("collections", "OrderedDict"): rp.OrderedDictType(),
    ("torch._utils", "_rebuild_tensor"): _RebuildTensor(),
    ("torch._utils", "_rebuild_tensor_v2"): _RebuildTensor(),
    ("torch._utils", "_rebuild_tensor_v3"): _RebuildTensorV3(),
    ("torch._utils", "_rebuild_parameter"): _RebuildParameter(),
    ("torch._utils", "_rebuild_parameter_with_state"): _RebuildParameter(),
    ("torch.storage", "UntypedStorage"): _Kind(_UNTYPED),
    ("torch", "UntypedStorage"): _Kind(_UNTYPED),
    **{("torch", name): _Kind(kind) for name, kind in _STORAGE_TYPES.items()},
    **{("torch", name): _Kind(kind) for name, kind in _DTYPES.items()},
}

# (storage key, declared type, declared element count) -> the record's bytes, exactly that size
StorageSource = Callable[[str, _StorageType, int], np.ndarray]


class TorchProfile(rp.Profile):
    """What a torch.save pickle may name; storages come from ``source`` when finalized."""

    globals = ALLOWED
    string_encoding = "utf-8"  # what torch.load passes for Python 2 strings

    def __init__(self, order: str = "<") -> None:
        self.order = order
        self.seen: Dict[str, Tuple[_StorageType, int]] = {}
        self.source: Optional[StorageSource] = None
        self._records: Dict[str, np.ndarray] = {}

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage":
            raise rp.PickleRefused(f"unsupported persistent id {rp.short(pid)}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(kind, _Kind) or kind.kind not in _STORAGE_KINDS:
            raise rp.PickleRefused(f"persistent id names {rp.short(kind)} as storage type")
        if type(key) is not str or len(key) > MAX_KEY_CHARS or type(numel) is not int or numel < 0:
            raise rp.PickleRefused(f"malformed storage id (key {rp.short(key)}, size {rp.short(numel)})")
        kind = kind.kind
        known = self.seen.setdefault(key, (kind, numel))
        if known[0].itemsize * known[1] != kind.itemsize * numel:
            raise rp.PickleRefused(f"storage {key!r} declared with two different sizes")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy storage view: (view key, offset, size) in elements
            if not (type(view) is tuple and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])):
                raise rp.PickleRefused(f"malformed storage view {rp.short(view)}")
            if view[1] + view[2] > numel:
                raise rp.PickleRefused(f"storage view ({view[1]}, {view[2]}) beyond its storage of {numel}")
            view = (view[1], view[2])
        return StorageRef(kind, key, numel, view)

    def finish(self, value: rp.Inert, depth: int) -> Any:
        if isinstance(value, TensorSpec):
            ref = value.storage
            raw = self._records.get(ref.key)
            if raw is None:
                raw = self._records[ref.key] = self.source(ref.key, ref.kind, ref.numel)
            if ref.view:
                raw = raw[ref.view[0] * ref.kind.itemsize : (ref.view[0] + ref.view[1]) * ref.kind.itemsize]
            return _make_tensor(_Storage(ref.kind, raw, self.order), value.offset, value.size, value.stride, value.kind)
        raise rp.PickleRefused(f"{value.describe()} outside a tensor")


class _PlainProfile(rp.Profile):
    """No globals, no persistent ids: the legacy format's header pickles and key list."""

    globals: Dict[Tuple[str, str], Any] = {}


def _refusal_message(exc: rp.Refused) -> str:
    if exc.module.startswith("__torch__"):
        return (
            f"a TorchScript archive (torch.jit.save), not a state dict: it names {exc.qualname}; "
            f"save model.state_dict() with torch.save instead (nothing was executed)"
        )
    if exc.module == "torch" or exc.module.startswith("torch."):
        return (
            f"refused to unpickle {exc.qualname}: this reader takes dicts of dense tensors only "
            f"(no quantized, sparse, nested or subclass tensors, no other torch objects); "
            f"nothing was executed"
        )
    return (
        f"refused to unpickle {exc.qualname}: a checkpoint may only hold tensors, dicts and "
        f"numbers, and loading this one could run code (nothing was executed)"
    )


def _run(buf: Any, profile: rp.Profile, what: str, start: int = 0) -> Tuple[Any, int]:
    """``restricted_pickle.load`` with every failure as one CheckpointError line."""
    try:
        return rp.load(buf, profile, start)
    except rp.Refused as exc:
        raise CheckpointError(_refusal_message(exc)) from None
    except rp.Truncated as exc:
        raise CheckpointError(f"truncated or corrupt pickle in {what} ({exc})") from None
    except rp.PickleRefused as exc:
        raise CheckpointError(f"corrupt pickle in {what} ({exc})") from None


def _finalize(obj: Any, profile: TorchProfile, what: str) -> Any:
    try:
        return rp.finalize(obj, profile)
    except CheckpointError:  # from the storage source: already one line
        raise
    except rp.PickleRefused as exc:
        raise CheckpointError(f"corrupt checkpoint ({exc})") from None
    except MemoryError:
        raise CheckpointError(f"{what} asks for more memory than available") from None


# ----------------------------------------------------------------------------------------------
# The two container formats
# ----------------------------------------------------------------------------------------------


class _Inflated:
    """How many bytes compressed records have been inflated to so far (bounded)."""

    def __init__(self) -> None:
        self.total = 0


def _zip_bytes(zf: zipfile.ZipFile, mapped: Any, info: zipfile.ZipInfo, budget: _Inflated) -> Any:
    """The content of record ``info`` (its declared size already checked by the caller): a view
    of the mapped file when stored, else inflated up to the declared size (CRC checked)."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise CheckpointError(f"record {name!r} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        head = mapped[info.header_offset : info.header_offset + _LOCAL_HEADER.size]
        if len(head) != _LOCAL_HEADER.size or not head.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"corrupt zip archive (bad local header of {name!r})")
        _, name_len, extra_len = _LOCAL_HEADER.unpack(head)
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        if start + info.file_size > len(mapped):
            raise CheckpointError(f"truncated checkpoint: record {name!r} runs past the end of the file")
        return np.frombuffer(mapped, dtype=np.uint8, count=info.file_size, offset=start)
    # torch never compresses, but another zip tool may have re-packed the file.
    budget.total += info.file_size
    if budget.total > MAX_INFLATED:
        raise CheckpointError(
            f"compressed records would inflate to more than {MAX_INFLATED >> 20} MiB "
            f"(torch never compresses; re-save the checkpoint with torch.save)"
        )
    try:
        with zf.open(info) as handle:
            data = handle.read(info.file_size + 1)  # zipfile inflates in bounded steps
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError, zlib.error) as exc:
        raise CheckpointError(f"cannot read record {name!r} ({' '.join(str(exc).split())[:200]})") from None
    if len(data) != info.file_size:
        raise CheckpointError(
            f"corrupt zip archive (record {name!r} inflates to {len(data)} bytes, declared {info.file_size})"
        )
    return np.frombuffer(bytearray(data), dtype=np.uint8)  # writable, like the map


def _load_zip(mapped: Any) -> Any:
    with zipfile.ZipFile(MappedFile(mapped)) as zf:
        names = zf.namelist()
        pkl = next((n for n in names if n == "data.pkl" or n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CheckpointError("a zip archive but not a PyTorch checkpoint (no data.pkl inside)")
        prefix = pkl[: -len("data.pkl")]
        if any(n.startswith(prefix + "code/") for n in names) or prefix + "constants.pkl" in names:
            raise CheckpointError(
                "a TorchScript archive (torch.jit.save), not a state dict: save "
                "model.state_dict() with torch.save instead"
            )
        budget = _Inflated()
        order = "<"
        if prefix + "byteorder" in names:
            info = zf.getinfo(prefix + "byteorder")
            mark = bytes(_zip_bytes(zf, mapped, info, budget)) if info.file_size <= 8 else b"?"
            if mark not in (b"little", b"big"):
                raise CheckpointError(f"unknown byte order {mark[:20]!r} in the archive")
            order = "<" if mark == b"little" else ">"
        info = zf.getinfo(pkl)
        if info.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"data.pkl declares {info.file_size} bytes; a checkpoint's pickle is "
                f"at most {MAX_PICKLE_BYTES >> 20} MiB"
            )
        profile = TorchProfile(order)
        obj, _ = _run(_zip_bytes(zf, mapped, info, budget), profile, "data.pkl")

        def source(key: str, kind: _StorageType, numel: int) -> np.ndarray:
            name = f"{prefix}data/{key}"
            try:
                record = zf.getinfo(name)
            except KeyError:
                raise CheckpointError(
                    f"storage record {name!r} is missing from the archive (truncated or corrupt checkpoint)"
                ) from None
            if record.file_size != numel * kind.itemsize:  # before reading or inflating anything
                raise CheckpointError(
                    f"storage record data/{key} holds {record.file_size} bytes, the "
                    f"pickle says {numel} x {kind.itemsize}"
                )
            return _zip_bytes(zf, mapped, record, budget)

        profile.source = source
        return _finalize(obj, profile, "data.pkl")


def _load_legacy(mapped: Any) -> Any:
    magic, pos = _run(mapped, _PlainProfile(), "the header")
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (wrong magic number)")
    version, pos = _run(mapped, _PlainProfile(), "the header", pos)
    if version != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy checkpoint protocol version {rp.short(version)}")
    _, pos = _run(mapped, _PlainProfile(), "the header", pos)  # sys_info: sizes of C types, byte order
    # Legacy storages are always written little-endian (torch swaps on big-endian machines).
    profile = TorchProfile("<")
    obj, pos = _run(mapped, profile, "the checkpoint", pos)
    keys, pos = _run(mapped, _PlainProfile(), "the storage list", pos)
    if type(keys) is not list or not all(type(k) is str for k in keys):
        raise CheckpointError("corrupt legacy checkpoint (the storage list is not a list of keys)")
    records: Dict[str, np.ndarray] = {}
    for key in keys:
        if key not in profile.seen:
            raise CheckpointError(f"corrupt legacy checkpoint (storage {rp.short(key)} is listed but never used)")
        kind, numel = profile.seen[key]
        head = mapped[pos : pos + 8]
        if len(head) < 8:
            raise CheckpointError(f"truncated checkpoint: storage {key!r} is missing from the end of the file")
        count = int.from_bytes(head, "little", signed=True)
        if count != numel:
            raise CheckpointError(
                f"corrupt legacy checkpoint (storage {key!r} has {count} elements, the pickle says {numel})"
            )
        nbytes = count * kind.itemsize
        if pos + 8 + nbytes > len(mapped):
            raise CheckpointError(f"truncated checkpoint: storage {key!r} runs past the end of the file")
        records[key] = np.frombuffer(mapped, dtype=np.uint8, count=nbytes, offset=pos + 8)
        pos += 8 + nbytes
    missing = [k for k in profile.seen if k not in records]
    if missing:
        raise CheckpointError(f"corrupt legacy checkpoint (no data for storage {missing[0]!r})")
    profile.source = lambda key, kind, numel: records[key]
    return _finalize(obj, profile, "the checkpoint")


def load_torch_file(path: PathLike, fmt: str, mapped: Any = None) -> Any:
    """The object ``torch.save`` wrote to ``path`` with tensors as numpy arrays.

    ``fmt``: ``"torch-zip"`` or ``"torch-legacy"`` (``safe_load.sniff_format``); ``mapped``:
    the file already mapped by ``fileio.map_regular_file`` (mapped here when None). Arrays are
    views of a private memory map of the file where possible. Raises CheckpointError (one
    line, naming ``path``) for anything refused, truncated or corrupt.
    """
    p = Path(path)
    try:
        if mapped is None:
            mapped = map_regular_file(p)
        if fmt == "torch-zip":
            return _load_zip(mapped)
        if fmt == "torch-legacy":
            return _load_legacy(mapped)
        raise ValueError(f"unknown torch format {fmt!r}")
    except CheckpointError as exc:
        raise exc.with_path(p) from None
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"truncated or corrupt zip archive ({exc})", path=p) from None
    except MemoryError:
        raise CheckpointError("asks for more memory than available", path=p) from None
    except (OSError, ValueError, OverflowError) as exc:  # unreadable file, mmap failures
        raise CheckpointError(f"cannot read: {' '.join(str(exc).split())[:200]}", path=p) from None


__all__ = [
    "ALLOWED",
    "LEGACY_MAGIC_NUMBER",
    "TorchProfile",
    "UnsupportedTensor",
    "c_strides",
    "layout_problem",
    "load_torch_file",
]

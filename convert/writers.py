"""Atomic writers for Paddle (.pdparams) and torch (.pth) state dicts, without importing either.

A file appears under its final name only once it is complete and on disk: it is written to
a temporary file in the same folder, fsync'ed, then ``os.replace``'d; on any failure the
temporary file is removed and an existing file of that name is left untouched.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Tuple, Union

import numpy as np

from common.atomic import atomic_write as _atomic_write

from .rules import as_numpy, contiguous
from .torch_pickle import c_strides

PathLike = Union[str, "os.PathLike[str]"]

# paddle.save's default protocol; a dict of numpy arrays is pickled as is (see save_paddle).
PADDLE_PICKLE_PROTOCOL = 4


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], replace: bool = True) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then move it into place
    (the project's one atomic writer, :func:`common.atomic.atomic_write`); ``replace=False``:
    FileExistsError rather than replacing an existing ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, write, replace=replace)
    return path


def save_paddle(state: Mapping[str, Any], path: PathLike, replace: bool = True) -> Path:
    """Write ``state`` (numpy arrays, or torch/Paddle tensors) as a ``.pdparams`` file.

    For a dict of numpy arrays ``paddle.save`` does nothing but ``pickle.dump(obj, f,
    protocol=4)`` (Paddle 3.3.1, ``_pickle_save``); we write exactly that, byte for byte (the
    tests compare with ``paddle.save``), without importing Paddle (~1.3 s). ``paddle.load``,
    ``Layer.set_state_dict`` and ``reader.load_state_dict_file`` read it.
    """
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state-dict keys must be str, got {key!r}")
        arrays[key] = contiguous(as_numpy(value))
    return atomic_write(path, lambda f: pickle.dump(arrays, f, protocol=PADDLE_PICKLE_PROTOCOL), replace)


# ----------------------------------------------------------------------------------------------
# torch's zip checkpoint format, written by hand
# ----------------------------------------------------------------------------------------------

# numpy (kind, itemsize) -> torch's typed-storage class, what torch.save names for these dtypes.
TORCH_STORAGE_CLASS: Dict[Tuple[str, int], str] = {
    ("f", 4): "FloatStorage",
    ("f", 8): "DoubleStorage",
    ("f", 2): "HalfStorage",
    ("i", 8): "LongStorage",
    ("i", 4): "IntStorage",
    ("i", 2): "ShortStorage",
    ("i", 1): "CharStorage",
    ("u", 1): "ByteStorage",
    ("b", 1): "BoolStorage",
}
TORCH_ARCHIVE_NAME = "archive"  # the zip's top folder; torch.load accepts any name
TORCH_RECORD_ALIGNMENT = 64  # torch aligns every record's data to 64 bytes (torch.load(mmap=True) maps them)
_STORAGE_BYTE_ORDER = "<"  # storage bytes: little-endian, what the "byteorder" record says
_PAD_EXTRA_ID = b"FB"  # the zip extra-field id torch's writer (miniz) pads with


class _PickleWriter:
    """Emits the protocol-2 pickle ``torch.save`` writes for a dict of tensors, opcode by
    opcode: torch's classes are named by GLOBAL without importing torch (pickle's own
    Pickler checks every global by importing its module)."""

    def __init__(self) -> None:
        self.out: List[bytes] = [pickle.PROTO + b"\x02"]
        self._memo: Dict[Tuple[str, str], int] = {}

    def glob(self, module: str, name: str) -> None:
        index = self._memo.get((module, name))
        if index is not None:
            self.out.append(
                pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)
            )
            return
        index = self._memo[(module, name)] = len(self._memo)
        self.out.append(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.out.append(
            pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)
        )

    def text(self, value: str) -> None:
        data = value.encode("utf-8", "surrogatepass")
        self.out.append(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.out.append(pickle.BININT1 + bytes([value]))
        elif 0 <= value < 65536:
            self.out.append(pickle.BININT2 + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self.out.append(pickle.BININT + struct.pack("<i", value))
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out.append(pickle.LONG1 + bytes([len(data)]) + data)

    def int_tuple(self, values: Tuple[int, ...]) -> None:
        if not values:
            self.out.append(pickle.EMPTY_TUPLE)
            return
        self.out.append(pickle.MARK)
        for v in values:
            self.integer(v)
        self.out.append(pickle.TUPLE)

    def empty_ordered_dict(self) -> None:
        self.glob("collections", "OrderedDict")
        self.out.append(pickle.EMPTY_TUPLE + pickle.REDUCE)

    def tensor(
        self, storage_class: str, key: str, numel: int, size: Tuple[int, ...], stride: Tuple[int, ...], offset: int = 0
    ) -> None:
        """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``
        with the storage as the persistent id ``('storage', torch.<class>, key, 'cpu', numel)``."""
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.out.append(pickle.MARK + pickle.MARK)
        self.text("storage")
        self.glob("torch", storage_class)
        self.text(key)
        self.text("cpu")
        self.integer(numel)
        self.out.append(pickle.TUPLE + pickle.BINPERSID)
        self.integer(offset)
        self.int_tuple(size)
        self.int_tuple(stride)
        self.out.append(pickle.NEWFALSE)  # requires_grad
        self.empty_ordered_dict()  # backward hooks
        self.out.append(pickle.TUPLE + pickle.REDUCE)

    def getvalue(self) -> bytes:
        return b"".join(self.out) + pickle.STOP


def _torch_storage(key: str, value: Any) -> Tuple[str, np.ndarray]:
    """(storage class name, C-contiguous little-endian array) of one state-dict value."""
    try:
        arr = as_numpy(value)
    except (TypeError, RuntimeError) as exc:  # e.g. a torch bfloat16 tensor: numpy has no such dtype
        raise TypeError(f"cannot write {key!r} to a .pth: {exc}") from None
    storage_class = TORCH_STORAGE_CLASS.get((arr.dtype.kind, arr.dtype.itemsize))
    if storage_class is None or arr.dtype.fields is not None:
        supported = "float32, float64, float16, int64, int32, int16, int8, uint8, bool"
        raise TypeError(f"cannot write {key!r} to a .pth: dtype {arr.dtype} is not supported (supported: {supported})")
    # C order, little-endian (copies only when the input is neither)
    arr = contiguous(arr).astype(arr.dtype.newbyteorder(_STORAGE_BYTE_ORDER), copy=False)
    return storage_class, arr


def _padded_info(name: str, nbytes: int, offset: int) -> zipfile.ZipInfo:
    """A STORED ZipInfo whose local header, written at ``offset``, ends on a 64-byte boundary:
    padded, like torch, with an extra field ("FB", length, "Z" * length)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = nbytes
    info.external_attr = 0o644 << 16
    zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then appends a 20-byte zip64 field
    header = 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = -(offset + header) % TORCH_RECORD_ALIGNMENT
    info.extra = _PAD_EXTRA_ID + struct.pack("<H", pad) + b"Z" * pad
    return info


def write_torch_zip(f: BinaryIO, state: Mapping[str, Any]) -> None:
    """Write ``state`` to the (seekable) file ``f`` in torch's zip format, as torch.save does."""
    prefix = f"{TORCH_ARCHIVE_NAME}/"
    pickler = _PickleWriter()
    pickler.empty_ordered_dict()
    pickler.out.append(pickle.MARK)
    records: List[Tuple[str, np.ndarray]] = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state-dict keys must be str, got {key!r}")
        storage_class, arr = _torch_storage(key, value)
        storage_key = str(len(records))
        pickler.text(key)
        pickler.tensor(storage_class, storage_key, arr.size, tuple(arr.shape), c_strides(arr.shape))
        records.append((f"{prefix}data/{storage_key}", arr))
    pickler.out.append(pickle.SETITEMS)

    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:

        def record(name: str, data: Any, nbytes: int) -> None:
            info = _padded_info(name, nbytes, f.tell())  # aligned within the file, as mmap sees it
            with zf.open(info, "w") as out:
                if f.tell() % TORCH_RECORD_ALIGNMENT:  # zipfile wrote a header of another length
                    raise RuntimeError(f"record {name} would not be {TORCH_RECORD_ALIGNMENT}-byte aligned")
                out.write(data)

        data_pkl = pickler.getvalue()
        record(f"{prefix}data.pkl", data_pkl, len(data_pkl))
        record(f"{prefix}byteorder", b"little", 6)
        for name, arr in records:
            raw = memoryview(arr.reshape(-1).view(np.uint8))
            record(name, raw, raw.nbytes)
        record(f"{prefix}version", b"3\n", 2)


def save_torch(state: Mapping[str, Any], path: PathLike, replace: bool = True) -> Path:
    """Write ``state`` (numpy arrays or torch tensors) as ``torch.save`` would, without torch.

    A bare state dict (an OrderedDict of tensors in ``state``'s order, no wrapper, no
    ``module.`` prefix) in torch's zip format: ``archive/data.pkl`` (protocol 2; each tensor is
    ``torch._utils._rebuild_tensor_v2`` of its own storage, offset 0, C-contiguous strides),
    ``archive/byteorder`` ("little"), ``archive/data/<n>`` (raw little-endian bytes, 64-byte
    aligned) and ``archive/version`` ("3"), uncompressed. Loadable with
    ``torch.load(weights_only=True)`` (``mmap=True`` too) and ``load_state_dict(strict=True)``;
    ``.format_version`` is left out on purpose: with it torch may compute record offsets
    assuming miniz's data descriptors instead of reading them from the zip headers.
    dtypes: ``TORCH_STORAGE_CLASS``; others raise TypeError naming the key. ``replace``: see
    :func:`atomic_write`.
    """
    return atomic_write(path, lambda f: write_torch_zip(f, state), replace)

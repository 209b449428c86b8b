"""Opening a checkpoint file: regular files only, opened once, mapped privately.

A FIFO, a device or a directory given as a checkpoint would block a plain ``open`` or
``read`` for ever (or read without end): ``map_regular_file`` opens without blocking, checks
with ``fstat`` on that same descriptor that it is a regular, non-empty file, and maps it
copy-on-write, so every later read sees the same bytes (no second ``open`` that a swapped file
could redirect) and no read can go past the file's end.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
from typing import Any, Union

from .errors import CheckpointError

PathLike = Union[str, "os.PathLike[str]"]

_KIND = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def map_regular_file(path: PathLike) -> mmap.mmap:
    """A private (copy-on-write) map of the regular file ``path``; CheckpointError otherwise.

    Writing into the map (e.g. through an array made from it) never changes the file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise CheckpointError("no such file", path=path) from None
    except IsADirectoryError:
        raise CheckpointError("is a directory, not a checkpoint file", path=path) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}", path=path) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KIND if test(mode)), "not a regular file")
            raise CheckpointError(f"is {kind}, not a checkpoint file (only regular files are read)", path=path)
        if os.fstat(fd).st_size == 0:
            raise CheckpointError("empty file, not a checkpoint", path=path)
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot map the file: {exc}", path=path) from None
    finally:
        os.close(fd)


class MappedFile(io.RawIOBase):
    """A read-only, seekable file object over a map (what ``zipfile`` needs), copying nothing
    but what is read."""

    def __init__(self, mapped: mmap.mmap) -> None:
        super().__init__()
        self._mapped, self._pos = mapped, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), len(self._mapped) - self._pos))
        view[:n] = self._mapped[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._mapped)}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos


__all__ = ["MappedFile", "map_regular_file"]

"""The project's one atomic file writer (standard library only).

Every output of the project (images, labels, patches, JSON reports, GeoTIFF/PNG predictions,
checkpoints, converted weights) goes through :func:`atomic_output` or :func:`atomic_write`:

1. the data is written to a temporary file beside the target, ``.<name>.<pid>-<random>.tmp``
   (same folder, hence the same file system; unique, so two processes writing into one
   folder never share or delete each other's temporary files);
2. the temporary file is flushed to disk (``fsync``) and, when the caller gives a ``verify``
   function, read back and checked (a write error that a library only logged, e.g. GDAL's
   on a full disk, is found here);
3. only then is it renamed over the target (``os.replace``: atomic on one file system) and
   the rename made durable (``fsync`` of the folder);
4. on any error (including Ctrl-C) the temporary file is removed and the earlier target, if
   any, is left untouched.

A process killed between 1 and 3 leaves its temporary file behind; the process id in the
name tells :func:`remove_stale_temporaries` whether its writer is still alive, so the next
run removes only the files of dead writers.

``common`` is the framework-free tools leaf, so ``isaid``, ``convert`` and ``app`` all import the
writer from here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from typing import BinaryIO, Callable, Iterator, List, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
Verify = Callable[[str], None]

# ".<target name>.<pid>-<12 hex>.tmp"; the target name may itself contain dots.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]{12})\.tmp$")


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = current_umask()


class OutputError(OSError):
    """An output could not be written (disk full, read-only folder, failed verification).

    The message is one line naming the target file; the earlier file is untouched.
    """


def describe_os_error(error: BaseException, with_file: bool = False) -> str:
    """``No space left on device`` rather than ``[Errno 28] No space left on device: '/x/.y.tmp'``;
    ``with_file``: ``/x/y: No space left on device`` (the target, not its temporary file)."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
        if with_file and error.filename:
            name = os.fspath(error.filename)
            match = _TEMPORARY.match(os.path.basename(name))
            if match is not None:
                name = os.path.join(os.path.dirname(name), match.group("target"))
            text = f"{name}: {text}"
        return text
    return " ".join(str(error).split()) or type(error).__name__


def temporary_name(path: PathLike) -> str:
    """A fresh temporary path beside ``path`` (not created)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


def temporary_path_beside(path: PathLike) -> str:
    """Create a new empty temporary file beside ``path`` (the folder is created if needed)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    while True:
        temporary = temporary_name(path)
        try:
            # 0o666: the final file gets the usual umask-derived mode (mkstemp's is 0600)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # 48 random bits: practically never
            continue
        os.close(fd)
        return temporary


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):  # directories cannot be fsync'ed everywhere (Windows)
        _fsync_path(folder)


def publish(temporary: str, path: PathLike, verify: Optional[Verify] = None) -> None:
    """Flush ``temporary`` to disk, check it with ``verify(temporary)``, rename it to ``path``.

    ``verify`` raises when the file is not what was meant to be written. On any failure the
    temporary file is removed, ``path`` is untouched and the error propagates.
    """
    try:
        _fsync_path(temporary)
        if verify is not None:
            verify(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(os.fspath(path))))


@contextlib.contextmanager
def atomic_output(path: PathLike, verify: Optional[Verify] = None) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends normally the file written
    there is flushed, verified (``verify(temporary)``, optional) and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    temporary = temporary_path_beside(path)
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    publish(temporary, path, verify)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None], verify: Optional[Verify] = None) -> str:
    """Call ``write(handle)`` on a temporary file beside ``path``, then publish it (see
    :func:`atomic_output`); returns ``path``."""
    with atomic_output(path, verify) as temporary:
        with open(temporary, "wb") as handle:
            write(handle)
    return path


def write_bytes_atomic(path: PathLike, data: bytes, verify_size: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; the size on disk is checked before the rename."""
    expected = len(data)

    def check(temporary: str) -> None:
        size = os.path.getsize(temporary)
        if verify_size and size != expected:
            raise OutputError(errno.EIO, f"wrote {size} of {expected} bytes")

    atomic_write(path, lambda handle: handle.write(data), check)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: keep the file
    return True


def is_stale_temporary(name: str, target: Optional[Callable[[str], bool]] = None) -> bool:
    """Whether the file name ``name`` is a temporary file of this writer whose process is gone
    (and, with ``target``, whose target name ``target(name)`` accepts)."""
    match = _TEMPORARY.match(name)
    if match is None:
        return False
    if target is not None and not target(match.group("target")):
        return False
    return not _process_alive(int(match.group("pid")))


def remove_stale_temporaries(folder: PathLike, target: Optional[Callable[[str], bool]] = None) -> List[str]:
    """Delete, in ``folder``, the temporary files that killed writers left behind; returns their paths.

    Only files named by this writer whose process no longer exists on this machine are removed
    (``target`` narrows them by the name of the file they were meant to become), so a run can
    clean a folder another live process is writing into.
    """
    removed: List[str] = []
    folder = os.fspath(folder)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.name.endswith(".tmp") and is_stale_temporary(entry.name, target):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed


def check_writable(path: PathLike) -> None:
    """Raise OSError now if a file cannot be created beside ``path`` (read-only or missing
    folder, no permission), before any work whose result would be lost."""
    temporary = temporary_path_beside(path)  # creates a missing folder, as the writers do
    os.remove(temporary)

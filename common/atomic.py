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

Also here, so that every command uses the same rules (docs/safety.md, "What is never lost"):

- :func:`refuse_overwriting_inputs` / :func:`refuse_folder_holding_inputs`: the one guard
  every command that writes calls before any work, refusing an output that is one of its
  inputs (symbolic and hard links included) or a folder that holds one;
- ``replace=False`` (:func:`publish`): a default output name never replaces a file;
- :func:`staging_folder_beside`, :func:`replace_folder_with`, :func:`remove_stale_staging`:
  whole folders (exports) written beside their target under the writer's process id, swapped
  in, and the folders of killed writers removed (or an earlier folder put back) by the next run.

``common`` is the framework-free tools leaf, so ``isaid``, ``convert`` and ``app`` all import the
writer from here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Tuple, Union

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


def publish(temporary: str, path: PathLike, verify: Optional[Verify] = None, replace: bool = True) -> None:
    """Flush ``temporary`` to disk, check it with ``verify(temporary)``, rename it to ``path``.

    ``verify`` raises when the file is not what was meant to be written. ``replace=False``
    never replaces an existing ``path`` (FileExistsError instead; the check and the rename
    are one step, a hard link, where the file system has them). On any failure the temporary
    file is removed, ``path`` is untouched and the error propagates.
    """
    try:
        _fsync_path(temporary)
        if verify is not None:
            verify(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        if replace:
            os.replace(temporary, path)
        else:
            _publish_new(temporary, os.fspath(path))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(os.fspath(path))))


def _publish_new(temporary: str, path: str) -> None:
    """Rename ``temporary`` to ``path`` only if ``path`` does not exist (FileExistsError)."""
    try:
        os.link(temporary, path)  # fails with EEXIST, atomically, when path exists
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists already; not replaced", path) from None
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "exists already; not replaced", path) from None
        os.replace(temporary, path)
        return
    os.remove(temporary)


@contextlib.contextmanager
def atomic_output(path: PathLike, verify: Optional[Verify] = None, replace: bool = True) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block ends normally the file written
    there is flushed, verified (``verify(temporary)``, optional) and renamed to ``path``
    (``replace=False``: only if ``path`` does not exist, see :func:`publish`).

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    temporary = temporary_path_beside(path)
    try:
        yield temporary
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    publish(temporary, path, verify, replace)


def atomic_write(
    path: PathLike, write: Callable[[BinaryIO], None], verify: Optional[Verify] = None, replace: bool = True
) -> str:
    """Call ``write(handle)`` on a temporary file beside ``path``, then publish it (see
    :func:`atomic_output`); returns ``path``."""
    with atomic_output(path, verify, replace) as temporary:
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


# ------------------------------------------------------------------ outputs never replace inputs


class InputOverwriteError(ValueError):
    """An output of a command names one of its inputs (or a folder holding one); one line.

    Raised before any work, so nothing is written; the commands report it as
    ``error: <output>: ...`` with exit status 2. ``path`` is the output, ``problem`` the rest.
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def same_file(first: PathLike, second: PathLike) -> bool:
    """Whether two paths name one file: :func:`os.path.samefile` (symbolic and hard links
    included) when both exist, else whether their resolved paths are equal (an output that
    does not exist yet, reached through a dangling symlink or ``..``)."""
    first, second = os.fspath(first), os.fspath(second)
    with contextlib.suppress(OSError, ValueError):
        if os.path.samefile(first, second):
            return True
    return os.path.realpath(first) == os.path.realpath(second)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies under ``folder`` (resolved; ``folder`` itself excluded)."""
    real_path, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return real_path != real_folder and real_path.startswith(real_folder.rstrip(os.sep) + os.sep)


Labelled = Iterable[Tuple[str, Optional[PathLike]]]


def _how(output: str, given: str) -> str:
    """`` (through a symbolic link)`` / `` (a hard link of it)`` / ``""``: why two names are one file."""
    if os.path.realpath(output) != os.path.realpath(given):
        return " (a hard link of it)"
    if os.path.abspath(output) != os.path.abspath(given):
        return " (through a symbolic link)"
    return ""


def refuse_overwriting_inputs(outputs: Labelled, inputs: Labelled) -> None:
    """The one guard every command that writes calls before any work: raise
    :class:`InputOverwriteError` when an output file is the same file as an input (or as
    another output).

    ``outputs`` and ``inputs`` are ``(label, path)`` pairs, e.g. ``("--out", "x.tif")``;
    a ``None`` path (an option not given) is skipped. The message is one line:
    ``<output>: --out is the same file as --image <input>...; refusing to overwrite an input``.
    """
    given_inputs = [(label, os.fspath(path)) for label, path in inputs if path is not None]
    given_outputs = [(label, os.fspath(path)) for label, path in outputs if path is not None]
    for index, (label, output) in enumerate(given_outputs):
        for input_label, given in given_inputs:
            if same_file(output, given):
                raise InputOverwriteError(
                    output,
                    f"{label} is the same file as {input_label} {given}{_how(output, given)};"
                    f" refusing to overwrite the input: choose another {label}",
                )
        for other_label, other in given_outputs[index + 1 :]:
            if same_file(output, other):
                raise InputOverwriteError(output, f"{label} and {other_label} name the same file; choose two files")


def refuse_folder_holding_inputs(folder: PathLike, label: str, inputs: Labelled) -> None:
    """The guard for an output FOLDER whose content is replaced or deleted (an export's
    ``--out DIR``, a split folder of ``isaid.prepare``): :class:`InputOverwriteError` when the
    folder is an input itself or holds one (resolved paths: symlinks included)."""
    folder = os.fspath(folder)
    for input_label, path in inputs:
        if path is None:
            continue
        given = os.fspath(path)
        if same_file(folder, given) or _inside(given, folder):
            raise InputOverwriteError(
                folder,
                f"{label} holds {input_label} {given}, which writing there would replace or"
                f" delete; refusing to overwrite the input: choose another {label}",
            )


# ------------------------------------------------------------------ folders written whole (exports)

# ".<target>.<pid>-<12 hex>.tmp": a folder being written; ".old": the earlier folder set aside
# while the new one is renamed into place.
_STAGING = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]{12})\.(?P<kind>tmp|old)$")


def _folder_beside(path: PathLike, kind: str) -> str:
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(folder, f".{name}.{os.getpid()}-{secrets.token_hex(6)}.{kind}")


def staging_folder_beside(path: PathLike) -> str:
    """Create a new, empty, hidden folder beside ``path`` to write a whole folder into
    (``.<name>.<pid>-<random>.tmp``: the process id lets :func:`remove_stale_staging` tell a
    killed writer's folder from a live one's). The parent folder is created if needed."""
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    while True:
        staging = _folder_beside(path, "tmp")
        try:
            os.mkdir(staging, 0o700)
        except FileExistsError:  # 48 random bits: practically never
            continue
        return staging


def _remove_tree(path: str) -> None:
    import shutil  # only needed here

    if os.path.islink(path) or not os.path.isdir(path):
        os.remove(path)
    else:
        shutil.rmtree(path)


def remove_stale_staging(path: PathLike) -> List[str]:
    """Remove the staging folders that killed writers of the folder ``path`` left beside it;
    returns what was removed.

    Only folders named by :func:`staging_folder_beside` (or set aside by
    :func:`replace_folder_with`) for this very ``path`` whose process no longer exists are
    touched; a live writer's are kept. An earlier folder that a writer killed in the middle of
    :func:`replace_folder_with` left aside while ``path`` is missing is renamed back to
    ``path`` instead of deleted.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    removed: List[str] = []
    try:
        entries = sorted(os.scandir(parent), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match is None or match.group("target") != name or _process_alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if match.group("kind") == "old" and not os.path.lexists(path) and entry.is_dir(follow_symlinks=False):
                os.replace(entry.path, path)  # the earlier folder comes back
                continue
            _remove_tree(entry.path)
            removed.append(entry.path)
    return removed


def replace_folder_with(staging: str, path: PathLike) -> None:
    """Move the finished folder ``staging`` to ``path``, replacing the folder there, if any.

    Two renames (a folder cannot be replaced in one): the earlier folder is first set aside
    as ``.<name>.<pid>-<random>.old``, then deleted; a process killed in between leaves it
    there, and :func:`remove_stale_staging` of a later run puts it back. The caller decides
    whether the earlier folder may be replaced.
    """
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        aside = _folder_beside(path, "old")
        os.replace(path, aside)
        try:
            os.replace(staging, path)
        except BaseException:
            os.replace(aside, path)
            raise
        _fsync_folder(os.path.dirname(os.path.abspath(path)))
        with contextlib.suppress(OSError):
            _remove_tree(aside)
    else:
        os.replace(staging, path)
        _fsync_folder(os.path.dirname(os.path.abspath(path)))

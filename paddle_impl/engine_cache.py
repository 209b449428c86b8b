"""Paddle Inference for ``--weights``: the model exported in-process, cached, verified (issue 21).

``python -m paddle_impl.evaluate --weights W`` and ``python -m paddle_impl.predict --weights W``
run, by default, the fastest exact CPU engine measured on this project: the model's eval forward
saved as a static program (``paddle.jit.to_static`` + ``paddle.jit.save``, exactly what
``python -m paddle_impl.export`` writes) and run by Paddle Inference with oneDNN (the ``onednn``
backend of :mod:`paddle_impl.infer`: BatchNorm folded into fused oneDNN convolutions). Saving
takes about 1.5 s, so the program is kept in a cache for later runs.

The cache (``--engine-cache DIR``, else ``$RSSEG_ENGINE_CACHE``, else
``$XDG_CACHE_HOME/rsseg-port/paddle-engines``, else ``~/.cache/rsseg-port/paddle-engines``):

- one folder per entry, named by a key over the model name, the sha256 of the weights file and
  :func:`program_code_hash` (Paddle's version, this cache's format version and the source of
  the files that define the program). A change of either gives another key: an entry is never
  reused for other weights or another program. The program is exported with dynamic height
  and width, so one entry serves every window size (the window is not part of the key);
- written into a temporary folder beside it (the project's atomic writer names it, so a killed
  run's leftovers are recognised and removed) and renamed into place once complete;
- bounded in total size (``$RSSEG_ENGINE_CACHE_MB``, default 2048 MB; one FarSeg entry is
  about 126 MB): the least recently used entries are removed after each run;
- untrusted when read: ``manifest.json`` records the size and sha256 of every file, which must
  match; the folder may hold nothing else, nor links; the program's ops must all be in
  :func:`check_program_ops` (the exports' op allow-list: no control flow, nothing else);
  ``model.yml`` must name the model the program's convolutions belong to. Then, on every
  run, the predictor is compared with the dynamic graph on a probe input
  (:data:`PROBE_SHAPE`, max |difference| of the probabilities at most
  :data:`PROBE_TOLERANCE`, the export check's oneDNN tolerance). An entry failing any of these
  is reported in one line and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn

from app.export_inspect import check_program_ops as check_exported_ops
from app.exported import (
    ExportedModel,
    deploy_config,
    paddle_program_ops,
    write_deploy_config,
)
from common.atomic import is_stale_temporary, replace_folder_with, staging_folder_beside, write_bytes_atomic
from common.digest import sha256_file

from .export import DEFAULT_ROUNDING_TOLERANCE, save_inference_model
from .export_format import CONFIG_FILE, PARAMS_FILE, PROGRAM_FILE, ExportError, read_deploy_config
from .infer import DeployedModel, InferenceError

ENGINES = ("auto", "inference", "dygraph")
CACHE_ENV = "RSSEG_ENGINE_CACHE"
CACHE_MB_ENV = "RSSEG_ENGINE_CACHE_MB"
DEFAULT_CACHE_MB = 2048
CACHE_FORMAT = 1  # bump when what an entry holds changes
MANIFEST_FILE = "manifest.json"
ENTRY_FILES = (PROGRAM_FILE, PARAMS_FILE, CONFIG_FILE)
MAX_MANIFEST_BYTES = 1 << 20
MAX_PARAMS_BYTES = 1 << 30  # FarSeg's weights are 126 MB, FactSeg's a little more
KEY_LENGTH = 32  # hex digits of the entry key (128 bits)
PROBE_SHAPE = (1, 3, 64, 96)  # H != W on purpose: a transposed program would not pass
PROBE_TOLERANCE = DEFAULT_ROUNDING_TOLERANCE
# The files whose source defines the saved program (besides Paddle itself).
PROGRAM_SOURCES = (
    "__init__.py",
    "decoder.py",
    "export.py",
    "factseg.py",
    "farseg.py",
    "fpn.py",
    "layers.py",
    "resnet.py",
    "shapes.py",
)
Note = Callable[[str], None]


class CacheEntryError(Exception):
    """A cache entry is not what this project wrote for these weights and this program; one line."""


def _stderr_note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def default_cache_dir() -> str:
    """``$RSSEG_ENGINE_CACHE``, else the user cache folder's ``rsseg-port/paddle-engines``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rsseg-port", "paddle-engines")


def cache_max_bytes() -> int:
    """The cache's size bound: ``$RSSEG_ENGINE_CACHE_MB`` megabytes (default 2048)."""
    text = os.environ.get(CACHE_MB_ENV, "")
    try:
        megabytes = float(text) if text else DEFAULT_CACHE_MB
    except ValueError:
        raise CacheEntryError(f"${CACHE_MB_ENV}={text!r}: expected a number of megabytes") from None
    if not megabytes >= 0:
        raise CacheEntryError(f"${CACHE_MB_ENV}={text!r}: expected a number of megabytes >= 0")
    return int(megabytes * (1 << 20))


def program_code_hash(sources: Iterable[str] = PROGRAM_SOURCES, folder: Optional[str] = None) -> str:
    """sha256 over Paddle's version, :data:`CACHE_FORMAT` and the source of ``sources`` (in ``folder``,
    default this package): any change to the code that writes the program changes it."""
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(f"paddle {paddle.__version__}\ncache format {CACHE_FORMAT}\n".encode())
    for name in sorted(sources):
        digest.update(f"\n{name}\n".encode())
        with open(os.path.join(folder, name), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


def entry_key(model_name: str, weights_sha256: str, code_hash: str) -> str:
    """The folder name of the entry for this model, weights and program code."""
    text = f"{model_name}\n{weights_sha256}\n{code_hash}"
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def check_program_ops(path: str) -> None:
    """CacheEntryError when ``path`` (a PIR ``model.json``) is unreadable, too large, too deep, or
    holds op types outside the exports' allow-list (``weights/export_ops.json``, which has no
    control flow): the same check as every export folder's, :func:`app.export_inspect.check_program_ops`."""
    try:
        check_exported_ops(path, paddle_program_ops(path), "paddle")
    except ExportError as error:
        raise CacheEntryError(f"{PROGRAM_FILE}: {error}") from None


def _regular_size(path: str) -> int:
    """Size of a regular file that is not a link (CacheEntryError otherwise)."""
    try:
        info = os.lstat(path)
    except OSError:
        raise CacheEntryError(f"{os.path.basename(path)} is missing") from None
    if not os.path.isfile(path) or os.path.islink(path):
        raise CacheEntryError(f"{os.path.basename(path)} is not a regular file")
    return info.st_size


def manifest_for(folder: str, expected: Dict[str, str]) -> Dict[str, Any]:
    """The manifest of a freshly written entry: ``expected`` plus each file's size and sha256."""
    files = {}
    for name in ENTRY_FILES:
        path = os.path.join(folder, name)
        files[name] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    return {"cache_format": CACHE_FORMAT, **expected, "files": files}


def verify_entry(folder: str, expected: Dict[str, str], hash_files: bool = True) -> None:
    """Check a cache entry as untrusted input; CacheEntryError (one line) on the first problem.

    ``expected``: the manifest fields the entry must carry (model, weights sha256, code hash).
    ``hash_files=False`` skips only the files' sha256 against the manifest: for the staging
    folder this process has just written and hashed (:func:`build_entry`); every entry read
    back from the cache is hashed.
    """
    if os.path.islink(folder) or not os.path.isdir(folder):
        raise CacheEntryError("not a folder")
    present = sorted(os.listdir(folder))
    if present != sorted(ENTRY_FILES + (MANIFEST_FILE,)):
        raise CacheEntryError(f"holds {present[:6]}, expected {sorted(ENTRY_FILES + (MANIFEST_FILE,))}")
    manifest_path = os.path.join(folder, MANIFEST_FILE)
    if _regular_size(manifest_path) > MAX_MANIFEST_BYTES:
        raise CacheEntryError(f"{MANIFEST_FILE} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise CacheEntryError(f"{MANIFEST_FILE} is not readable JSON") from None
    if not isinstance(manifest, dict) or manifest.get("cache_format") != CACHE_FORMAT:
        raise CacheEntryError(f"{MANIFEST_FILE} is not a format-{CACHE_FORMAT} manifest")
    for field, value in expected.items():
        if manifest.get(field) != value:
            raise CacheEntryError(f"{MANIFEST_FILE}: {field} is not this run's")
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(ENTRY_FILES):
        raise CacheEntryError(f"{MANIFEST_FILE} does not list exactly {', '.join(ENTRY_FILES)}")
    for name in ENTRY_FILES:
        path = os.path.join(folder, name)
        size = _regular_size(path)
        record = files[name]
        if not isinstance(record, dict) or record.get("bytes") != size:
            raise CacheEntryError(f"{name}: {size} bytes, not the {MANIFEST_FILE}'s")
        if size > MAX_PARAMS_BYTES:
            raise CacheEntryError(f"{name}: {size} bytes, more than {MAX_PARAMS_BYTES}")
        if hash_files and sha256_file(path) != record.get("sha256"):
            raise CacheEntryError(f"{name}: sha256 differs from the {MANIFEST_FILE}'s")
    check_program_ops(os.path.join(folder, PROGRAM_FILE))
    try:
        config = read_deploy_config(folder, verify=True)
    except ExportError as error:
        raise CacheEntryError(str(error).replace(folder + os.sep, "").replace(folder, "")) from None
    if config["model"] != expected["model"]:
        raise CacheEntryError(f"{CONFIG_FILE} holds {config['model']}, not {expected['model']}")


def folder_bytes(folder: str) -> int:
    """Total size of the regular files directly in ``folder`` (0 if unreadable)."""
    total = 0
    try:
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


def _is_entry_name(name: str) -> bool:
    return len(name) == KEY_LENGTH and all(c in "0123456789abcdef" for c in name)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def evict(root: str, max_bytes: int, keep: Iterable[str] = ()) -> List[str]:
    """Remove the least recently used entries of the cache ``root`` until its entries total at
    most ``max_bytes`` (entries in ``keep`` last of all), and the temporary folders of killed
    writers. Returns the entry names removed."""
    removed: List[str] = []
    keep = set(keep)
    entries: List[Tuple[float, str, int]] = []
    for entry in os.scandir(root):
        if entry.name.endswith(".tmp") and is_stale_temporary(entry.name):
            _remove(entry.path)
        elif _is_entry_name(entry.name) and entry.is_dir(follow_symlinks=False):
            manifest = os.path.join(entry.path, MANIFEST_FILE)
            used = os.lstat(manifest).st_mtime if os.path.isfile(manifest) else entry.stat().st_mtime
            entries.append((used, entry.name, folder_bytes(entry.path)))
    total = sum(size for _, _, size in entries)
    # oldest first, the entries in use last
    for _, name, size in sorted(entries, key=lambda item: (item[1] in keep, item[0])):
        if total <= max_bytes:
            break
        _remove(os.path.join(root, name))
        removed.append(name)
        total -= size
    return removed


def build_entry(
    model: nn.Layer, model_name: str, weights: str, how: str, folder: str, expected: Dict[str, str]
) -> None:
    """Export ``model`` into a temporary folder beside ``folder``, check it, rename it into place."""
    staging = staging_folder_beside(folder)
    try:
        save_inference_model(model, staging)
        config = deploy_config(
            model_name,
            None,
            weights,
            how,
            extra={"paddle_version": paddle.__version__},
            weights_sha256=expected["weights_sha256"],
        )
        write_deploy_config(staging, config, "paddle_impl.engine_cache")
        write_bytes_atomic(
            os.path.join(staging, MANIFEST_FILE), json.dumps(manifest_for(staging, expected), indent=1).encode()
        )
        # The manifest hashed these very files a moment ago; the other checks (file set, sizes,
        # op allow-list, model.yml) still run. The probe then compares the program with the model.
        verify_entry(staging, expected, hash_files=False)
        if os.path.lexists(folder):
            try:  # another process may have written the same entry meanwhile: keep theirs
                verify_entry(folder, expected)
                shutil.rmtree(staging, ignore_errors=True)
                return
            except CacheEntryError:
                _remove(folder)
        replace_folder_with(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def probe_difference(deployed: ExportedModel, model: nn.Layer) -> float:
    """max |difference| of the probabilities, Paddle Inference against the dynamic graph, on a
    fixed random probe input (NaN or a wrong shape count as infinite). A predictor that cannot
    run raises InferenceError (its one-line reason), as at load time."""
    x = np.random.default_rng(0).standard_normal(PROBE_SHAPE).astype("float32")
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(x)).numpy()
    got = deployed(x)
    if got.shape != expected.shape:
        return float("inf")
    difference = np.abs(got.astype(np.float64) - expected)
    return float(difference.max()) if np.isfinite(difference).all() else float("inf")


def open_inference_engine(
    model: nn.Layer,
    model_name: str,
    weights: str,
    how: str,
    amp: Optional[str] = None,
    cache_dir: Optional[str] = None,
    threads: Optional[int] = None,
    note: Note = _stderr_note,
) -> Tuple[ExportedModel, str]:
    """Paddle Inference (oneDNN; bf16 with ``amp="bf16"``) over ``model``, through the cache.

    ``model`` holds ``weights`` (loaded as ``how``). Returns (the predictor, what runs and
    where it came from). Raises InferenceError when even a freshly written entry does not
    agree with the dynamic graph on the probe, CacheEntryError when the cache cannot be used.
    """
    if amp not in (None, "bf16"):
        raise InferenceError(f"--amp {amp}: Paddle Inference on the CPU has bf16 only")
    root = os.path.abspath(cache_dir or default_cache_dir())
    max_bytes = cache_max_bytes()
    weights_sha = sha256_file(weights)
    expected = {"model": model_name, "weights_sha256": weights_sha, "code_hash": program_code_hash()}
    key = entry_key(model_name, weights_sha, expected["code_hash"])
    folder = os.path.join(root, key)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as error:
        raise CacheEntryError(f"engine cache {root}: cannot create ({error.strerror})") from None
    start = time.perf_counter()
    state = "hit"
    if os.path.lexists(folder):
        try:
            verify_entry(folder, expected)
        except CacheEntryError as error:
            note(f"note: engine cache entry {folder}: {error}; rebuilding it")
            _remove(folder)
            state = "rebuilt"
    else:
        state = "miss"
    for attempt in range(2):
        if state != "hit":
            build_entry(model, model_name, weights, how, folder, expected)
        config = read_deploy_config(folder, verify=False)  # verified above / just written
        exact: Optional[ExportedModel] = None
        try:
            # checked=False: no load-time run of its own; probe_difference below is the probe
            # (output shape, finiteness and agreement with the dynamic graph), one run, not two.
            exact = DeployedModel(folder, "cpu", "onednn", threads, config, checked=False)
            difference = probe_difference(exact, model)
            problem = f"probe differs from the dynamic graph by {difference:.3g} > {PROBE_TOLERANCE:g}"
        except InferenceError as error:
            difference = float("inf")
            problem = "Paddle Inference cannot run it: " + str(error).replace(folder + ": ", "")[:200]
        if exact is not None and difference <= PROBE_TOLERANCE:
            break
        if state != "hit" or attempt:
            raise InferenceError(
                f"the program exported from {weights} failed its check ({problem}); use --engine dygraph"
            )
        note(f"note: engine cache entry {folder}: {problem}; rebuilding it")
        _remove(folder)
        state = "rebuilt"
    assert exact is not None
    deployed = exact if amp is None else DeployedModel(folder, "cpu", "onednn-bf16", threads, config)
    os.utime(os.path.join(folder, MANIFEST_FILE))  # least recently used goes first
    for name in evict(root, max_bytes, keep=(key,)):
        note(f"note: engine cache: removed the least recently used entry {name} (bound {max_bytes >> 20} MB)")
    if folder_bytes(folder) > max_bytes:
        # The predictors have read the files: the entry can go, keeping the cache within its bound.
        _remove(folder)
    seconds = time.perf_counter() - start
    precision = "bf16" if amp else "float32"
    return deployed, (
        f"Paddle Inference oneDNN {precision} (engine cache {state}, {seconds:.1f}s: {folder};"
        f" probe vs dynamic graph max |diff| {difference:.2g})"
    )

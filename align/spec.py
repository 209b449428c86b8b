"""What a user hands ``python -m align.forward --torch SPEC --paddle SPEC ...``, read and checked.

- SPEC ``path/to/file.py:factory`` or ``pkg.module:factory``: the user's OWN code, run by design
  (a zero-argument callable returning the model, or ``(output, target) -> loss``, or
  ``model -> optimizer``).
- INPUTS ``2x3x64x64`` (seeded standard normal) or a ``.npy`` file; TARGETS ``2x64x64:0:10``
  (seeded int64 labels in [0, 10)) or a ``.npy`` file; ``MAP.json`` (torch name -> Paddle name).
  Files are untrusted: read without executing anything (``allow_pickle=False``), their size and
  the array sizes they claim capped before anything is allocated.

Every problem raises ``AlignInputError`` with one line naming the file or option.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from .inputs import AlignInputError

MAX_ELEMENTS = 1 << 27  # 134M elements: 1 GiB in float64, per input or target array
MAX_NPY_BYTES = 8 * MAX_ELEMENTS + 4096
MAX_MAP_BYTES = 1 << 20  # a MAP.json of a huge model is ~100 kB
MAX_MAP_PAIRS = 100_000
SHAPE = re.compile(r"^\d+(x\d+)*$")
TARGETS = re.compile(r"^(\d+(?:x\d+)*):(-?\d+):(-?\d+)$")


def load_spec(spec: str, option: str) -> Callable[..., Any]:
    """The callable named by ``spec`` (``file.py:name`` or ``pkg.module:name``); importing it runs
    the user's code (that is what a SPEC is for)."""
    where, sep, attribute = spec.rpartition(":")
    if not sep or not where or not attribute.isidentifier():
        raise AlignInputError(f"{option} {spec!r}: expected path/to/file.py:factory or pkg.module:factory")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where)
            if not path.is_file():
                raise AlignInputError(f"{where}: no such file ({option})")
            # The file's folder goes on sys.path so that it can import its neighbours.
            folder = str(path.resolve().parent)
            if folder not in sys.path:
                sys.path.insert(0, folder)
            name = f"_align_user_{path.stem}_{abs(hash(str(path.resolve()))):x}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            if module_spec is None or module_spec.loader is None:
                raise AlignInputError(f"{where}: not a Python file ({option})")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)  # the one dynamic import: the user's module
    except AlignInputError:
        raise
    except BaseException as exc:  # the user's code: any failure is their input's problem
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AlignInputError(f"{where}: importing it failed: {_one_line(exc)} ({option})") from None
    target = getattr(module, attribute, None)
    if target is None:
        raise AlignInputError(f"{where}: has no {attribute!r} ({option})")
    if not callable(target):
        raise AlignInputError(f"{where}:{attribute} is not callable ({option})")
    return target


def call_spec(spec: str, option: str, *args: Any) -> Any:
    """``load_spec(spec)(*args)``; what it raises becomes one ``AlignInputError`` line."""
    factory = load_spec(spec, option)
    try:
        return factory(*args)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise AlignInputError(f"{spec}: calling it failed: {_one_line(exc)} ({option})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _shape(text: str, option: str) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in text.split("x"))
    if any(s < 1 for s in shape):
        raise AlignInputError(f"{option} {text!r}: every dimension must be at least 1")
    if math.prod(shape) > MAX_ELEMENTS:
        raise AlignInputError(f"{option} {text!r}: more than {MAX_ELEMENTS} elements")
    return shape


def read_npy(path: str, option: str) -> np.ndarray:
    """A numeric array from an untrusted ``.npy`` file: no pickles, size checked from the header
    before the data is read."""
    p = Path(path)
    if not p.is_file():
        raise AlignInputError(f"{path}: no such file ({option})")
    if p.stat().st_size > MAX_NPY_BYTES:
        raise AlignInputError(f"{path}: larger than {MAX_NPY_BYTES} bytes ({option})")
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise AlignInputError(f"{path}: unsupported .npy format version {version} ({option})")
            shape, _, dtype = readers[version](f, max_header_size=10000)
            if math.prod(shape) > MAX_ELEMENTS:
                raise AlignInputError(
                    f"{path}: claims {math.prod(shape)} elements, more than {MAX_ELEMENTS} ({option})"
                )
            if dtype.hasobject or dtype.kind not in "biuf":
                raise AlignInputError(f"{path}: expected a numeric array, got dtype {dtype} ({option})")
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except AlignInputError:
        raise
    except (OSError, ValueError, EOFError, TypeError, SyntaxError) as exc:
        raise AlignInputError(f"{path}: not a readable .npy array ({_one_line(exc)}) ({option})") from None
    return array


def read_inputs(text: str, dtype: str, seed: int) -> np.ndarray:
    """INPUTS: a shape (seeded standard normal in ``dtype``) or a ``.npy`` file (floats become
    ``dtype``, integers stay int64)."""
    if SHAPE.match(text):
        shape = _shape(text, "--inputs")
        return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if not text.endswith(".npy"):
        raise AlignInputError(f"--inputs {text!r}: expected a shape such as 2x3x64x64 or a .npy file")
    array = read_npy(text, "--inputs")
    if array.dtype.kind in "iu":  # token ids, indices: stay integers
        return array.astype(np.int64)
    if array.dtype.kind != "f":
        raise AlignInputError(f"{text}: expected a float or integer array, got {array.dtype} (--inputs)")
    if not np.isfinite(array).all():
        raise AlignInputError(f"{text}: the array holds NaN or inf (--inputs)")
    return array.astype(dtype)


def read_targets(text: str, dtype: str, seed: int) -> np.ndarray:
    """TARGETS: ``SHAPE:LOW:HIGH`` (seeded int64 labels in [LOW, HIGH)) or a ``.npy`` file
    (integers stay int64, floats become ``dtype``)."""
    match = TARGETS.match(text)
    if match:
        shape = _shape(match.group(1), "--targets")
        low, high = int(match.group(2)), int(match.group(3))
        if high <= low:
            raise AlignInputError(f"--targets {text!r}: HIGH must exceed LOW")
        return np.random.default_rng(seed + 1).integers(low, high, shape, dtype=np.int64)
    if not text.endswith(".npy"):
        raise AlignInputError(f"--targets {text!r}: expected SHAPE:LOW:HIGH such as 2x64x64:0:10 or a .npy file")
    array = read_npy(text, "--targets")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise AlignInputError(f"{text}: the array holds NaN or inf (--targets)")
        return array.astype(dtype)
    return array.astype(np.int64)


def read_pair_map(path: str) -> Dict[str, str]:
    """MAP.json: ``{"torch name": "paddle name", ...}`` or ``[{"torch": ..., "paddle": ...}, ...]``
    (the ``pairing`` list of a diff.json works as it is)."""
    p = Path(path)
    if not p.is_file():
        raise AlignInputError(f"{path}: no such file (--pairing)")
    if p.stat().st_size > MAX_MAP_BYTES:
        raise AlignInputError(f"{path}: larger than {MAX_MAP_BYTES} bytes (--pairing)")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise AlignInputError(f"{path}: not valid JSON ({_one_line(exc)}) (--pairing)") from None
    pairs: List[Tuple[Any, Any]]
    if isinstance(data, dict):
        pairs = list(data.items())
    elif isinstance(data, list) and all(isinstance(d, dict) and set(d) >= {"torch", "paddle"} for d in data):
        pairs = [(d["torch"], d["paddle"]) for d in data]
    else:
        raise AlignInputError(
            f'{path}: expected {{"torch name": "paddle name"}} or [{{"torch", "paddle"}}] (--pairing)'
        )
    if len(pairs) > MAX_MAP_PAIRS:
        raise AlignInputError(f"{path}: more than {MAX_MAP_PAIRS} pairs (--pairing)")
    for t, p_name in pairs:
        if not isinstance(t, str) or not isinstance(p_name, str):
            raise AlignInputError(f"{path}: every pair must map a name to a name, got {t!r}: {p_name!r} (--pairing)")
    return dict(pairs)


def read_weights(path: str, option: str, framework: str) -> "Dict[str, np.ndarray]":
    """A state dict from an untrusted checkpoint (.pth/.pt/.bin/.pdparams) through convert's
    safe reader (nothing executed, sizes bounded), refused unless it is ``framework``'s file
    (a torch file's Linear weights would go into a Paddle model untransposed)."""
    import convert

    if not Path(path).is_file():
        raise AlignInputError(f"{path}: no such file ({option})")
    try:
        loaded = convert.read_checkpoint(path)
    except convert.CheckpointError as exc:
        raise AlignInputError(f"{exc.with_path(path).headline()} ({option})") from None
    if loaded.framework != framework:
        raise AlignInputError(f"{path}: a {loaded.framework} checkpoint, {option} needs a {framework} one ({option})")
    return dict(loaded.state)

"""One ``pytorch2paddle`` conversion (trace mode, feedback off, network refused), and loading
and running the program it generates."""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import linecache
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import INSTALL_MESSAGE, x2paddle_available
from .guard import _captured_output, _skip_static_export, _trace_without_check, network_guard

if TYPE_CHECKING:  # heavy imports stay lazy
    import paddle
    import torch

CODE_FILE = "x2paddle_code.py"
PARAMS_FILE = "model.pdparams"
LOG_FILE = "x2paddle.log"
FINGERPRINT_FILE = "fingerprint.sha256"
WARNINGS_FILE = "trace_warnings.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


class X2PaddleUnavailable(RuntimeError):
    """X2Paddle (or one of the packages it imports) is not installed."""


def installed_x2paddle_version() -> Optional[str]:
    """The installed x2paddle version, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("x2paddle")
    except PackageNotFoundError:
        return None


def _require_x2paddle() -> None:
    if not x2paddle_available():
        raise X2PaddleUnavailable(INSTALL_MESSAGE)


def _import_pytorch2paddle() -> Tuple[Callable[..., Any], type]:
    """``x2paddle.convert.pytorch2paddle`` and ``PaddleGraph``, imported without letting
    ``x2paddle.convert``'s import-time ``logging.basicConfig`` touch the root logger."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from x2paddle.convert import pytorch2paddle
        from x2paddle.core.program import PaddleGraph
    except ImportError as exc:
        raise X2PaddleUnavailable(f"{INSTALL_MESSAGE}; import failed: {exc}") from exc
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return pytorch2paddle, PaddleGraph


@dataclass
class Conversion:
    """The outcome of one ``pytorch2paddle`` run."""

    target: str
    directory: Optional[Path]  # holds x2paddle_code.py, model.pdparams, x2paddle.log when ok
    seconds: float  # wall clock
    error: Optional[str] = None
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable on a busy machine
    trace_warnings: List[Dict[str, Any]] = field(default_factory=list)
    network_attempts: List[str] = field(default_factory=list)
    log_path: Optional[Path] = None
    reused: bool = False  # an identical earlier conversion was found in the folder

    @property
    def ok(self) -> bool:
        return self.error is None


def _short_path(filename: str) -> str:
    path = Path(filename)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        parts = path.parts
        for anchor in ("torch", "x2paddle", "paddle"):
            if anchor in parts:
                return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
        return path.name


def _trace_warnings(caught: Sequence[warnings.WarningMessage]) -> List[Dict[str, Any]]:
    """torch.jit's TracerWarnings (Python values frozen into the trace), one entry per site."""
    sites: Dict[str, Dict[str, Any]] = {}
    for w in caught:
        if w.category.__name__ != "TracerWarning":
            continue
        site = f"{_short_path(w.filename)}:{w.lineno}"
        message = str(w.message).split(". ")[0].rstrip(".")
        source = linecache.getline(w.filename, w.lineno).strip()
        entry = sites.setdefault(site, {"site": site, "message": message, "source": source, "count": 0})
        entry["count"] += 1
    return list(sites.values())


def _describe_failure(exc: BaseException, log_text: str) -> str:
    """One line: which op X2Paddle lacks, or where inside X2Paddle the mapping broke."""
    unsupported = re.findall(r"^=+ (\S+::\S+) =+$", log_text, flags=re.MULTILINE)
    if unsupported:
        return (
            f"X2Paddle {installed_x2paddle_version()} has no mapping for "
            f"{', '.join(sorted(set(unsupported)))} (Exception: {exc})"
        )
    if isinstance(exc, SystemExit):
        lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
        tail = lines[-1] if lines else "no message"
        return f"X2Paddle called exit({exc.code}) after: {tail}"
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "x2paddle" in Path(f.filename).parts]
    if frames:
        where = frames[-1]
        op = ""
        if where.name.startswith(("aten_", "prim_")):
            kind, _, rest = where.name.partition("_")
            op = f" while mapping {kind}::{rest}"
        return f"{message} at {_short_path(where.filename)}:{where.lineno} ({where.name}){op}"
    return message


def conversion_fingerprint(module: "torch.nn.Module", examples: Sequence["torch.Tensor"], target: str) -> str:
    """SHA-256 over everything a trace depends on: the module's class and state (every
    parameter and buffer), the example inputs (shape, dtype, values), the torch_ref sources,
    this package's sources, and the torch and x2paddle versions."""
    import hashlib

    import torch

    meta = {"target": target, "class": f"{type(module).__module__}.{type(module).__qualname__}"}
    meta.update(torch=torch.__version__, x2paddle=installed_x2paddle_version())
    h = hashlib.sha256(json.dumps(meta).encode())
    for key, value in module.state_dict().items():
        h.update(f"{key}:{value.dtype}:{list(value.shape)}".encode())
        h.update(np.ascontiguousarray(value.detach().cpu().numpy()).reshape(-1).view(np.uint8))
    for example in examples:
        h.update(f"{example.dtype}:{list(example.shape)}".encode())
        h.update(np.ascontiguousarray(example.detach().cpu().numpy()).reshape(-1).view(np.uint8))
    for source in [*sorted((REPO_ROOT / "torch_ref").glob("*.py")), *sorted(Path(__file__).parent.glob("*.py"))]:
        h.update(source.read_bytes())
    return h.hexdigest()


def convert_with_x2paddle(
    module: "torch.nn.Module",
    examples: Sequence["torch.Tensor"],
    target_dir: Path,
    target: Optional[str] = None,
    reuse: bool = False,
) -> Conversion:
    """Run ``pytorch2paddle`` (trace mode, feedback off, network refused) on ``module``; an
    X2Paddle failure is returned in the ``Conversion``, never raised. ``target_dir`` appears only
    complete (code, params, log, fingerprint; renamed from a temporary sibling); on failure it is
    removed and ``<target_dir>.failed.log`` holds the error and X2Paddle's output. ``reuse``: take
    a ``target_dir`` whose fingerprint matches as is (off by default: a torch_ref method
    monkeypatched at run time is not in the fingerprint).
    """
    _require_x2paddle()
    from unittest import mock

    import torch

    target_dir = Path(target_dir)
    target = target or target_dir.name
    fingerprint = conversion_fingerprint(module, examples, target)
    stamp = target_dir / FINGERPRINT_FILE
    if (
        reuse
        and stamp.is_file()
        and stamp.read_text(encoding="utf-8").strip() == fingerprint
        and all((target_dir / f).is_file() for f in (CODE_FILE, PARAMS_FILE, WARNINGS_FILE))
    ):
        warned = json.loads((target_dir / WARNINGS_FILE).read_text(encoding="utf-8"))
        return Conversion(target, target_dir, 0.0, trace_warnings=warned, log_path=target_dir / LOG_FILE, reused=True)
    pytorch2paddle, paddle_graph = _import_pytorch2paddle()
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    failed_log = target_dir.parent / f"{target_dir.name}.failed.log"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    log = io.StringIO()
    saved_path = list(sys.path)
    error: Optional[str] = None
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with (
            network_guard() as attempts,
            _captured_output(log),
            warnings.catch_warnings(record=True) as caught,
            mock.patch.object(paddle_graph, "dygraph2static", _skip_static_export),
            mock.patch.object(torch.jit, "trace", _trace_without_check(torch.jit.trace)),
        ):
            warnings.simplefilter("always")
            try:
                pytorch2paddle(
                    module,
                    save_dir=str(tmp),
                    jit_type="trace",
                    input_examples=list(examples),
                    enable_code_optim=False,
                    disable_feedback=True,
                )
            except (Exception, SystemExit) as exc:  # SystemExit: X2Paddle's tracer calls exit(0)
                error = _describe_failure(exc, log.getvalue())
        seconds = time.perf_counter() - start
        if error is None and not ((tmp / CODE_FILE).is_file() and (tmp / PARAMS_FILE).is_file()):
            error = f"X2Paddle returned without writing {CODE_FILE} and {PARAMS_FILE}"
        result = Conversion(
            target, None, seconds, error, time.process_time() - cpu_start, _trace_warnings(caught), list(attempts)
        )
        if error is None:
            (tmp / LOG_FILE).write_text(log.getvalue(), encoding="utf-8")
            (tmp / WARNINGS_FILE).write_text(json.dumps(result.trace_warnings, indent=1), encoding="utf-8")
            (tmp / FINGERPRINT_FILE).write_text(fingerprint + "\n", encoding="utf-8")  # written last
            if target_dir.exists():
                shutil.rmtree(target_dir)
            os.replace(tmp, target_dir)
            failed_log.unlink(missing_ok=True)
            result.directory, result.log_path = target_dir, target_dir / LOG_FILE
        else:
            if target_dir.exists():  # a stale success from an earlier run must not stay behind
                shutil.rmtree(target_dir)
            (tmp / LOG_FILE).write_text(f"error: {error}\n\n{log.getvalue()}", encoding="utf-8")
            os.replace(tmp / LOG_FILE, failed_log)
            result.log_path = failed_log
        return result
    finally:
        sys.path[:] = saved_path
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_generated_program(directory: Path) -> "paddle.nn.Layer":
    """The Paddle layer X2Paddle generated in ``directory``, with its parameters, in eval mode,
    imported under a fresh module name never registered in ``sys.modules`` (nothing leaks)."""
    import paddle

    from convert import load_state_dict_file

    directory = Path(directory)
    name = f"_x2paddle_generated_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, directory / CODE_FILE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{directory / CODE_FILE}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    # Executing this file is fine: X2Paddle wrote it a moment ago from our own torch_ref trace.
    spec.loader.exec_module(module)
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, paddle.nn.Layer) and obj.__module__ == name
    ]
    if len(classes) != 1:
        raise RuntimeError(f"{directory / CODE_FILE}: expected one generated Layer, found {len(classes)}")
    # LazyGuard: skip the random initialisation of ~25M parameters that set_state_dict
    # overwrites anyway (about 10x faster); a parameter the file lacks is reported below.
    with paddle.LazyGuard():
        layer = classes[0]()
    layer.eval()
    if not layer.state_dict():
        return layer  # e.g. a lone upsample: X2Paddle saved an empty state dict
    # paddle.load would be acceptable here (we generated this file ourselves), but the project's
    # numpy-only loader is faster and never unpickles anything but arrays.
    state = load_state_dict_file(directory / PARAMS_FILE)
    missing, unexpected = layer.set_state_dict(state)
    if missing or unexpected:
        raise RuntimeError(f"{directory / PARAMS_FILE}: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return layer


def run_generated_program(layer: "paddle.nn.Layer", inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Run a generated program; its inputs are named x0..x{n-1} (X2Paddle sorts them by name,
    so x10 would come before x2: pass them by name)."""
    import paddle

    names = list(inspect.signature(layer.forward).parameters)
    expected = [f"x{i}" for i in range(len(inputs))]
    if sorted(names) != sorted(expected):
        raise RuntimeError(f"generated forward takes {names}, expected {expected}")
    with paddle.no_grad():
        out = layer(**{f"x{i}": paddle.to_tensor(a) for i, a in enumerate(inputs)})
    return [t.numpy() for t in flatten(out)]


def flatten(obj: Any) -> List[Any]:
    """The leaves of nested lists and tuples, in order."""
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flatten(item)]
    return [obj]

"""X2Paddle as a third opinion on the Paddle port.

X2Paddle's ``pytorch2paddle`` traces ``torch_ref`` with ``torch.jit.trace`` and writes an
independent, automatically generated Paddle program (``x2paddle_code.py`` + ``model.pdparams``).
Comparing three ways (torch_ref, paddle_impl, the generated program) tells WHICH side is wrong
when torch_ref and paddle_impl disagree: if the generated program agrees with torch_ref and not
with paddle_impl, the hand port has the bug; if torch_ref and paddle_impl agree and the generated
program differs from both, X2Paddle mistranslated something.

Usage (standalone; ``python -m align.forward --against x2paddle`` calls ``compare_with_x2paddle``)::

    python -m align.x2paddle_check --model farseg [--size 64] [--batch 1] [--seed 0] [--out DIR]

What is converted, always in float32 (X2Paddle's tracer and generated code are float32):

* the eval forward as ONE program returning the logits and the probabilities (``model.logits(x)``
  then ``model(x)`` answered with those logits; FarSeg: logits, FactSeg: both heads' logits);
* first, and alone, the code after the logits (softmax / FactSeg's log-space fusion) on a
  parameter-free copy of the model: where it does not convert, the whole eval forward (whose
  trace contains it) is not attempted, and the logits path is converted alone;
* where the logits path does not convert, its sub-parts (encoder, FPN(s), relation, decoder(s),
  heads, upsampling), each fed the inputs torch_ref gave it;
* training probes (optional): the training-mode forward after the logits (loss, FarSeg's step
  counter), the loss's own pieces, and one training-mode BatchNorm stage.

Whatever X2Paddle cannot convert is reported in ``untraceable`` with the error observed in this
run. X2Paddle's usage report ("feedback", an HTTP request to paddlepaddle.org.cn from
``x2paddle.utils.ConverterCheck``) is switched off with ``disable_feedback=True``, and every
conversion runs inside ``network_guard()``, which refuses (and records) any socket connection or
name lookup, so a machine without network can neither hang nor leak anything.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import errno
import importlib.util
import inspect
import io
import itertools
import json
import linecache
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # heavy imports stay lazy: ``--help`` and ``x2paddle_available()`` are instant
    import paddle
    import torch

X2PADDLE_VERSION = "1.6.0"
INSTALL_MESSAGE = ('X2Paddle is an optional extra: install it with  pip install -e ".[x2paddle]"  '
                   f"(x2paddle=={X2PADDLE_VERSION} plus six and requests, which X2Paddle imports)")

CODE_FILE = "x2paddle_code.py"
PARAMS_FILE = "model.pdparams"
LOG_FILE = "x2paddle.log"
FINGERPRINT_FILE = "fingerprint.sha256"
WARNINGS_FILE = "trace_warnings.json"
REPO_ROOT = Path(__file__).resolve().parents[1]

PAIRS = ("torch_ref vs x2paddle", "paddle_impl vs x2paddle", "torch_ref vs paddle_impl")


class X2PaddleUnavailable(RuntimeError):
    """X2Paddle (or one of the packages it imports) is not installed."""


# ----------------------------------------------------------------------------------------------
# Availability, isolation of X2Paddle's side effects
# ----------------------------------------------------------------------------------------------

def x2paddle_available() -> bool:
    """True when x2paddle and the packages it imports unconditionally (six, requests) are
    installed. Looks them up without importing them (importing x2paddle imports Paddle)."""
    return all(importlib.util.find_spec(name) is not None for name in ("x2paddle", "six", "requests"))


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


@contextlib.contextmanager
def network_guard() -> Iterator[List[str]]:
    """Refuse every internet socket connection and name lookup inside the block.

    Yields the list of refused attempts (empty when nothing tried the network). A refused call
    raises ``OSError(ENETUNREACH)`` at once, so code that swallows errors (X2Paddle's usage
    report does) returns immediately instead of waiting for a timeout.
    """
    attempts: List[str] = []
    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,
             socket.getaddrinfo)

    def refuse(what: str) -> None:
        attempts.append(what)
        raise OSError(errno.ENETUNREACH, f"network access refused by align.x2paddle_check ({what})")

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(f"connect{address!r}")
        return saved[0](sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(f"connect_ex{address!r}")
        return saved[1](sock, address)

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"create_connection{address!r}")

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"getaddrinfo({host!r}, {port!r})")

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    socket.create_connection, socket.getaddrinfo = create_connection, getaddrinfo  # type: ignore[assignment]
    try:
        yield attempts
    finally:
        (socket.socket.connect, socket.socket.connect_ex, socket.create_connection,  # type: ignore[method-assign]
         socket.getaddrinfo) = saved


@contextlib.contextmanager
def _captured_output(log: io.StringIO) -> Iterator[None]:
    """X2Paddle prints and logs a lot (and ends with a survey link); keep it in ``log``."""
    logger = logging.getLogger("x2paddle")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _trace_without_check(trace: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.jit.trace`` with ``check_trace=False`` for X2Paddle's tracer.

    The check re-runs the model twice and traces it again to compare graphs: about two thirds
    of a FarSeg conversion. It adds nothing here: every generated program is run and its outputs
    compared with torch_ref's, which is the stronger check.
    """
    def trace_once(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("check_trace", False)
        return trace(*args, **kwargs)
    return trace_once


def _skip_static_export(self: Any, *args: Any, **kwargs: Any) -> None:
    """Stands in for ``PaddleGraph.dygraph2static`` during a conversion.

    X2Paddle's ``gen_model`` ends by inserting the output folder into ``sys.path``, importing
    the generated code as the module ``x2paddle_code`` and exporting a static inference model
    with ``paddle.jit``. This check does not use that export; skipping it roughly halves the
    conversion time, leaves ``sys.path``/``sys.modules`` alone, and avoids the ``exit(0)`` the
    export calls on some errors (which would end the caller's process with status 0).
    """


# ----------------------------------------------------------------------------------------------
# One conversion
# ----------------------------------------------------------------------------------------------

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
                return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor):])
        return path.name


def _trace_warnings(caught: Sequence[warnings.WarningMessage]) -> List[Dict[str, Any]]:
    """torch.jit's TracerWarnings (Python values frozen into the trace), one entry per site."""
    sites: Dict[str, Dict[str, Any]] = {}
    for w in caught:
        if w.category.__name__ != "TracerWarning":
            continue
        site = f"{_short_path(w.filename)}:{w.lineno}"
        entry = sites.setdefault(site, {"site": site, "message": str(w.message).split(". ")[0].rstrip("."),
                                        "source": linecache.getline(w.filename, w.lineno).strip(),
                                        "count": 0})
        entry["count"] += 1
    return list(sites.values())


def _describe_failure(exc: BaseException, log_text: str) -> str:
    """One line: which op X2Paddle lacks, or where inside X2Paddle the mapping broke."""
    unsupported = re.findall(r"^=+ (\S+::\S+) =+$", log_text, flags=re.MULTILINE)
    if unsupported:
        return (f"X2Paddle {installed_x2paddle_version()} has no mapping for "
                f"{', '.join(sorted(set(unsupported)))} (Exception: {exc})")
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
    this file, and the torch and x2paddle versions."""
    import hashlib

    import torch

    h = hashlib.sha256()
    h.update(json.dumps({"target": target, "class": f"{type(module).__module__}.{type(module).__qualname__}",
                         "torch": torch.__version__, "x2paddle": installed_x2paddle_version()}).encode())
    for key, value in module.state_dict().items():
        h.update(f"{key}:{value.dtype}:{list(value.shape)}".encode())
        h.update(np.ascontiguousarray(value.detach().cpu().numpy()).reshape(-1).view(np.uint8))
    for example in examples:
        h.update(f"{example.dtype}:{list(example.shape)}".encode())
        h.update(np.ascontiguousarray(example.detach().cpu().numpy()).reshape(-1).view(np.uint8))
    for source in [*sorted((REPO_ROOT / "torch_ref").glob("*.py")), Path(__file__)]:
        h.update(source.read_bytes())
    return h.hexdigest()


def convert_with_x2paddle(module: "torch.nn.Module", examples: Sequence["torch.Tensor"],
                          target_dir: Path, target: Optional[str] = None, reuse: bool = False) -> Conversion:
    """Run ``pytorch2paddle`` (trace mode, feedback off, network refused) on ``module``.

    Never raises for an X2Paddle failure: the returned ``Conversion`` carries the error. On
    success ``target_dir`` holds the generated code, params, X2Paddle's log and the
    fingerprint of what was converted; it appears only complete (written to a temporary
    sibling, then renamed). With ``reuse``, a ``target_dir`` whose fingerprint matches is used
    as is (same module state, inputs, sources and versions give the same program). Off by
    default: a torch_ref method monkeypatched at run time is not in the fingerprint. On failure
    ``target_dir`` is removed and ``<target_dir>.failed.log`` holds the error and X2Paddle's
    output.
    """
    _require_x2paddle()
    from unittest import mock

    import torch

    target_dir = Path(target_dir)
    target = target or target_dir.name
    fingerprint = conversion_fingerprint(module, examples, target)
    stamp = target_dir / FINGERPRINT_FILE
    if (reuse and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == fingerprint
            and all((target_dir / f).is_file() for f in (CODE_FILE, PARAMS_FILE, WARNINGS_FILE))):
        warned = json.loads((target_dir / WARNINGS_FILE).read_text(encoding="utf-8"))
        return Conversion(target, target_dir, 0.0, trace_warnings=warned, log_path=target_dir / LOG_FILE,
                          reused=True)
    pytorch2paddle, paddle_graph = _import_pytorch2paddle()
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    failed_log = target_dir.parent / f"{target_dir.name}.failed.log"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    log = io.StringIO()
    saved_path = list(sys.path)
    error: Optional[str] = None
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        with network_guard() as attempts, _captured_output(log), \
                warnings.catch_warnings(record=True) as caught, \
                mock.patch.object(paddle_graph, "dygraph2static", _skip_static_export), \
                mock.patch.object(torch.jit, "trace", _trace_without_check(torch.jit.trace)):
            warnings.simplefilter("always")
            try:
                pytorch2paddle(module, save_dir=str(tmp), jit_type="trace",
                               input_examples=list(examples), enable_code_optim=False,
                               disable_feedback=True)
            except (Exception, SystemExit) as exc:  # SystemExit: X2Paddle's tracer calls exit(0)
                error = _describe_failure(exc, log.getvalue())
        seconds = time.perf_counter() - start
        if error is None and not ((tmp / CODE_FILE).is_file() and (tmp / PARAMS_FILE).is_file()):
            error = f"X2Paddle returned without writing {CODE_FILE} and {PARAMS_FILE}"
        result = Conversion(target, None, seconds, error, time.process_time() - cpu_start,
                            _trace_warnings(caught), list(attempts))
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
    """The Paddle layer X2Paddle generated in ``directory``, with its parameters, in eval mode.

    The code is imported under a fresh private module name that is never registered in
    ``sys.modules`` (nothing leaks between calls; two programs never shadow each other).
    """
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
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, paddle.nn.Layer) and obj.__module__ == name]
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
        raise RuntimeError(f"{directory / PARAMS_FILE}: missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")
    layer.eval()
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
    return [t.numpy() for t in _flatten(out)]


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

def compare_arrays(a: np.ndarray, b: np.ndarray, atol_mean: float, rtol_max: float,
                   scale_atol: bool = False) -> Dict[str, Any]:
    """max_abs, mean_abs and max_rel of ``a - b``; passed when mean_abs <= atol_mean and
    max_rel <= rtol_max. With ``scale_atol`` the mean threshold is atol_mean * max(1, max |value|)
    (for intermediate features, whose magnitude is arbitrary).

    max_rel is the largest absolute difference divided by the largest magnitude of either
    array (a per-element ratio explodes where logits cross zero). Shapes must match exactly
    (nothing is broadcast or transposed); a non-finite value anywhere fails.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    row: Dict[str, Any] = {"shape": list(a.shape)}
    if a.shape != b.shape:
        row.update(shape=f"{list(a.shape)} vs {list(b.shape)}", max_abs=float("inf"),
                   mean_abs=float("inf"), max_rel=float("inf"), passed=False)
        return row
    diff = np.abs(a - b)
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-30)
    max_abs = float(diff.max(initial=0.0))
    mean_abs = float(diff.mean()) if diff.size else 0.0
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    atol = atol_mean * max(1.0, scale) if scale_atol else atol_mean
    row.update(max_abs=max_abs, mean_abs=mean_abs, max_rel=max_abs / scale,
               passed=finite and mean_abs <= atol and max_abs / scale <= rtol_max)
    return row


def _three_way_rows(output: str, torch_out: np.ndarray, paddle_out: np.ndarray,
                    x2p_out: Optional[np.ndarray], atol_mean: float, rtol_max: float,
                    note: Optional[str] = None, scale_atol: bool = False) -> List[Dict[str, Any]]:
    pairs = [("torch_ref vs paddle_impl", torch_out, paddle_out)]
    if x2p_out is not None:
        pairs = [("torch_ref vs x2paddle", torch_out, x2p_out),
                 ("paddle_impl vs x2paddle", paddle_out, x2p_out)] + pairs
    rows = []
    for pair, a, b in pairs:
        row = {"pair": pair, "output": output, **compare_arrays(a, b, atol_mean, rtol_max, scale_atol)}
        if note and "x2paddle" in pair:
            row["note"] = note
        rows.append(row)
    return rows


def verdicts(rows: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Per output: which side the three-way comparison points at."""
    by_output: Dict[str, Dict[str, bool]] = {}
    for row in rows:
        by_output.setdefault(row["output"], {})[row["pair"]] = bool(row["passed"])
    out = {}
    for output, ok in by_output.items():
        tx, px, tp = (ok.get(p) for p in PAIRS)
        if tx is None or px is None:
            out[output] = ("no X2Paddle program: torch_ref and paddle_impl agree" if tp
                           else "no X2Paddle program: torch_ref and paddle_impl differ")
        elif tx and px and tp:
            out[output] = "all agree"
        elif tx and not px and not tp:
            out[output] = "paddle_impl differs (X2Paddle sides with torch_ref)"
        elif tp and not tx and not px:
            out[output] = "x2paddle differs (a conversion problem, not a porting bug)"
        elif px and not tx and not tp:
            # paddle_impl equals the program generated from torch_ref's own graph, so the port is
            # structurally right; what both Paddle programs share is Paddle's kernels.
            out[output] = ("both Paddle programs agree and differ from torch_ref: a kernel/rounding "
                           "difference between the frameworks (or a threshold too tight for float32), "
                           "not a porting bug")
        else:
            out[output] = "inconclusive (more than one side differs, or the tolerance is borderline)"
    return out


# ----------------------------------------------------------------------------------------------
# What to convert, per model
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelPlan:
    logits_outputs: Tuple[str, ...]
    # Fallback when the logits path does not convert: (label, attribute path), in call order.
    parts: Tuple[Tuple[str, str], ...]
    loss_key: str
    tail_description: str
    bn_stage: str  # a conv+BN+ReLU(+upsample) stage used for the training-mode BatchNorm probe
    # Functions of torch_ref.losses / paddle_impl.losses taking per-pixel losses [B,H,W], tried
    # alone when the loss as a whole does not convert.
    loss_pieces: Tuple[str, ...] = ()


PLANS: Dict[str, ModelPlan] = {
    "farseg": ModelPlan(
        logits_outputs=("logits",),
        parts=(("encoder", "en"), ("fpn", "fpn"), ("scene pooling", "gap"), ("relation", "sr"),
               ("decoder", "decoder"), ("classifier", "cls_pred_conv"), ("upsample x4", "upsample4x_op")),
        loss_key="cls_loss",
        tail_description="softmax after the logits",
        bn_stage="decoder.blocks.1.0",
    ),
    "factseg": ModelPlan(
        logits_outputs=("fg_logits", "bi_logits"),
        parts=(("encoder", "resencoder"), ("fg fpn", "fgfpn"), ("bi fpn", "bifpn"),
               ("fg decoder", "fg_decoder"), ("bi decoder", "bi_decoder"), ("fg classifier", "fg_cls"),
               ("bi classifier", "bi_cls"), ("fg upsample x4", "fg_upsample"),
               ("bi upsample x4", "bi_upsample")),
        loss_key="joint_loss",
        tail_description="log-space fusion after the logits (losses.joint_log_probs(...).exp())",
        bn_stage="fg_decoder.blocks.1.0",
        loss_pieces=("small_object_mining",),
    ),
}


def _flatten(obj: Any) -> List[Any]:
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _flatten(item)]
    return [obj]


def _arg_spec(args: Sequence[Any]) -> List[Optional[int]]:
    """None for a tensor argument, n for a list of n tensors (all these modules take)."""
    return [len(a) if isinstance(a, (list, tuple)) else None for a in args]


def _unflatten(flat: Sequence[Any], spec: Sequence[Optional[int]]) -> List[Any]:
    args, i = [], 0
    for n in spec:
        if n is None:
            args.append(flat[i])
            i += 1
        else:
            args.append(list(flat[i:i + n]))
            i += n
    return args


def _getpath(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
    return obj


def forward_on_logits(model: Any, x: Any, logits: Any, *args: Any) -> Any:
    """``model(x, *args)`` with ``model.logits`` shadowed to return ``logits``.

    Works for a torch Module and a Paddle Layer alike. The models' forward calls
    ``self.logits(x)`` once and then computes the probabilities (eval) or the loss (training)
    from them, so this runs exactly the model's own code after the logits, on given logits.
    """
    model.logits = lambda _x: logits  # an instance attribute shadows the method
    try:
        return model(x, *args)
    finally:
        del model.logits


def _husk(model: "torch.nn.Module", training: bool) -> "torch.nn.Module":
    """A shallow copy of ``model`` without sub-modules or parameters, with its own copies of
    the top-level buffers (FarSeg's ``buffer_step``), in the given mode.

    The code after the logits uses no sub-module, and ``torch.jit.trace`` builds a script
    module for every sub-module it holds, used or not: on a husk the trace of the loss costs
    a fraction of a second instead of a full ResNet-50 trace.
    """
    from collections import OrderedDict

    husk = copy.copy(model)  # new __dict__, shared values: replace the containers
    husk._modules = OrderedDict()
    husk._parameters = OrderedDict()
    husk._buffers = OrderedDict((k, None if v is None else v.detach().clone()) for k, v in model._buffers.items())
    husk.training = training
    return husk


def _torch_modules() -> Dict[str, type]:
    """nn.Module wrappers, defined on first use so that importing this file needs no torch."""
    import torch.nn as nn

    class Eval(nn.Module):
        """The eval forward in one trace: (*logits, probabilities).

        ``model.logits(x)``, then ``model(x)`` with its logits call answered by those logits:
        the same computation as ``model(x)``, traced once, returning the logits as well.
        """

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model.logits(x)
            return (*_flatten(logits), forward_on_logits(self.model, x, logits))

    class Logits(nn.Module):
        """forward = model.logits."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.logits(x)

    class AfterLogits(nn.Module):
        """The model's own forward after the logits, on given logits (eval: probabilities;
        training with a label: the loss, and FarSeg's step counter)."""

        def __init__(self, model: nn.Module, loss_key: Optional[str] = None) -> None:
            super().__init__()
            self.model = model
            self.loss_key = loss_key

        def forward(self, *inputs):
            logits = inputs if self.loss_key is None else inputs[:-1]
            given = logits[0] if len(logits) == 1 else tuple(logits)
            if self.loss_key is None:
                return forward_on_logits(self.model, logits[0], given)  # x is unused
            return forward_on_logits(self.model, logits[0], given, {"cls": inputs[-1]})[self.loss_key]

    class Part(nn.Module):
        """A sub-module called with flat tensor inputs, returning a flat tuple."""

        def __init__(self, module: nn.Module, spec: Sequence[Optional[int]]) -> None:
            super().__init__()
            self.module = module
            self.spec = list(spec)

        def forward(self, *flat):
            return tuple(_flatten(self.module(*_unflatten(flat, self.spec))))

    class Function(nn.Module):
        def __init__(self, fn: Callable[..., Any]) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *inputs):
            return self.fn(*inputs)

    return {"Eval": Eval, "Logits": Logits, "AfterLogits": AfterLogits, "Part": Part, "Function": Function}


# ----------------------------------------------------------------------------------------------
# The three-way comparison
# ----------------------------------------------------------------------------------------------

class _Run:
    """State of one compare_with_x2paddle call."""

    def __init__(self, model_name: str, torch_model: Any, paddle_model: Any, x: np.ndarray,
                 out_dir: Path, atol_mean: float, rtol_max: float, seed: int, reuse: bool) -> None:
        import paddle
        import torch

        self.name, self.plan = model_name, PLANS[model_name]
        self.out_dir = out_dir
        self.atol_mean, self.rtol_max, self.seed, self.reuse = atol_mean, rtol_max, seed, reuse
        self.mods = _torch_modules()
        # float32 models on the CPU (X2Paddle traces on the CPU in float32). A caller's model
        # that already is one is used as is (in eval mode, its mode restored by restore());
        # otherwise a float32 copy is made and the caller's model is left untouched.
        self.modes = (torch_model, torch_model.training, paddle_model, paddle_model.training)
        if all(t.dtype == torch.float32 and t.device.type == "cpu"
               for t in itertools.chain(torch_model.parameters(), torch_model.buffers()) if t.is_floating_point()):
            self.torch_model = torch_model.eval()
        else:
            self.torch_model = copy.deepcopy(torch_model).float().cpu().eval()
        if all(t.dtype == paddle.float32 for t in paddle_model.state_dict().values() if t.is_floating_point()):
            self.paddle_model = paddle_model
        else:
            self.paddle_model = copy.deepcopy(paddle_model)
            self.paddle_model.to(dtype="float32")
        self.paddle_model.eval()
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.xt = torch.from_numpy(self.x)
        self.rows: List[Dict[str, Any]] = []
        self.untraceable: List[Dict[str, str]] = []
        self.conversions: List[Conversion] = []
        with torch.no_grad():
            logits = self.torch_model.logits(self.xt)
            self.torch_logits = [t.numpy() for t in _flatten(logits)]
            self.torch_probs = forward_on_logits(self.torch_model, self.xt, logits).numpy()
        with paddle.no_grad():
            px = paddle.to_tensor(self.x)
            logits = self.paddle_model.logits(px)
            self.paddle_logits = [t.numpy() for t in _flatten(logits)]
            self.paddle_probs = forward_on_logits(self.paddle_model, px, logits).numpy()

    def restore(self) -> None:
        """Give the caller's models back in the mode they came in."""
        torch_model, torch_training, paddle_model, paddle_training = self.modes
        torch_model.train(torch_training)
        paddle_model.train() if paddle_training else paddle_model.eval()

    # -- plumbing -----------------------------------------------------------------------------
    def untrace(self, part: str, why: str) -> None:
        self.untraceable.append({"part": part, "why": why})

    def attempt(self, module: Any, examples: Sequence[Any], target: str, part: str,
                context: str = "") -> Optional[Any]:
        """Convert and load; on any X2Paddle-side failure record ``part`` as untraceable and
        return None. Returns the loaded generated layer otherwise."""
        directory = self.out_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", target)
        conv = convert_with_x2paddle(module, examples, directory, target, reuse=self.reuse)
        self.conversions.append(conv)
        if not conv.ok:
            self.untrace(part, (conv.error or "") + (f"; {context}" if context else ""))
            return None
        try:
            return load_generated_program(conv.directory)
        except Exception as exc:  # X2Paddle wrote code that Python or Paddle rejects
            where = ""
            if isinstance(exc, SyntaxError):
                where = f" ({_short_path(exc.filename or '')}:{exc.lineno}: {(exc.text or '').strip()})"
            self.untrace(part, f"X2Paddle wrote a program that does not load: "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}"
                               + (f"; {context}" if context else ""))
            return None

    def execute(self, layer: Any, inputs: Sequence[np.ndarray], part: str,
                expect: int) -> Optional[List[np.ndarray]]:
        try:
            outputs = run_generated_program(layer, inputs)
        except Exception as exc:
            self.untrace(part, f"the generated program fails when run: {type(exc).__name__}: "
                               f"{' '.join(str(exc).split())[:300]}")
            return None
        if len(outputs) != expect:
            self.untrace(part, f"the generated program returns {len(outputs)} outputs, expected {expect}")
            return None
        return outputs

    def add_rows(self, output: str, torch_out: np.ndarray, paddle_out: np.ndarray,
                 x2p_out: Optional[np.ndarray], note: Optional[str] = None, scale_atol: bool = False) -> None:
        self.rows += _three_way_rows(output, torch_out, paddle_out, x2p_out, self.atol_mean,
                                     self.rtol_max, note, scale_atol)

    # -- eval ---------------------------------------------------------------------------------
    def eval_outputs(self) -> None:
        """The eval forward as one program. First the code after the logits alone (on a husk,
        about a second): the whole eval forward's trace contains it, so where it does not
        convert the full trace is skipped. Where the whole does not convert: the logits path
        alone (composed with the after-logits program when both convert), and where that fails
        too, the logits path's sub-parts."""
        n = len(self.torch_logits)
        tail_part = f"eval forward: the {self.plan.tail_description}"
        tail = self.attempt(self.mods["AfterLogits"](_husk(self.torch_model, training=False)),
                            [torch_tensor(a) for a in self.torch_logits], "eval tail", tail_part,
                            "so the whole eval forward, whose trace contains this code, is not attempted; "
                            "the probabilities are compared between torch_ref and paddle_impl only")
        tail_ok = tail is not None and self.execute(tail, self.torch_logits, tail_part, 1) is not None
        if tail_ok:
            part = "eval forward (logits and probabilities, one trace)"
            layer = self.attempt(self.mods["Eval"](self.torch_model), [self.xt], "eval", part,
                                 "converting the logits path alone")
            out = None if layer is None else self.execute(layer, [self.x], part, n + 1)
            if out is not None:
                for name, t, p, g in zip(self.plan.logits_outputs, self.torch_logits, self.paddle_logits, out):
                    self.add_rows(name, t, p, g)
                self.add_rows("probs", self.torch_probs, self.paddle_probs, out[-1])
                return

        part = "logits path (model.logits)"
        layer = self.attempt(self.mods["Logits"](self.torch_model), [self.xt], "logits", part,
                             "falling back to its sub-parts, each fed torch_ref's inputs")
        logits = None if layer is None else self.execute(layer, [self.x], part, n)
        for i, (name, t, p) in enumerate(zip(self.plan.logits_outputs, self.torch_logits, self.paddle_logits)):
            self.add_rows(name, t, p, None if logits is None else logits[i])
        if logits is None:
            self.parts()
        probs = None
        if tail_ok and logits is None:
            self.untrace("eval forward: probabilities", "the code after the logits converts, but the "
                         "logits path does not, so no X2Paddle program computes the probabilities")
        elif tail_ok:
            probs = self.execute(tail, logits, tail_part, 1)
        self.add_rows("probs", self.torch_probs, self.paddle_probs, None if probs is None else probs[0],
                      note=None if probs is None else "X2Paddle logits program, then its after-logits program")

    def parts(self) -> None:
        """Convert each sub-part of the logits path on the inputs torch_ref gave it."""
        import paddle
        import torch

        captured: Dict[str, Tuple[Tuple[Any, ...], Any]] = {}
        handles = []
        for _, path in self.plan.parts:
            def hook(module: Any, args: Tuple[Any, ...], output: Any, path: str = path) -> None:
                captured.setdefault(path, (args, output))
            handles.append(_getpath(self.torch_model, path).register_forward_hook(hook))
        try:
            with torch.no_grad():
                self.torch_model.logits(self.xt)
        finally:
            for h in handles:
                h.remove()
        for label, path in self.plan.parts:
            args, output = captured[path]
            spec = _arg_spec(args)
            flat_in = [t.detach() for t in _flatten(args)]
            torch_out = [t.numpy() for t in _flatten(output)]
            with paddle.no_grad():
                paddle_args = _unflatten([paddle.to_tensor(t.numpy()) for t in flat_in], spec)
                paddle_out = [t.numpy() for t in _flatten(_getpath(self.paddle_model, path)(*paddle_args))]
            part = f"sub-part {label} ({path})"
            module = self.mods["Part"](_getpath(self.torch_model, path), spec)
            layer = self.attempt(module, flat_in, f"part {label}", part)
            x2p = None if layer is None else self.execute(layer, [t.numpy() for t in flat_in], part, len(torch_out))
            for i, (t, p) in enumerate(zip(torch_out, paddle_out)):
                name = f"{label}[{i}]" if len(torch_out) > 1 else label
                # Intermediate features reach hundreds in a random deep net: scale atol_mean.
                self.add_rows(name, t, p, None if x2p is None else x2p[i], scale_atol=True)

    # -- training probes ----------------------------------------------------------------------
    def training(self) -> None:
        import torch

        rng = np.random.default_rng(self.seed)
        batch, _, height, width = self.x.shape
        label = rng.integers(0, self.torch_logits[0].shape[1], size=(batch, height, width)).astype(np.int64)
        label[rng.random(label.shape) < 0.1] = 255  # some ignored pixels, as in real masks
        logits_t = [torch_tensor(a) for a in self.torch_logits]

        # 1. The training-mode forward after the logits: the loss and FarSeg's step counter.
        part = f"training-mode forward after the logits ({self.plan.loss_key})"
        tail = self.mods["AfterLogits"](_husk(self.torch_model, training=True), self.plan.loss_key)
        layer = self.attempt(tail, logits_t + [torch.from_numpy(label)], "training loss", part)
        x2p = None if layer is None else self.execute(layer, self.torch_logits + [label], part, 1)
        if layer is None:
            self.loss_pieces(rng)
        elif x2p is not None:
            fresh = self.mods["AfterLogits"](_husk(self.torch_model, training=True), self.plan.loss_key)
            with torch.no_grad():  # a fresh husk: the trace above already advanced buffer_step
                expected = fresh(*logits_t, torch.from_numpy(label)).numpy()
            row = compare_arrays(expected, x2p[0], self.atol_mean, self.rtol_max)
            if not row["passed"]:
                self.untrace(part, f"converted, but the program's loss {float(x2p[0]):.6g} differs from "
                                   f"torch_ref's {float(expected):.6g}")

        # 2. One conv+BN+ReLU(+upsample) stage in training mode: batch statistics.
        stage = _getpath(self.torch_model, self.plan.bn_stage)
        x_bn = rng.standard_normal((2, stage[0].in_channels, 8, 8)).astype(np.float32)
        with torch.no_grad():
            expected = copy.deepcopy(stage).train()(torch.from_numpy(x_bn)).numpy()
        part = f"training-mode BatchNorm ({self.plan.bn_stage}: conv+BN+ReLU+upsample in train mode)"
        # Wrapped: X2Paddle names a top-level Sequential's buffers "self.1_..." (not Python).
        module = self.mods["Part"](copy.deepcopy(stage).train(), [None])
        layer = self.attempt(module, [torch.from_numpy(x_bn)], "training batchnorm", part)
        x2p = None if layer is None else self.execute(layer, [x_bn], part, 1)
        if x2p is None:
            return
        row = compare_arrays(expected, x2p[0], self.atol_mean, self.rtol_max)
        if not row["passed"]:
            code = (self.out_dir / "training_batchnorm" / CODE_FILE).read_text(encoding="utf-8")
            cause = ("; the generated code builds paddle.nn.BatchNorm(is_test=True, ...): it normalises "
                     "with the running statistics, not the batch's, and never updates them"
                     if "is_test=True" in code else "")
            self.untrace(part, f"converted, but the program disagrees with torch's training-mode output "
                               f"(max_abs {row['max_abs']:.3g}, mean_abs {row['mean_abs']:.3g}){cause}")

    def loss_pieces(self, rng: np.random.Generator) -> None:
        """After a failed loss conversion: try the loss's separable pieces on their own, on
        per-pixel losses (non-negative, some exactly 0 as where pixels are ignored)."""
        import paddle
        import torch

        from paddle_impl import losses as paddle_losses
        from torch_ref import losses as torch_losses

        batch, _, height, width = self.x.shape
        losses = rng.random((batch, height, width)).astype(np.float32) * 3.0
        losses[rng.random(losses.shape) < 0.3] = 0.0
        for name in self.plan.loss_pieces:
            torch_fn, paddle_fn = getattr(torch_losses, name), getattr(paddle_losses, name)
            part = f"loss piece losses.{name}"
            layer = self.attempt(self.mods["Function"](torch_fn), [torch.from_numpy(losses)],
                                 f"loss piece {name}", part)
            x2p = None if layer is None else self.execute(layer, [losses], part, 1)
            if x2p is None:
                continue
            with torch.no_grad():
                expected = torch_fn(torch.from_numpy(losses)).numpy()
            with paddle.no_grad():
                got = paddle_fn(paddle.to_tensor(losses)).numpy()
            self.add_rows(part, expected, got, x2p[0])

    def frozen_values(self) -> None:
        """Lines of the project's code where torch's tracer turned a tensor into a Python value.

        Whatever depends on such a value (a branch, a step counter) is a constant in every
        traced program: X2Paddle cannot reproduce it, even when the conversion succeeds.
        Library-internal sites (torch/, paddle/) are left out.
        """
        sites: Dict[str, Dict[str, Any]] = {}
        for conv in self.conversions:
            for w in conv.trace_warnings:
                if w["site"].startswith(("torch/", "paddle/", "x2paddle/")):
                    continue
                entry = sites.setdefault(w["site"], {**w, "targets": []})
                entry["targets"].append(conv.target)
        for site, w in sites.items():
            self.untrace(f"{site} `{w['source']}` (Python value frozen at trace time)",
                         f"torch's tracer: \"{w['message']}\" (traced in: {', '.join(w['targets'])}); "
                         f"the traced program holds the value seen while tracing as a constant, "
                         f"so Python control flow or counters depending on it are not reproduced")

    def result(self, seconds: float, cpu_seconds: float) -> Dict[str, Any]:
        has_x2p = any("x2paddle" in r["pair"] for r in self.rows)
        attempts = [a for c in self.conversions for a in c.network_attempts]
        return {
            "model": self.name,
            "rows": self.rows,
            # A check that compared nothing with X2Paddle is not a pass.
            "passed": bool(self.rows) and has_x2p and all(r["passed"] for r in self.rows),
            "untraceable": self.untraceable,
            "generated_dir": str(self.out_dir),
            "verdicts": verdicts(self.rows),
            "conversions": [{"target": c.target, "ok": c.ok, "seconds": round(c.seconds, 2),
                             "cpu_seconds": round(c.cpu_seconds, 2), "reused": c.reused,
                             "directory": None if c.directory is None else str(c.directory),
                             "log": None if c.log_path is None else str(c.log_path),
                             "trace_warnings": c.trace_warnings} for c in self.conversions],
            "network_attempts": attempts,
            "x2paddle_version": installed_x2paddle_version(),
            "dtype": "float32",
            "input_shape": list(self.x.shape),
            "thresholds": {"atol_mean": self.atol_mean, "rtol_max": self.rtol_max},
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
        }


def torch_tensor(a: np.ndarray) -> "torch.Tensor":
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def compare_with_x2paddle(model_name: str, torch_model: "torch.nn.Module", paddle_model: "paddle.nn.Layer",
                          x: np.ndarray, out_dir: Path, atol_mean: float = 1e-5, rtol_max: float = 1e-4,
                          *, check_training: bool = True, seed: int = 0, reuse: bool = False,
                          progress: bool = True) -> Dict[str, Any]:
    """Compare torch_ref, paddle_impl and X2Paddle's program generated from torch_ref.

    Everything runs in float32 and in eval mode: float32 CPU models are used as they are and
    handed back in the mode they came in; others (float64, GPU) are copied to float32 and left
    untouched. ``x`` is [B,3,H,W] (H, W multiples of 32; any float dtype, cast to float32).
    Generated programs go to ``out_dir`` (one folder per conversion; a failed conversion leaves
    ``<name>.failed.log``). ``reuse``: see ``convert_with_x2paddle``.

    Returns ``{"rows": [{"pair", "output", "shape", "max_abs", "mean_abs", "max_rel",
    "passed"}, ...], "passed", "untraceable": [{"part", "why"}], "generated_dir"}`` plus
    ``verdicts`` (per output: which side differs), ``conversions`` (time, folder, tracer
    warnings of each), ``network_attempts`` (must be empty), ``x2paddle_version``, ``seconds``.
    ``passed`` needs every row within ``atol_mean`` (mean |diff|) and ``rtol_max`` (max |diff| /
    max |value|) and at least one row against X2Paddle. With ``check_training`` the
    training-mode probes run too (they add ``untraceable`` entries, never failing rows, except
    for a loss piece that converts and is compared three ways).
    """
    from weights import check_model_name

    check_model_name(model_name)
    _require_x2paddle()
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 3 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must be a float array [B,3,H,W], got {x.dtype} {list(x.shape)}")
    if x.shape[2] % 32 or x.shape[3] % 32:  # checked before the models are touched
        raise ValueError(f"x height and width must be multiples of 32, got {x.shape[2]}x{x.shape[3]}")
    from tqdm import tqdm

    start, cpu_start = time.perf_counter(), time.process_time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = _Run(model_name, torch_model, paddle_model, x, out_dir, atol_mean, rtol_max, seed, reuse)
    steps: List[Tuple[str, Callable[[], None]]] = [("eval", run.eval_outputs)]
    if check_training:
        steps.append(("training probes", run.training))
    try:
        with tqdm(steps, desc=f"x2paddle {model_name}", unit="step", disable=not progress,
                  file=sys.stderr) as bar:
            for label, step in bar:
                bar.set_postfix_str(label)
                step()
    finally:
        run.restore()
    run.frozen_values()
    return run.result(time.perf_counter() - start, time.process_time() - cpu_start)


# ----------------------------------------------------------------------------------------------
# Standalone command line
# ----------------------------------------------------------------------------------------------

def build_fixture(model_name: str, seed: int = 0, size: int = 64,
                  batch: int = 1) -> Tuple["torch.nn.Module", "paddle.nn.Layer", np.ndarray]:
    """Deterministic random torch_ref model, the same weights in paddle_impl, and an input.

    BatchNorm running statistics and affine parameters are randomised (the official init
    leaves mean 0, var 1, weight 1, bias 0, under which a swapped or dropped BN tensor would go
    unnoticed). The Paddle weights come from ``convert.torch_to_paddle``.
    """
    import paddle
    import torch

    import paddle_impl
    import torch_ref
    from convert import torch_to_paddle

    torch.manual_seed(seed)
    model = torch_ref.build_model(model_name)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    model.eval()
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with paddle.LazyGuard():  # no random init: every tensor is set from torch just below
        pmodel = paddle_impl.build_model(model_name)
    missing, unexpected = pmodel.set_state_dict(torch_to_paddle(state, model_name))
    if missing or unexpected:
        raise RuntimeError(f"paddle_impl state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    pmodel.eval()
    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    return model, pmodel, x


def format_report(result: Dict[str, Any]) -> str:
    """The rows as a fixed-width table, then verdicts, untraceable parts and timings."""
    lines = [f"{'pair':<26} {'output':<34} {'shape':<18} {'max_abs':>10} {'mean_abs':>10} "
             f"{'max_rel':>10}  ok"]
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"])) if isinstance(r["shape"], list) else str(r["shape"])
        lines.append(f"{r['pair']:<26} {r['output']:<34} {shape:<18} {r['max_abs']:>10.3g} "
                     f"{r['mean_abs']:>10.3g} {r['max_rel']:>10.3g}  {'yes' if r['passed'] else 'NO'}")
    lines.append("")
    for output, verdict in result["verdicts"].items():
        lines.append(f"verdict {output}: {verdict}")
    for item in result["untraceable"]:
        lines.append(f"untraceable: {item['part']}: {item['why']}")
    for c in result["conversions"]:
        state = ("reused (same fingerprint)" if c["reused"] else
                 f"{'ok' if c['ok'] else 'FAILED'} in {c['seconds']:.1f} s (CPU {c['cpu_seconds']:.1f} s)")
        lines.append(f"conversion {c['target']}: {state}"
                     + (f" -> {c['directory']}" if c["directory"] else f" (log {c['log']})"))
    lines.append(f"network attempts during conversion: {len(result['network_attempts'])}"
                 + (f" {result['network_attempts']}" if result["network_attempts"] else ""))
    lines.append(f"x2paddle {result['x2paddle_version']}, {result['dtype']}, input "
                 f"{'x'.join(map(str, result['input_shape']))}, thresholds mean_abs <= "
                 f"{result['thresholds']['atol_mean']:g}, max_rel <= {result['thresholds']['rtol_max']:g}; "
                 f"total {result['seconds']:.1f} s (CPU {result['cpu_seconds']:.1f} s)")
    lines.append(f"{'PASSED' if result['passed'] else 'FAILED'}")
    return "\n".join(lines)


def _positive_multiple_of_32(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m align.x2paddle_check",
        description="Trace torch_ref with X2Paddle's pytorch2paddle into an independent Paddle program "
                    "and compare it with torch_ref and paddle_impl (float32, deterministic random "
                    "weights). Exit status: 0 passed, 1 a comparison failed, 2 cannot run.")
    parser.add_argument("--model", required=True, choices=sorted(PLANS), help="model to check")
    parser.add_argument("--size", type=_positive_multiple_of_32, default=64,
                        help="input height and width in pixels, a multiple of 32 (default 64)")
    parser.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights, BN statistics, input and labels (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the generated programs (kept); default: a temporary folder "
                             "removed at exit (each FarSeg/FactSeg program is ~130 MB)")
    parser.add_argument("--atol-mean", type=float, default=1e-5,
                        help="pass threshold on the mean absolute difference (default 1e-5)")
    parser.add_argument("--rtol-max", type=float, default=1e-4,
                        help="pass threshold on max |diff| / max |value| (default 1e-4)")
    parser.add_argument("--no-training", action="store_true",
                        help="skip the training-mode probes (loss, step counter, training-mode BatchNorm)")
    parser.add_argument("--reuse", action="store_true",
                        help="with --out: use a conversion already in DIR whose fingerprint (model "
                             "state, inputs, torch_ref sources, this file, versions) matches instead of "
                             "converting again")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the full result as JSON to this file (written atomically)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not x2paddle_available():
        print(f"error: {INSTALL_MESSAGE}", file=sys.stderr)
        return 2
    version = installed_x2paddle_version()
    if version != X2PADDLE_VERSION:
        print(f"warning: x2paddle {version} installed; this check was written against "
              f"{X2PADDLE_VERSION}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="x2paddle_check_")))
        else:
            out_dir = args.out
            if out_dir.exists() and not out_dir.is_dir():
                print(f"error: {out_dir}: exists and is not a folder", file=sys.stderr)
                return 2
        torch_model, paddle_model, x = build_fixture(args.model, args.seed, args.size, args.batch)
        result = compare_with_x2paddle(args.model, torch_model, paddle_model, x, out_dir,
                                       args.atol_mean, args.rtol_max,
                                       check_training=not args.no_training, seed=args.seed,
                                       reuse=args.reuse)
        if args.out is None:
            result["generated_dir"] = None  # removed at exit
        print(format_report(result))
        if args.json is not None:
            from convert import atomic_write
            text = json.dumps(result, indent=2).encode("utf-8")
            atomic_write(args.json, lambda f: f.write(text))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

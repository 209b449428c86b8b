"""The three-way comparison: torch_ref, paddle_impl and X2Paddle's program generated from
torch_ref, in float32, with align's own comparison rule (``align.compare.compare_arrays``)."""

from __future__ import annotations

import copy
import itertools
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..compare import Tolerance, compare_arrays
from ..config import LOGIT_NAMES
from ..sides import SIDES, TORCH
from . import ATOL_MEAN, RTOL_MAX, conversion
from .conversion import (
    CODE_FILE,
    Conversion,
    _require_x2paddle,
    _short_path,
    flatten,
    installed_x2paddle_version,
    load_generated_program,
    run_generated_program,
)
from .plans import PLANS, _arg_spec, _getpath, _husk, _torch_modules, _unflatten, forward_on_logits
from .report import verdicts

if TYPE_CHECKING:
    import paddle
    import torch


def compare_pair(
    pair: str, output: str, a: np.ndarray, b: np.ndarray, atol_mean: float, rtol_max: float, scale_atol: bool = False
) -> Dict[str, Any]:
    """One row of the report: ``align.compare.compare_arrays`` of ``a`` (the pair's reference) and
    ``b``; ``scale_atol`` multiplies ``atol_mean`` by max(1, max |a|) for intermediate features."""
    a = np.asarray(a, dtype=np.float64)
    scale = float(np.abs(a).max(initial=0.0)) if a.size else 0.0
    tol = Tolerance(rtol_max, atol_mean * max(1.0, scale) if scale_atol else atol_mean)
    row = compare_arrays(f"{pair}/{output}", a, b, tol, "x2paddle")
    out = {"pair": pair, "output": output, "shape": row.shape, "max_abs": row.max_abs, "mean_abs": row.mean_abs}
    out.update(max_rel=row.rel, passed=row.passed)
    if row.note:
        out["note"] = row.note
    return out


class _Run:
    """State of one compare_with_x2paddle call."""

    def __init__(
        self,
        model_name: str,
        torch_model: Any,
        paddle_model: Any,
        x: np.ndarray,
        out_dir: Path,
        atol_mean: float,
        rtol_max: float,
        seed: int,
        reuse: bool,
    ) -> None:
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
        if all(
            t.dtype == torch.float32 and t.device.type == "cpu"
            for t in itertools.chain(torch_model.parameters(), torch_model.buffers())
            if t.is_floating_point()
        ):
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
            self.torch_logits = [t.numpy() for t in flatten(logits)]
            self.torch_probs = forward_on_logits(self.torch_model, self.xt, logits).numpy()
        with paddle.no_grad():
            px = paddle.to_tensor(self.x)
            logits = self.paddle_model.logits(px)
            self.paddle_logits = [t.numpy() for t in flatten(logits)]
            self.paddle_probs = forward_on_logits(self.paddle_model, px, logits).numpy()

    def restore(self) -> None:
        """Give the caller's models back in the mode they came in."""
        torch_model, torch_training, paddle_model, paddle_training = self.modes
        torch_model.train(torch_training)
        paddle_model.train() if paddle_training else paddle_model.eval()

    # -- plumbing -----------------------------------------------------------------------------
    def untrace(self, part: str, why: str) -> None:
        self.untraceable.append({"part": part, "why": why})

    def attempt(self, module: Any, examples: Sequence[Any], target: str, part: str, context: str = "") -> Optional[Any]:
        """Convert and load; on any X2Paddle-side failure record ``part`` as untraceable and
        return None. Returns the loaded generated layer otherwise."""
        directory = self.out_dir / re.sub(r"[^A-Za-z0-9_.-]+", "_", target)
        conv = conversion.convert_with_x2paddle(module, examples, directory, target, reuse=self.reuse)
        self.conversions.append(conv)
        suffix = f"; {context}" if context else ""
        if not conv.ok:
            self.untrace(part, (conv.error or "") + suffix)
            return None
        try:
            return load_generated_program(conv.directory)
        except Exception as exc:  # X2Paddle wrote code that Python or Paddle rejects
            where = ""
            if isinstance(exc, SyntaxError):
                where = f" ({_short_path(exc.filename or '')}:{exc.lineno}: {(exc.text or '').strip()})"
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}"
            self.untrace(part, f"X2Paddle wrote a program that does not load: {error}{suffix}")
            return None

    def execute(self, layer: Any, inputs: Sequence[np.ndarray], part: str, expect: int) -> Optional[List[np.ndarray]]:
        try:
            outputs = run_generated_program(layer, inputs)
        except Exception as exc:
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            self.untrace(part, f"the generated program fails when run: {error}")
            return None
        if len(outputs) != expect:
            self.untrace(part, f"the generated program returns {len(outputs)} outputs, expected {expect}")
            return None
        return outputs

    def add_rows(
        self,
        output: str,
        torch_out: np.ndarray,
        paddle_out: np.ndarray,
        x2p_out: Optional[np.ndarray],
        note: Optional[str] = None,
        scale_atol: bool = False,
    ) -> None:
        """The rows of ``output``: each side against X2Paddle's (when it has one), then torch_ref
        against paddle_impl; ``note`` goes on the X2Paddle rows."""
        pairs = [("torch_ref vs paddle_impl", torch_out, paddle_out)]
        if x2p_out is not None:
            pairs = [
                ("torch_ref vs x2paddle", torch_out, x2p_out),
                ("paddle_impl vs x2paddle", paddle_out, x2p_out),
                *pairs,
            ]
        for pair, a, b in pairs:
            self.rows.append(compare_pair(pair, output, a, b, self.atol_mean, self.rtol_max, scale_atol))
            if note and "x2paddle" in pair:
                self.rows[-1]["note"] = note

    # -- eval ---------------------------------------------------------------------------------
    def eval_outputs(self) -> None:
        """The eval forward as one program. First the code after the logits alone (on a husk,
        about a second): the whole eval forward's trace contains it, so where it does not
        convert the full trace is skipped. Where the whole does not convert: the logits path
        alone (composed with the after-logits program when both convert), and where that fails
        too, the logits path's sub-parts."""
        n = len(self.torch_logits)
        tail_part = f"eval forward: the {self.plan.tail_description}"
        tail = self.attempt(
            self.mods["AfterLogits"](_husk(self.torch_model, training=False)),
            [TORCH.tensor(a) for a in self.torch_logits],
            "eval tail",
            tail_part,
            "so the whole eval forward, whose trace contains this code, is not attempted; "
            "the probabilities are compared between torch_ref and paddle_impl only",
        )
        tail_ok = tail is not None and self.execute(tail, self.torch_logits, tail_part, 1) is not None
        if tail_ok:
            part = "eval forward (logits and probabilities, one trace)"
            layer = self.attempt(
                self.mods["Eval"](self.torch_model), [self.xt], "eval", part, "converting the logits path alone"
            )
            out = None if layer is None else self.execute(layer, [self.x], part, n + 1)
            if out is not None:
                for name, t, p, g in zip(LOGIT_NAMES[self.name], self.torch_logits, self.paddle_logits, out):
                    self.add_rows(name, t, p, g)
                self.add_rows("probs", self.torch_probs, self.paddle_probs, out[-1])
                return

        part = "logits path (model.logits)"
        layer = self.attempt(
            self.mods["Logits"](self.torch_model),
            [self.xt],
            "logits",
            part,
            "falling back to its sub-parts, each fed torch_ref's inputs",
        )
        logits = None if layer is None else self.execute(layer, [self.x], part, n)
        for i, (name, t, p) in enumerate(zip(LOGIT_NAMES[self.name], self.torch_logits, self.paddle_logits)):
            self.add_rows(name, t, p, None if logits is None else logits[i])
        if logits is None:
            self.parts()
        probs = None
        if tail_ok and logits is None:
            self.untrace(
                "eval forward: probabilities",
                "the code after the logits converts, but the "
                "logits path does not, so no X2Paddle program computes the probabilities",
            )
        elif tail_ok:
            probs = self.execute(tail, logits, tail_part, 1)
        self.add_rows(
            "probs",
            self.torch_probs,
            self.paddle_probs,
            None if probs is None else probs[0],
            note=None if probs is None else "X2Paddle logits program, then its after-logits program",
        )

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
            flat_in = [t.detach() for t in flatten(args)]
            torch_out = [t.numpy() for t in flatten(output)]
            with paddle.no_grad():
                paddle_args = _unflatten([paddle.to_tensor(t.numpy()) for t in flat_in], spec)
                paddle_out = [t.numpy() for t in flatten(_getpath(self.paddle_model, path)(*paddle_args))]
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
        logits_t = [TORCH.tensor(a) for a in self.torch_logits]

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
            row = compare_pair("torch_ref vs x2paddle", part, expected, x2p[0], self.atol_mean, self.rtol_max)
            if not row["passed"]:
                self.untrace(
                    part,
                    f"converted, but the program's loss {float(x2p[0]):.6g} differs from "
                    f"torch_ref's {float(expected):.6g}",
                )

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
        row = compare_pair("torch_ref vs x2paddle", part, expected, x2p[0], self.atol_mean, self.rtol_max)
        if not row["passed"]:
            code = (self.out_dir / "training_batchnorm" / CODE_FILE).read_text(encoding="utf-8")
            cause = (
                "; the generated code builds paddle.nn.BatchNorm(is_test=True, ...): it normalises "
                "with the running statistics, not the batch's, and never updates them"
                if "is_test=True" in code
                else ""
            )
            self.untrace(
                part,
                f"converted, but the program disagrees with torch's training-mode output "
                f"(max_abs {row['max_abs']:.3g}, mean_abs {row['mean_abs']:.3g}){cause}",
            )

    def loss_pieces(self, rng: np.random.Generator) -> None:
        """After a failed loss conversion: try the loss's separable pieces on their own, on
        per-pixel losses (non-negative, some exactly 0 as where pixels are ignored)."""
        batch, _, height, width = self.x.shape
        losses = rng.random((batch, height, width)).astype(np.float32) * 3.0
        losses[rng.random(losses.shape) < 0.3] = 0.0
        for name in self.plan.loss_pieces:
            fns = [getattr(side.package("losses"), name) for side in SIDES]
            part = f"loss piece losses.{name}"
            layer = self.attempt(self.mods["Function"](fns[0]), [TORCH.tensor(losses)], f"loss piece {name}", part)
            x2p = None if layer is None else self.execute(layer, [losses], part, 1)
            if x2p is None:
                continue
            outputs = []
            for side, fn in zip(SIDES, fns):
                with side.no_grad():
                    outputs.append(side.numpy(fn(side.tensor(losses))))
            self.add_rows(part, *outputs, x2p[0])

    def frozen_values(self) -> None:
        """Lines of the project's code (not torch's, Paddle's or X2Paddle's) where the tracer
        turned a tensor into a Python value: what depends on it is a constant in every program."""
        sites: Dict[str, Dict[str, Any]] = {}
        for conv in self.conversions:
            for w in conv.trace_warnings:
                if w["site"].startswith(("torch/", "paddle/", "x2paddle/")):
                    continue
                entry = sites.setdefault(w["site"], {**w, "targets": []})
                entry["targets"].append(conv.target)
        for site, w in sites.items():
            self.untrace(
                f"{site} `{w['source']}` (Python value frozen at trace time)",
                f'torch\'s tracer: "{w["message"]}" (traced in: {", ".join(w["targets"])}); '
                f"the traced program holds the value seen while tracing as a constant, "
                f"so Python control flow or counters depending on it are not reproduced",
            )

    def result(self, seconds: float, cpu_seconds: float) -> Dict[str, Any]:
        has_x2p = any("x2paddle" in r["pair"] for r in self.rows)
        # A check that compared nothing with X2Paddle is not a pass.
        return {
            "model": self.name,
            "rows": self.rows,
            "passed": bool(self.rows) and has_x2p and all(r["passed"] for r in self.rows),
            "untraceable": self.untraceable,
            "generated_dir": str(self.out_dir),
            "verdicts": verdicts(self.rows),
            "conversions": [
                {
                    "target": c.target,
                    "ok": c.ok,
                    "seconds": round(c.seconds, 2),
                    "cpu_seconds": round(c.cpu_seconds, 2),
                    "reused": c.reused,
                    "directory": None if c.directory is None else str(c.directory),
                    "log": None if c.log_path is None else str(c.log_path),
                    "trace_warnings": c.trace_warnings,
                }
                for c in self.conversions
            ],
            "network_attempts": [a for c in self.conversions for a in c.network_attempts],
            "x2paddle_version": installed_x2paddle_version(),
            "dtype": "float32",
            "input_shape": list(self.x.shape),
            "thresholds": {"atol_mean": self.atol_mean, "rtol_max": self.rtol_max},
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
        }


def compare_with_x2paddle(
    model_name: str,
    torch_model: "torch.nn.Module",
    paddle_model: "paddle.nn.Layer",
    x: np.ndarray,
    out_dir: Path,
    atol_mean: float = ATOL_MEAN,
    rtol_max: float = RTOL_MAX,
    *,
    check_training: bool = True,
    seed: int = 0,
    reuse: bool = False,
    progress: bool = True,
) -> Dict[str, Any]:
    """Compare torch_ref, paddle_impl and X2Paddle's program generated from torch_ref, in float32
    and eval mode (float32 CPU models are used as they are and handed back in their mode; others
    are copied). ``x``: [B,3,H,W], H and W multiples of 32. Generated programs go to ``out_dir``,
    one folder per conversion (``<name>.failed.log`` for a failed one); ``reuse``: see
    ``convert_with_x2paddle``.

    Returns the rows (``compare_pair``), ``passed`` (every row within the thresholds and at
    least one row against X2Paddle), ``untraceable`` parts with the error seen, ``verdicts`` per
    output, ``conversions``, ``network_attempts`` (must be empty) and timings. The training-mode
    probes (``check_training``) add ``untraceable`` entries, rows only for a loss piece.
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
        with tqdm(steps, desc=f"x2paddle {model_name}", unit="step", disable=not progress, file=sys.stderr) as bar:
            for label, step in bar:
                bar.set_postfix_str(label)
                step()
    finally:
        run.restore()
    run.frozen_values()
    return run.result(time.perf_counter() - start, time.process_time() - cpu_start)

"""Any torch model against its Paddle port: the forward and backward comparisons behind
``python -m align.forward --torch SPEC --paddle SPEC`` and ``align.compare``.

Forward: both models in eval mode, then in training mode (BatchNorm with batch statistics;
dropout layers kept in eval mode: two frameworks never draw the same masks), every layer call
recorded (``align.pairing.trace``), paired, and compared element by element; the verdict is the
model outputs', the layers say where a difference starts. Backward: K steps of forward, loss,
backward, optimiser step, gradients cleared, on both sides; per step the output, the loss,
every gradient, every parameter after the step and every buffer (BatchNorm running variance:
torch's unbiased update converted to Paddle's biased one, as in ``align.backward``).

Every step starts from the same parameters (``STEP_START``): before steps 2..K, Paddle's
parameters are copied into the torch model, so each step is held to the sharp step-1 thresholds
and a difference is the port's own in that step, not rounding of earlier steps amplified by the
model. Measured why (``benchmarks/results/backward_chaos.json``, ``python benchmarks/backward_chaos.py``):
the clean ResNet-50 pair at 2x3x224x224 in float64 ends step 1 with gradients 2.1e-8 and
parameters 1.65e-8 apart (rounding); from those, torch's own step-2 gradients move by
1.3e-2, torch against torch perturbed by the same 1.65e-8 moves them by 6.0e-2, while torch
evaluated AT Paddle's parameters agrees with Paddle to 2.1e-8, as in step 1. The parameter
difference a step leaves behind is compared (``param``) before it is erased; the optimiser
state (momentum, Adam moments) is not copied, so it carries the earlier steps' gradients.
Buffers are not copied either (torch's running variance is converted from its own history).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .batchnorm import BatchNormRecorder
from .compare import Divergence, Row, StageResult, Tolerance, compare_arrays, failed_row, finish_stage, grad_floor
from .inputs import AlignInputError
from .localise import backward_parameter_order
from .pairing import (
    PAIRING_MODES,
    Call,
    Pairing,
    TensorPairs,
    copy_weights,
    flatten_output,
    named_tensors,
    pair_calls,
    trace,
)
from .sides import PADDLE, TORCH, Side, create_from

ENGINE_MODEL = "pair"  # StageResult.model of a user's pair
# Kinds compared in every step (each starts from the same parameters: see the module docstring).
STEP_KINDS = {
    "output": "forward_train",
    "loss": "forward_train",
    "grad": "grad",
    "param": "param",
    "buffer": "running_stat",
}
# Before steps 2..K: "paddle" copies Paddle's parameters into torch (the default, sharp at every
# step); "none" lets both run free, held to the *drift kinds (a deep model's chaos can fail them).
STEP_START = ("paddle", "none")
LATER_STEP_FREE = {"output": "drift", "loss": "drift", "grad": "drift", "param": "param_drift", "buffer": "stat_drift"}


@dataclass
class Pair:
    """Both models ready to compare: adapters, pairing, which tensor is which."""

    torch_model: Any
    paddle_model: Any
    pairing: Pairing
    tensors: Optional[TensorPairs]  # None when weights came from files (not copied)
    t_calls: List[Call]  # the structure traces (eval mode, first sample) that made the pairing
    p_calls: List[Call]
    t: Side = TORCH
    p: Side = PADDLE
    notes: List[str] = field(default_factory=list)


def _check_sides(torch_model: Any, paddle_model: Any) -> None:
    for model, expected, option in ((torch_model, TORCH, "--torch"), (paddle_model, PADDLE, "--paddle")):
        try:
            side = create_from(model)
        except ValueError as exc:
            raise AlignInputError(f"{option}: {exc}") from None
        if side.name != expected.name:
            raise AlignInputError(f"{option}: expected a {expected.name} model, got a {side.name} one")


def user_call(option: str, run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)``; an exception in the user's code becomes one AlignInputError line."""
    try:
        return run(*args)
    except AlignInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's model / loss / optimiser
        text = " ".join(str(exc).split())[:300]
        raise AlignInputError(f"{option}: raised {type(exc).__name__}: {text}") from None


@contextlib.contextmanager
def training_mode(side: Side, model: Any) -> Iterator[None]:
    """``model.train()`` with its random layers (dropout) in eval mode; eval mode after."""
    model.train()
    for _, module in side.modules(model):
        if side.is_random_in_training(module):
            module.eval()
    try:
        yield
    finally:
        model.eval()


def _structure_traces(torch_model: Any, paddle_model: Any, x: np.ndarray, strict: bool = False) -> Tuple[Any, Any]:
    """Both models' layer calls on ``x`` (eval mode, nothing kept); (None, None) when a model
    raises and not ``strict`` (then the caller retries with the whole batch)."""
    t, p = TORCH, PADDLE
    try:
        with t.no_grad():
            _, t_calls = user_call("--torch model", trace, t, torch_model, lambda: torch_model(t.tensor(x)), False)
        with p.no_grad():
            _, p_calls = user_call("--paddle model", trace, p, paddle_model, lambda: paddle_model(p.tensor(x)), False)
    except AlignInputError:
        if strict:
            raise
        return None, None
    return t_calls, p_calls


def prepare(
    torch_model: Any,
    paddle_model: Any,
    x: np.ndarray,
    dtype: str = "float64",
    pairing: str = "auto",
    mapping: Optional[Mapping[str, str]] = None,
    copy: bool = True,
) -> Pair:
    """Cast both models to ``dtype``, pair their layers on an eval forward of ``x`` and copy the
    torch weights into the Paddle model through the pairing (``copy``)."""
    _check_sides(torch_model, paddle_model)
    if pairing not in PAIRING_MODES:
        raise AlignInputError(f"--pairing {pairing!r}: expected one of {', '.join(PAIRING_MODES)} or a MAP.json")
    t, p = TORCH, PADDLE
    t.cast(torch_model, dtype)
    p.cast(paddle_model, dtype)
    torch_model.eval()
    paddle_model.eval()
    # The structure: one eval forward of the first sample per side, no outputs kept (the whole
    # batch where a model refuses a batch of one).
    t_calls, p_calls = _structure_traces(torch_model, paddle_model, x[:1] if x.ndim > 1 else x)
    if t_calls is None or p_calls is None:
        t_calls, p_calls = _structure_traces(torch_model, paddle_model, x, strict=True)
    if mapping:
        t_names, p_names = {n for n, _ in t.modules(torch_model)}, {n for n, _ in p.modules(paddle_model)}
        unknown = [f"torch {a}" for a in mapping if a not in t_names] + [
            f"paddle {b}" for b in mapping.values() if b not in p_names
        ]
        if unknown:
            raise AlignInputError(f"--pairing: no such module: {', '.join(unknown[:5])}")
    paired = pair_calls(t_calls, p_calls, pairing, mapping)
    notes: List[str] = []
    if copy:
        tensors: Optional[TensorPairs] = copy_weights(t, p, torch_model, paddle_model, paired)
    else:  # weights from files: the tensor pairs are only needed by the backward stage
        try:
            tensors = copy_weights(t, p, torch_model, paddle_model, paired, assign=False)
        except AlignInputError as exc:
            tensors = None
            notes.append(f"parameters not paired ({exc}): the backward stage cannot run on these files")
    return Pair(torch_model, paddle_model, paired, tensors, t_calls, p_calls, notes=notes)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------


@dataclass
class Compared:
    """One compared call: a layer's or a paired container's, in torch execution order."""

    row: Row
    torch: str
    paddle: str
    kind: str
    call: int  # 0 for the module's first call


def _traced_rows(pair: Pair, x: np.ndarray, tol: Tolerance) -> Tuple[Any, Any, List[Compared]]:
    """Both outputs and one row per paired call, layers and paired containers, in the order the
    torch calls return (a container after its layers: a difference made by a block's own code,
    a residual sum, shows at the block), each the worst of the call's outputs. The torch
    outputs are kept until their Paddle partner has run, then dropped: the peak is one model's
    activations, not two."""
    t, p = pair.t, pair.p
    t_layers, p_layers = {c.name for c in pair.t_calls}, {c.name for c in pair.p_calls}
    containers = {a: b for a, b in pair.pairing.modules if a not in t_layers and b not in p_layers}
    container_of = {b: a for a, b in containers.items()}
    p_index = {(c.name, c.call): j for j, c in enumerate(pair.p_calls)}
    layer_keys = {(c.name, c.call) for c in pair.t_calls}
    partner = {j: (pair.t_calls[i].name, pair.t_calls[i].call) for i, j in pair.pairing.calls}
    waiting: Dict[Tuple[str, int], List[np.ndarray]] = {}
    order: List[Tuple[Tuple[str, int], str]] = []  # (torch key, kind) in torch execution order
    rows: Dict[Tuple[str, int], Tuple[Row, str]] = {}

    def keep_torch(call: Call) -> None:
        if (call.name, call.call) in layer_keys or call.name in containers:
            waiting[(call.name, call.call)] = call.outputs or []
            order.append(((call.name, call.call), call.kind))

    def compare_paddle(call: Call) -> None:
        j = p_index.get((call.name, call.call))
        key = partner.get(j) if j is not None else None
        if key is None and call.name in container_of:
            key = (container_of[call.name], call.call)
        if key is None or key not in waiting:
            return
        theirs, ours = waiting.pop(key), call.outputs or []
        label = key[0] if key[1] == 0 else f"{key[0]}#{key[1]}"
        note = "" if key[0] == call.name else f"paddle {call.label}"
        if len(theirs) != len(ours):
            row = failed_row(label, "layer", tol, f"{len(theirs)} outputs in torch, {len(ours)} in paddle")
        else:
            compared = [compare_arrays(label, a, b, tol, "layer", note=note) for a, b in zip(theirs, ours)]
            no_tensor = Row(label, "layer", [], 0.0, 0.0, 0.0, 0.0, tol, True, "no tensor output")
            row = max(compared, key=lambda r: (not r.passed, r.rel)) if compared else no_tensor
        rows[key] = (row, call.name)

    t_out, _ = user_call(
        "--torch model",
        trace,
        t,
        pair.torch_model,
        lambda: pair.torch_model(t.tensor(x)),
        False,
        keep_torch,
        list(containers),
    )
    p_out, _ = user_call(
        "--paddle model",
        trace,
        p,
        pair.paddle_model,
        lambda: pair.paddle_model(p.tensor(x)),
        False,
        compare_paddle,
        list(containers.values()),
    )
    waiting.clear()
    paired_layers = {(pair.t_calls[i].name, pair.t_calls[i].call) for i, _ in pair.pairing.calls}
    out = []
    for key, kind in order:
        if key in rows:
            row, paddle_name = rows[key]
            out.append(Compared(row, key[0], paddle_name, kind, key[1]))
        elif key in paired_layers:  # its Paddle partner did not run with the whole batch
            label = key[0] if key[1] == 0 else f"{key[0]}#{key[1]}"
            out.append(
                Compared(
                    failed_row(label, "layer", tol, "no paddle call with the whole batch"), key[0], "", kind, key[1]
                )
            )
    return t_out, p_out, out


def _structure(pair: Pair) -> List[str]:
    t_calls, p_calls = pair.t_calls, pair.p_calls
    lines = [f"torch only: {t_calls[i].label} ({t_calls[i].kind})" for i in pair.pairing.torch_only]
    lines += [f"paddle only: {p_calls[j].label} ({p_calls[j].kind})" for j in pair.pairing.paddle_only]
    return lines


def _forward_mode(
    pair: Pair, x: np.ndarray, mode: str, tols: Mapping[str, Tolerance], result: StageResult
) -> Optional[Divergence]:
    """Compare one mode's outputs and layers into ``result``; the first divergence, if any."""
    t, p = pair.t, pair.p
    kind = "forward" if mode == "eval" else "forward_train"
    tol = Tolerance(tols[kind].rtol)  # relative only: a user's outputs have any scale
    if mode == "eval":
        with t.no_grad(), p.no_grad():
            t_out, p_out, layer_rows = _traced_rows(pair, x, tol)
    else:
        states = [_snapshot(side, model) for side, model in ((t, pair.torch_model), (p, pair.paddle_model))]
        with training_mode(t, pair.torch_model), training_mode(p, pair.paddle_model), t.no_grad(), p.no_grad():
            t_out, p_out, layer_rows = _traced_rows(pair, x, tol)
        for (side, model), state in zip(((t, pair.torch_model), (p, pair.paddle_model)), states):
            _restore(side, model, state)
    t_list, p_list = flatten_output(t_out, t), flatten_output(p_out, p)
    del t_out, p_out
    if len(t_list) != len(p_list):
        result.rows.append(
            failed_row(f"{mode}/output", kind, tol, f"{len(t_list)} output tensors in torch, {len(p_list)} in paddle")
        )
    for k, (a, b) in enumerate(zip(t_list, p_list)):
        result.rows.append(compare_arrays(f"{mode}/output" + (f"[{k}]" if len(t_list) > 1 else ""), a, b, tol, kind))
    result.structure = _structure(pair)
    result.layers[f"{mode} mode"] = [c.row for c in layer_rows]
    if all(r.passed for r in result.rows if r.name.startswith(f"{mode}/")):
        failing = next((c.row for c in layer_rows if not c.row.passed), None)
        if failing is not None:
            result.notes.append(
                f"{mode} mode: the outputs agree, but layer {failing.name} differs (rel {failing.rel:.2e})"
            )
        return None
    first = next((c for c in layer_rows if not c.row.passed), None)
    if first is None:
        last = layer_rows[-1].torch if layer_rows else "none"
        summary = (
            f"[{mode} mode] every paired layer agrees: the outputs differ in forward() code "
            f"after the last layer ({last})"
        )
        return Divergence(None, summary, mode, stage="forward")
    calls = f"; call {first.call + 1} of the module" if first.call else ""
    summary = (
        f"[{mode} mode] first divergent layer: torch {first.torch} / paddle {first.paddle} "
        f"({first.kind}{calls}; rel {first.row.rel:.3e} > {tol.rtol:.0e})"
    )
    if result.structure:
        summary += f"; {len(result.structure)} layers on one side only ({result.structure[0]}, ...)"
    return Divergence(
        first.row.name, summary, mode, torch=first.torch, paddle=first.paddle, stage="forward", call=first.call + 1
    )


def _snapshot(side: Side, model: Any) -> Dict[str, np.ndarray]:
    return {n: side.numpy(v) for n, v in named_tensors(side, model).items()}


def _restore(side: Side, model: Any, state: Mapping[str, np.ndarray]) -> None:
    live = named_tensors(side, model)
    for n, value in state.items():
        side.assign(live[n], value)


def _settings(pair: Pair, x: np.ndarray, extra: Mapping[str, Any]) -> Dict[str, Any]:
    import sys

    return {
        "input": f"{list(x.shape)} {x.dtype}",
        "pairing": pair.pairing.mode,
        "paired_modules": len(pair.pairing.modules),
        "renamed_modules": sum(t != p for t, p in pair.pairing.modules),
        "weights": "torch copied into paddle through the pairing" if pair.tensors is not None else "loaded from files",
        "transposed": list(pair.tensors.transposed) if pair.tensors is not None else [],
        **extra,
        "python": sys.version.split()[0],
        "torch": TORCH.framework_version,
        "paddle": PADDLE.framework_version,
    }


def forward(
    pair: Pair,
    x: np.ndarray,
    dtype: str,
    tols: Mapping[str, Tolerance],
    out_dir: Optional[Any] = None,
    model: str = ENGINE_MODEL,
    settings: Optional[Mapping[str, Any]] = None,
) -> StageResult:
    """The forward comparison of a prepared pair (eval mode, then training mode)."""
    start = time.perf_counter()
    result = StageResult("forward", model, dtype, pairing=pair.pairing.table())
    result.settings = _settings(
        pair,
        x,
        {
            "tolerances": {k: Tolerance(tols[k].rtol).describe() for k in ("forward", "forward_train")},
            **(settings or {}),
        },
    )
    found = [_forward_mode(pair, x, mode, tols, result) for mode in ("eval", "train")]
    result.first_divergence = next((d for d in found if d is not None), None)
    result.notes += pair.notes
    return finish_stage(result, start, out_dir, {}, {})


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------


def _param_order(pair: Pair, order: List[str]) -> List[Tuple[str, str]]:
    """The parameter pairs in backward-execution order (torch's)."""
    assert pair.tensors is not None
    by_torch = dict(pair.tensors.parameters)
    return [(n, by_torch[n]) for n in order if n in by_torch]


def _start_from_paddle(pair: Pair, t_params: Mapping[str, Any], p_params: Mapping[str, Any]) -> None:
    """Copy Paddle's parameters into the torch model (in place: the torch optimiser keeps its
    references and its state), so that the next step starts from the same point on both sides."""
    assert pair.tensors is not None
    for tn, pn in pair.tensors.parameters:
        value = pair.p.numpy(p_params[pn])
        pair.t.assign(t_params[tn], value.T if tn in pair.tensors.transposed else value)


# float32 gradients: a deep model's own float32 rounding can exceed any fixed bound (the clean
# ResNet-50 pair at 2x3x224x224, measured: Paddle against torch 0.21 at step 1 and 0.26 at step
# 2; training-mode BatchNorm over 98 elements per channel in layer4). So in float32 every step
# also runs torch in float64 at the same parameters (a twin of the torch model) and measures
# torch's own float32 error of every gradient; the step's gradient bound is
# max(fixed, FLOAT32_BAND_MARGIN x the worst of them). Per step, not per tensor: the two
# frameworks' float32 errors land on different tensors (layer4.0.conv2.weight: torch 1.9e-2,
# Paddle 0.26, both against float64), while their worst over the model is alike (torch 0.17,
# Paddle 0.26 at step 2: ratio 1.5; the margin doubles it).
FLOAT32_BAND_MARGIN = 3.0


def _float64_twin(pair: Pair) -> Optional[Any]:
    """A float64 copy of the torch model (before any hook is placed on it), or None when the
    model cannot be copied."""
    import copy

    try:
        twin = copy.deepcopy(pair.torch_model)
    except Exception:  # noqa: BLE001 - a model that refuses deepcopy keeps the fixed bounds
        return None
    pair.t.cast(twin, "float64")
    return twin


def _float64_grads(
    pair: Pair, twin: Any, t_params: Mapping[str, Any], x64: Any, ty: Any, torch_loss: Callable[[Any, Any], Any]
) -> Dict[str, np.ndarray]:
    """The twin's gradients (float64) at the torch model's current parameters and buffers."""
    t = pair.t
    twin_tensors = named_tensors(t, twin)
    for name, tensor in t_params.items():
        t.assign(twin_tensors[name], t.numpy(tensor))
    with training_mode(t, twin):
        out = user_call("--torch model", twin, x64)
        loss = user_call("--torch-loss", torch_loss, out, ty)
    user_call("--torch-loss", t.backward, loss)
    grads = {name: np.array(t.grad(twin_tensors[name])) for name, _ in pair.tensors.parameters}
    t.clear_grads(twin)
    return grads


def backward(
    pair: Pair,
    x: np.ndarray,
    y: np.ndarray,
    torch_loss: Callable[[Any, Any], Any],
    paddle_loss: Callable[[Any, Any], Any],
    torch_optimizer: Any,
    paddle_optimizer: Any,
    steps: int,
    dtype: str,
    tols: Mapping[str, Tolerance],
    out_dir: Optional[Any] = None,
    model: str = ENGINE_MODEL,
    settings: Optional[Mapping[str, Any]] = None,
    step_start: str = "paddle",
) -> StageResult:
    """K steps of forward, loss, backward, optimiser step and clearing on both sides of a
    prepared pair (weights copied), compared value by value after each phase. ``step_start``
    (``STEP_START``): "paddle" copies Paddle's parameters into torch before steps 2..K."""
    if step_start not in STEP_START:
        raise AlignInputError(f"step_start {step_start!r}: expected one of {', '.join(STEP_START)}")
    later = STEP_KINDS if step_start == "paddle" else LATER_STEP_FREE
    if pair.tensors is None:
        raise AlignInputError(f"backward: {' '.join(pair.notes) or 'the parameters are not paired'}")
    start = time.perf_counter()
    t, p = pair.t, pair.p
    tm, pm = pair.torch_model, pair.paddle_model
    result = StageResult("backward", model, dtype, pairing=pair.pairing.table())
    result.settings = _settings(
        pair,
        x,
        {
            "steps": steps,
            "step_start": step_start,
            "tolerances": {k: tols[k].describe() for k in sorted({*STEP_KINDS.values(), *later.values()})},
            **(settings or {}),
        },
    )
    t_params, p_params = named_tensors(t, tm), named_tensors(p, pm)
    recorder = BatchNormRecorder(tm)
    bn_names = set(t.batchnorms(tm))
    checkpoints: List[Tuple[Row, str, Optional[str], Optional[str], int]] = []  # row, kind, torch, paddle, step
    order: List[str] = []
    tx, ty, px, py = t.tensor(x), t.tensor(y), p.tensor(x), p.tensor(y)
    twin = _float64_twin(pair) if dtype == "float32" else None
    if dtype == "float32":
        result.notes.append(
            f"float32: each step's gradient bound is max(fixed, {FLOAT32_BAND_MARGIN:g} x torch's worst float32 error, "
            "measured against a float64 twin at the same parameters)"
            if twin is not None
            else "float32: the torch model cannot be copied (deepcopy), so no float64 twin: fixed bounds only"
        )
    x64 = t.tensor(x.astype(np.float64)) if twin is not None and x.dtype.kind == "f" else tx
    with recorder.hooked():
        for step in range(1, steps + 1):
            kinds = STEP_KINDS if step == 1 else later
            if step > 1 and step_start == "paddle":
                _start_from_paddle(pair, t_params, p_params)
            g64 = _float64_grads(pair, twin, t_params, x64, ty, torch_loss) if twin is not None else None
            own = 0.0  # torch's worst float32 gradient error of this step (float32 with a twin)
            before = {tn: t.numpy(t_params[tn]) for tn, _ in pair.tensors.parameters} if g64 is not None else {}
            with (
                training_mode(t, tm),
                backward_parameter_order(tm) if step == 1 else contextlib.nullcontext(order) as got,
            ):
                t_out = user_call("--torch model", tm, tx)
                t_loss = user_call("--torch-loss", torch_loss, t_out, ty)
            order = got
            user_call("--torch-loss", t.backward, t_loss)
            with training_mode(p, pm):
                p_out = user_call("--paddle model", pm, px)
                p_loss = user_call("--paddle-loss", paddle_loss, p_out, py)
            user_call("--paddle-loss", p.backward, p_loss)
            # Outputs and loss.
            t_list, p_list = flatten_output(t_out, t), flatten_output(p_out, p)
            for k, (a, b) in enumerate(zip(t_list, p_list)):
                name = f"step{step}/output" + (f"[{k}]" if len(t_list) > 1 else "")
                row = compare_arrays(name, a, b, Tolerance(tols[kinds["output"]].rtol), kinds["output"])
                result.rows.append(row)
                checkpoints.append((row, "output", None, None, step))
            del t_out, p_out, t_list, p_list
            row = compare_arrays(
                f"step{step}/loss", t.numpy(t_loss), p.numpy(p_loss), tols[kinds["loss"]], kinds["loss"]
            )
            result.rows.append(row)
            checkpoints.append((row, "loss", None, None, step))
            # Gradients, in backward-execution order.
            pairs = _param_order(pair, order)
            t_grads = {tn: t.grad(t_params[tn]) for tn, _ in pairs}
            floor = grad_floor(t_grads.values(), dtype)
            grad_tol = tols[kinds["grad"]]
            if g64 is not None:
                floor64 = grad_floor(g64.values(), dtype)
                own = max(
                    compare_arrays(tn, g64[tn], t_grads[tn], grad_tol, "grad", floor=floor64).rel for tn, _ in pairs
                )
                if FLOAT32_BAND_MARGIN * own > grad_tol.rtol:
                    grad_tol = Tolerance(float(f"{FLOAT32_BAND_MARGIN * own:.2g}"))
                    result.notes.append(
                        f"step {step}: float32 gradient bound {grad_tol.rtol:g} = {FLOAT32_BAND_MARGIN:g} x torch's "
                        f"own float32 error {own:.2e} (against float64 at the same parameters)"
                    )
            grad_rows = []
            for tn, pn in pairs:
                note = "" if tn == pn else f"paddle {pn}"
                g_p = p.grad(p_params[pn])
                if tn in pair.tensors.transposed:
                    g_p = g_p.T
                row = compare_arrays(
                    f"step{step}/grad/{tn}",
                    t_grads[tn],
                    g_p,
                    grad_tol,
                    kinds["grad"],
                    floor=floor,
                    note=note,
                )
                grad_rows.append(row)
                checkpoints.append((row, "grad", tn, pn, step))
            result.rows += grad_rows
            result.layers[f"step {step} gradients"] = grad_rows
            # The optimiser step, then parameters and buffers.
            user_call("--torch-optimizer", t.optimizer_step, torch_optimizer)
            user_call("--paddle-optimizer", p.optimizer_step, paddle_optimizer)
            t.clear_grads(tm)
            p.clear_grads(pm)
            param_rows = []
            for tn, pn in pairs:
                value = p.numpy(p_params[pn])
                if tn in pair.tensors.transposed:
                    value = value.T
                note = "" if tn == pn else f"paddle {pn}"
                after = t.numpy(t_params[tn])
                param_tol = tols[kinds["param"]]
                if before and after.size:
                    # float32: the update carries the gradients' float32 error, in proportion to
                    # its size against the parameter's.
                    ratio = float(np.abs(after - before[tn]).max()) / max(float(np.abs(after).max()), 1e-30)
                    band = FLOAT32_BAND_MARGIN * own * ratio
                    if band > param_tol.rtol:
                        param_tol = Tolerance(float(f"{band:.2g}"))
                        note = (note + "; " if note else "") + f"float32 band: update/param {ratio:.1e}"
                row = compare_arrays(
                    f"step{step}/param/{tn}",
                    after,
                    value,
                    param_tol,
                    kinds["param"],
                    note=note,
                )
                param_rows.append(row)
                checkpoints.append((row, "param", tn, pn, step))
            result.rows += param_rows
            result.layers[f"step {step} parameters after the update"] = param_rows
            for tn, pn in pair.tensors.buffers:
                a, b = t.numpy(t_params[tn]), p.numpy(p_params[pn])
                owner, _, local = tn.rpartition(".")
                note = "" if tn == pn else f"paddle {pn}"
                if local == "running_var" and owner in bn_names:
                    a = recorder.paddle_equivalent_var(owner, a, step)
                    note = (note + "; " if note else "") + "torch converted to the biased-variance rule"
                row = compare_arrays(f"step{step}/buffer/{tn}", a, b, tols[kinds["buffer"]], kinds["buffer"], note=note)
                result.rows.append(row)
                checkpoints.append((row, "buffer", tn, pn, step))
    tm.eval()
    pm.eval()
    failing = next((c for c in checkpoints if not c[0].passed), None)
    if failing is not None:
        row, kind, tn, pn, step = failing
        what = f"{kind} of {tn}" + (f" (paddle {pn})" if pn != tn else "") if tn else kind
        summary = f"step {step}: {what}: rel {row.rel:.3e} > {row.tol.rtol:.0e}"
        if kind == "param" and all(r.passed for r in result.rows if r.name.startswith(f"step{step}/grad/")):
            summary += f" -- the step-{step} gradients agree, so the optimiser step differs"
        result.first_divergence = Divergence(
            f"step {step}: {what}",
            summary,
            value=row.name,
            torch=tn,
            paddle=pn,
            stage="backward",
            step=step,
            kind=kind,
            parameter=tn,
        )
    result.notes += pair.notes
    return finish_stage(result, start, out_dir, {}, {})


# ----------------------------------------------------------------------------------------------
# The Python API
# ----------------------------------------------------------------------------------------------


__all__ = ["STEP_START", "Pair", "backward", "forward", "prepare", "training_mode"]

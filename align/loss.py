"""Stage 2, loss: the training losses of torch_ref and paddle_impl on IDENTICAL logits.

Fed the same logits (deterministic, N(0, 3^2): confident and unsure pixels alike) and the
fixture labels (with 255 ignore pixels), each side's loss function gives a value and, by
autograd, the gradient w.r.t. the logits; both are compared. This isolates the loss from the
network. Then the loss once more through each model's training-mode forward (which also
exercises FarSeg's ``buffer_step`` increment), compared with the forward tolerance.

FarSeg (SPEC 3): the annealing loss at steps 1, 5000 and 30000, plus, within EACH framework,
the two identities that make the step handling testable: the loss value is the same at every
step, and grad(t) = a(t) grad(0) + (1 - a(t)) grad(t > 10000) with a(t) = (cos(pi t/1e4)+1)/2.
A batch whose pixels are all ignored must give 0 (the official code gives 0/0) on both sides.

FactSeg (SPEC 4): the joint loss with small-object mining, and its gradients w.r.t. both the
multi-class (fg) and the binary (bi) logits.

``python -m align.loss --model farseg``; see ``--help``.
"""
from __future__ import annotations

import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare import Divergence, Row, StageResult, Tolerance, compare_arrays, finish_stage
from .config import AlignConfig
from .fixtures import Fixture, get_fixture, versions
from .sides import SIDES, Side

STAGE = "loss"
LOGIT_SCALE = 3.0
T_MAX = 10000  # SPEC 3: the cosine ramp ends here
AFTER_RAMP = 1_000_000  # any step > T_MAX: pure focal weighting


def annealing_weight(step: float) -> float:
    """a(t) from SPEC 3, written independently of both ports."""
    return 0.0 if step > T_MAX else (math.cos(math.pi * step / T_MAX) + 1.0) / 2.0


def make_logits(config: AlignConfig, shape: Tuple[int, ...], salt: int) -> np.ndarray:
    """Deterministic logits of ``shape`` in the run's dtype."""
    rng = np.random.default_rng([config.seed, salt])
    return (LOGIT_SCALE * rng.standard_normal(shape)).astype(config.dtype)


def side_loss(side: Side, model: str, logits: Sequence[np.ndarray], labels: np.ndarray,
              step: Optional[float] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
    """``side``'s loss of ``model`` on ``logits`` and its gradient w.r.t. each logits tensor
    (the package's ``losses`` module is looked up at call time, so patches apply)."""
    losses = side.package("losses")
    tensors = [side.tensor(a, requires_grad=True) for a in logits]
    target = side.tensor(labels)
    if model == "farseg":
        value = losses.annealing_softmax_focal_loss(tensors[0], target, step)
    else:
        value = losses.joint_loss(tensors[0], tensors[1], target)
    value.backward()
    return side.numpy(value), [side.numpy(t.grad) for t in tensors]


def _through_models(fx: Fixture, step: Optional[int]) -> Tuple[Dict[str, np.ndarray], ...]:
    """The loss from each model's own training-mode forward (FarSeg: ``buffer_step`` set to
    ``step - 1``, so the forward's increment lands on ``step``)."""
    fx.reset()
    fx.mark_dirty()
    outputs = []
    for side in SIDES:
        model = fx.models[side.name]
        x, y = fx.inputs(side)
        out: Dict[str, np.ndarray] = {}
        if step is not None:
            side.fill(model.buffer_step, step - 1)
        model.train()
        with side.no_grad():
            losses = model(x, {"cls": y})
        out.update((f"model/{key}", side.numpy(value)) for key, value in losses.items())
        if step is not None:
            out["model/buffer_step"] = side.numpy(model.buffer_step)
        outputs.append(out)
    fx.reset()
    return tuple(outputs)


def _identity_rows(side: str, values: Dict[float, np.ndarray], grads: Dict[float, np.ndarray],
                   steps: Sequence[int], tol: Tolerance) -> List[Row]:
    """FarSeg's identities within one framework (reference = what the identity predicts)."""
    rows = []
    g0, g_inf = grads[0], grads[AFTER_RAMP]
    for t in steps:
        a = annealing_weight(t)
        rows.append(compare_arrays(f"identity/{side}/value_step{t}_eq_step0", values[0], values[t], tol,
                                   "identity", note="SPEC 3: the loss value does not depend on t"))
        rows.append(compare_arrays(f"identity/{side}/grad_step{t}", a * g0 + (1.0 - a) * g_inf, grads[t], tol,
                                   "identity", note=f"a(t)={a:.6f}: a*grad(0) + (1-a)*grad(t>1e4)"))
    return rows


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the loss stage for ``config``; write its files when ``config.out`` is set
    (``progress`` is unused: the stage is quick)."""
    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tols = config.tolerances()
    tol, tol_id, tol_fwd = tols["loss"], tols["identity"], tols["forward_train"]
    model = config.model
    labels = fx.y
    batch, _, height, width = fx.x.shape
    t_log: Dict[str, np.ndarray] = {}
    p_log: Dict[str, np.ndarray] = {}
    result = StageResult(STAGE, model, config.dtype)
    result.settings = {**fx.describe(), "logits": f"N(0, {LOGIT_SCALE:g}^2), seed {config.seed}",
                       "tolerances": {k: tols[k].describe() for k in ("loss", "identity", "forward_train", "counter")},
                       **versions()}

    def add(name: str, t_value: np.ndarray, p_value: np.ndarray, kind_tol: Tolerance, kind: str,
            note: str = "") -> None:
        t_log[name], p_log[name] = np.asarray(t_value), np.asarray(p_value)
        result.rows.append(compare_arrays(name, t_value, p_value, kind_tol, kind, note=note))

    if model == "farseg":
        logits = [make_logits(config, (batch, 16, height, width), 1)]
        steps = tuple(config.loss_steps)
        t_values, p_values, t_grads, p_grads = {}, {}, {}, {}
        for t in (0,) + steps + (AFTER_RAMP,):
            (t_values[t], (t_grads[t],)), (p_values[t], (p_grads[t],)) = (
                side_loss(side, model, logits, labels, t) for side in SIDES)
        for t in steps:
            add(f"step{t}/loss", t_values[t], p_values[t], tol, "loss")
            add(f"step{t}/grad_logits", t_grads[t], p_grads[t], tol, "loss")
        result.rows += _identity_rows("torch", t_values, t_grads, steps, tol_id)
        result.rows += _identity_rows("paddle", p_values, p_grads, steps, tol_id)
        # All pixels ignored: the official 0/0 must be guarded on both sides (0, finite gradient).
        ignored = np.full_like(labels, 255)
        (t_zero, (t_zero_grad,)), (p_zero, (p_zero_grad,)) = (
            side_loss(side, model, logits, ignored, steps[0]) for side in SIDES)
        add("all_ignored/loss", t_zero, p_zero, tol, "loss", note="must be 0 on both sides")
        add("all_ignored/grad_logits", t_zero_grad, p_zero_grad, tol, "loss")
        if not (float(t_zero) == 0.0 and np.isfinite(t_zero_grad).all()):
            result.notes.append("torch_ref gives a non-zero or non-finite loss on an all-ignored batch")
        model_step: Optional[int] = steps[len(steps) // 2]
    else:
        logits = [make_logits(config, (batch, 16, height, width), 1),
                  make_logits(config, (batch, 1, height, width), 2)]
        (t_value, t_grads_list), (p_value, p_grads_list) = (side_loss(side, model, logits, labels)
                                                            for side in SIDES)
        add("joint_loss", t_value, p_value, tol, "loss")
        add("grad_fg_logits", t_grads_list[0], p_grads_list[0], tol, "loss")
        add("grad_bi_logits", t_grads_list[1], p_grads_list[1], tol, "loss")
        model_step = None

    t_model, p_model = _through_models(fx, model_step)
    for name in t_model:
        is_counter = name.endswith("buffer_step")
        add(name, t_model[name], p_model[name], tols["counter"] if is_counter else tol_fwd,
            "counter" if is_counter else "forward_train",
            note=(f"buffer_step {model_step - 1} before the training forward" if is_counter else
                  "through the training-mode forward" + (f" at step {model_step}" if model_step else "")))

    failed = result.failed_rows()
    if failed:
        first = failed[0]
        result.first_divergence = Divergence(first.name, f"{first.name}: rel {first.rel:.3e} > {first.tol.rtol:.0e}"
                                             + (f" ({first.note})" if first.note else ""))
    return finish_stage(result, start, config.out_dir(STAGE), t_log, p_log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.loss``."""
    from .cli import stage_main

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage 2, loss: the training losses of torch_ref and paddle_impl on IDENTICAL logits.

Each side's loss and its autograd gradient w.r.t. the logits (N(0, 3^2); the fixture labels,
with ignore pixels) are compared, which isolates the loss from the network; then the loss once
more through each model's training-mode forward (and FarSeg's ``buffer_step`` increment).

FarSeg (docs/official_models.md, "FarSeg"): the annealing loss at steps 1, 5000 and 30000, and
within EACH framework the identities that make the step handling testable: value(t) = value(0)
and grad(t) = a(t) grad(0) + (1 - a(t)) grad(t > 1e4); an all-ignored batch gives 0 on both
sides (the official code: 0/0). FactSeg: the joint loss and its gradients w.r.t. both heads.
``saturated/`` rows: the same on a confident model's logits (align/saturated.py), which reach
Paddle's clamp of log-probabilities at -64 (docs/paddle_numerics.md), plus FactSeg's fused
(log-)probabilities: a clamped primitive on any of these paths fails there.

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
from .saturated import DESCRIPTION as SATURATED_DESCRIPTION
from .saturated import saturated_inputs
from .sides import SIDES, Side

STAGE = "loss"
LOGIT_SCALE = 3.0
T_MAX = 10000  # the cosine ramp ends here (docs/official_models.md, "FarSeg")
AFTER_RAMP = 1_000_000  # any step > T_MAX: pure focal weighting
GRAD_NAMES = {"farseg": ("grad_logits",), "factseg": ("grad_fg_logits", "grad_bi_logits")}  # per logits input


def annealing_weight(step: float) -> float:
    """a(t) of docs/official_models.md, "FarSeg", written independently of both ports."""
    return 0.0 if step > T_MAX else (math.cos(math.pi * step / T_MAX) + 1.0) / 2.0


def make_logits(config: AlignConfig, shape: Tuple[int, ...], salt: int) -> np.ndarray:
    """Deterministic logits of ``shape`` in the run's dtype."""
    rng = np.random.default_rng([config.seed, salt])
    return (LOGIT_SCALE * rng.standard_normal(shape)).astype(config.dtype)


def side_loss(
    side: Side, model: str, logits: Sequence[np.ndarray], labels: np.ndarray, step: Optional[float] = None
) -> Tuple[np.ndarray, List[np.ndarray]]:
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


def side_fused_log_probs(side: Side, fg: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """``side``'s FactSeg fused log-probabilities (``losses.joint_log_probs``, the eval output's log)."""
    with side.no_grad():
        return side.numpy(side.package("losses").joint_log_probs(side.tensor(fg), side.tensor(bi)))


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


def _identity_rows(
    side: str, values: Dict[float, np.ndarray], grads: Dict[float, np.ndarray], steps: Sequence[int], tol: Tolerance
) -> List[Row]:
    """FarSeg's identities within one framework (reference = what the identity predicts)."""
    rows = []
    g0, g_inf = grads[0], grads[AFTER_RAMP]
    for t in steps:
        a = annealing_weight(t)
        name, note = f"identity/{side}/value_step{t}_eq_step0", "the loss value does not depend on t"
        rows.append(compare_arrays(name, values[0], values[t], tol, "identity", note=note))
        expected, note = a * g0 + (1.0 - a) * g_inf, f"a(t)={a:.6f}: a*grad(0) + (1-a)*grad(t>1e4)"
        rows.append(compare_arrays(f"identity/{side}/grad_step{t}", expected, grads[t], tol, "identity", note=note))
    return rows


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the loss stage for ``config``; write its files when ``config.out`` is set
    (``progress`` is unused: the stage is quick)."""
    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tols = config.tolerances()
    model = config.model
    labels = fx.y
    batch, _, height, width = fx.x.shape
    t_log: Dict[str, np.ndarray] = {}
    p_log: Dict[str, np.ndarray] = {}
    result = StageResult(STAGE, model, config.dtype)
    result.settings = {
        **fx.describe(),
        "logits": f"N(0, {LOGIT_SCALE:g}^2), seed {config.seed}",
        "saturated": SATURATED_DESCRIPTION,
        "tolerances": {k: tols[k].describe() for k in ("loss", "identity", "forward", "forward_train", "counter")},
        **versions(),
    }

    def add(name: str, t_value: np.ndarray, p_value: np.ndarray, kind: str = "loss", note: str = "") -> None:
        t_log[name], p_log[name] = np.asarray(t_value), np.asarray(p_value)
        result.rows.append(compare_arrays(name, t_value, p_value, tols[kind], kind, note=note))

    steps = tuple(config.loss_steps) if model == "farseg" else (None,)  # FactSeg's loss has no step

    def add_losses(prefix: str, logits: List[np.ndarray], labels: np.ndarray) -> Dict[Optional[int], tuple]:
        """Both sides' loss and its gradients at each step, as rows; returns them per step."""
        found = {}
        for t in steps:
            (t_value, t_grads), (p_value, p_grads) = found[t] = tuple(
                side_loss(side, model, logits, labels, t) for side in SIDES
            )
            head = prefix if t is None else f"{prefix}step{t}/"
            add(head + ("loss" if model == "farseg" else "joint_loss"), t_value, p_value)
            for name, t_grad, p_grad in zip(GRAD_NAMES[model], t_grads, p_grads):
                add(head + name, t_grad, p_grad)
        return found

    fg_logits = make_logits(config, (batch, 16, height, width), 1)
    if model == "farseg":
        found = add_losses("", [fg_logits], labels)
        for t in (0, AFTER_RAMP):
            found[t] = tuple(side_loss(side, model, [fg_logits], labels, t) for side in SIDES)
        for i, side_name in enumerate(("torch", "paddle")):
            values, grads = {t: v[i][0] for t, v in found.items()}, {t: v[i][1][0] for t, v in found.items()}
            result.rows += _identity_rows(side_name, values, grads, steps, tols["identity"])
        # All pixels ignored: the official 0/0 must be guarded on both sides (0, finite gradient).
        ignored = np.full_like(labels, 255)
        (t_zero, (t_zero_grad,)), (p_zero, (p_zero_grad,)) = (
            side_loss(side, model, [fg_logits], ignored, steps[0]) for side in SIDES
        )
        add("all_ignored/loss", t_zero, p_zero, note="must be 0 on both sides")
        add("all_ignored/grad_logits", t_zero_grad, p_zero_grad)
        if not (float(t_zero) == 0.0 and np.isfinite(t_zero_grad).all()):
            result.notes.append("torch_ref gives a non-zero or non-finite loss on an all-ignored batch")
        model_step: Optional[int] = steps[len(steps) // 2]
    else:
        add_losses("", [fg_logits, make_logits(config, (batch, 1, height, width), 2)], labels)
        model_step = None

    # The saturated fixture: what a confident model's logits do to each side's primitives.
    sat_fg, sat_bi, sat_labels = saturated_inputs((batch, 16, height, width), config.seed, config.dtype)
    add_losses("saturated/", [sat_fg] if model == "farseg" else [sat_fg, sat_bi], sat_labels)
    if model == "factseg":
        t_log_p, p_log_p = (side_fused_log_probs(side, sat_fg, sat_bi) for side in SIDES)
        note = "the eval output's logarithm: -64 against -200 shows here"
        add("saturated/fused_log_probs", t_log_p, p_log_p, "forward", note=note)
        add("saturated/fused_probs", np.exp(t_log_p), np.exp(p_log_p), "forward", note="the eval output")

    t_model, p_model = _through_models(fx, model_step)
    for name in t_model:
        if name.endswith("buffer_step"):
            note = f"buffer_step {model_step - 1} before the training forward"
            add(name, t_model[name], p_model[name], "counter", note=note)
        else:
            note = "through the training-mode forward" + (f" at step {model_step}" if model_step else "")
            add(name, t_model[name], p_model[name], "forward_train", note=note)

    failed = result.failed_rows()
    if failed:
        first = failed[0]
        result.first_divergence = Divergence(
            first.name,
            f"{first.name}: rel {first.rel:.3e} > {first.tol.rtol:.0e}" + (f" ({first.note})" if first.note else ""),
        )
    return finish_stage(result, start, config.out_dir(STAGE), t_log, p_log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.loss``."""
    from .cli import stage_main

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

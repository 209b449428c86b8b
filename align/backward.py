"""Stage 3, backward: k iterations of the trainers' own ``TrainStep`` on both sides.

Both trainers are built from ONE recipe, the ``train`` section of configs/<model>_isaid.yaml
(``AlignConfig.recipe``: no mixed precision, lr x ``--lr-scale``). Between the two halves of each
iteration (``compute_gradients``, ``apply_gradients``) the stage compares the loss, the lr, the
global gradient norm before clipping and every parameter gradient; after the update every
parameter and BatchNorm running statistic; at the end FarSeg's ``buffer_step``. Step 1 is held to
the sharp ``grad`` / ``param`` / ``running_stat`` thresholds, later steps to the ``*drift`` ones;
why float64 runs at 0.01 x lr is in ``align.compare`` above ``DEFAULT_TOLERANCES``. The first
failing value in causal order is reported as the first divergence, with an explanation.

Two known framework differences are accounted for, not hidden:

- running variance: torch updates it with the UNBIASED batch variance (x n/(n-1), n = B*H*W
  per channel), Paddle with the biased one (``tests/test_align.py``). ``BatchNormRecorder``
  converts the torch value to Paddle's rule from the same batches,
  rv_paddle = rv_torch - sum_k (1-m)^(K-k) m v_k / (n_k - 1) (m = 0.1); each row's note has the
  uncorrected difference.
- clipping: torch scales by clip / (norm + 1e-6), Paddle by clip / max(norm, clip): every
  clipped update differs by 1e-6 / norm relative by design; reported, not corrected.

Clipping must bind, or a per-tensor clip could pass unnoticed: at step 1 the global norm is ~347
(FarSeg) / ~495 (FactSeg) against the clip of 35. The report says whether it bound;
``--loss-scale`` multiplies the loss where it would not.

``python -m align.backward --model farseg [--steps K]``; see ``--help``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .batchnorm import BatchNormRecorder
from .compare import (
    Divergence,
    Localisation,
    Row,
    StageResult,
    around,
    compare_arrays,
    failed_row,
    finish_stage,
    format_rows,
    grad_floor,
)
from .config import AlignConfig
from .fixtures import Fixture, get_fixture, versions
from .localise import CONTEXT, backward_parameter_order
from .sides import PADDLE, SIDES, TORCH

STAGE = "backward"
# The thresholds the report's header lists.
SHOWN_KINDS = ("forward_train", "lr", "grad", "param", "running_stat", "drift", "param_drift", "stat_drift", "counter")


class ScaledLoss:
    """The model as the trainer calls it, with every loss multiplied by ``scale`` (``--loss-scale``)."""

    def __init__(self, model: Any, scale: float) -> None:
        self.model, self.scale = model, scale

    def train(self) -> None:
        self.model.train()

    def __call__(self, *args: Any) -> Dict[str, Any]:
        return {key: value * self.scale for key, value in self.model(*args).items()}


def _state_rows(step: int, kinds: Tuple[str, str], run: "_Run") -> List[Row]:
    """Rows for every parameter and BatchNorm statistic after the update of ``step``."""
    param_kind, stat_kind = kinds
    p_tol, s_tol = run.tols[param_kind], run.tols[stat_kind]
    rows = [
        compare_arrays(f"step{step}/param/{n}", t.detach().numpy(), run.p_params[n].numpy(), p_tol, param_kind)
        for n, t in run.t_params.items()
    ]
    for bn in run.bn_names:
        (t_mean, t_var), (p_mean, p_var) = (side.bn_stats(run.fx.models[side.name], bn) for side in SIDES)
        raw = compare_arrays("raw", t_var, p_var, s_tol, stat_kind)
        rows.append(compare_arrays(f"step{step}/running_mean/{bn}", t_mean, p_mean, s_tol, stat_kind))
        note = f"torch converted to the biased-variance rule; uncorrected rel {raw.rel:.1e}"
        t_var = run.recorder.paddle_equivalent_var(bn, t_var, step)
        rows.append(compare_arrays(f"step{step}/running_var/{bn}", t_var, p_var, s_tol, stat_kind, note=note))
    return rows


@dataclass
class _Run:
    """The state of one backward-stage run (both sides' models, steps and parameters)."""

    fx: Fixture
    config: AlignConfig
    tols: Dict[str, Any]
    t_params: "OrderedDict[str, Any]"
    p_params: "OrderedDict[str, Any]"
    bn_names: List[str]
    recorder: BatchNormRecorder
    order: List[str] = field(default_factory=list)  # parameters in backward-execution order
    checkpoints: List[Tuple[str, Row]] = field(default_factory=list)  # causal order
    grad_tables: Dict[int, List[Row]] = field(default_factory=dict)  # step -> rows in backward order


def _guarded(run_: _Run, result: StageResult, step: int, side: str, half: str, train_step: Any, *args: Any) -> Any:
    """``train_step.<half>(*args)``, or None after recording a failing row when it raises: a
    trainer that crashes where the other runs differs, and the report says how."""
    try:
        return getattr(train_step, half)(*args) or True
    except Exception as exc:  # noqa: BLE001 - any error of one trainer becomes a reported divergence
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = (
            " (no float64 CPU kernel in this framework for an op this trainer uses: compare with --dtype float32)"
            if "float64" in message and "not registered" in message
            else ""
        )
        note = f"{side} TrainStep.{half} raised {type(exc).__name__}: {message}{hint}"
        row = failed_row(f"step{step}/{side}/{half}", "exact", run_.tols["exact"], note)
        result.rows.append(row)
        run_.checkpoints.append((f"step {step}: {side} TrainStep.{half} raised {type(exc).__name__}{hint}", row))
        return None


def _explain(run: _Run, where: str, step: int) -> str:
    if "after the update" in where and all(r.passed for r in run.grad_tables.get(step, [])):
        return (
            f" -- the step-{step} gradients agree, so the optimiser step differs "
            "(clipping, weight decay, momentum or learning rate)"
        )
    if "BatchNorm" in where and step == 1:
        return " -- gradients and parameters agree, so the BatchNorm running-statistics update differs (momentum?)"
    return ""


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the backward stage for ``config``; write its files when ``config.out`` is set."""
    from tqdm import tqdm

    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tols = config.tolerances()
    recipe = config.recipe()
    scale = 1.0 if config.loss_scale is None else config.loss_scale
    fx.reset()
    fx.mark_dirty()
    tm, pm = fx.torch_model, fx.paddle_model
    (tx, ty), (px, py) = (fx.inputs(side) for side in SIDES)
    t_step, p_step = (
        side.train_step(fx.models[side.name], recipe, ScaledLoss(fx.models[side.name], scale) if scale != 1.0 else None)
        for side in SIDES
    )
    run_ = _Run(
        fx, config, tols, TORCH.parameters(tm), PADDLE.parameters(pm), TORCH.batchnorms(tm), BatchNormRecorder(tm)
    )
    result_pairing = [{"torch": n, "paddle": n} for n, _ in TORCH.modules(tm)]
    if list(run_.t_params) != list(run_.p_params):
        extra = sorted(set(run_.t_params) ^ set(run_.p_params))
        raise RuntimeError(f"trainable parameters differ between torch_ref and paddle_impl: {extra[:5]}")

    result = StageResult(STAGE, config.model, config.dtype, pairing=result_pairing)
    result.settings = {
        **fx.describe(),
        "steps": config.steps,
        "recipe": {
            k: recipe[k] for k in ("lr", "momentum", "weight_decay", "iterations", "poly_power", "clip_norm", "amp")
        },
        "recipe_source": f"configs/{config.model}_isaid.yaml (train), lr x{config.effective_lr_scale:g}",
        "loss_scale": scale,
        "tolerances": {k: tols[k].describe() for k in SHOWN_KINDS},
        **versions(),
    }
    # The reprod_log files: loss, lr and global gradient norm (before clipping) per step.
    values: Dict[str, Dict[str, np.ndarray]] = {side.name: {} for side in SIDES}
    clip = float(recipe["clip_norm"])
    with run_.recorder.hooked():
        for step in tqdm(
            range(1, config.steps + 1), desc=f"backward {config.model}", unit="step", disable=not progress, leave=False
        ):
            sharp = step == 1
            # Step 1 records the order in which backward reaches the parameters.
            with backward_parameter_order(tm) if sharp else nullcontext(run_.order) as run_.order:
                t_res = _guarded(run_, result, step, TORCH.name, "compute_gradients", t_step, tx, ty)
            p_res = _guarded(run_, result, step, PADDLE.name, "compute_gradients", p_step, px, py)
            if t_res is None or p_res is None:
                break
            t_log, p_log = (
                {"loss": float(r.loss), "lr": float(r.lr), "grad_norm": float(r.grad_norm)} for r in (t_res, p_res)
            )
            for side, log in zip(SIDES, (t_log, p_log)):
                values[side.name].update((f"{key}_step{step}", np.asarray(v)) for key, v in log.items())
            norm = t_log["grad_norm"]
            scalar_kinds = {
                "loss": "forward_train" if sharp else "drift",
                "lr": "lr",
                "grad_norm": "grad" if sharp else "drift",
            }
            scalars = {
                name: compare_arrays(f"step{step}/{name}", t_log[name], p_log[name], tols[kind], kind)
                for name, kind in scalar_kinds.items()
            }
            result.rows += list(scalars.values())
            run_.checkpoints += [(f"step {step}: {name}", scalars[name]) for name in ("loss", "lr")]

            t_grads = OrderedDict((n, TORCH.grad(p)) for n, p in run_.t_params.items())
            floor = grad_floor(t_grads.values(), config.dtype)
            kind = "grad" if sharp else "drift"
            grad_rows = {
                n: compare_arrays(f"step{step}/grad/{n}", t_grads[n], PADDLE.grad(p), tols[kind], kind, floor=floor)
                for n, p in run_.p_params.items()
            }
            result.rows += list(grad_rows.values())
            run_.grad_tables[step] = [grad_rows[n] for n in run_.order]
            result.layers[f"step {step} gradients"] = run_.grad_tables[step]
            run_.checkpoints += [(f"step {step}: gradient of {n} (backward order)", grad_rows[n]) for n in run_.order]
            if sharp:
                largest = max(t_grads, key=lambda n: float(np.dot(t_grads[n].ravel(), t_grads[n].ravel())))
                result.notes.append(
                    f"step 1: global gradient norm {norm:.4g} (clip {clip:g}: "
                    f"{'clipping binds' if norm > clip else 'NO CLIPPING'}); largest single tensor "
                    f"{largest} {np.linalg.norm(t_grads[largest].ravel()):.4g}; gradient floor {floor:.2e}"
                )
            if norm > clip:
                result.notes.append(
                    f"step {step}: clipping scales by {clip:g}/(norm + 1e-6) in torch and by {clip:g}/norm in "
                    f"Paddle: every update differs by {1e-6 / norm:.1e} relative by design"
                )
            # The global norm summarises the gradients: after them in the causal order, so that a
            # gradient bug is reported at the first parameter it reaches, not at the norm.
            run_.checkpoints.append((f"step {step}: grad_norm", scalars["grad_norm"]))
            if (
                _guarded(run_, result, step, TORCH.name, "apply_gradients", t_step, t_res.grad_norm) is None
                or _guarded(run_, result, step, PADDLE.name, "apply_gradients", p_step, p_res.grad_norm) is None
            ):
                break
            rows = _state_rows(step, ("param", "running_stat") if sharp else ("param_drift", "stat_drift"), run_)
            result.rows += rows
            by_name = {r.name: r for r in rows}
            if sharp:
                result.layers[f"step {step} parameters after the update"] = [
                    by_name[f"step{step}/param/{n}"] for n in run_.order
                ]
            run_.checkpoints += [
                (f"step {step}: parameter {n} after the update (backward order)", by_name[f"step{step}/param/{n}"])
                for n in run_.order
            ]
            run_.checkpoints += [
                (f"step {step}: BatchNorm {r.name.split('/')[1]} of {r.name.split('/', 2)[2]}", r)
                for r in rows
                if "/running_" in r.name
            ]
    tm.eval()
    pm.eval()
    if config.model == "farseg":
        t_buf, p_buf = TORCH.numpy(tm.buffer_step), PADDLE.numpy(pm.buffer_step)
        note = f"{config.steps} training forwards from 0"
        row = compare_arrays("final/buffer_step", t_buf, p_buf, tols["counter"], "counter", note=note)
        result.rows.append(row)
        run_.checkpoints.append((f"step {config.steps}: buffer_step", row))
    _first_divergence(result, run_)

    if config.full_logs:
        for n in run_.t_params:
            values[TORCH.name][f"param/{n}"] = TORCH.numpy(run_.t_params[n])
            values[PADDLE.name][f"param/{n}"] = PADDLE.numpy(run_.p_params[n])
    fx.reset()
    return finish_stage(result, start, config.out_dir(STAGE), values[TORCH.name], values[PADDLE.name])


def _first_divergence(result: StageResult, run_: _Run) -> None:
    """Name the first failing value in causal order (and tabulate gradients around it)."""
    failing = next(((where, row) for where, row in run_.checkpoints if not row.passed), None)
    if failing is None:
        return
    where, row = failing
    step = int(where.split(":")[0].split()[1])
    summary = f"{where}: rel {row.rel:.3e} > {row.tol.rtol:.0e}{_explain(run_, where, step)}"
    result.first_divergence = Divergence(where, summary, value=row.name, step=step)
    _name_divergence(result.first_divergence, row.name)
    if run_.config.localise and "gradient of" in where:
        table = run_.grad_tables[step]
        index = next(i for i, r in enumerate(table) if not r.passed)
        shown = around(table, index, CONTEXT)
        title = f"step-{step} parameter gradients around the first divergence (backward-execution order):"
        lines, rows = [title, *format_rows(shown)], [r.to_json() for r in shown]
        result.localisation = Localisation(row.name.split("/", 2)[-1], index, lines, rows, step=step)
        result.first_divergence.where = result.localisation.first


# The kind (diff.json's first_divergence.kind) of each value name's second part.
DIVERGENCE_KINDS = {
    "loss": "loss",
    "lr": "param",  # the learning rate reaches the model through the update
    "grad_norm": "grad",
    "grad": "grad",
    "param": "param",
    "running_mean": "buffer",
    "running_var": "buffer",
    "buffer_step": "buffer",
}


def _name_divergence(divergence: Divergence, value: str) -> None:
    """Fill ``kind`` and the torch / Paddle ``parameter`` names (the ports share them) from the
    failing value's name (``step2/grad/<parameter>``, ``step1/loss``, ``final/buffer_step``)."""
    parts = value.split("/", 2)
    kind = parts[1] if len(parts) > 1 else parts[0]
    divergence.kind = DIVERGENCE_KINDS.get(kind, "loss")  # a trainer that raised: at its loss
    name = parts[2] if len(parts) == 3 else ("buffer_step" if kind == "buffer_step" else None)
    divergence.parameter = name
    divergence.torch = divergence.paddle = name


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.backward`` (with ``--torch``/``--paddle``: a user's pair, ``align.anycli``)."""
    from .anycli import pair_main
    from .cli import stage_main

    code = pair_main(STAGE, argv)
    if code is not None:
        return code

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

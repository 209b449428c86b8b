"""Stage 3, backward: a few optimiser steps of the official recipe on both sides.

From identical weights, each framework runs ``steps`` training iterations with its OWN pieces,
configured as the official recipe (SPEC 5):

- torch: ``torch.optim.SGD(momentum=0.9, weight_decay=1e-4)``, ``PolynomialLR(total_iters=60000,
  power=0.9)``, ``torch.nn.utils.clip_grad_norm_(35)``;
- Paddle: ``paddle.optimizer.Momentum(momentum=0.9, weight_decay=1e-4)`` (L2 decay),
  ``paddle.optimizer.lr.PolynomialDecay(decay_steps=60000, power=0.9, end_lr=0)``,
  ``paddle.nn.ClipGradByGlobalNorm(35)``.

Compared, every step: the loss, learning rate and global gradient norm. At step 1, with sharp
thresholds: every parameter gradient, then every parameter and BatchNorm running statistic after
the update. After the last step: every parameter, the BatchNorm statistics and FarSeg's
``buffer_step``, with the looser ``drift`` threshold: from step 2 on, the ~3e-10 step-1
differences grow ~100x per step (measured, FarSeg float64: parameters 3e-10 after step 1,
3e-5 after step 3; the large first updates of random weights under training-mode BN over few
elements amplify them), so later steps only catch gross errors. The first
failing value in causal order (step, then gradients in backward-execution order, then the
update, then the statistics) is reported as the first divergence, with an explanation.

Two known framework differences are accounted for, not hidden:

- running variance: torch updates it with the UNBIASED batch variance (x n/(n-1), n = elements
  per channel = B*H*W at that layer), Paddle with the biased one (measured, see
  ``tests/test_align.py``). The torch value is converted to what Paddle's rule gives from the
  same batches: a forward pre-hook records each BatchNorm's biased batch variance and n at
  every step, and rv_paddle = rv_torch - sum_k (1-m)^(K-k) m v_k / (n_k - 1) (m = 0.1). The
  uncorrected difference is in each row's note.
- clipping: torch scales by clip / (norm + 1e-6), Paddle by clip / max(norm, clip): every
  clipped update differs by 1e-6 / norm relative (measured on a bare parameter: exactly that).
  On the default fixture (norm ~350-500) it is the main step-1 parameter difference in float64
  (~3e-10 relative on the stem conv, whose first update is ~10% of its weights), 30x below the
  threshold; the report states it for every clipped step. Reported, not corrected.

Clipping must bind, or a per-tensor clip (``ClipGradByNorm``) could pass unnoticed. It does on
the default fixture without help: at step 1 the global gradient norm is ~347 (FarSeg) / ~495
(FactSeg) against the clip of 35, the stem conv alone ~314 / ~454, so a per-tensor clip gives
every tensor a different factor. The report says whether clipping bound; ``--loss-scale``
multiplies the loss for set-ups where it would not.

``python -m align.backward --model farseg``; see ``--help``.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare import Row, StageResult, compare_arrays, finish_stage, format_rows, grad_floor
from .config import AlignConfig
from .fixtures import LOSS_KEY, Fixture, get_fixture, versions
from .localize import CONTEXT, ExecutionOrder

STAGE = "backward"
TORCH_BN_MOMENTUM = 0.1  # torch convention (weight of the new batch statistic)

# Loss multipliers for the backward stage: 1, because clipping already binds on the default
# fixture (measured global norms ~347 / ~495 against 35; see the module docstring).
DEFAULT_LOSS_SCALE = {"farseg": 1.0, "factseg": 1.0}


@dataclass
class StepLog:
    """What one framework reports for one step."""

    loss: float
    lr: float
    grad_norm: float  # global L2 norm of the (scaled) gradients before clipping


@dataclass
class BatchNormRecorder:
    """Forward pre-hooks on torch's BatchNorms: biased batch variance and n per training call."""

    model: Any
    records: Dict[str, List[Tuple[int, np.ndarray]]] = field(default_factory=dict)
    handles: List[Any] = field(default_factory=list)

    def __enter__(self) -> "BatchNormRecorder":
        import torch

        def make_hook(name: str):
            def hook(module: Any, inputs: Any) -> None:
                if module.training:
                    x = inputs[0].detach().to(torch.float64)
                    n = x.numel() // x.shape[1]
                    var = x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
                    self.records.setdefault(name, []).append((n, var.numpy()))
            return hook

        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                self.handles.append(module.register_forward_pre_hook(make_hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def paddle_equivalent_var(self, name: str, torch_running_var: np.ndarray, steps: int) -> np.ndarray:
        """The running variance Paddle's biased rule gives from the first ``steps`` batches torch saw."""
        correction = np.zeros_like(torch_running_var, dtype=np.float64)
        for n, var in self.records.get(name, [])[:steps]:
            correction = (1.0 - TORCH_BN_MOMENTUM) * correction + TORCH_BN_MOMENTUM * var / (n - 1)
        return torch_running_var.astype(np.float64) - correction


def torch_training(model: Any, config: AlignConfig) -> Tuple[Any, Any]:
    """(optimizer, scheduler) of the official recipe from torch's own pieces."""
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=config.base_lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.max_iters,
                                                      power=config.lr_power)
    return optimizer, scheduler


def paddle_training(model: Any, config: AlignConfig) -> Tuple[Any, Any]:
    """(optimizer, scheduler) of the official recipe from Paddle's own pieces."""
    import paddle

    scheduler = paddle.optimizer.lr.PolynomialDecay(learning_rate=config.base_lr, decay_steps=config.max_iters,
                                                    end_lr=0.0, power=config.lr_power)
    optimizer = paddle.optimizer.Momentum(learning_rate=scheduler, momentum=config.momentum,
                                          parameters=[p for p in model.parameters() if not p.stop_gradient],
                                          weight_decay=config.weight_decay,
                                          grad_clip=paddle.nn.ClipGradByGlobalNorm(config.clip_norm))
    return optimizer, scheduler


def _global_norm(grads: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))


def _view(tensor: Any) -> np.ndarray:
    """numpy view of a torch tensor (no copy; compare before the tensor changes)."""
    return tensor.detach().numpy()


def _compare_state(tag: str, kinds: Tuple[str, str], tols: Dict[str, Any], t_params: Dict[str, Any],
                   p_params: Dict[str, Any], tm: Any, pm: Any, bn_names: Sequence[str],
                   recorder: BatchNormRecorder, upto: int) -> List[Row]:
    """Rows for every parameter and BatchNorm statistic after step ``upto``."""
    param_kind, stat_kind = kinds
    rows = [compare_arrays(f"{tag}/param/{n}", _view(t_params[n]), p_params[n].numpy(), tols[param_kind],
                           param_kind) for n in t_params]
    t_state = tm.state_dict()
    p_state = pm.state_dict()
    for bn in bn_names:
        t_var = _view(t_state[f"{bn}.running_var"])
        p_var = p_state[f"{bn}._variance"].numpy()
        raw = compare_arrays("raw", t_var, p_var, tols[stat_kind], stat_kind)
        rows.append(compare_arrays(f"{tag}/running_mean/{bn}", _view(t_state[f"{bn}.running_mean"]),
                                   p_state[f"{bn}._mean"].numpy(), tols[stat_kind], stat_kind))
        rows.append(compare_arrays(f"{tag}/running_var/{bn}", recorder.paddle_equivalent_var(bn, t_var, upto),
                                   p_var, tols[stat_kind], stat_kind,
                                   note=f"torch converted to the biased-variance rule; uncorrected rel {raw.rel:.1e}"))
    return rows


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the backward stage for ``config``; write its files when ``config.out`` is set."""
    import torch
    from tqdm import tqdm

    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tols = config.tolerances()
    model_name = config.model
    key = LOSS_KEY[model_name]
    scale = DEFAULT_LOSS_SCALE[model_name] if config.loss_scale is None else config.loss_scale
    fx.reset()
    fx.mark_dirty()
    tm, pm = fx.torch_model, fx.paddle_model
    tx, ty = fx.torch_inputs()
    px, py = fx.paddle_inputs()
    t_opt, t_sched = torch_training(tm, config)
    p_opt, p_sched = paddle_training(pm, config)
    t_params = OrderedDict(tm.named_parameters())
    # Paddle lists BatchNorm's _mean/_variance among its parameters (stop_gradient=True).
    p_params = OrderedDict((n, p) for n, p in pm.named_parameters() if not p.stop_gradient)
    if list(t_params) != list(p_params):
        extra = sorted(set(t_params) ^ set(p_params))
        raise RuntimeError(f"trainable parameters differ between torch_ref and paddle_impl: {extra[:5]}")
    bn_names = [n for n, m in tm.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    result = StageResult(STAGE, model_name, config.dtype)
    result.settings = {**fx.describe(), "steps": config.steps,
                       "recipe": f"SGD momentum {config.momentum}, weight decay {config.weight_decay}, "
                                 f"lr {config.base_lr}*(1-k/{config.max_iters})^{config.lr_power}, "
                                 f"global-norm clip {config.clip_norm}",
                       "loss_scale": scale,
                       "tolerances": {k: tols[k].describe() for k in
                                      ("forward_train", "lr", "grad", "param", "running_stat", "drift", "counter")},
                       **versions()}
    t_steps: List[StepLog] = []
    p_steps: List[StepLog] = []
    # (where, row) in causal order: the first failing entry is the first divergence.
    checkpoints: List[Tuple[str, Row]] = []
    order: List[str] = []
    grad_table: List[Row] = []
    recorder = BatchNormRecorder(tm)
    with recorder:
        for step in tqdm(range(1, config.steps + 1), desc=f"backward {model_name}", unit="step",
                         disable=not progress, leave=False):
            # ---- both sides: forward and backward (clip and step after the gradients are compared)
            t_opt.zero_grad(set_to_none=True)
            tm.train()
            if step == 1:
                with ExecutionOrder(tm) as execution:
                    t_loss = tm(tx, {"cls": ty})[key]
                order = execution.backward_parameter_order()
            else:
                t_loss = tm(tx, {"cls": ty})[key]
            (t_loss * scale).backward()
            p_opt.clear_grad()
            pm.train()
            p_loss = pm(px, {"cls": py})[key]
            (p_loss * scale).backward()

            t_grads = OrderedDict((n, _view(p.grad)) for n, p in t_params.items())
            p_grads = OrderedDict((n, p.grad.numpy() if p.grad is not None else np.zeros(p.shape))
                                  for n, p in p_params.items())
            t_log = StepLog(float(t_loss.item()), float(t_opt.param_groups[0]["lr"]), _global_norm(t_grads.values()))
            p_log = StepLog(float(p_loss.item()), float(p_opt.get_lr()), _global_norm(p_grads.values()))
            t_steps.append(t_log)
            p_steps.append(p_log)
            scalar_kinds = (("loss", "forward_train"), ("lr", "lr"), ("grad_norm", "grad")) if step == 1 else \
                (("loss", "drift"), ("lr", "lr"), ("grad_norm", "drift"))
            scalar_rows = {name: compare_arrays(f"step{step}/{name}", getattr(t_log, name), getattr(p_log, name),
                                                tols[kind], kind) for name, kind in scalar_kinds}
            result.rows += list(scalar_rows.values())
            checkpoints += [(f"step {step}: {name}", scalar_rows[name]) for name in ("loss", "lr")]
            if step == 1:
                floor = grad_floor(t_grads.values(), config.dtype)
                grad_rows = {n: compare_arrays(f"step1/grad/{n}", t_grads[n], p_grads[n], tols["grad"], "grad",
                                               floor=floor) for n in t_params}
                result.rows += list(grad_rows.values())
                grad_table = [grad_rows[n] for n in order]
                checkpoints += [(f"step 1: gradient of {n} (backward order)", grad_rows[n]) for n in order]
                largest = max(t_grads, key=lambda n: float(np.dot(t_grads[n].ravel(), t_grads[n].ravel())))
                result.notes.append(
                    f"step 1: global gradient norm {t_log.grad_norm:.4g} (clip {config.clip_norm:g}: "
                    f"{'clipping binds' if t_log.grad_norm > config.clip_norm else 'NO CLIPPING'}); largest "
                    f"single tensor {largest} {np.linalg.norm(t_grads[largest].ravel()):.4g}; gradient "
                    f"floor {floor:.2e}")
            if t_log.grad_norm > config.clip_norm:
                result.notes.append(
                    f"step {step}: clipping scales by {config.clip_norm:g}/(norm + 1e-6) in torch and by "
                    f"{config.clip_norm:g}/norm in Paddle: every update differs by "
                    f"{1e-6 / t_log.grad_norm:.1e} relative by design")
            # The global norm summarises the gradients: after them in the causal order, so that a
            # gradient bug is reported at the first parameter it reaches, not at the norm.
            checkpoints.append((f"step {step}: grad_norm", scalar_rows["grad_norm"]))
            del t_grads, p_grads
            # ---- both optimiser steps, each framework's own pieces
            torch.nn.utils.clip_grad_norm_(tm.parameters(), config.clip_norm)
            t_opt.step()
            t_sched.step()
            p_opt.step()
            p_sched.step()
            if step == 1 or step == config.steps:
                tag = f"step{step}" if step == 1 else "final"
                kinds = ("param", "running_stat") if step == 1 else ("drift", "drift")
                rows = _compare_state(tag, kinds, tols, t_params, p_params, tm, pm, bn_names, recorder, step)
                result.rows += rows
                by_name = {r.name: r for r in rows}
                checkpoints += [(f"step {step}: parameter {n} after the update (backward order)",
                                 by_name[f"{tag}/param/{n}"]) for n in order]
                checkpoints += [(f"step {step}: BatchNorm {r.name.split('/')[1]} of {r.name.split('/', 2)[2]}", r)
                                for r in rows if "/running_" in r.name]
    tm.eval()
    pm.eval()
    if model_name == "farseg":
        row = compare_arrays("final/buffer_step", _view(tm.buffer_step), pm.buffer_step.numpy(),
                             tols["counter"], "counter", note=f"{config.steps} training forwards from 0")
        result.rows.append(row)
        checkpoints.append((f"step {config.steps}: buffer_step", row))

    failing = next(((where, row) for where, row in checkpoints if not row.passed), None)
    if failing is not None:
        where, row = failing
        explain = ""
        if "after the update" in where and all(r.passed for r in grad_table):
            explain = (" -- the step-1 gradients agree, so the optimiser step differs "
                       "(clipping, weight decay, momentum or learning rate)")
        elif "BatchNorm" in where and where.startswith("step 1:"):
            explain = (" -- gradients and parameters agree, so the BatchNorm running-statistics update "
                       "differs (momentum?)")
        result.first_divergence = {"where": where, "value": row.name,
                                   "summary": f"{where}: rel {row.rel:.3e} > {row.tol.rtol:.0e}{explain}"}
        if config.localise and "gradient of" in where:
            index = next(i for i, r in enumerate(grad_table) if not r.passed)
            shown = grad_table[max(0, index - CONTEXT): index + CONTEXT + 1]
            result.localisation = {"first": row.name.split("/", 2)[-1], "index": index,
                                   "lines": ["parameter gradients around the first divergence "
                                             "(backward-execution order):", *format_rows(shown)],
                                   "rows": [r.to_json() for r in shown]}
            result.first_divergence["where"] = result.localisation["first"]

    t_values: Dict[str, np.ndarray] = {}
    p_values: Dict[str, np.ndarray] = {}
    for logs, values in ((t_steps, t_values), (p_steps, p_values)):
        for i, log in enumerate(logs, start=1):
            values[f"loss_step{i}"] = np.asarray(log.loss)
            values[f"lr_step{i}"] = np.asarray(log.lr)
            values[f"grad_norm_step{i}"] = np.asarray(log.grad_norm)
    if config.full_logs:
        for n in t_params:
            t_values[f"param/{n}"] = _view(t_params[n]).copy()
            p_values[f"param/{n}"] = p_params[n].numpy()
    fx.reset()
    return finish_stage(result, start, config.out_dir(STAGE), t_values, p_values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.backward``."""
    from .cli import stage_main

    return stage_main(STAGE, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""The train stage's comparison: two runs (torch_ref = reference) into rows and the first
divergence; the per-iteration and per-window relative differences the curves show."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..compare import TRAIN_EARLY, TRAIN_WINDOW, Divergence, Row, Tolerance, compare_arrays
from .setup import TrainRun


class ParameterDifference(NamedTuple):
    """How far two final weight sets are apart, over the compared parameters."""

    rel_travel: float  # ||ref - other|| / ||ref - start||: the row's relative error
    rel_norm: float  # ||ref - other|| / ||ref||
    worst: str  # the tensor with the largest share of the difference
    max_abs: float  # max |ref - other| over every element
    mean_abs: float  # mean |ref - other| over every element
    travel: float  # ||ref - start||: the denominator of rel_travel


def global_relative(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    keys: Sequence[str],
) -> ParameterDifference:
    """The difference of two final weight sets over ``keys`` (see :class:`ParameterDifference`)."""
    diff2 = travel2 = norm2 = abs_sum = 0.0
    max_abs, count = 0.0, 0
    worst, worst_value = "", -1.0
    for k in keys:
        a = np.asarray(reference[k], dtype=np.float64)
        delta = np.abs(a - np.asarray(other[k], dtype=np.float64))
        d = float(np.sum(delta**2))
        diff2 += d
        travel2 += float(np.sum((a - np.asarray(start[k], dtype=np.float64)) ** 2))
        norm2 += float(np.sum(a**2))
        if delta.size:
            max_abs = max(max_abs, float(delta.max()))
            abs_sum += float(delta.sum())
            count += delta.size
        if d > worst_value:
            worst, worst_value = k, d
    rel_travel = math.sqrt(diff2 / travel2) if travel2 > 0 else (0.0 if diff2 == 0 else math.inf)
    rel_norm = math.sqrt(diff2 / norm2) if norm2 > 0 else (0.0 if diff2 == 0 else math.inf)
    mean_abs = abs_sum / count if count else 0.0
    return ParameterDifference(rel_travel, rel_norm, worst, max_abs, mean_abs, math.sqrt(travel2))


def relative_curve(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """|ref - other| / |ref| per iteration (inf where ref is 0 and other is not)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(reference - other) / np.abs(reference)
    rel[(reference == other)] = 0.0
    return rel


def trainable_keys(state: Mapping[str, np.ndarray]) -> List[str]:
    """Parameter keys of a torch_ref state (BatchNorm statistics and counters left out: the
    running variance differs by design, torch unbiased vs Paddle biased; see align.backward)."""
    skip = ("running_mean", "running_var", "num_batches_tracked", "buffer_step")
    return [k for k in state if not k.endswith(skip)]


def compare_runs(
    reference: TrainRun, other: TrainRun, start: Mapping[str, np.ndarray], tols: Mapping[str, Tolerance], model: str
) -> Tuple[List[Row], Optional[Dict[str, Any]]]:
    """Rows comparing two runs (``reference`` = torch_ref) and the first divergence, if any.

    Row order is causal: iteration by iteration (lr, loss, gradient norm), then the final
    weights, the counter and the mIoU; the first failing row is the first divergence.
    """
    rows: List[Row] = []
    # fp16: a step the loss scaler skips (overflowed gradients) logs an infinite gradient norm. Such
    # steps are left out of the gradient-norm rows when both sides skipped them; a skip on one side
    # only, or any non-finite loss, fails the "finite" row.
    stepped = np.isfinite(reference.grad_norm) & np.isfinite(other.grad_norm)
    same_skips = bool(np.array_equal(np.isfinite(reference.grad_norm), np.isfinite(other.grad_norm)))
    finite = [np.isfinite(r.loss).all() and same_skips for r in (reference, other)]
    n = len(reference.loss)
    for i in range(min(n, TRAIN_EARLY)):
        kinds = ("train_first_loss", "train_first_grad") if i == 0 else ("train_early", "train_early")
        rows.append(compare_arrays(f"lr/iter/{i + 1}", reference.lr[i], other.lr[i], tols["train_lr"], "train_lr"))
        for key, kind in zip(("loss", "grad_norm"), kinds):
            if key == "grad_norm" and not stepped[i]:
                continue
            rows.append(
                compare_arrays(
                    f"{key}/iter/{i + 1}", getattr(reference, key)[i], getattr(other, key)[i], tols[kind], kind
                )
            )
    # Later iterations: the lr still exactly, loss and gradient norm as means over windows of
    # TRAIN_WINDOW iterations (single iterations of two decorrelated float32 runs are noise).
    for lo in range(TRAIN_EARLY, n, TRAIN_WINDOW):
        hi = min(n, lo + TRAIN_WINDOW)
        for i in range(lo, hi):
            rows.append(compare_arrays(f"lr/iter/{i + 1}", reference.lr[i], other.lr[i], tols["train_lr"], "train_lr"))
        for key in ("loss", "grad_norm"):
            keep = stepped[lo:hi] if key == "grad_norm" else np.ones(hi - lo, dtype=bool)
            if not keep.any():
                continue
            rows.append(
                compare_arrays(
                    f"{key}/mean/{lo + 1}-{hi}",
                    float(np.mean(getattr(reference, key)[lo:hi][keep])),
                    float(np.mean(getattr(other, key)[lo:hi][keep])),
                    tols["train_curve"],
                    "train_curve",
                    note=f"mean over iterations {lo + 1}..{hi}",
                )
            )
    if not all(finite):
        bad = [r.label for r, ok in zip((reference, other), finite) if not ok]
        rows.append(
            Row(
                "finite/loss_and_grad_norm",
                "exact",
                [n],
                math.inf,
                math.inf,
                math.inf,
                math.nan,
                tols["exact"],
                False,
                f"non-finite loss, or loss-scaler skips at different iterations, in: {', '.join(bad)}",
            )
        )
    rows.append(
        compare_arrays(
            "loss/run_mean",
            float(np.mean(reference.loss)),
            float(np.mean(other.loss)),
            tols["train_mean"],
            "train_mean",
            note=f"mean over the {n} iterations",
        )
    )
    keys = trainable_keys(reference.state)
    params = global_relative(reference.state, other.state, start, keys)
    # max|d| and mean|d| over every parameter element (they were NaN placeholders once, which
    # diff.txt printed in a passing row); rel is the trajectory-relative norm.
    rows.append(
        Row(
            "params/final",
            "train_param",
            [len(keys)],
            params.max_abs,
            params.mean_abs,
            params.rel_travel,
            params.travel,
            tols["train_param"],
            params.rel_travel <= tols["train_param"].rtol,
            f"||torch - other|| / ||torch - initial|| over {len(keys)} parameters; "
            f"/ ||torch||: {params.rel_norm:.2e}; largest share: {params.worst}",
        )
    )
    if model == "farseg":
        rows.append(
            compare_arrays(
                "buffer_step/final",
                reference.state["buffer_step"],
                other.state["buffer_step"],
                tols["counter"],
                "counter",
                note=f"{n} training forwards",
            )
        )
    gap = abs(reference.miou - other.miou)
    rows.append(
        Row(
            "miou/final",
            "train_miou",
            [],
            gap,
            gap,
            gap,
            1.0,
            tols["train_miou"],
            bool(gap <= tols["train_miou"].rtol),
            f"absolute mIoU difference (fraction): {reference.label} {100 * reference.miou:.2f}, "
            f"{other.label} {100 * other.miou:.2f} (15-class: {100 * reference.miou_fg:.2f} / "
            f"{100 * other.miou_fg:.2f})",
        )
    )
    return rows, first_divergence(rows, reference, other)


def first_divergence(rows: Sequence[Row], reference: TrainRun, other: TrainRun) -> Optional[Divergence]:
    """Where the runs first part, and what that points to."""
    failing = next((r for r in rows if not r.passed), None)
    if failing is None:
        return None
    parts = failing.name.split("/")
    what = parts[0]
    if len(parts) == 3 and parts[1] == "mean":
        lo, hi = (int(x) for x in parts[2].split("-"))
        a = float(np.mean(getattr(reference, what)[lo - 1 : hi]))
        b = float(np.mean(getattr(other, what)[lo - 1 : hi]))
        summary = (
            f"iterations {lo}-{hi}: mean {what} {reference.label} {a:.6g} vs {other.label} {b:.6g} "
            f"(rel {failing.rel:.2e} > {failing.tol.rtol:.2g}) -- the learning rates agree, so the updates "
            f"differ (weight decay, momentum, clipping, gradient zeroing: python -m align.backward), or "
            f"float32 chaos beyond the measured band"
        )
        return Divergence(f"iterations {lo}-{hi}", summary, value=failing.name)
    if len(parts) == 3 and parts[1] == "iter":
        i = int(parts[2])
        a, b = getattr(reference, what)[i - 1], getattr(other, what)[i - 1]
        ratio = f", ratio {b / a:.4g}" if a else ""
        explain = {
            "lr": "the learning-rate schedules differ (base lr, poly power or horizon, or a scheduler stepped "
            "a different number of times): compare the two build_optimizer",
            "loss": (
                "the same weights give another loss: a forward or loss difference (run python -m align "
                "--stages forward,loss)"
                if i == 1
                else "the learning rates agree, so the updates differ (weight decay, momentum, clipping, gradient "
                f"zeroing; python -m align.backward --steps {i} shows which), or float32 chaos beyond the band"
            ),
            "grad_norm": (
                "the same weights give other gradients (python -m align.backward)"
                if i == 1
                else "the updates differ (python -m align.backward), or float32 chaos beyond the band"
            ),
        }[what]
        summary = (
            f"iteration {i}: {what} {reference.label} {a:.6g} vs {other.label} {b:.6g} (rel {failing.rel:.2e}"
            f" > {failing.tol.rtol:.2g}{ratio}) -- {explain}"
        )
        return Divergence(f"iteration {i}", summary, value=failing.name)
    summary = f"{failing.name}: rel {failing.rel:.3e} > {failing.tol.rtol:.2g}"
    if failing.note:
        summary += f" ({failing.note})"
    return Divergence(failing.name, summary, value=failing.name)


def window_relative(reference: TrainRun, other: TrainRun) -> List[Dict[str, Any]]:
    """Relative difference of the loss and gradient-norm means over each window after TRAIN_EARLY."""
    out = []
    n = len(reference.loss)
    for lo in range(TRAIN_EARLY, n, TRAIN_WINDOW):
        hi = min(n, lo + TRAIN_WINDOW)
        entry: Dict[str, Any] = {"first": lo + 1, "last": hi}
        for key in ("loss", "grad_norm"):
            a, b = float(np.mean(getattr(reference, key)[lo:hi])), float(np.mean(getattr(other, key)[lo:hi]))
            entry[key] = finite_or_text(abs(a - b) / abs(a)) if a else finite_or_text(0.0 if a == b else math.inf)
        out.append(entry)
    return out


def finite_or_text(value: float) -> Any:
    """A float for JSON, or its text ("inf", "nan") when not finite (strict JSON has neither)."""
    return float(value) if math.isfinite(value) else str(value)

"""Framework-free comparison of torch and Paddle values, thresholds and the per-stage report.

Every compared value becomes a ``Row`` held to its kind's ``Tolerance``, with the relative error

    rel = max|t - p| / max(max|t|, floor)    (t: torch, the reference; p: Paddle)

the worst element error against the tensor's own magnitude: an elementwise ratio blows up on
values that are zero up to rounding (probabilities of 1e-30). ``floor`` is 0 except for a
model's gradients (``grad_floor``): a conv bias feeding a training-mode BatchNorm has a
gradient that is mathematically zero, ~1e-19 of rounding in float64, whose "relative" error
would be of order 1 while meaning nothing.

reprod_log 1.0.1's ``ReprodDiffHelper`` is not used: it compares absolute differences only,
silently transposes mismatched shapes, returns None from ``report()`` and adds a root-logger
handler on every call. Its ``ReprodLogger`` format is what the stage files are written in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from convert import atomic_write

# Kinds of compared values; each has its own tolerance (see ``tolerances``).
KINDS = (
    "forward",  # eval-mode model outputs (and intermediate activations, for the localiser)
    "forward_train",  # training-mode outputs: BatchNorm with batch statistics amplifies rounding
    "loss",  # loss values and gradients w.r.t. the logits, fed identical logits
    "identity",  # FarSeg's loss identities, checked within one framework
    "lr",  # learning rate per optimiser step (Python floats on both sides)
    "counter",  # integer-valued counters (buffer_step)
    "grad",  # parameter gradients (and their global norm) of the first training step
    "param",  # parameters after the first optimiser step
    "running_stat",  # BatchNorm running mean / variance after the first training step
    "drift",  # step 2 and later: loss, gradients and their norm (differences grow step by step)
    "param_drift",  # step 2 and later: parameters after the update
    "stat_drift",  # step 2 and later: BatchNorm running statistics after the update
    "exact",  # metric stage: must be bit-identical
    "x2paddle",  # forward --against x2paddle: rows of align.x2paddle (its own thresholds)
    # train stage (align.train): two whole float32 training runs, torch_ref = reference
    "train_lr",  # learning rate per iteration (Python floats on both sides)
    "train_first_loss",  # loss of iteration 1 (identical weights and batch: a forward difference)
    "train_first_grad",  # gradient norm of iteration 1 (identical weights and batch: a backward difference)
    "train_early",  # loss and gradient norm of iterations 2..TRAIN_EARLY, one by one
    "train_curve",  # later: loss and gradient norm averaged over windows of TRAIN_WINDOW iterations
    "train_mean",  # loss averaged over the run
    "train_param",  # final weights: ||torch - paddle|| / ||torch - initial||
    "train_miou",  # |mIoU torch - mIoU paddle| (fraction, absolute)
)


@dataclass(frozen=True)
class Tolerance:
    """Pass if ``rel <= rtol`` and, when set, ``mean_abs <= mean_atol``."""

    rtol: float
    mean_atol: Optional[float] = None

    def describe(self) -> str:
        text = f"rel<={self.rtol:.2g}"
        if self.mean_atol is not None:
            text += f", mean|d|<={self.mean_atol:.0e}"
        return text


# Defaults, set from measurements: the worst value measured on this port, both models, with a
# margin of 3-40x, except where the issue fixes them (float32 eval forward: mean-abs 1e-5 and
# relative 1e-4; float64 forward and loss: 1e-9). Forward/loss/metric: README "Measured
# alignment" (``python benchmarks/align_bench.py``). Backward (k steps of the trainers'
# TrainStep, 64x64, batch 2, seed 2333): ``python benchmarks/backward_sensitivity.py``
# (benchmarks/results/backward_sensitivity.json), which also plants the trainer bugs of
# tests/trainer_bugs.py and records the size of what each one moves.
#
# Why the backward stage runs float64 at 0.01 x the recipe's learning rate (DEFAULT_LR_SCALE):
# at the official lr 0.007 the first clipped update moves the stem conv by ~10% of its weights,
# and training-mode BatchNorm over few elements (n = 8 per channel in layer4) then amplifies
# the step-1 differences (3e-10, mostly the clip's 1e-6/norm by design) ~300x per step:
# parameters differ by 3e-5 and gradients by 1e-2 after step 3, so steps 2-3 could only catch
# gross errors. At 0.01 x lr (clipping still binds: it depends on the gradient norm only) the
# clean run stays at parameters 1.2e-10 / gradients 1.4e-7 after step 3 (2.1e-9 / 2.7e-6 after
# step 5), while (FarSeg) momentum 0 moves step-2 parameters by 1.1e-3 (10^4 x param_drift),
# poly power 1.0 and a scheduler stepped twice move the step-2 lr by 1.7e-6 and 1.5e-5 (lr
# threshold 1e-12; parameters 2.6e-9 and 2.3e-8), gradients not cleared move step-2 gradients
# by 0.10, weight decay x10 moves step-1 parameters by 6.3e-8 (60 x param) and a per-tensor
# clip by 4.0e-4.
#
# float32 is not a precision check for training-mode values: with batch statistics over few
# elements, float32 rounding alone moves deep-layer gradients by up to ~15% (torch against torch
# in float64 shows the same), and every later step amplifies it chaotically (gradients differ
# by O(1) from step 2 at any lr). float64 is the default; float32 keeps the official lr.
DEFAULT_TOLERANCES: Dict[str, Dict[str, Tolerance]] = {
    "float64": {
        "forward": Tolerance(1e-9),  # measured <= 4e-12
        "forward_train": Tolerance(1e-9),  # measured <= 1.5e-10
        "loss": Tolerance(1e-9),  # measured <= 8e-16 (loss stage), 7e-13 (through the model)
        "identity": Tolerance(1e-12),  # measured <= 8e-16
        "lr": Tolerance(1e-12),  # measured <= 1.9e-16
        "counter": Tolerance(0.0),
        "grad": Tolerance(1e-8),  # measured <= 8.3e-10 (step 1)
        "param": Tolerance(1e-9),  # measured <= 3.3e-12 at lr x0.01 (3.3e-10 at lr x1)
        "running_stat": Tolerance(1e-5),  # measured <= 2.8e-7 (Paddle's float32 BN momentum)
        "drift": Tolerance(1e-4),  # measured <= 1.4e-7 at step 3, 2.7e-6 at step 5 (lr x0.01)
        "param_drift": Tolerance(1e-7),  # measured <= 1.2e-10 at step 3, 2.1e-9 at step 5 (lr x0.01)
        "stat_drift": Tolerance(1e-5),  # measured <= 2.8e-7 to step 5 (Paddle's float32 BN momentum)
        "exact": Tolerance(0.0),
    },
    "float32": {
        "forward": Tolerance(1e-4, 1e-5),  # measured <= 1.2e-6, mean 8e-8
        "forward_train": Tolerance(2e-3, 2e-4),  # measured <= 1.7e-4, mean 2.7e-5
        "loss": Tolerance(1e-5),  # measured <= 3.1e-7
        "identity": Tolerance(1e-5),
        "lr": Tolerance(1e-12),
        "counter": Tolerance(0.0),
        "grad": Tolerance(0.5),  # measured <= 0.15 (deep layers; global norm <= 3e-3)
        "param": Tolerance(3e-2),  # measured <= 3.1e-3
        "running_stat": Tolerance(5e-4),  # measured <= 5.0e-5
        "drift": Tolerance(5.0),  # measured <= 2.5 (gradients from step 2): only gross errors show
        "param_drift": Tolerance(1.0),  # measured <= 0.38 at step 3, 0.74 at step 5
        "stat_drift": Tolerance(1.0),  # measured <= 0.51 at step 3
        "exact": Tolerance(0.0),
    },
}

# The train stage (align.train) compares two float32 training runs whatever --dtype says. Its band
# is float32's own spread, MEASURED: torch_ref.train against itself with a harmless perturbation
# (train.channels_last=true: other convolution kernels and summation order) on the stage's default
# set-up, FarSeg and FactSeg, seeds 2333 and 1 (python benchmarks/train_align_floor.py --perturb
# channels_last; benchmarks/results/train_align_floor.json). TRAIN_FLOOR is the worst value of each
# kind over those runs; each threshold is TRAIN_MARGIN x its floor, rounded up to two digits, and
# never below TRAIN_MINIMUM (kinds whose floor is 0: the lr is computed by both schedulers from
# Python floats, torch vs Paddle measured 7.7e-16; both runs of the default set-up predict the same
# classes, so the mIoU floor is 0 and the minimum, 1 point, allows a few flipped pixels).
# float32 training from random weights is chaotic: from iteration 2 on the two runs of ONE framework
# differ by tens of percent (floors below), so those kinds only catch gross differences.
TRAIN_EARLY = 5  # iterations 1..5 compared one by one (2..5: kind train_early)
TRAIN_WINDOW = 10  # later iterations: loss and gradient norm compared as means over 10 iterations
TRAIN_MARGIN = 5.0
TRAIN_FLOOR = {
    "train_lr": 0.0,
    "train_first_loss": 5.434e-06,
    "train_first_grad": 0.001995,
    "train_early": 0.6653,
    "train_curve": 0.2699,
    "train_mean": 0.02141,
    "train_param": 1.373,
    "train_miou": 0.005768,
}
TRAIN_MINIMUM = {"train_lr": 1e-9, "train_miou": 0.01}


def _round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits (0 stays 0)."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return math.ceil(value / scale - 1e-9) * scale


TRAIN_TOLERANCES: Dict[str, Tolerance] = {
    kind: Tolerance(float(f"{_round_up(max(TRAIN_MARGIN * floor, TRAIN_MINIMUM.get(kind, 0.0))):.2g}"))
    for kind, floor in TRAIN_FLOOR.items()
}
for _table in DEFAULT_TOLERANCES.values():
    _table.update(TRAIN_TOLERANCES)
# The backward stage's learning-rate scale per dtype when ``AlignConfig.lr_scale`` is None (above).
DEFAULT_LR_SCALE = {"float64": 0.01, "float32": 1.0}

# A user's pair (``python -m align.forward --torch SPEC --paddle SPEC``, ``align.engine``): relative
# bounds only (a user's outputs have any scale), set from the floor of correct ports of ordinary
# models measured by ``python benchmarks/align_floor.py`` (benchmarks/results/align_floor.json:
# a small ResNet, MLPs with Paddle and compat Linear, a reused block, an encoder-decoder with
# bilinear upsampling, ResNet-18-like at 64x64; Paddle against torch, weights copied, one step of
# SGD). Worst measured values are in the comments; thresholds keep a margin of 10-100x.
# float64 is not 1e-9 here: Paddle's bilinear resize computes its coordinates in float32, so the
# encoder-decoder's clean float64 port differs by 1.2e-7 (FarSeg resizes with align_corners and
# keeps 1e-9). Every backward step starts from the same parameters by default (align.engine,
# --step-start paddle) and is held to the first-step kinds; the *drift kinds apply only to free
# runs (--step-start none), where differences grow with the model's chaos. Their bounds: float64
# param_drift 1e-6, 26x the clean floor (3.8e-8, step 3) and 11x below the smallest planted
# optimiser bug of the zoo (resnet_pair.py poly_end_lr: 1.1e-5 at step 2); float32 drift and
# param_drift 6.5x and 9x the ResNet-18-like step-3 floor (0.76 and 3.3e-2). A free run of a
# deep model can still exceed them on a clean port (ResNet-50 at 224 px, float64: step-2
# gradients 1.3e-2, benchmarks/results/backward_chaos.json): that is why it is not the default.
PAIR_TOLERANCES: Dict[str, Dict[str, Tolerance]] = {
    "float64": {
        "forward": Tolerance(1e-6),  # layers, eval: 1.2e-7 (encdec), others <= 7e-12
        "forward_train": Tolerance(2e-6),  # layers, training mode: 1.7e-7 (encdec)
        "loss": Tolerance(1e-8),  # 2.4e-10
        "grad": Tolerance(1e-5),  # 3.6e-7
        "param": Tolerance(1e-6),  # 7.9e-9 after one SGD step
        "running_stat": Tolerance(1e-5),  # 1.1e-7 (Paddle keeps the BN momentum in float32)
        "drift": Tolerance(1e-4),  # free runs only: 3.4e-7 (step-2 gradients), 3.0e-7 (step 3)
        "param_drift": Tolerance(1e-6),  # free runs only: 3.8e-8
        "stat_drift": Tolerance(1e-5),  # free runs only
    },
    "float32": {
        "forward": Tolerance(1e-4),  # layers, eval: 8.5e-7
        "forward_train": Tolerance(1e-3),  # layers, training mode: 8.8e-6
        "loss": Tolerance(1e-5),  # 3.0e-7
        "grad": Tolerance(0.1),  # 5.1e-3 (ResNet-18-like, training-mode BatchNorm over few elements)
        "param": Tolerance(2e-2),  # 1.4e-3
        "running_stat": Tolerance(5e-4),  # 3.1e-7
        "drift": Tolerance(5.0),  # free runs only: 0.76 (ResNet-18-like, step-3 gradients)
        "param_drift": Tolerance(0.3),  # free runs only: 3.3e-2 (ResNet-18-like, step 3)
        "stat_drift": Tolerance(1e-2),  # free runs only
    },
}


def pair_tolerances(dtype: str, rtol: Optional[float] = None) -> Dict[str, Tolerance]:
    """The tolerance of every kind for a user's pair in ``dtype`` (``rtol`` overrides them all)."""
    if dtype not in PAIR_TOLERANCES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(PAIR_TOLERANCES)}")
    return {k: Tolerance(v.rtol if rtol is None else rtol) for k, v in PAIR_TOLERANCES[dtype].items()}


# Kinds whose tolerance --rtol/--atol may override (exact comparisons stay exact).
OVERRIDABLE = tuple(k for k in DEFAULT_TOLERANCES["float64"] if k not in ("lr", "counter", "exact", *TRAIN_FLOOR))

# Fraction of the model's largest gradient below which a gradient counts as zero (see module doc).
GRAD_FLOOR_FRACTION = {"float64": 1e-6, "float32": 1e-3}


def tolerances(
    dtype: str,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    per_kind: Optional[Mapping[str, Tolerance]] = None,
) -> Dict[str, Tolerance]:
    """The tolerance of every kind for ``dtype``, with the command-line overrides applied.

    ``rtol``/``atol`` replace the relative / mean-abs bound of every kind in ``OVERRIDABLE``;
    ``per_kind`` then replaces whole entries.
    """
    if dtype not in DEFAULT_TOLERANCES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {', '.join(DEFAULT_TOLERANCES)}")
    table = dict(DEFAULT_TOLERANCES[dtype])
    for kind in OVERRIDABLE:
        old = table[kind]
        table[kind] = Tolerance(old.rtol if rtol is None else rtol, old.mean_atol if atol is None else atol)
    for kind, tol in (per_kind or {}).items():
        if kind not in table:
            raise ValueError(f"unknown tolerance kind {kind!r}: expected one of {', '.join(KINDS)}")
        table[kind] = tol
    return table


def grad_floor(reference_grads: Iterable[np.ndarray], dtype: str) -> float:
    """The relative-error floor for the gradients of one model: a fraction of the largest one."""
    largest = 0.0
    for grad in reference_grads:
        if grad.size:
            largest = max(largest, float(np.max(np.abs(grad))))
    return GRAD_FLOOR_FRACTION[dtype] * largest


@dataclass
class Row:
    """One compared value (torch = reference, Paddle = port)."""

    name: str
    kind: str
    shape: List[int]
    max_abs: float
    mean_abs: float
    rel: float
    scale: float  # the denominator of rel
    tol: Tolerance
    passed: bool
    note: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}  # tol becomes {"rtol", "mean_atol"}


def _json_number(value: Any) -> Any:
    # Strict JSON has no NaN/inf: write them as strings ("nan", "inf") so a reader notices.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def compare_arrays(
    name: str, reference: Any, other: Any, tol: Tolerance, kind: str, floor: float = 0.0, note: str = ""
) -> Row:
    """Compare ``reference`` (torch) with ``other`` (Paddle) into a ``Row``.

    Shapes must match exactly (no broadcasting, no transposing: a mismatch fails with a note).
    NaN/inf must sit at the same places with the same value; the statistics cover the finite
    elements. Integer arrays are compared exactly as float64 (counts up to 2**53).
    """
    a = np.asarray(reference)
    b = np.asarray(other)
    if a.shape != b.shape:
        mismatch = f"shape mismatch: torch {list(a.shape)} vs paddle {list(b.shape)}"
        return failed_row(name, kind, tol, _join(note, mismatch), a.shape)
    a = a.astype(np.float64, copy=False)
    b = b.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
    nonfinite_mismatch = 0
    n_nonfinite = 0
    # Fast path: a finite difference means both sides are finite there.
    if diff.size and not np.isfinite(diff).all():
        finite_a, finite_b = np.isfinite(a), np.isfinite(b)
        both = finite_a & finite_b
        same = (np.isnan(a) & np.isnan(b)) | (~finite_a & ~finite_b & (a == b))
        nonfinite_mismatch = int(np.count_nonzero(~both & ~same))
        n_nonfinite = int(a.size - both.sum())
        diff = diff[both]
        ref_abs_max = float(np.abs(a[both]).max()) if both.any() else 0.0
    else:
        ref_abs_max = float(np.abs(a).max()) if a.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    scale = max(ref_abs_max, floor)
    if max_abs == 0.0:
        rel = 0.0
    else:
        rel = max_abs / scale if scale > 0 else math.inf
    passed = rel <= tol.rtol and (tol.mean_atol is None or mean_abs <= tol.mean_atol)
    if nonfinite_mismatch:
        passed = False
        note = _join(note, f"{nonfinite_mismatch} NaN/inf mismatches")
    elif n_nonfinite:
        note = _join(note, f"{n_nonfinite} NaN/inf on both sides (equal)")
    return Row(name, kind, list(a.shape), max_abs, mean_abs, rel, scale, tol, passed, note)


def failed_row(name: str, kind: str, tol: Tolerance, note: str, shape: Sequence[int] = ()) -> Row:
    """A value that could not be compared at all: infinite error, failed, ``note`` says why."""
    return Row(name, kind, list(shape), math.inf, math.inf, math.inf, math.nan, tol, False, note)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


@dataclass
class Divergence:
    """Where torch_ref and paddle_impl first disagree, in causal order."""

    where: Optional[str]  # module, parameter or value name (None: outside every module)
    summary: str  # one line for people
    mode: Optional[str] = None  # forward: "eval" or "train"
    value: Optional[str] = None  # the first failing row's name, where it differs from ``where``
    # The contract of diff.json's "first_divergence" (issue 18): qualified torch and Paddle names
    # of the layer (forward) or parameter (backward), the stage, and for backward the step, the
    # kind (loss|grad|param|output|buffer) and the parameter. Filled by ``finish_stage`` from
    # ``where`` when a stage leaves them empty (the FarSeg/FactSeg ports share every name).
    torch: Optional[str] = None
    paddle: Optional[str] = None
    stage: Optional[str] = None
    step: Optional[int] = None
    kind: Optional[str] = None
    parameter: Optional[str] = None
    call: Optional[int] = None  # forward, a module called several times: which call (1 = first)


def around(rows: Sequence[Row], index: int, context: int) -> List[Row]:
    """``rows[index]`` with up to ``context`` rows on either side (the table of a localisation)."""
    return list(rows[max(0, index - context) : index + context + 1])


@dataclass
class Localisation:
    """The table around the first divergence (forward: module calls; backward: gradients)."""

    first: Optional[str]  # the first divergent module or parameter (None: none diverges)
    index: Optional[int]  # its position in execution order
    lines: List[str]  # the table as text
    rows: List[Dict[str, Any]]  # the table's rows (Row.to_json)
    summary: str = ""
    unpaired: List[str] = field(default_factory=list)  # paddle module calls torch never made
    mode: Optional[str] = None  # forward: "eval" or "train"
    step: Optional[int] = None  # backward: the training step


@dataclass
class StageResult:
    """What a stage returns: its rows, pass/fail, and where things first diverge."""

    stage: str
    model: str
    dtype: str
    rows: List[Row] = field(default_factory=list)
    first_divergence: Optional[Divergence] = None
    localisation: Optional[Localisation] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Optional[str] = None
    # torch/Paddle module pairs ([{"torch", "paddle"}]); the FarSeg/FactSeg ports pair by name.
    pairing: List[Dict[str, str]] = field(default_factory=list)
    # Per-layer (or per-parameter) rows along execution order, by curve name ("eval", "train",
    # "step1/grad", ...): what divergence.png draws; not part of the verdict.
    layers: Dict[str, List[Row]] = field(default_factory=dict)
    structure: List[str] = field(default_factory=list)  # layers on one side only

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    def failed_rows(self) -> List[Row]:
        return [r for r in self.rows if not r.passed]

    def row(self, name: str) -> Row:
        """The row called ``name`` (KeyError if none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_json(self) -> Dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model,
            "dtype": self.dtype,
            "passed": self.passed,
            "num_values": len(self.rows),
            "num_failed": len(self.failed_rows()),
            "relative_error": "max|torch - paddle| / max(max|torch|, floor) per value",
            "settings": self.settings,
            "first_divergence": None if self.first_divergence is None else asdict(self.first_divergence),
            "localisation": None if self.localisation is None else asdict(self.localisation),
            "pairing": self.pairing,
            "structure": self.structure,
            "layers": {curve: [r.to_json() for r in rows] for curve, rows in self.layers.items()},
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "rows": [r.to_json() for r in self.rows],
        }


# ----------------------------------------------------------------------------------------------
# Text report
# ----------------------------------------------------------------------------------------------


def _shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def format_rows(rows: Sequence[Row]) -> List[str]:
    """Fixed-width table lines for ``rows``."""
    if not rows:
        return []
    width = max(28, max(len(r.name) for r in rows))
    shape_width = max(10, max(len(_shape(r.shape)) for r in rows))
    lines = [
        f"{'value':<{width}}  {'shape':<{shape_width}}  {'max|d|':>9}  {'mean|d|':>9}  "
        f"{'rel':>9}  {'threshold':<24}  result"
    ]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {_shape(r.shape):<{shape_width}}  {r.max_abs:>9.3e}  "
            f"{r.mean_abs:>9.3e}  {r.rel:>9.3e}  {r.tol.describe():<24}  "
            f"{'ok' if r.passed else 'FAIL'}" + (f"  ({r.note})" if r.note else "")
        )
    return lines


def _pairing_lines(result: StageResult, shown: int = 30) -> List[str]:
    """The pairing table (renamed pairs only; diff.json has every pair) and the layers on one
    side only."""
    if not result.pairing:
        return []
    renamed = [p for p in result.pairing if p["torch"] != p["paddle"]]
    lines = [f"pairing: {len(result.pairing)} torch/paddle module pairs, {len(renamed)} renamed"]
    lines += [f"  {p['torch']} -> {p['paddle']}" for p in renamed[:shown]]
    if len(renamed) > shown:
        lines.append(f"  ... {len(renamed) - shown} more in diff.json")
    lines += [f"structure: {line}" for line in result.structure]
    return lines


def format_report(result: StageResult, max_rows: int = 40) -> str:
    """The human-readable diff report of one stage (the JSON has every row in full)."""
    s = result.settings
    lines = [
        f"align {result.stage}: model={result.model} dtype={result.dtype} "
        + " ".join(f"{k}={v}" for k, v in s.items() if k not in ("tolerances",)),
        "relative error = max|torch - paddle| / max(max|torch|, floor) per value; torch is the reference",
    ]
    if "tolerances" in s:
        lines.append("thresholds: " + "; ".join(f"{k} {v}" for k, v in s["tolerances"].items()))
    lines += [f"note: {n}" for n in result.notes]
    lines += _pairing_lines(result)
    lines.append("")
    rows = result.rows
    if len(rows) <= max_rows:
        lines += format_rows(rows)
    else:
        # Per group (the first two parts of a name: step1/grad/...): the worst row (largest
        # rel / threshold), with the group size in the note.
        groups: Dict[str, List[Row]] = {}
        for r in rows:
            groups.setdefault("/".join(r.name.split("/")[:2]), []).append(r)
        summary = []
        for name, members in groups.items():
            worst = max(members, key=lambda r: (not r.passed, r.rel / max(r.tol.rtol, 1e-300)))
            failed = sum(not r.passed for r in members)
            if len(members) == 1:
                summary.append(worst)
                continue
            label = f"{name}/* (worst: {worst.name.split('/', 2)[-1]})"
            note = _join(worst.note, f"{len(members)} values, {failed} failed")
            summary.append(replace(worst, name=label, passed=failed == 0, note=note))
        lines.append(
            f"{len(rows)} values in {len(groups)} groups; worst of each group shown (every value is in diff.json)"
        )
        lines += format_rows(summary)
        failed_rows = result.failed_rows()
        if failed_rows:
            lines += ["", f"failed values ({len(failed_rows)}; first {min(len(failed_rows), max_rows)}):"]
            lines += format_rows(failed_rows[:max_rows])
    if result.first_divergence:
        lines += ["", "first divergence: " + result.first_divergence.summary]
    if result.localisation:
        lines += ["", *result.localisation.lines]
    n_failed = len(result.failed_rows())
    lines += [
        "",
        f"RESULT: {'PASS' if result.passed else 'FAIL'} "
        f"({len(rows) - n_failed}/{len(rows)} values within thresholds, {result.seconds:.1f} s)",
    ]
    return "\n".join(lines)


def _worst(result: StageResult) -> str:
    if not result.rows:
        return "no values"
    worst = max(result.rows, key=lambda r: r.rel / r.tol.rtol if r.tol.rtol > 0 else (0 if r.rel == 0 else 1e300))
    return f"worst {worst.name} rel {worst.rel:.1e} (<= {worst.tol.rtol:.2g})"


def summary_line(result: StageResult) -> str:
    """``[PASS] forward  farseg float64  3/3 values  worst ...  2.0 s  -> report``"""
    n_failed = len(result.failed_rows())
    where = f"  -> {result.out_dir}/diff.txt" if result.out_dir else ""
    return (
        f"[{'PASS' if result.passed else 'FAIL'}] {result.stage:<8} {result.model:<7} {result.dtype}  "
        f"{len(result.rows) - n_failed}/{len(result.rows)} values  {_worst(result)}  "
        f"{result.seconds:.1f} s{where}"
    )


# ----------------------------------------------------------------------------------------------
# Writing (atomic: a file appears complete under its final name, or not at all)
# ----------------------------------------------------------------------------------------------


def write_reprod_log(path: Path, values: Mapping[str, np.ndarray]) -> Path:
    """Write ``values`` as a reprod_log ``ReprodLogger`` file (an ``np.save``'d dict), atomically."""
    from reprod_log import ReprodLogger  # imports paddle; only called once paddle is loaded

    logger = ReprodLogger()
    for key, value in values.items():
        logger.add(key, np.asarray(value))
    # ReprodLogger.save is np.save of its dict; through the project's atomic writer instead.
    return atomic_write(path, lambda f: np.save(f, logger.data, allow_pickle=True))


def finish_stage(
    result: StageResult,
    start: float,
    out_dir: Optional[Path],
    torch_log: Mapping[str, np.ndarray],
    paddle_log: Mapping[str, np.ndarray],
) -> StageResult:
    """Record the stage's time since ``start`` (``time.perf_counter()``) and, when ``out_dir``
    is set, write ``torch.npy`` / ``paddle.npy`` (reprod_log), ``divergence.png`` (when the
    stage has per-layer rows), ``diff.json`` and ``diff.txt`` there; returns ``result``."""
    d = result.first_divergence
    if d is not None:
        d.stage = d.stage or result.stage
        if d.torch is None and d.paddle is None and d.where is not None and result.stage == "forward":
            d.torch = d.paddle = d.where  # the FarSeg/FactSeg ports mirror every name
    if out_dir is not None:
        result.out_dir = str(out_dir)
        write_reprod_log(Path(out_dir) / "torch.npy", torch_log)
        write_reprod_log(Path(out_dir) / "paddle.npy", paddle_log)
        if result.layers:
            from .plot import plot_divergence

            title = f"align {result.stage}: {result.model} {result.dtype} ({'PASS' if result.passed else 'FAIL'})"
            skipped = plot_divergence(Path(out_dir) / "divergence.png", result.layers, title)
            if skipped:
                result.notes.append(skipped)
    result.seconds = time.perf_counter() - start
    if out_dir is not None:
        for name, text in (("diff.json", json.dumps(result.to_json(), indent=1)), ("diff.txt", format_report(result))):
            data = (text + "\n").encode("utf-8")
            atomic_write(Path(out_dir) / name, lambda f, data=data: f.write(data))
    return result

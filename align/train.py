"""Stage 5, train: torch_ref.train and paddle_impl.train (the real trainers) from the same converted
initial weights on bit-identical batches for N iterations, then each framework's own evaluator;
lr, loss and gradient norm per iteration, final weights and mIoU against a band measured torch
against torch (float32); writes curves.json and curves.png. --size/--batch/--seed set the
synthetic default run; --dtype, --torch-ckpt and --input do not apply.

What runs is the training code users run, not a copy: ``torch_ref.train.train`` and
``paddle_impl.train.train`` (their config, loader, sampler, augmentation, ``build_optimizer``,
``TrainStep``, loop and final weights), one after the other in this process, then each
framework's own evaluator (``torch_ref.evaluate`` / ``paddle_impl.evaluate``: sliding windows,
on-device confusion matrix). align only prepares what both get:

- the recipe: ``configs/<model>_isaid.yaml`` (or ``--config``) with the comparison's settings
  as overrides: ``train.iterations`` (the poly schedule spans the compared run), float32
  (``train.amp=none``), the device, one log row per iteration, no ImageNet file (see below);
  ``--set KEY=VALUE`` adds the user's own;
- the data: by default synthetic iSAID scenes (``isaid.synth``) cut by ``isaid.prepare`` into
  ``--size`` patches (batch ``--batch``); with ``--data DIR`` a real ``isaid.prepare`` output
  at the config's window and batch. Both trainers sample it with the shared framework-free
  ``isaid.augment``; the stage checks that both frameworks' loaders give bit-identical batches
  for the first iterations before training;
- the initial weights: ``torch_ref.build_model`` under ``torch.manual_seed(train.seed)`` (the
  torch trainer's own initialisation; with the config's ImageNet file loaded by the torch
  trainer's ``load_imagenet`` when ``init.imagenet`` names an existing file), converted for
  Paddle by ``convert.torch_to_paddle``, given to both trainers as ``initial_state``.

Compared (torch_ref is the reference): per iteration the learning rate, the loss and the
global gradient norm (before clipping) from each trainer's ``metrics.jsonl``; at the end the
final weights (``||theta_torch - theta_paddle|| / ||theta_torch - theta_0||``: the difference
of the two trajectories relative to the distance travelled), FarSeg's ``buffer_step`` and the
two mIoUs on held-out val scenes. The pass band is MEASURED: torch against torch under harmless
perturbations (``benchmarks/train_align_floor.py``; thresholds and numbers in
``align/compare.py``, kinds ``train_*``). float32 training from random weights is chaotic:
after a few iterations the two runs differ by float32 rounding amplified step after step, so
loss, gradient norm and weights are held to the measured envelope, not to 1e-6. The learning
rate is a Python float on both sides and must agree to 1e-9 at every iteration: a schedule or
recipe bug (lr x2, another power, a scheduler stepped twice) shows at iteration 1 or 2.

Writes, beside the usual ``torch.npy`` / ``paddle.npy`` / ``diff.txt`` / ``diff.json`` in
``<out>/<model>/train/``: ``curves.json`` (every per-iteration value of both sides and their
relative differences, the mIoUs, the thresholds) and ``curves.png`` (loss curves, relative
differences against the thresholds, mIoUs). The trainers' own outputs are in ``runs/torch``
and ``runs/paddle``, the synthetic data in ``data/``.

``python -m align.train --model farseg``; ``python -m align --stages train``; at full scale on a
GPU: ``python -m align.train --model farseg --config configs/farseg_isaid.yaml --data
data/isaid --device cuda --iterations 2000``. See ``--help``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from common.constants import FRAMEWORKS

from .compare import (
    TRAIN_EARLY,
    TRAIN_WINDOW,
    Divergence,
    Row,
    StageResult,
    Tolerance,
    compare_arrays,
    finish_stage,
    tolerances,
)
from .config import CONFIGS, AlignConfig, AlignInputError
from .fixtures import versions

STAGE = "train"
TRAIN_KINDS = (
    "train_lr",
    "train_first_loss",
    "train_first_grad",
    "train_early",
    "train_curve",
    "train_mean",
    "train_param",
    "train_miou",
)
DTYPE = "float32"  # the trainers train in float32 (or mixed precision, with --set train.amp=...)
# Synthetic data of the default run: scenes of SYNTH_SCALE x the window, cut at stride = window.
SYNTH_TRAIN_SCENES = 4
SYNTH_VAL_SCENES = 2
SYNTH_SCALE = 3
# Iterations whose batches both frameworks' loaders must give bit for bit (decoding real 896 px
# patches for every iteration of a long run would cost minutes; the sampler is a pure function
# of (seed, position), tested for whole epochs in tests/test_train.py).
BATCH_CHECK_ITERATIONS = 4
# Windows per evaluator forward (the result does not depend on it beyond float rounding).
EVAL_BATCH = 4


def default_config_path(model: str) -> str:
    """``configs/<model>_isaid.yaml`` of this repository."""
    return str(CONFIGS / f"{model}_isaid.yaml")


# ----------------------------------------------------------------------------------------------
# What one trainer run gives
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainRun:
    """One trainer's run: per-iteration curves, final weights (torch names), evaluation."""

    label: str  # "torch", "paddle", or a perturbed torch run ("torch threads=2")
    loss: np.ndarray  # [N] float64, from metrics.jsonl
    lr: np.ndarray
    grad_norm: np.ndarray
    state: "OrderedDict[str, np.ndarray]"  # final weights and buffers, torch_ref key names
    confusion: np.ndarray  # int64 [C,C] of the evaluator on the val scenes
    miou: float  # 16-class mIoU, fraction
    miou_fg: float
    out_dir: str
    seconds: float = 0.0
    eval_seconds: float = 0.0

    def curves(self) -> Dict[str, List[float]]:
        return {"loss": self.loss.tolist(), "lr": self.lr.tolist(), "grad_norm": self.grad_norm.tolist()}


@dataclass
class Setup:
    """Everything both runs share: recipe overrides, data, initial state, evaluation windows."""

    model: str
    config_path: str
    data_root: str
    overrides: List[str]
    iterations: int
    device: str
    window: int  # training patch side (from the config or --size)
    batch: int
    eval_window: int
    eval_stride: int
    val_scenes: Optional[int]
    initial_state: "OrderedDict[str, np.ndarray]" = field(repr=False, default_factory=OrderedDict)
    init_description: str = ""
    synthetic: bool = True

    def describe(self) -> Dict[str, Any]:
        return {
            "config": os.path.relpath(self.config_path) if os.path.isabs(self.config_path) else self.config_path,
            "data": "synthetic (isaid.synth -> isaid.prepare)" if self.synthetic else self.data_root,
            "iterations": self.iterations,
            "window": self.window,
            "batch": self.batch,
            "device": self.device,
            "initial weights": self.init_description,
            "evaluation": f"window {self.eval_window} stride {self.eval_stride}, {self.val_scenes or 'all'} val scenes",
            "overrides": " ".join(self.overrides),
        }


# ----------------------------------------------------------------------------------------------
# Data, recipe, initial weights
# ----------------------------------------------------------------------------------------------


def make_synthetic_data(root: str, window: int, seed: int) -> str:
    """Synthetic iSAID scenes in the download layout, prepared into ``root/prepared``; returns it.

    Runs ``isaid.synth`` and ``isaid.prepare`` (their ``main``, in this process: the same code
    as the commands); their output is kept out of the report.
    """
    from isaid import prepare, synth

    src, out = os.path.join(root, "src"), os.path.join(root, "prepared")
    shutil.rmtree(root, ignore_errors=True)  # only the stage's own data folder
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = synth.main(
            [
                src,
                "--train",
                str(SYNTH_TRAIN_SCENES),
                "--val",
                str(SYNTH_VAL_SCENES),
                "--size",
                str(SYNTH_SCALE * window),
                "--seed",
                str(seed),
                "--no-zip",
            ]
        )
        if code == 0:
            code = prepare.main([src, out, "--window", str(window), "--stride", str(window), "--no-progress"])
    if code != 0:
        raise RuntimeError(f"synthetic data for the train stage failed: {log.getvalue().strip()[-500:]}")
    return out


def eval_stride_for(window: int) -> int:
    """The official 512/896 stride ratio, rounded to a multiple of 32 (896 -> 512, 64 -> 32)."""
    return max(32, int(round(window * 512 / 896 / 32)) * 32)


def build_setup(config: AlignConfig, work_dir: str) -> Setup:
    """Resolve the recipe, make or check the data and build the shared initial weights."""
    from app.config import ConfigError, load_config, resolve_imagenet_path

    config_path = config.train_config or default_config_path(config.model)
    synthetic = config.data is None
    device = config.device
    if device == "auto":  # one decision for both trainers and both evaluators
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    forced = {
        "model.name": config.model,
        "train.iterations": config.train_iterations,
        "train.amp": "none",
        "train.device": device,
        "train.log_every": 1,
        "train.log_backend": "none",
        "train.checkpoint_every": config.train_iterations,
        "train.keep_checkpoints": 1,
    }
    if synthetic:
        forced.update(
            {
                "data.window": config.size,
                "train.batch_size": config.batch,
                "train.num_workers": 0,
                "init.imagenet": "none",
                "train.seed": config.seed,
            }
        )
    else:
        forced["data.root"] = config.data
    # The user's --set come last: they may change anything, e.g. train.amp=fp16 on a GPU.
    overrides = [f"{k}={v}" for k, v in forced.items()] + list(config.sets)
    try:
        recipe = load_config(config_path, overrides)
    except ConfigError as exc:
        raise AlignInputError(str(exc)) from None
    if recipe["model"]["name"] != config.model:
        raise AlignInputError(f"{config_path}: model.name is {recipe['model']['name']}, not --model {config.model}")
    window = int(recipe["data"]["window"])
    if synthetic:
        data_root = make_synthetic_data(os.path.join(work_dir, "data"), window, config.seed)
        overrides.insert(0, f"data.root={data_root}")
        recipe = load_config(config_path, overrides)
    data_root = recipe["data"]["root"]
    for split in (recipe["data"]["split"], "val"):
        if not os.path.isfile(os.path.join(data_root, split, "index.json")):
            raise AlignInputError(
                f"{os.path.join(data_root, split, 'index.json')}: not found; prepare the "
                f"data with `python -m isaid.prepare SRC {data_root} --window {window}`"
            )
    imagenet = None if synthetic else resolve_imagenet_path(recipe)
    if imagenet is not None and not os.path.isfile(imagenet):
        raise AlignInputError(
            f"init.imagenet: {imagenet}: file not found (convert torchvision's "
            f"resnet50-19c8e357.pth with `python -m convert ... --model resnet50 --target "
            f"{config.model}`, or pass --set init.imagenet=none)"
        )
    state, how = initial_state(config.model, recipe["model"]["num_classes"], recipe["train"]["seed"], imagenet)
    return Setup(
        config.model,
        config_path,
        data_root,
        overrides,
        config.train_iterations,
        device,
        window,
        int(recipe["train"]["batch_size"]),
        window,
        eval_stride_for(window),
        config.val_scenes,
        state,
        how,
        synthetic,
    )


def initial_state(
    model: str, num_classes: int, seed: int, imagenet: Optional[str]
) -> Tuple["OrderedDict[str, np.ndarray]", str]:
    """(torch_ref state as numpy, description): the torch trainer's own initialisation."""
    import torch

    import torch_ref
    from torch_ref.train import load_imagenet

    torch.manual_seed(seed)  # what torch_ref.train's seed_everything does before build_model
    net = torch_ref.build_model(model, num_classes=num_classes)
    how = f"torch_ref init, torch.manual_seed({seed})"
    if imagenet is not None:
        load_imagenet(net, imagenet, model)
        how += f", encoder from {imagenet}"
    state = OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in net.state_dict().items())
    return state, how + "; Paddle: the same, converted by convert.torch_to_paddle"


def recipe_for(setup: Setup, framework: str, out_dir: str, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The trainer config of one run (``extra``: more overrides, e.g. a perturbation)."""
    from app.config import load_config

    return load_config(setup.config_path, [*setup.overrides, f"train.out_dir={out_dir}", *extra])


# ----------------------------------------------------------------------------------------------
# Running one trainer and its evaluator
# ----------------------------------------------------------------------------------------------


def read_curves(out_dir: str, iterations: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(loss, lr, grad_norm) per iteration from the trainer's ``metrics.jsonl``."""
    path = os.path.join(out_dir, "metrics.jsonl")
    rows = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows[int(row["iteration"])] = row
    missing = [i for i in range(1, iterations + 1) if i not in rows]
    if missing:
        raise RuntimeError(f"{path}: no row for iterations {missing[:5]} (train.log_every must be 1)")
    values = [np.array([float(rows[i][key]) for i in range(1, iterations + 1)]) for key in ("loss", "lr", "grad_norm")]
    return values[0], values[1], values[2]


def run_trainer(
    setup: Setup,
    framework: str,
    out_dir: str,
    extra: Sequence[str] = (),
    label: str = "",
    threads: Optional[int] = None,
    progress: bool = False,
) -> TrainRun:
    """Train with ``framework``'s trainer from the shared initial state, then evaluate.

    ``extra`` and ``threads`` perturb a run harmlessly (benchmarks/train_align_floor.py).
    """
    import importlib

    import convert

    shutil.rmtree(out_dir, ignore_errors=True)  # the stage's own run folder: no stale rows or checkpoints
    recipe = recipe_for(setup, framework, out_dir, extra)
    module = importlib.import_module("torch_ref.train" if framework == "torch" else "paddle_impl.train")
    state: Mapping[str, np.ndarray] = setup.initial_state
    if framework == "paddle":
        state = convert.torch_to_paddle(setup.initial_state, setup.model)
    start = time.perf_counter()
    with _threads(threads):
        module.train(recipe, None, None, progress=progress, initial_state=state)
    seconds = time.perf_counter() - start
    loss, lr, grad_norm = read_curves(out_dir, setup.iterations)
    weights = os.path.join(out_dir, module.FINAL_WEIGHTS)
    final = convert.load_state_dict_file(weights)
    if framework == "paddle":
        final = convert.paddle_to_torch(final, setup.model)
    start = time.perf_counter()
    with _threads(threads):
        confusion = evaluate(setup, framework, weights)
    from isaid.metrics import miou

    summary = miou(confusion)
    return TrainRun(
        label or framework,
        loss,
        lr,
        grad_norm,
        OrderedDict((k, np.asarray(v)) for k, v in final.items()),
        confusion,
        float(summary["miou"]),
        float(summary["miou_fg"]),
        out_dir,
        seconds,
        time.perf_counter() - start,
    )


@contextlib.contextmanager
def _threads(threads: Optional[int]):
    """torch's intra-op thread count set to ``threads`` for the block (None: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(setup: Setup, framework: str, weights: str) -> np.ndarray:
    """The confusion matrix of ``framework``'s own evaluator on the val scenes."""
    import importlib

    from app.evaluation import find_scenes

    module = importlib.import_module("torch_ref.evaluate" if framework == "torch" else "paddle_impl.evaluate")
    val = os.path.join(setup.data_root, "val")
    scenes = find_scenes(os.path.join(val, "images"), os.path.join(val, "labels"), setup.val_scenes)
    engine, _ = module.BACKEND.build_engine(
        setup.model, weights, setup.eval_window, setup.eval_stride, setup.device, batch_size=EVAL_BATCH
    )
    confusion, _ = module.evaluate_scenes(engine, scenes, progress=False, prefetch=False)
    return np.asarray(confusion, dtype=np.int64)


def batch_digests(setup: Setup, iterations: int) -> Dict[str, List[str]]:
    """sha256 of every batch (images and labels) both frameworks' loaders give for the first
    ``iterations`` iterations, with the trainers' own sampling plan."""
    from isaid.augment import SamplePlan, load_patch_index

    recipe = recipe_for(setup, "torch", os.devnull)
    train, augment = recipe["train"], recipe["augment"]
    window = recipe["data"]["window"]
    patches = load_patch_index(recipe["data"]["root"], recipe["data"]["split"], window)
    out: Dict[str, List[str]] = {}
    for framework in FRAMEWORKS:
        plan = SamplePlan(
            len(patches), train["batch_size"], train["seed"], 1, 0, augment["hflip"], augment["vflip"], augment["rot90"]
        )
        if framework == "torch":
            from torch_ref.data import build_loader

            loader = build_loader(patches, plan, window, 0, iterations, 0, pin_memory=False)
        else:
            from paddle_impl.data import build_loader

            loader = build_loader(patches, plan, window, 0, iterations, 0)
        digests = []
        for batch in loader:  # (images, labels, the samples' error records)
            h = hashlib.sha256()
            for tensor in batch[:2]:
                array = np.ascontiguousarray(tensor.numpy())
                h.update(f"{array.dtype}{array.shape}".encode())
                h.update(array.tobytes())
            digests.append(h.hexdigest())
        out[framework] = digests
    return out


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------


def global_relative(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    keys: Sequence[str],
) -> Tuple[float, float, str]:
    """(||ref - other|| / ||ref - start||, ||ref - other|| / ||ref||, tensor with the largest
    share of the difference) over ``keys``."""
    diff2 = travel2 = norm2 = 0.0
    worst, worst_value = "", -1.0
    for k in keys:
        a = np.asarray(reference[k], dtype=np.float64)
        d = float(np.sum((a - np.asarray(other[k], dtype=np.float64)) ** 2))
        diff2 += d
        travel2 += float(np.sum((a - np.asarray(start[k], dtype=np.float64)) ** 2))
        norm2 += float(np.sum(a**2))
        if d > worst_value:
            worst, worst_value = k, d
    rel_travel = math.sqrt(diff2 / travel2) if travel2 > 0 else (0.0 if diff2 == 0 else math.inf)
    rel_norm = math.sqrt(diff2 / norm2) if norm2 > 0 else (0.0 if diff2 == 0 else math.inf)
    return rel_travel, rel_norm, worst


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
    rel_travel, rel_norm, worst = global_relative(reference.state, other.state, start, keys)
    rows.append(
        Row(
            "params/final",
            "train_param",
            [len(keys)],
            math.nan,
            math.nan,
            rel_travel,
            math.nan,
            tols["train_param"],
            rel_travel <= tols["train_param"].rtol,
            f"||torch - other|| / ||torch - initial|| over {len(keys)} parameters; "
            f"/ ||torch||: {rel_norm:.2e}; largest share: {worst}",
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


# ----------------------------------------------------------------------------------------------
# Curves: JSON and PNG
# ----------------------------------------------------------------------------------------------


def curves_document(
    reference: TrainRun, other: TrainRun, result: StageResult, tols: Mapping[str, Tolerance]
) -> Dict[str, Any]:
    """What ``curves.json`` holds."""
    return {
        "stage": STAGE,
        "model": result.model,
        "passed": result.passed,
        "settings": result.settings,
        "iterations": list(range(1, len(reference.loss) + 1)),
        reference.label: reference.curves(),
        other.label: other.curves(),
        "relative_difference": {
            key: [_finite(x) for x in relative_curve(getattr(reference, key), getattr(other, key))]
            for key in ("loss", "lr", "grad_norm")
        },
        "window_relative_difference": window_relative(reference, other),
        "miou": {reference.label: reference.miou, other.label: other.miou},
        "miou_fg": {reference.label: reference.miou_fg, other.label: other.miou_fg},
        "thresholds": {k: tols[k].rtol for k in TRAIN_KINDS},
        "first_divergence": None if result.first_divergence is None else asdict(result.first_divergence),
    }


def window_relative(reference: TrainRun, other: TrainRun) -> List[Dict[str, Any]]:
    """Relative difference of the loss and gradient-norm means over each window after TRAIN_EARLY."""
    out = []
    n = len(reference.loss)
    for lo in range(TRAIN_EARLY, n, TRAIN_WINDOW):
        hi = min(n, lo + TRAIN_WINDOW)
        entry: Dict[str, Any] = {"first": lo + 1, "last": hi}
        for key in ("loss", "grad_norm"):
            a, b = float(np.mean(getattr(reference, key)[lo:hi])), float(np.mean(getattr(other, key)[lo:hi]))
            entry[key] = _finite(abs(a - b) / abs(a)) if a else _finite(0.0 if a == b else math.inf)
        out.append(entry)
    return out


def _finite(value: float) -> Any:
    return float(value) if math.isfinite(value) else str(value)


def write_curves(out_dir: Path, document: Mapping[str, Any], reference: TrainRun, other: TrainRun) -> None:
    """``curves.json`` and ``curves.png`` in ``out_dir`` (each written atomically)."""
    from convert import atomic_write

    data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    atomic_write(out_dir / "curves.json", lambda f: f.write(data))
    png = plot_curves(document, reference, other)
    atomic_write(out_dir / "curves.png", lambda f: f.write(png))


def plot_curves(document: Mapping[str, Any], reference: TrainRun, other: TrainRun) -> bytes:
    """The PNG: loss curves (and lr), relative differences against the thresholds, the mIoUs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = np.asarray(document["iterations"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 3, 1.2]})
    ax = axes[0]
    ax.plot(its, reference.loss, label=f"{reference.label} loss", color="tab:blue", lw=1.4)
    ax.plot(its, other.loss, label=f"{other.label} loss", color="tab:orange", lw=1.0, ls="--")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    lr_ax = ax.twinx()
    lr_ax.plot(its, reference.lr, color="tab:gray", lw=0.8, label=f"{reference.label} lr")
    lr_ax.plot(its, other.lr, color="tab:red", lw=0.8, ls=":", label=f"{other.label} lr")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    lines = ax.get_legend_handles_labels()
    more = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper right")
    ax.set_title(f"{document['model']}: both trainers", fontsize=9)
    ax = axes[1]
    rel = document["relative_difference"]
    floor = 1e-9
    for key, colour in (("loss", "tab:blue"), ("grad_norm", "tab:green"), ("lr", "tab:red")):
        values = np.array([float(v) for v in rel[key]])
        ax.semilogy(
            its,
            np.maximum(values, floor),
            label=f"{key}",
            color=colour,
            lw=1.0,
            marker="o" if len(its) <= 30 else None,
            ms=2,
        )
    for n, window in enumerate(document["window_relative_difference"]):
        for key, colour in (("loss", "tab:blue"), ("grad_norm", "tab:green")):
            ax.hlines(
                max(float(window[key]), floor),
                window["first"] - 0.5,
                window["last"] + 0.5,
                colors=colour,
                lw=2.5,
                alpha=0.6,
                label=f"{key}, {TRAIN_WINDOW}-iteration mean" if n == 0 else None,
            )
    thresholds = document["thresholds"]
    early = min(len(its), TRAIN_EARLY) + 0.5
    ax.hlines(thresholds["train_early"], 1.5, early, colors="k", ls="--", lw=0.8, label="bands (loss, grad norm)")
    ax.hlines(thresholds["train_first_grad"], 0.5, 1.5, colors="k", ls="--", lw=0.8)
    if len(its) > TRAIN_EARLY:
        ax.hlines(thresholds["train_curve"], early, len(its) + 0.5, colors="k", ls="--", lw=0.8)
    ax.axhline(thresholds["train_lr"], color="tab:red", ls=":", lw=0.8, label="band (lr)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"|{reference.label} - {other.label}| / |{reference.label}|")
    ax.set_title("relative difference per iteration (floor 1e-9)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[2]
    values = [100 * reference.miou, 100 * other.miou]
    bars = ax.bar([reference.label, other.label], values, color=["tab:blue", "tab:orange"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("val mIoU (%)")
    ax.set_ylim(0, max(values + [1.0]) * 1.25)
    verdict = "PASS" if document["passed"] else "FAIL"
    ax.set_title(f"mIoU ({verdict})", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------


def stage_tolerances(config: AlignConfig) -> Dict[str, Tolerance]:
    """The train stage's thresholds: float32 (the trainers' precision), with the overrides."""
    return tolerances(DTYPE, config.rtol, config.atol, config.tol)


def run(config: AlignConfig, fixture: Any = None, progress: bool = False) -> StageResult:
    """Run the train stage for ``config``; write its files when ``config.out`` is set.

    ``fixture`` is ignored (the stage builds its own models through the trainers).
    """
    from app.training import TrainError
    from isaid.augment import DataError

    from .fixtures import import_frameworks

    del fixture
    import_frameworks()
    start = time.perf_counter()
    out_dir = config.out_dir(STAGE)
    tols = stage_tolerances(config)
    with contextlib.ExitStack() as stack:
        if out_dir is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="align_train_"))
        else:
            work = str(out_dir)  # created by the first file written into it
        try:
            setup = build_setup(config, work)
            digests = batch_digests(setup, min(setup.iterations, BATCH_CHECK_ITERATIONS))
            runs = {fw: run_trainer(setup, fw, os.path.join(work, "runs", fw), progress=progress) for fw in FRAMEWORKS}
        except (DataError, TrainError) as exc:
            raise AlignInputError(str(exc)) from None
        result = StageResult(STAGE, config.model, DTYPE if not _amp(setup) else f"{DTYPE}+{_amp(setup)}")
        result.settings = {
            **setup.describe(),
            "tolerances": {k: tols[k].describe() for k in (*TRAIN_KINDS, "counter", "exact")},
            **versions(),
        }
        same = digests["torch"] == digests["paddle"]
        result.rows.append(
            Row(
                "batches/identical",
                "exact",
                [len(digests["torch"])],
                0.0 if same else 1.0,
                0.0 if same else 1.0,
                0.0 if same else 1.0,
                1.0,
                tols["exact"],
                same,
                f"sha256 of the first {len(digests['torch'])} batches of both loaders"
                + ("" if same else ": DIFFERENT"),
            )
        )
        rows, divergence = compare_runs(runs["torch"], runs["paddle"], setup.initial_state, tols, config.model)
        result.rows += rows
        if not same:
            divergence = Divergence(
                "batches",
                "the two frameworks' loaders give different batches (isaid.augment / data.py)",
                value="batches/identical",
            )
        result.first_divergence = divergence
        t, p = runs["torch"], runs["paddle"]
        result.notes += [
            f"torch: {t.seconds:.1f} s training + {t.eval_seconds:.1f} s evaluation; paddle: {p.seconds:.1f} s + "
            f"{p.eval_seconds:.1f} s",
            f"final loss torch {t.loss[-1]:.4f} paddle {p.loss[-1]:.4f}; val mIoU torch {100 * t.miou:.2f}% paddle "
            f"{100 * p.miou:.2f}%",
            "BatchNorm running statistics are not compared here (torch updates running_var with the unbiased "
            "batch variance, Paddle with the biased one; align.backward accounts for it); they enter the mIoU",
            "thresholds: measured torch-vs-torch spread under harmless perturbations with a margin "
            "(benchmarks/train_align_floor.py, align/compare.py)",
        ]
        t_log = {
            "loss": t.loss,
            "lr": t.lr,
            "grad_norm": t.grad_norm,
            "miou": np.asarray(t.miou),
            "confusion": t.confusion,
        }
        p_log = {
            "loss": p.loss,
            "lr": p.lr,
            "grad_norm": p.grad_norm,
            "miou": np.asarray(p.miou),
            "confusion": p.confusion,
        }
        finish_stage(result, start, out_dir, t_log, p_log)
        if out_dir is not None:
            write_curves(Path(out_dir), curves_document(t, p, result, tols), t, p)
    return result


def _amp(setup: Setup) -> str:
    from app.config import load_config

    amp = load_config(setup.config_path, setup.overrides)["train"]["amp"]
    return "" if amp == "none" else amp


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.train``."""
    from .cli import stage_main

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

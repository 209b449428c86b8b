"""The train stage itself: each framework's own trainer and evaluator run from the shared
set-up, the loaders' batches checked, the runs compared, the files written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from common.constants import FRAMEWORKS

from ..compare import Divergence, Row, StageResult, Tolerance, finish_stage, tolerances
from ..config import AlignConfig, AlignInputError
from ..fixtures import versions
from .compare import compare_runs
from .plot import curves_document, write_curves
from .setup import (
    BATCH_CHECK_ITERATIONS,
    DTYPE,
    EVAL_BATCH,
    STAGE,
    TRAIN_KINDS,
    Setup,
    TrainRun,
    build_setup,
    recipe_for,
)


@dataclass(frozen=True)
class FrameworkParts:
    """What the stage runs of one framework: its trainer and evaluator modules (the code users
    run), its loader factory, and the weight conversions to and from torch_ref's key names."""

    trainer: ModuleType
    evaluator: ModuleType
    build_loader: Callable[..., Any]
    from_torch: Callable[[Mapping[str, np.ndarray], str], Mapping[str, np.ndarray]]
    to_torch: Callable[[Mapping[str, np.ndarray], str], Mapping[str, np.ndarray]]


def framework_parts() -> Dict[str, FrameworkParts]:
    """framework name -> its parts (explicit imports, so the import-rule test sees the arrows)."""
    import convert
    from paddle_impl import data as paddle_data
    from paddle_impl import evaluate as paddle_evaluate
    from paddle_impl import train as paddle_train
    from torch_ref import data as torch_data
    from torch_ref import evaluate as torch_evaluate
    from torch_ref import train as torch_train

    def same(state: Mapping[str, np.ndarray], model: str) -> Mapping[str, np.ndarray]:
        return state

    def torch_loader(*args: Any) -> Any:
        return torch_data.build_loader(*args, pin_memory=False)

    return {
        "torch": FrameworkParts(torch_train, torch_evaluate, torch_loader, same, same),
        "paddle": FrameworkParts(
            paddle_train, paddle_evaluate, paddle_data.build_loader, convert.torch_to_paddle, convert.paddle_to_torch
        ),
    }


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
    import convert

    shutil.rmtree(out_dir, ignore_errors=True)  # the stage's own run folder: no stale rows or checkpoints
    recipe = recipe_for(setup, framework, out_dir, extra)
    parts = framework_parts()[framework]
    module = parts.trainer
    state = parts.from_torch(setup.initial_state, setup.model)
    start = time.perf_counter()
    with _threads(threads):
        module.train(recipe, None, None, progress=progress, initial_state=state)
    seconds = time.perf_counter() - start
    loss, lr, grad_norm = read_curves(out_dir, setup.iterations)
    weights = os.path.join(out_dir, module.FINAL_WEIGHTS)
    final = parts.to_torch(convert.load_state_dict_file(weights), setup.model)
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
    from app.val_scenes import find_scenes

    module = framework_parts()[framework].evaluator
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
        loader = framework_parts()[framework].build_loader(patches, plan, window, 0, iterations, 0)
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


def stage_tolerances(config: AlignConfig) -> Dict[str, Tolerance]:
    """The train stage's thresholds: float32 (the trainers' precision), with the overrides."""
    return tolerances(DTYPE, config.rtol, config.atol, config.tol)


def run(config: AlignConfig, fixture: Any = None, progress: bool = False) -> StageResult:
    """Run the train stage for ``config``; write its files when ``config.out`` is set.

    ``fixture`` is ignored (the stage builds its own models through the trainers).
    """
    from app.training import TrainError
    from isaid.augment import DataError

    from ..fixtures import import_frameworks

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

"""Stage 4, metric: the evaluation's confusion matrix and mIoU from each framework's own code.

Each side counts the confusion matrix on its device (its package's ``metrics.confusion_matrix``);
the IoU maths is the shared numpy code (``isaid.metrics.miou``) run on each side's matrix. Two
prediction sets against the fixture labels: ``random`` classes (every class present) and
``model``, the argmax of torch_ref's eval probabilities (from the forward stage when it ran).
Everything must be bit-identical; ``isaid.metrics.confusion_from_labels`` (framework-free) is
a third opinion on the torch count.

``python -m align.metric --model farseg``; see ``--help``.
"""

from __future__ import annotations

import time
from typing import Dict, Optional, Sequence

import numpy as np

from isaid.palette import NUM_CLASSES

from .compare import Divergence, StageResult, compare_arrays, finish_stage
from .config import AlignConfig
from .fixtures import Fixture, get_fixture, versions
from .sides import SIDES, TORCH, Side

STAGE = "metric"


def side_confusion(side: Side, pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``side``'s on-device confusion matrix (its ``metrics`` module is looked up at call time,
    so patches apply)."""
    metrics = side.package("metrics")
    return side.numpy(metrics.confusion_matrix(side.tensor(pred), side.tensor(labels), NUM_CLASSES))


def _summary(cm: np.ndarray) -> Dict[str, np.ndarray]:
    from isaid.metrics import miou

    s = miou(cm)
    return {
        "confusion": cm.astype(np.int64),
        "iou": np.asarray(s["iou"], dtype=np.float64),
        "miou16": np.asarray(s["miou"]),
        "miou15_fg": np.asarray(s["miou_fg"]),
    }


def model_predictions(fx: Fixture) -> np.ndarray:
    """argmax of torch_ref's eval probabilities (from the forward stage's cache when present)."""
    probs = fx.cache.get("torch_probs")
    if probs is None:
        fx.reset()
        x, _ = fx.inputs(TORCH)
        with TORCH.no_grad():
            probs = TORCH.numpy(fx.torch_model(x))
        fx.cache["torch_probs"] = probs
    return probs.argmax(axis=1).astype(np.int64)


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the metric stage for ``config``; write its files when ``config.out`` is set
    (``progress`` is unused: the stage is quick)."""
    from isaid.metrics import confusion_from_labels

    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tol = config.tolerances()["exact"]
    labels = fx.y
    rng = np.random.default_rng([config.seed, 3])
    predictions = {
        "random": rng.integers(0, NUM_CLASSES, size=labels.shape, dtype=np.int64),
        "model": model_predictions(fx),
    }
    result = StageResult(STAGE, config.model, config.dtype)
    result.settings = {**fx.describe(), "tolerances": {"exact": tol.describe()}, **versions()}
    t_log: Dict[str, np.ndarray] = {}
    p_log: Dict[str, np.ndarray] = {}
    for source, pred in predictions.items():
        t_cm, p_cm = (side_confusion(side, pred, labels) for side in SIDES)
        t_sum, p_sum = _summary(t_cm), _summary(p_cm)
        for key in t_sum:
            name = f"{source}/{key}"
            t_log[name], p_log[name] = t_sum[key], p_sum[key]
            result.rows.append(compare_arrays(name, t_sum[key], p_sum[key], tol, "exact"))
        numpy_cm = confusion_from_labels(pred, labels, NUM_CLASSES)
        note = "torch_ref's count against isaid.metrics (framework-free)"
        result.rows.append(compare_arrays(f"{source}/confusion_vs_numpy", numpy_cm, t_cm, tol, "exact", note=note))
        valid = int((labels != 255).sum())
        if int(t_cm.sum()) != valid:
            result.notes.append(f"{source}: torch counted {int(t_cm.sum())} pixels, {valid} are labelled")
        result.notes.append(
            f"{source}: mIoU16 torch {100 * float(t_sum['miou16']):.4f} / paddle "
            f"{100 * float(p_sum['miou16']):.4f}; absent classes "
            f"{int(np.isnan(t_sum['iou']).sum())}"
        )
    failed = result.failed_rows()
    if failed:
        result.first_divergence = Divergence(
            failed[0].name,
            f"{failed[0].name}: max|d| {failed[0].max_abs:g}" + (f" ({failed[0].note})" if failed[0].note else ""),
        )
    return finish_stage(result, start, config.out_dir(STAGE), t_log, p_log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.metric``."""
    from .cli import stage_main

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

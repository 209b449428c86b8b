"""Confusion-matrix maths for iSAID evaluation, in numpy.

Convention (the official one, SimpleCV ``NPMeanIntersectionOverUnion``): ``cm[t, p]`` counts
the pixels whose ground truth is ``t`` and whose prediction is ``p`` -- rows are ground truth,
columns are predictions. The torch and paddle evaluators build the matrix on the device and
hand the numpy matrix to these functions.

IoU of class ``c`` = TP / (TP + FP + FN) = ``cm[c,c] / (row_c + col_c - cm[c,c])``.

Absent classes: a class that occurs neither in the ground truth nor in the predictions has
0/0, which is NaN here, as in the official ``compute_iou_per_class`` (no epsilon). The
official mIoU is a plain mean (``iou_per_class.mean()``) and the foreground mean
``ious[1:].mean()`` (FarSeg ``isaid_eval.py``), so one absent class makes them NaN. On the
458 iSAID val images every class occurs, so this never matters there; ``miou`` reproduces
the official means and also gives the mean over the classes that occur
(``miou_present`` / ``miou_fg_present``) for small or synthetic sets.

Counts are int64 here. (The official accumulator is a float32 scipy sparse matrix; float32
cannot count past 2**24 = 16,777,216 exactly, so its large cells can differ from exact
counts; the project counts exactly.)
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np

from .palette import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

# Pixels handled per bincount call: keeps the int64 temporaries near 128 MB for huge scenes.
_PIXELS_PER_BLOCK = 1 << 24


def confusion_from_labels(
    pred: np.ndarray,
    true: np.ndarray,
    num_classes: int = NUM_CLASSES,
    ignore_index: Optional[int] = IGNORE_INDEX,
) -> np.ndarray:
    """Confusion matrix int64 [C,C] of ``pred`` against ``true`` (rows = truth, columns = prediction).

    Pixels whose ground truth equals ``ignore_index`` are left out. Any other ground-truth
    value, or prediction value at a counted pixel, outside ``0..num_classes-1`` raises
    ``ValueError`` (a silent wrong count would be worse).
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"pred shape {pred.shape} differs from true shape {true.shape}")
    pred = pred.reshape(-1)
    true = true.reshape(-1)
    cm = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, true.size, _PIXELS_PER_BLOCK):
        t = true[start : start + _PIXELS_PER_BLOCK].astype(np.int64)
        p = pred[start : start + _PIXELS_PER_BLOCK].astype(np.int64)
        if ignore_index is not None:
            keep = t != ignore_index
            if not keep.all():
                t = t[keep]
                p = p[keep]
        if t.size == 0:
            continue
        for name, values in (("ground truth", t), ("prediction", p)):
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= num_classes:
                bad = low if low < 0 else high
                raise ValueError(f"{name} value {bad} outside 0..{num_classes - 1}")
        cm += np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU (fraction in [0,1], float64 [C]); NaN for a class absent from truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {cm.shape}")
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / union


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else math.nan


def miou(cm: np.ndarray) -> Dict[str, object]:
    """Summary of a confusion matrix; every number is a fraction in [0,1].

    Returns a dict with:

    - ``iou``: per-class IoU, float64 [C] (NaN = class absent from truth and prediction);
    - ``miou``: mean over all C classes, background included -- the reported figure
      (official plain mean: NaN if any class is absent);
    - ``miou_fg``: mean over classes 1..C-1 (official ``ious[1:].mean()``);
    - ``miou_present`` / ``miou_fg_present``: the same means over the classes that occur;
    - ``absent``: list of the classes absent from truth and prediction;
    - ``pixel_accuracy``: trace / total (NaN for an empty matrix).
    """
    cm = np.asarray(cm)
    iou = iou_from_confusion(cm)
    total = float(np.asarray(cm, dtype=np.float64).sum())
    return {
        "iou": iou,
        "miou": float(iou.mean()),
        "miou_fg": float(iou[1:].mean()),
        "miou_present": _nanmean(iou),
        "miou_fg_present": _nanmean(iou[1:]),
        "absent": [int(c) for c in np.flatnonzero(np.isnan(iou))],
        "pixel_accuracy": float(np.trace(cm) / total) if total else math.nan,
    }


def _percent(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{100.0 * value:6.2f}"


def format_iou_table(cm: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> str:
    """Plain-text table of per-class IoU and the means, in percent with 2 decimals.

    ``n/a`` marks a class absent from both truth and prediction (and a mean made NaN by it).
    """
    summary = miou(cm)
    iou = summary["iou"]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
    name_width = max(len("mIoU (present classes)"), *(len(n) for n in class_names))
    lines = [f"{'idx':>3}  {'class':<{name_width}}  {'IoU %':>6}"]
    for index, (name, value) in enumerate(zip(class_names, iou)):
        lines.append(f"{index:>3}  {name:<{name_width}}  {_percent(value)}")
    lines.append(f"{'':>3}  {'mIoU (all classes)':<{name_width}}  {_percent(summary['miou'])}")
    lines.append(f"{'':>3}  {'mIoU (foreground)':<{name_width}}  {_percent(summary['miou_fg'])}")
    if summary["absent"]:
        lines.append(f"{'':>3}  {'mIoU (present classes)':<{name_width}}  {_percent(summary['miou_present'])}")
    lines.append(f"{'':>3}  {'pixel accuracy':<{name_width}}  {_percent(summary['pixel_accuracy'])}")
    return "\n".join(lines)

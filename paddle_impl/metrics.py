"""Confusion matrix on the device (the IoU maths on the matrix is framework-free: isaid.metrics)."""

from __future__ import annotations

import paddle

from isaid.palette import IGNORE_INDEX


def confusion_matrix(
    pred: paddle.Tensor, target: paddle.Tensor, num_classes: int = 16, ignore_index: int = IGNORE_INDEX
) -> paddle.Tensor:
    """int64 [C, C] counts, rows = ground truth, columns = prediction; ``ignore_index`` skipped.

    Counted where the tensors live (one bincount), so no pixel has to travel to the CPU.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {list(pred.shape)} and label {list(target.shape)} differ in shape")
    valid = target != ignore_index
    index = paddle.masked_select(target, valid).astype("int64") * num_classes + paddle.masked_select(
        pred, valid
    ).astype("int64")
    counts = paddle.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape([num_classes, num_classes])

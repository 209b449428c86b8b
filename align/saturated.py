"""The saturated loss fixture: logits of a confident model, where clamped primitives show.

Paddle 3.3.1's ``F.log_softmax`` / ``F.softmax`` / ``F.cross_entropy`` clamp a log-probability at
-64 (docs/paddle_numerics.md). Logits drawn as N(0, 3^2) (the loss stage's ordinary fixture)
never get there; these do. Framework-free (numpy), deterministic in the seed. Per pixel:

- multi-class logits N(0, 3^2), with the predicted class raised by a gap U(100, 300) on the
  confident pixels (85%); the other 15% keep the plain logits (unsure pixels, small losses);
- labels: the predicted class on most confident pixels, another class on MISLABEL_FRACTION of
  them (the true class trails by the gap: losses in the hundreds), 255 (ignore) on
  IGNORE_FRACTION, a random class on the unsure ones;
- binary logits (FactSeg) +-U(20, 40) agreeing with the multi-class branch (+ for a foreground
  prediction, - for background), -+U(80, 120) on CONFLICT_FRACTION of the pixels (a confident
  binary head overruling a confident multi-class head: there the fused probabilities flip when
  log q is clamped), N(0, 3^2) on the unsure ones, and exactly 0 on a few (log-sigmoid's
  gradient 1/2 there).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

GAP_RANGE = (100.0, 300.0)
BI_RANGE = (20.0, 40.0)
CONFLICT_RANGE = (80.0, 120.0)
UNSURE_FRACTION = 0.15
MISLABEL_FRACTION = 0.2
IGNORE_FRACTION = 0.1
CONFLICT_FRACTION = 0.1
ZERO_BI_PIXELS = 4
DESCRIPTION = (
    "saturated: predicted class raised by U(100, 300) on 85% of pixels, 20% of those mislabelled, "
    "binary logits +-U(20, 40), -+U(80, 120) on 10% (branches disagree), 4 exact zeros"
)


def saturated_inputs(
    shape: Tuple[int, int, int, int], seed: int, dtype: str = "float64"
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(multi-class logits [B,C,H,W], binary logits [B,1,H,W], labels int64 [B,H,W]) for ``shape``."""
    batch, classes, height, width = shape
    rng = np.random.default_rng([seed, 0x5A7])
    pixels = (batch, height, width)
    fg = 3.0 * rng.standard_normal(shape)
    predicted = rng.integers(0, classes, size=pixels)
    unsure = rng.random(pixels) < UNSURE_FRACTION
    gap = rng.uniform(*GAP_RANGE, size=pixels) * ~unsure
    np.put_along_axis(fg, predicted[:, None], np.take_along_axis(fg, predicted[:, None], axis=1) + gap[:, None], axis=1)

    labels = predicted.copy()
    mislabelled = ~unsure & (rng.random(pixels) < MISLABEL_FRACTION)
    # Another class than the predicted one: shift by 1..classes-1.
    labels[mislabelled] = (predicted[mislabelled] + rng.integers(1, classes, size=int(mislabelled.sum()))) % classes
    labels[unsure] = rng.integers(0, classes, size=int(unsure.sum()))
    labels[rng.random(pixels) < IGNORE_FRACTION] = 255

    sign = np.where(predicted == 0, -1.0, 1.0)
    bi = sign * rng.uniform(*BI_RANGE, size=pixels)
    conflict = ~unsure & (rng.random(pixels) < CONFLICT_FRACTION)
    bi[conflict] = -sign[conflict] * rng.uniform(*CONFLICT_RANGE, size=int(conflict.sum()))
    bi[unsure] = 3.0 * rng.standard_normal(int(unsure.sum()))
    bi.reshape(-1)[rng.choice(bi.size, size=min(ZERO_BI_PIXELS, bi.size), replace=False)] = 0.0
    return fg.astype(dtype), bi[:, None].astype(dtype), labels.astype(np.int64)

"""The two training losses, as the official code computes them (docs/official_models.md, "FarSeg"
and "FactSeg").

- FarSeg: annealing softmax focal loss (Zheng et al., CVPR 2020, eq. 7-9).
- FactSeg: joint-probability loss with small-object mining (Ma et al., TGRS 2021), with the
  fusion computed in log space so that it stays finite where the official one underflows.

Paddle 3.3.1's ``F.log_softmax``, ``F.softmax`` and ``F.cross_entropy`` clamp a log-probability
at -64 and ``F.log_sigmoid`` drops log1p's precision (docs/paddle_numerics.md): nothing here
uses them. ``log_softmax`` (x - logsumexp(x), exact) and ``log_sigmoid`` (log1p-based) below
stand where torch_ref calls ``F.log_softmax`` / ``F.logsigmoid``.
"""

from __future__ import annotations

import math

import paddle

from isaid.palette import IGNORE_INDEX

ANNEALING_T_MAX = 10000
FOCAL_GAMMA = 2.0
SOM_RATIO = 0.1


def log_softmax(x: paddle.Tensor, axis: int) -> paddle.Tensor:
    """log softmax along ``axis`` without Paddle's clamp at -64 (x - logsumexp(x) is exact)."""
    return x - paddle.logsumexp(x, axis=axis, keepdim=True)


def log_sigmoid(x: paddle.Tensor) -> paddle.Tensor:
    """log sigmoid(x) with log1p, exact for every x (as torch's F.logsigmoid).

    Paddle's F.log_sigmoid computes log(1 + tiny) without log1p: 0 for x >= 40 in float64
    (x >= 20 in float32) where the true value is -exp(-x). Each branch only ever sees inputs
    where exp(.) <= 1 (no overflow, so no NaN through the unused branch's gradient), and at
    x = 0 the gradient is the true 1/2.
    """
    positive = x >= 0
    zero = paddle.zeros_like(x)
    x_pos = paddle.where(positive, x, zero)
    x_neg = paddle.where(positive, zero, x)
    return paddle.where(positive, -paddle.log1p(paddle.exp(-x_pos)), x_neg - paddle.log1p(paddle.exp(x_neg)))


def annealing_softmax_focal_loss(
    logits: paddle.Tensor,
    target: paddle.Tensor,
    step: float,
    t_max: int = ANNEALING_T_MAX,
    gamma: float = FOCAL_GAMMA,
    ignore_index: int = IGNORE_INDEX,
) -> paddle.Tensor:
    """FarSeg's loss on full-resolution logits [B,C,H,W] and labels [B,H,W] (255 = ignore)."""
    valid = target != ignore_index
    safe_target = paddle.where(valid, target, paddle.zeros_like(target)).unsqueeze(1)
    log_probs = log_softmax(logits, axis=1)
    # Per-pixel cross entropy, 0 on ignored pixels (as F.cross_entropy(ignore_index=255)).
    losses = -paddle.take_along_axis(log_probs, safe_target, axis=1).squeeze(1) * valid.astype(logits.dtype)
    with paddle.no_grad():
        true_prob = paddle.take_along_axis(log_probs, safe_target, axis=1).squeeze(1).exp()
        modulating = (1.0 - true_prob).pow(gamma)
        total = losses.sum()
        focal_total = (losses * modulating).sum()
        # Official: sum(l) / sum(l*m), which is 0/0 when every pixel is ignored; guard that.
        normalizer = paddle.where(focal_total > 0, total / focal_total.clip(min=1e-30), paddle.zeros_like(total))
        scales = modulating * normalizer
        if step > t_max:
            weights = scales
        else:
            # The official cosine_annealing(1, scales, t, t_max), same operation order:
            # scales + a(t) * (1 - scales).
            weights = scales + 0.5 * (1.0 - scales) * (math.cos(math.pi * step / t_max) + 1.0)
    # "+ batch size" in the denominator is an official quirk, kept on purpose.
    return (losses * weights).sum() / (valid.astype(logits.dtype).sum() + logits.shape[0])


def joint_log_probs(fg_logits: paddle.Tensor, bi_logits: paddle.Tensor) -> paddle.Tensor:
    """log P of FactSeg's fused distribution: background q0*(1-p), class c>=1 qc*p, renormalised.

    fg_logits [B,C,H,W] (multi-class branch), bi_logits [B,1,H,W] (binary branch). Log space:
    equal to the official value wherever that is finite, and finite where it is NaN.
    """
    log_q = log_softmax(fg_logits, axis=1)
    log_fg = log_sigmoid(bi_logits)
    log_bg = log_sigmoid(-bi_logits)
    joint = paddle.concat([log_q[:, :1] + log_bg, log_q[:, 1:] + log_fg], axis=1)
    return joint - paddle.logsumexp(joint, axis=1, keepdim=True)


def small_object_mining(losses: paddle.Tensor, ratio: float = SOM_RATIO) -> paddle.Tensor:
    """Mean of the non-zero values among the k = int(ratio * numel) largest per-pixel losses.

    numel counts ignored pixels too and the top-k runs over the whole batch (official).
    """
    k = int(ratio * losses.numel().item())
    top, _ = paddle.topk(losses.reshape([-1]), k)
    nonzero = top != 0
    # torch promotes "int64 count + 1e-6" to its default float32 (the 1e-6 then vanishes for
    # counts above ~8); a float64 run of the official code divides by that float32 value.
    count = (nonzero.astype("float32").sum() + 1e-6).astype(top.dtype)
    return paddle.masked_select(top, nonzero).sum() / count


def joint_loss(
    fg_logits: paddle.Tensor,
    bi_logits: paddle.Tensor,
    target: paddle.Tensor,
    ratio: float = SOM_RATIO,
    ignore_index: int = IGNORE_INDEX,
) -> paddle.Tensor:
    """FactSeg's loss: -log P_y of the fused distribution (0 where ignored), then SOM."""
    valid = target != ignore_index
    safe_target = paddle.where(valid, target, paddle.zeros_like(target)).unsqueeze(1)
    log_p = joint_log_probs(fg_logits, bi_logits)
    losses = -paddle.take_along_axis(log_p, safe_target, axis=1).squeeze(1) * valid.astype(log_p.dtype)
    return small_object_mining(losses, ratio)

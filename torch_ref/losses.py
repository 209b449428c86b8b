"""The two training losses, as the official code computes them (docs/official_models.md, "FarSeg"
and "FactSeg").

- FarSeg: annealing softmax focal loss (Zheng et al., CVPR 2020, eq. 7-9).
- FactSeg: joint-probability loss with small-object mining (Ma et al., TGRS 2021), with the
  fusion computed in log space so that it stays finite where the official one underflows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from isaid.palette import IGNORE_INDEX

ANNEALING_T_MAX = 10000
FOCAL_GAMMA = 2.0
SOM_RATIO = 0.1


def annealing_softmax_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    step: float,
    t_max: int = ANNEALING_T_MAX,
    gamma: float = FOCAL_GAMMA,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """FarSeg's loss on full-resolution logits [B,C,H,W] and labels [B,H,W] (255 = ignore)."""
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    log_probs = F.log_softmax(logits, dim=1)
    # Per-pixel cross entropy, 0 on ignored pixels (as F.cross_entropy(ignore_index=255)).
    losses = -torch.gather(log_probs, 1, safe_target).squeeze(1) * valid.to(logits.dtype)
    with torch.no_grad():
        true_prob = torch.gather(log_probs, 1, safe_target).squeeze(1).exp()
        modulating = (1.0 - true_prob).pow(gamma)
        total = losses.sum()
        focal_total = (losses * modulating).sum()
        # Official: sum(l) / sum(l*m), which is 0/0 when every pixel is ignored; guard that.
        normalizer = torch.where(focal_total > 0, total / focal_total.clamp_min(1e-30), torch.zeros_like(total))
        scales = modulating * normalizer
        if step > t_max:
            weights = scales
        else:
            # The official cosine_annealing(1, scales, t, t_max), same operation order:
            # scales + a(t) * (1 - scales).
            weights = scales + 0.5 * (1.0 - scales) * (math.cos(math.pi * step / t_max) + 1.0)
    # "+ batch size" in the denominator is an official quirk, kept on purpose.
    return (losses * weights).sum() / (valid.sum() + logits.shape[0])


def joint_log_probs(fg_logits: torch.Tensor, bi_logits: torch.Tensor) -> torch.Tensor:
    """log P of FactSeg's fused distribution: background q0*(1-p), class c>=1 qc*p, renormalised.

    fg_logits [B,C,H,W] (multi-class branch), bi_logits [B,1,H,W] (binary branch). Log space:
    equal to the official value wherever that is finite, and finite where it is NaN.
    """
    log_q = F.log_softmax(fg_logits, dim=1)
    log_fg = F.logsigmoid(bi_logits)
    log_bg = F.logsigmoid(-bi_logits)
    joint = torch.cat([log_q[:, :1] + log_bg, log_q[:, 1:] + log_fg], dim=1)
    return joint - torch.logsumexp(joint, dim=1, keepdim=True)


def small_object_mining(losses: torch.Tensor, ratio: float = SOM_RATIO) -> torch.Tensor:
    """Mean of the non-zero values among the k = int(ratio * numel) largest per-pixel losses.

    numel counts ignored pixels too and the top-k runs over the whole batch (official).
    """
    k = int(ratio * losses.numel())
    top, _ = losses.reshape(-1).topk(k)
    nonzero = top != 0
    # Official expression: "int64 count + 1e-6" is promoted to torch's default float32.
    return top[nonzero].sum() / (nonzero.sum() + 1e-6)


def joint_loss(
    fg_logits: torch.Tensor,
    bi_logits: torch.Tensor,
    target: torch.Tensor,
    ratio: float = SOM_RATIO,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """FactSeg's loss: -log P_y of the fused distribution (0 where ignored), then SOM."""
    valid = target != ignore_index
    safe_target = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    log_p = joint_log_probs(fg_logits, bi_logits)
    losses = -torch.gather(log_p, 1, safe_target).squeeze(1) * valid.to(log_p.dtype)
    return small_object_mining(losses, ratio)

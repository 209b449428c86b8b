"""What to convert, per model: the whole eval forward, its logits path and sub-parts, and the
torch wrappers that make each of them one traceable module."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from .conversion import flatten

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelPlan:
    # Fallback when the logits path does not convert: (label, attribute path), in call order.
    parts: Tuple[Tuple[str, str], ...]
    loss_key: str
    tail_description: str
    bn_stage: str  # a conv+BN+ReLU(+upsample) stage used for the training-mode BatchNorm probe
    # Functions of torch_ref.losses / paddle_impl.losses taking per-pixel losses [B,H,W], tried
    # alone when the loss as a whole does not convert.
    loss_pieces: Tuple[str, ...] = ()


PLANS: Dict[str, ModelPlan] = {
    "farseg": ModelPlan(
        parts=(
            ("encoder", "en"),
            ("fpn", "fpn"),
            ("scene pooling", "gap"),
            ("relation", "sr"),
            ("decoder", "decoder"),
            ("classifier", "cls_pred_conv"),
            ("upsample x4", "upsample4x_op"),
        ),
        loss_key="cls_loss",
        tail_description="softmax after the logits",
        bn_stage="decoder.blocks.1.0",
    ),
    "factseg": ModelPlan(
        parts=(
            ("encoder", "resencoder"),
            ("fg fpn", "fgfpn"),
            ("bi fpn", "bifpn"),
            ("fg decoder", "fg_decoder"),
            ("bi decoder", "bi_decoder"),
            ("fg classifier", "fg_cls"),
            ("bi classifier", "bi_cls"),
            ("fg upsample x4", "fg_upsample"),
            ("bi upsample x4", "bi_upsample"),
        ),
        loss_key="joint_loss",
        tail_description="log-space fusion after the logits (losses.joint_log_probs(...).exp())",
        bn_stage="fg_decoder.blocks.1.0",
        loss_pieces=("small_object_mining",),
    ),
}


def _arg_spec(args: Sequence[Any]) -> List[Optional[int]]:
    """None for a tensor argument, n for a list of n tensors (all these modules take)."""
    return [len(a) if isinstance(a, (list, tuple)) else None for a in args]


def _unflatten(flat: Sequence[Any], spec: Sequence[Optional[int]]) -> List[Any]:
    args, i = [], 0
    for n in spec:
        if n is None:
            args.append(flat[i])
            i += 1
        else:
            args.append(list(flat[i : i + n]))
            i += n
    return args


def _getpath(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else getattr(obj, name)
    return obj


def forward_on_logits(model: Any, x: Any, logits: Any, *args: Any) -> Any:
    """``model(x, *args)`` (torch or Paddle) with ``model.logits`` shadowed to return ``logits``:
    the models' forward calls ``self.logits(x)`` once, so this runs exactly their own code after
    the logits (probabilities in eval, the loss in training) on given logits."""
    model.logits = lambda _x: logits  # an instance attribute shadows the method
    try:
        return model(x, *args)
    finally:
        del model.logits


def _husk(model: "torch.nn.Module", training: bool) -> "torch.nn.Module":
    """A shallow copy of ``model`` without sub-modules or parameters, with its own copies of the
    top-level buffers (FarSeg's ``buffer_step``), in the given mode: the code after the logits
    uses no sub-module, and tracing it on a husk skips scripting the whole ResNet-50."""
    from collections import OrderedDict

    husk = copy.copy(model)  # new __dict__, shared values: replace the containers
    husk._modules = OrderedDict()
    husk._parameters = OrderedDict()
    husk._buffers = OrderedDict((k, None if v is None else v.detach().clone()) for k, v in model._buffers.items())
    husk.training = training
    return husk


def _torch_modules() -> Dict[str, type]:
    """nn.Module wrappers, defined on first use so that importing this file needs no torch."""
    import torch.nn as nn

    class Eval(nn.Module):
        """The eval forward in one trace: (*logits, probabilities): ``model(x)`` with its logits
        call answered by ``model.logits(x)``, computed once."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            logits = self.model.logits(x)
            return (*flatten(logits), forward_on_logits(self.model, x, logits))

    class Logits(Eval):
        """forward = model.logits."""

        def forward(self, x):
            return self.model.logits(x)

    class AfterLogits(nn.Module):
        """The model's own forward after the logits, on given logits (eval: probabilities;
        training with a label: the loss, and FarSeg's step counter)."""

        def __init__(self, model: nn.Module, loss_key: Optional[str] = None) -> None:
            super().__init__()
            self.model = model
            self.loss_key = loss_key

        def forward(self, *inputs):
            logits = inputs if self.loss_key is None else inputs[:-1]
            given = logits[0] if len(logits) == 1 else tuple(logits)
            if self.loss_key is None:
                return forward_on_logits(self.model, logits[0], given)  # x is unused
            return forward_on_logits(self.model, logits[0], given, {"cls": inputs[-1]})[self.loss_key]

    class Part(nn.Module):
        """A sub-module called with flat tensor inputs, returning a flat tuple."""

        def __init__(self, module: nn.Module, spec: Sequence[Optional[int]]) -> None:
            super().__init__()
            self.module = module
            self.spec = list(spec)

        def forward(self, *flat):
            return tuple(flatten(self.module(*_unflatten(flat, self.spec))))

    class Function(nn.Module):
        def __init__(self, fn: Callable[..., Any]) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *inputs):
            return self.fn(*inputs)

    return {"Eval": Eval, "Logits": Logits, "AfterLogits": AfterLogits, "Part": Part, "Function": Function}

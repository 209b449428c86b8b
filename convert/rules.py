"""Key and tensor rules between the torch and Paddle state dicts; detection and validation.

Which keys are renamed or transposed is decided by the TYPE of the module that owns them, read
from the ``torch_ref`` module tree, never from key-name patterns:

* a BatchNorm module (any ``torch.nn.modules.batchnorm._BatchNorm``, SyncBatchNorm included):
  ``running_mean`` -> ``_mean``, ``running_var`` -> ``_variance``, ``num_batches_tracked``
  dropped (Paddle's BatchNorm has no such buffer); weight/bias keep their names;
* a ``torch.nn.Linear``: ``weight`` [out, in] is stored transposed ([in, out]) by Paddle;
* everything else (convolutions, the FarSeg ``buffer_step`` buffer, ...) is kept as is.

For FarSeg and FactSeg those module types are recorded once in ``weights/module_types.json``
(key -> owning module type, type -> kind), so that converting, detecting and validating never
import torch. The table is generated from ``torch_ref``'s module tree by ``python -m
torch_ref.module_types`` (convert never imports torch_ref: the arrow goes the other way), and
the tests check that both agree key by key. ``rules_from_module`` reads the types of any
torch module directly.

The layouts themselves (key -> shape, order) come from ``weights/*_official_keys.json``; the
module types only tell what each key is, and must cover exactly those keys.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from common.constants import FRAMEWORKS
from weights import ENCODER_PREFIX, MODEL_NAMES, MODULE_TYPES_FILE, check_model_name, load_layout, load_module_types

from .errors import CheckpointError
from .safe_load import import_torch

# What ``detect_model`` can answer; "resnet50" = torchvision's ImageNet ResNet-50.
DETECTABLE = MODEL_NAMES + ("resnet50",)

# torch BatchNorm attribute -> Paddle BatchNorm attribute (None: Paddle has no such buffer).
BN_TORCH_TO_PADDLE: Dict[str, Optional[str]] = {
    "weight": "weight",
    "bias": "bias",
    "running_mean": "_mean",
    "running_var": "_variance",
    "num_batches_tracked": None,
}
# torchvision's classifier, present in the ImageNet file and dropped on import.
IMAGENET_HEAD = OrderedDict([("fc.weight", (1000, 2048)), ("fc.bias", (1000,))])

_MAX_LISTED = 10  # keys listed per category in a validation report


@dataclass(frozen=True)
class KeyRule:
    """How one torch state-dict key becomes a Paddle key."""

    torch_key: str
    paddle_key: Optional[str]  # None: dropped going to Paddle (BatchNorm num_batches_tracked)
    shape: Tuple[int, ...]  # torch shape, from the official layout
    module_type: str  # class name of the owning module, e.g. "BatchNorm2d", "Conv2d", "FarSeg"
    transpose: bool = False  # Linear weight: Paddle stores [in, out]
    kind: str = "other"  # what the owning module is for the mapping: batchnorm / linear / other

    @property
    def paddle_shape(self) -> Tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.transpose else self.shape


# ----------------------------------------------------------------------------------------------
# Rules from a torch module tree
# ----------------------------------------------------------------------------------------------

# What a module type means for its keys (the only distinction the mapping needs).
KINDS = ("batchnorm", "linear", "other")


def _rule(key: str, shape: Tuple[int, ...], module_type: str, kind: str) -> KeyRule:
    """The rule of ``key`` owned by a module of ``module_type`` whose kind is ``kind``."""
    name = key.rsplit(".", 1)[-1]  # attribute names never contain a dot
    head = key[: len(key) - len(name)]  # "<module path>." (empty for the root module)
    if kind == "batchnorm":
        if name not in BN_TORCH_TO_PADDLE:
            raise RuntimeError(f"BatchNorm attribute {key!r} has no Paddle counterpart")
        target = BN_TORCH_TO_PADDLE[name]
        return KeyRule(key, None if target is None else head + target, shape, module_type, kind=kind)
    if kind == "linear":
        return KeyRule(key, key, shape, module_type, transpose=(name == "weight" and len(shape) == 2), kind=kind)
    if kind != "other":
        raise RuntimeError(f"unknown module kind {kind!r} for {key!r}")
    return KeyRule(key, key, shape, module_type)


def module_kind(module: Any) -> str:
    """ "batchnorm", "linear" or "other" for a ``torch.nn.Module`` (by type, subclasses included)."""
    nn = import_torch().nn
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, nn.Linear):
        return "linear"
    return "other"


def rules_from_module(module: Any, shapes: Optional[Mapping[str, Sequence[int]]] = None) -> Tuple[KeyRule, ...]:
    """One ``KeyRule`` per entry of ``module.state_dict()``, in state-dict order.

    ``module`` is a ``torch.nn.Module`` (any device, meta included). ``shapes`` overrides the
    shapes read from the module (the official layout is the authority for shapes).
    """
    tensors = module.state_dict(keep_vars=True)
    owner: Dict[str, Tuple[Any, str]] = {}  # key -> (owning module, attribute name)
    for prefix, mod in module.named_modules(remove_duplicate=False):
        local = [n for n, _ in mod.named_parameters(recurse=False)]
        local += [n for n, _ in mod.named_buffers(recurse=False)]
        for name in local:
            owner[f"{prefix}.{name}" if prefix else name] = (mod, name)
    rules: List[KeyRule] = []
    for key, tensor in tensors.items():
        if key not in owner:  # e.g. extra state from a custom get_extra_state: not a tensor key
            raise RuntimeError(f"state-dict key {key!r} has no owning parameter/buffer")
        mod, _ = owner[key]
        shape = tuple(shapes[key]) if shapes is not None and key in shapes else tuple(tensor.shape)
        rules.append(_rule(key, shape, type(mod).__name__, module_kind(mod)))
    return tuple(rules)


@functools.lru_cache(maxsize=None)
def model_rules(model: str) -> Tuple[KeyRule, ...]:
    """The rules of ``model`` ("farseg"/"factseg"), in official state-dict order (cached).

    Read from ``weights/module_types.json`` (no torch import); ``torch_ref.module_types``
    gives the same from the module tree, which the tests check. The table must cover exactly the keys of
    the official layout.
    """
    check_model_name(model)
    layout = load_layout(model)
    types, kinds = load_module_types(model)
    if list(types) != list(layout):
        raise RuntimeError(
            f"{MODULE_TYPES_FILE.name} does not list the {model} layout's keys in "
            f"order: regenerate it with python -m torch_ref.module_types"
        )
    return tuple(_rule(key, shape, types[key], kinds[types[key]]) for key, shape in layout.items())


def torch_layout(model: str) -> "OrderedDict[str, Tuple[int, ...]]":
    """Official torch key -> shape of ``model`` (the JSON layout)."""
    return load_layout(model)


def paddle_layout(model: str) -> "OrderedDict[str, Tuple[int, ...]]":
    """Paddle key -> shape of ``model``: the torch layout through ``model_rules``."""
    return OrderedDict((r.paddle_key, r.paddle_shape) for r in model_rules(model) if r.paddle_key)


def encoder_rules(target: str) -> List[Tuple[str, KeyRule]]:
    """(torchvision key, rule) for every encoder key of ``target`` (prefix removed)."""
    prefix = ENCODER_PREFIX[target]
    return [(r.torch_key[len(prefix) :], r) for r in model_rules(target) if r.torch_key.startswith(prefix)]


def imagenet_layout(target: str = "farseg") -> Tuple["OrderedDict[str, Tuple[int, ...]]", Dict[str, Tuple[int, ...]]]:
    """(required, optional) key -> shape of torchvision's ImageNet ResNet-50 file.

    Required: the encoder keys of ``target`` without its prefix, minus the BatchNorm
    ``num_batches_tracked`` buffers (the 2017 file predates them). Optional: those buffers
    (newer torchvision files) and ``fc.weight``/``fc.bias`` (dropped on import).
    """
    required: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
    optional: Dict[str, Tuple[int, ...]] = dict(IMAGENET_HEAD)
    for key, rule in encoder_rules(target):
        (optional if rule.paddle_key is None else required)[key] = rule.shape
    return required, optional


def expected_layout(
    model: str, framework: str = "torch"
) -> Tuple["OrderedDict[str, Tuple[int, ...]]", Dict[str, Tuple[int, ...]]]:
    """(required, optional) key -> shape that a ``framework`` state dict of ``model`` must have."""
    if model == "resnet50":
        if framework != "torch":
            raise ValueError("ImageNet resnet50 weights exist only as torchvision (torch) files")
        return imagenet_layout("farseg")
    if framework == "torch":
        return torch_layout(model), {}
    if framework == "paddle":
        return paddle_layout(model), {}
    raise ValueError(f"unknown framework {framework!r}: expected torch or paddle")


def counter_keys(model: str, framework: str = "torch") -> Set[str]:
    """Keys of ``model`` in ``framework`` naming that hold integer step counters (BatchNorm
    ``num_batches_tracked``, by module type); every other key holds float32 values."""
    if model == "resnet50":
        return {key for key, rule in encoder_rules("farseg") if rule.paddle_key is None}
    if framework != "torch":
        return set()  # Paddle's BatchNorm keeps no counter
    return {r.torch_key for r in model_rules(model) if r.kind == "batchnorm" and r.paddle_key is None}


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


def _detection_keys() -> Dict[str, set]:
    # Pure JSON (no torch): the torch layouts, and torchvision's names for resnet50. Paddle
    # files share all non-BatchNorm-buffer keys with these, which is plenty to score on.
    keys = {name: set(load_layout(name)) for name in MODEL_NAMES}
    prefix = ENCODER_PREFIX["farseg"]
    keys["resnet50"] = {k[len(prefix) :] for k in load_layout("farseg") if k.startswith(prefix)} | set(IMAGENET_HEAD)
    return keys


_EXAMPLES = {
    "farseg": (
        "en.resnet.conv1.weight",
        "fpn.fpn_inner1.weight",
        "sr.scene_encoder.0.0.weight",
        "cls_pred_conv.weight",
    ),
    "factseg": ("resencoder.resnet.conv1.weight", "fgfpn.fpn_inner1.weight", "fg_cls.weight", "bi_cls.weight"),
    "resnet50": ("conv1.weight", "layer1.0.conv1.weight", "layer4.2.bn3.weight", "fc.weight"),
}


def detect_model(keys: Iterable[str]) -> str:
    """ "farseg", "factseg" or "resnet50" (torchvision ImageNet) from state-dict keys.

    Keys may use torch or Paddle BatchNorm names, with or without a ``module.`` prefix.
    The best-overlapping layout wins if it covers at least half of the given keys or half of
    its own keys; otherwise the state dict is foreign and CheckpointError says what was expected.
    """
    key_list = [k[len("module.") :] if k.startswith("module.") else k for k in keys]
    given = set(key_list)
    scores = []
    for name, known in _detection_keys().items():
        hits = len(given & known)
        scores.append((hits, name, known))
    hits, name, known = max(scores, key=lambda s: s[0])
    if given and hits and (hits * 2 >= len(given) or hits * 2 >= len(known)):
        return name
    expected = "; ".join(f"{', '.join(repr(k) for k in ex[:3])} ({n})" for n, ex in _EXAMPLES.items())
    found = ", ".join(repr(k) for k in key_list[:4]) + (", ..." if len(key_list) > 4 else "")
    raise CheckpointError(
        f"foreign state dict: it matches none of farseg, factseg or torchvision resnet50 "
        f"(expected keys like {expected}); found {len(key_list)} key{'s' if len(key_list) != 1 else ''}: "
        f"{found or 'none'}"
    )


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def format_shape(shape: Sequence[int]) -> str:
    """``[64, 3, 7, 7]``: a shape as the layout-mismatch listings print it."""
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _listing(title: str, rows: List[str]) -> List[str]:
    if not rows:
        return []
    out = [f"  {title} ({len(rows)}):"]
    out += [f"    {row}" for row in rows[:_MAX_LISTED]]
    if len(rows) > _MAX_LISTED:
        out.append(f"    ... and {len(rows) - _MAX_LISTED} more")
    return out


def mismatch_summary(groups: Sequence[Tuple[str, str, List[str]]]) -> Tuple[str, List[str]]:
    """(``"2 missing, 1 wrong shape"``, the listing lines) of the non-empty ``groups``, each
    (count label, listing title, rows), for a layout mismatch's one-line headline and details."""
    counts = ", ".join(f"{len(rows)} {label}" for label, _, rows in groups if rows)
    details = [line for _, title, rows in groups for line in _listing(title, rows)]
    return counts, details


def dtype_problem(key: str, value: Any, counter: bool) -> Optional[str]:
    """Why ``value``'s dtype does not fit ``key`` (None when it does): weights and statistics
    are float32, BatchNorm step counters (``counter``) integers. float16, float64, int32 or
    complex weights would load and then fail (or silently compute something else) at
    prediction, so they are refused here, naming the key."""
    dtype = np.dtype(getattr(value, "dtype", np.float32))
    if counter:
        return None if dtype.kind in "iu" else f"{key}  expected an integer counter (int64), found {dtype}"
    return None if dtype == np.float32 else f"{key}  expected float32, found {dtype}"


def check_layout(
    state: Mapping[str, Any],
    required: Mapping[str, Sequence[int]],
    optional: Mapping[str, Sequence[int]] = None,
    what: str = "the layout",
    other_names: Iterable[str] = (),
    counters: Optional[Iterable[str]] = None,
) -> None:
    """Every required key present with its shape (and dtype), no key outside required/optional.

    Raises CheckpointError whose details list missing / unexpected / wrong-shape / wrong-dtype
    keys (up to ten of each, with counts and shapes). ``optional`` keys are checked for shape
    except where that shape is None. ``counters``: when given, the keys that must hold
    integers (BatchNorm ``num_batches_tracked``); every other key must then be float32 (None:
    dtypes not checked, e.g. for arbitrary modules). ``other_names``: keys of the same model in
    the other framework's naming, used only to add a hint when a file has the wrong naming.
    """
    optional = optional or {}
    counter_keys = None if counters is None else set(counters)
    missing = [f"{k}  expected {format_shape(s)}" for k, s in required.items() if k not in state]
    unexpected, wrong, wrong_dtype = [], [], []
    for key, value in state.items():
        shape = tuple(getattr(value, "shape", ()))
        want = required.get(key, optional.get(key, False))
        if want is False:
            unexpected.append(f"{key}  {format_shape(shape)}")
            continue
        if want is not None and tuple(want) != shape:
            wrong.append(f"{key}  expected {format_shape(want)}, found {format_shape(shape)}")
        problem = None if counter_keys is None else dtype_problem(key, value, key in counter_keys)
        if problem:
            wrong_dtype.append(problem)
    if not (missing or unexpected or wrong or wrong_dtype):
        return
    counts, details = mismatch_summary(
        [
            ("missing", "missing keys", missing),
            ("unexpected", "unexpected keys", unexpected),
            ("wrong shape", "wrong shape", wrong),
            ("wrong dtype", "wrong dtype", wrong_dtype),
        ]
    )
    if len(wrong_dtype) == 1 and not (missing or unexpected or wrong):
        counts += f": {wrong_dtype[0].replace('  ', ' ')}"  # the key in the headline itself
    other = set(other_names)
    renamed = sum(1 for k in state if k in other and k not in required)
    if other and renamed and renamed * 2 >= len(unexpected):
        details.append(
            f"  hint: {renamed} unexpected keys are this model's keys in the OTHER framework's "
            f"naming (BatchNorm running_mean/running_var vs _mean/_variance): the file holds "
            f"the other framework's state dict"
        )
    raise CheckpointError(
        f"does not match {what}: {counts} ({len(required)} keys expected, {len(state)} found)", details
    )


ModelSpec = Union[str, Sequence[KeyRule]]


def _rules_of(model: ModelSpec) -> Tuple[KeyRule, ...]:
    return model_rules(model) if isinstance(model, str) else tuple(model)


def validate(state: Mapping[str, Any], model: ModelSpec, framework: str = "torch", check_dtypes: bool = True) -> None:
    """Check ``state`` against the layout of ``model`` in ``framework`` naming.

    ``model``: "farseg", "factseg", "resnet50" (torchvision ImageNet file, framework torch),
    or a rule sequence from ``rules_from_module`` (any other torch module). ``check_dtypes``
    (named models): float32 weights and integer BatchNorm counters, as every checkpoint has;
    off only for in-memory states deliberately in another precision (align's float64 runs).
    Raises CheckpointError with the multi-line report on any missing / unexpected / wrong-shape
    / wrong-dtype key.
    """
    if not isinstance(model, str):
        rules = _rules_of(model)
        torch_keys = OrderedDict((r.torch_key, r.shape) for r in rules)
        paddle_keys = OrderedDict((r.paddle_key, r.paddle_shape) for r in rules if r.paddle_key)
        required, other = (torch_keys, paddle_keys) if framework == "torch" else (paddle_keys, torch_keys)
        check_layout(state, required, {}, what=f"the module layout ({framework} names)", other_names=other)
        return
    required, optional = expected_layout(model, framework)
    other: Iterable[str] = ()
    if model in MODEL_NAMES:
        other = expected_layout(model, "paddle" if framework == "torch" else "torch")[0]
    label = (
        "torchvision's ImageNet resnet50 layout" if model == "resnet50" else f"the {model} layout ({framework} names)"
    )
    check_layout(
        state,
        required,
        optional,
        what=label,
        other_names=other,
        counters=counter_keys(model, framework) if check_dtypes else None,
    )


# ----------------------------------------------------------------------------------------------
# Tensor rules
# ----------------------------------------------------------------------------------------------


def as_numpy(value: Any) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor or Paddle tensor (no copy where possible)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "numpy"):  # paddle
        return value.numpy()
    return np.asarray(value)


def contiguous(arr: np.ndarray) -> np.ndarray:
    """C-contiguous ``arr`` (copies only when needed; keeps 0-d arrays 0-d, unlike
    ``np.ascontiguousarray``, which turns them into shape [1])."""
    return arr if arr.flags.c_contiguous else np.array(arr, order="C", copy=True)


def _numpy_state(state: Mapping[str, Any]) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, as_numpy(v)) for k, v in state.items())


def _leftover_check(remaining: Mapping[str, Any]) -> None:
    # validate() ran first, so this only fires on a bug in the rules themselves.
    if remaining:
        raise RuntimeError(f"keys left unmapped: {list(remaining)[:10]}")


def torch_to_paddle(
    state: Mapping[str, Any], model: ModelSpec, check_dtypes: bool = True
) -> "OrderedDict[str, np.ndarray]":
    """Official/torch_ref state dict of ``model`` -> Paddle state dict (numpy arrays).

    ``model``: "farseg"/"factseg", or rules from ``rules_from_module`` for any torch module.
    Validates first (CheckpointError on any mismatch; dtypes too unless ``check_dtypes`` is
    False). BatchNorm buffers are renamed and
    ``num_batches_tracked`` dropped, Linear weights transposed, everything else passed through
    unchanged (same dtype; no copy unless a transpose or non-contiguous input needs one).
    Output order: the official order minus the dropped keys.
    """
    state = _numpy_state(state)
    validate(state, model, "torch", check_dtypes)
    remaining = OrderedDict(state)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for rule in _rules_of(model):
        arr = remaining.pop(rule.torch_key)
        if rule.paddle_key is None:
            continue
        out[rule.paddle_key] = contiguous(arr.T if rule.transpose else arr)
    _leftover_check(remaining)
    return out


def paddle_to_torch(
    state: Mapping[str, Any], model: ModelSpec, num_batches_tracked: int = 0, check_dtypes: bool = True
) -> "OrderedDict[str, np.ndarray]":
    """Paddle state dict of ``model`` -> torch_ref/official state dict (numpy arrays).

    The exact inverse of ``torch_to_paddle``, in the official key order. Paddle keeps no
    BatchNorm step counter, so every ``num_batches_tracked`` is recreated as an int64 0-d
    array holding ``num_batches_tracked`` (default 0; torch only reads it when a BatchNorm has
    ``momentum=None``, which these models never use). Use ``as_torch`` for tensors.
    """
    state = _numpy_state(state)
    validate(state, model, "paddle", check_dtypes)
    remaining = OrderedDict(state)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for rule in _rules_of(model):
        if rule.paddle_key is None:
            out[rule.torch_key] = np.full(rule.shape, num_batches_tracked, dtype=np.int64)
            continue
        arr = remaining.pop(rule.paddle_key)
        out[rule.torch_key] = contiguous(arr.T if rule.transpose else arr)
    _leftover_check(remaining)
    return out


def imagenet_resnet50_to(
    state: Mapping[str, Any], model: str = "farseg", to: str = "paddle"
) -> "OrderedDict[str, np.ndarray]":
    """torchvision ImageNet ResNet-50 state dict -> the encoder part of ``model``.

    Keys gain the model's encoder prefix (``en.resnet.`` for farseg, ``resencoder.resnet.``
    for factseg); ``fc.weight``/``fc.bias`` are dropped. ``to="paddle"``: Paddle names (BN
    renamed, no num_batches_tracked). ``to="torch"``: official names, with
    ``num_batches_tracked`` taken from the file when it has them, else created as int64 0.
    The result holds ONLY the encoder keys: load it non-strictly.
    """
    check_model_name(model, what="target model")
    if to not in FRAMEWORKS:
        raise ValueError(f"unknown framework {to!r}: expected torch or paddle")
    state = _numpy_state(state)
    required, optional = imagenet_layout(model)
    check_layout(
        state, required, optional, what="torchvision's ImageNet resnet50 layout", counters=counter_keys("resnet50")
    )
    remaining = OrderedDict(state)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for src, rule in encoder_rules(model):
        arr = remaining.pop(src, None)
        if to == "torch":
            if arr is None:  # a num_batches_tracked the file does not have
                arr = np.zeros(rule.shape, dtype=np.int64)
            out[rule.torch_key] = contiguous(arr)
        elif rule.paddle_key is not None:
            out[rule.paddle_key] = contiguous(arr.T if rule.transpose else arr)
    for key in IMAGENET_HEAD:
        remaining.pop(key, None)
    _leftover_check(remaining)
    return out


def as_torch(state: Mapping[str, Any]) -> "OrderedDict[str, Any]":
    """numpy state dict -> ``OrderedDict[str, torch.Tensor]`` sharing memory (for load_state_dict)."""
    torch = import_torch()
    import warnings

    out: "OrderedDict[str, Any]" = OrderedDict()
    with warnings.catch_warnings():
        # Read-only arrays (e.g. from a mapped file) are fine: nothing writes through them.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for key, value in state.items():
            out[key] = value if isinstance(value, torch.Tensor) else torch.from_numpy(as_numpy(value))
    return out

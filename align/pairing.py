"""Which torch layer is which Paddle layer, and the torch weights copied through that pairing.

A *layer* is a module that owns parameters or buffers or has no submodules (convolutions,
norms, activations, a custom block's own ``scale``). ``trace`` runs a forward with hooks on
every layer and records its calls in execution order (a reused module once per call), with a
signature: the lower-cased class name (``Conv2d`` and ``Conv2D`` alike) and the shapes of its
own tensors, dimensions sorted (a transposed Linear weight has the same signature).

Pairing modes:

- ``name``: call ``i`` of torch module ``n`` with call ``i`` of Paddle module ``n``;
- ``order``: the two call sequences aligned by signature (``difflib``: longest common runs),
  calls inside an unequal stretch paired one to one when the stretch has the same length;
- ``auto``: ``name`` for every call whose name exists on both sides with the same class, then
  ``order`` for the rest, stretch by stretch between the named pairs;
- a MAP (torch name -> Paddle name, ``--pairing MAP.json``) pairs those modules first.

Calls left on one side are a structural mismatch (a layer the other side does not have),
reported as such.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .inputs import AlignInputError
from .sides import Side, hooks

PAIRING_MODES = ("auto", "name", "order")


@dataclass
class Call:
    """One call of one layer."""

    name: str  # qualified module name
    call: int  # 0 for its first call in this forward, 1 for the second, ...
    kind: str  # lower-cased class name
    shapes: Tuple[Tuple[int, ...], ...]  # own tensors' shapes, dimensions sorted
    outputs: Optional[List[np.ndarray]] = None

    @property
    def signature(self) -> Tuple[str, Tuple[Tuple[int, ...], ...]]:
        return self.kind, self.shapes

    @property
    def label(self) -> str:
        return self.name if self.call == 0 else f"{self.name}#{self.call}"


def layers(side: Side, model: Any) -> "OrderedDict[str, Any]":
    """The layers of ``model`` (see the module doc) by qualified name, in definition order."""
    return OrderedDict((n, m) for n, m in side.modules(model) if side.own_tensors(m) or not side.children(m))


def layer_kind(module: Any) -> str:
    """The class name, lower-cased, without a 1d/2d/3d suffix: torch ``BatchNorm2d``, Paddle
    ``BatchNorm2D`` and ``BatchNorm`` are all ``batchnorm``."""
    name = type(module).__name__.lower()
    return name[:-2] if name[-2:] in ("1d", "2d", "3d") else name


def _signature(side: Side, module: Any) -> Tuple[str, Tuple[Tuple[int, ...], ...]]:
    shapes = tuple(sorted(tuple(sorted(int(d) for d in t.shape)) for _, t in side.own_tensors(module)))
    return layer_kind(module), shapes


def _flatten(value: Any, side: Side) -> List[np.ndarray]:
    if side.is_tensor(value):
        return [side.numpy(value)]
    if isinstance(value, (list, tuple)):
        return [a for item in value for a in _flatten(item, side)]
    if isinstance(value, dict):
        return [a for key in sorted(value) for a in _flatten(value[key], side)]
    return []


def flatten_output(value: Any, side: Side) -> List[np.ndarray]:
    """Every tensor in a model's output (tensor, tuple, list or dict by sorted key), as numpy."""
    return _flatten(value, side)


def trace(
    side: Side,
    model: Any,
    run: Callable[[], Any],
    keep: bool = True,
    on_call: Optional[Callable[[Call], None]] = None,
    containers: Sequence[str] = (),
) -> Tuple[Any, List[Call]]:
    """``run()``'s result and the calls of every layer of ``model`` (and of the modules
    ``containers``) during it, in the order they return, their outputs copied when ``keep``.
    ``on_call`` receives each call with its outputs as it happens (then the list keeps none:
    compare and forget, for memory)."""
    calls: List[Call] = []
    counts: Dict[str, int] = {}
    named = layers(side, model)
    if containers:
        every = dict(side.modules(model))
        named.update((n, every[n]) for n in containers if n in every and n not in named)
    signatures = {n: _signature(side, m) for n, m in named.items()}

    def make_hook(name: str) -> Callable[[Any], None]:
        def hook(output: Any) -> None:
            call = counts.get(name, 0)
            counts[name] = call + 1
            kind, shapes = signatures[name]
            record = Call(name, call, kind, shapes, _flatten(output, side) if keep or on_call else None)
            if on_call is not None:
                on_call(record)
                record.outputs = None
            calls.append(record)

        return hook

    with hooks(side, [(module, make_hook(name)) for name, module in named.items()]):
        result = run()
    return result, calls


@dataclass
class Pairing:
    """Paired calls (indices into the torch and Paddle call lists) and what stayed alone."""

    mode: str
    calls: List[Tuple[int, int]]  # (torch index, paddle index), in torch execution order
    torch_only: List[int] = field(default_factory=list)
    paddle_only: List[int] = field(default_factory=list)
    modules: List[Tuple[str, str]] = field(default_factory=list)  # (torch, paddle) module names

    def table(self) -> List[Dict[str, str]]:
        """The pairing as diff.json writes it."""
        return [{"torch": t, "paddle": p} for t, p in self.modules]


def _common_subsequence(a: Sequence[Any], b: Sequence[Any]) -> List[Tuple[int, int]]:
    """Index pairs of a longest common subsequence of ``a`` and ``b`` (dynamic programming;
    difflib's longest-block-first matching can leave a shorter alignment)."""
    n, m = len(a), len(b)
    length = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        row, below = length[i], length[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = below[j + 1] + 1 if a[i] == b[j] else max(below[j], row[j + 1])
    out, i, j = [], 0, 0
    while i < n and j < m:
        if a[i] == b[j]:
            out.append((i, j))
            i, j = i + 1, j + 1
        elif length[i + 1][j] >= length[i][j + 1]:
            i += 1
        else:
            j += 1
    return out


def _order_pairs(
    t_calls: Sequence[Call], p_calls: Sequence[Call], t_idx: List[int], p_idx: List[int]
) -> List[Tuple[int, int]]:
    """Pair the calls ``t_idx`` / ``p_idx`` (execution order) by signature: a longest common
    subsequence, then, inside each gap of equal length on both sides, one to one where the
    class or the (non-empty) tensor shapes agree (the weight copy or the comparison says what
    differs); a different parameter-free layer stays unpaired (a structural difference)."""
    a = [t_calls[i].signature for i in t_idx]
    b = [p_calls[j].signature for j in p_idx]
    matched = _common_subsequence(a, b)
    out = [(t_idx[i], p_idx[j]) for i, j in matched]
    bounds = [(-1, -1), *matched, (len(a), len(b))]
    for (i0, j0), (i1, j1) in zip(bounds, bounds[1:]):
        if i1 - i0 == j1 - j0 > 1:
            for k in range(1, i1 - i0):
                (t_kind, t_shapes), (p_kind, p_shapes) = a[i0 + k], b[j0 + k]
                if t_kind == p_kind or (t_shapes and t_shapes == p_shapes):
                    out.append((t_idx[i0 + k], p_idx[j0 + k]))
    return sorted(out)


def pair_calls(
    t_calls: Sequence[Call], p_calls: Sequence[Call], mode: str = "auto", mapping: Optional[Mapping[str, str]] = None
) -> Pairing:
    """Pair the torch calls with the Paddle calls (module doc)."""
    p_key = {(c.name, c.call): j for j, c in enumerate(p_calls)}
    pairs: Dict[int, int] = {}
    mapping = dict(mapping or {})
    for i, c in enumerate(t_calls):
        target = mapping.get(c.name)
        if target is not None and (target, c.call) in p_key:
            pairs[i] = p_key[(target, c.call)]
    if mode in ("auto", "name"):
        for i, c in enumerate(t_calls):
            j = p_key.get((c.name, c.call))
            if i in pairs or j is None or j in pairs.values() or c.name in mapping:
                continue
            # Same name: the same layer unless the class AND the tensor shapes differ (a name
            # that a renamed port reused for another layer).
            if mode == "name" or p_calls[j].kind == c.kind or p_calls[j].shapes == c.shapes:
                pairs[i] = j
    if mode in ("auto", "order"):
        # Between consecutive anchors (pairs found so far, in order), align the rest by order.
        used_p = set(pairs.values())
        anchors = sorted((i, j) for i, j in pairs.items())
        bounds = [(-1, -1), *anchors, (len(t_calls), len(p_calls))]
        for (i0, j0), (i1, j1) in zip(bounds, bounds[1:]):
            t_idx = [i for i in range(i0 + 1, i1) if i not in pairs]
            p_idx = [j for j in range(max(j0, -1) + 1, j1) if j not in used_p] if j1 > j0 else []
            for i, j in _order_pairs(t_calls, p_calls, t_idx, p_idx):
                pairs[i] = j
                used_p.add(j)
    ordered = sorted(pairs.items())
    paired_p = set(pairs.values())
    modules: Dict[Tuple[str, str], None] = {}
    for i, j in ordered:
        modules.setdefault((t_calls[i].name, p_calls[j].name))
    for pair in container_pairs(list(modules), [c.name for c in p_calls]):
        modules.setdefault(pair)
    return Pairing(
        mode,
        ordered,
        [i for i in range(len(t_calls)) if i not in pairs],
        [j for j in range(len(p_calls)) if j not in paired_p],
        list(modules),
    )


def _parents(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _common_prefix(names: Sequence[str]) -> str:
    split = [n.split(".") for n in names]
    common: List[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def container_pairs(layer_pairs: Sequence[Tuple[str, str]], paddle_called: Sequence[str]) -> List[Tuple[str, str]]:
    """Containers (``nn.Sequential``, blocks) paired from their layers: torch container ``T``
    pairs with the Paddle module as far above its layers' partners' deepest common parent as
    ``T`` is above its own layers' deepest common parent, when the called Paddle layers under it
    are exactly those partners."""
    under_t: Dict[str, List[Tuple[str, str]]] = {}  # torch container -> its (layer, partner) pairs
    for t_name, p_name in layer_pairs:
        for parent in _parents(t_name):
            under_t.setdefault(parent, []).append((t_name, p_name))
    called = set(paddle_called)
    taken: Dict[str, str] = {}
    out = []
    for container, members in under_t.items():
        t_common = _common_prefix([t for t, _ in members])
        levels_above = t_common.count(".") - container.count(".")
        p_common = _common_prefix([p for _, p in members])
        parts = p_common.split(".") if p_common else []
        if levels_above < 0 or len(parts) <= levels_above:
            continue
        target = ".".join(parts[: len(parts) - levels_above])
        inside = {n for n in called if n == target or n.startswith(target + ".")}
        if inside == {p for _, p in members} and target not in taken:
            taken[target] = container
            out.append((container, target))
    return out


# ----------------------------------------------------------------------------------------------
# Weights through the pairing
# ----------------------------------------------------------------------------------------------


@dataclass
class TensorPairs:
    """Qualified (torch, Paddle) names of every paired parameter and buffer."""

    parameters: List[Tuple[str, str]] = field(default_factory=list)
    buffers: List[Tuple[str, str]] = field(default_factory=list)
    transposed: List[str] = field(default_factory=list)  # torch names copied transposed


def _qualified(module: str, local: str) -> str:
    return f"{module}.{local}" if module else local


def _own_pairs(t_side: Side, p_side: Side, t_mod: Any, p_mod: Any) -> Optional[List[Tuple[str, Any, str, Any]]]:
    """(torch local name, tensor, Paddle local name, tensor) for a module pair: by local name when
    both have the same names, else by order; None when the counts differ."""
    t_own, p_own = t_side.own_tensors(t_mod), p_side.own_tensors(p_mod)
    if len(t_own) != len(p_own):
        return None
    p_by = {p_side.common_name(n): (n, p) for n, p in p_own}
    if sorted(t_side.common_name(n) for n, _ in t_own) == sorted(p_by):
        return [(n, t, *p_by[t_side.common_name(n)]) for n, t in t_own]
    return [(tn, t, pn, p) for (tn, t), (pn, p) in zip(t_own, p_own)]


def _layout_copy(
    t_side: Side, p_side: Side, t_mod: Any, p_mod: Any, tensor: Any, local: str, value: np.ndarray
) -> Tuple[Optional[np.ndarray], bool]:
    """``value`` (torch) shaped for Paddle's ``tensor``: (array or None when no layout fits,
    transposed?). A Linear weight is transposed when the two layers store it differently
    (``paddle.nn.Linear`` [in, out], torch and ``paddle.compat.nn.Linear`` [out, in]); other
    2-D tensors when only the transposed shape fits."""
    target = tuple(int(d) for d in tensor.shape)
    if local == "weight" and value.ndim == 2:
        t_layout, p_layout = t_side.linear_layout(t_mod), p_side.linear_layout(p_mod)
        if t_layout and p_layout and t_layout != p_layout and value.T.shape == target:
            return value.T, True
    if value.shape == target:
        return value, False
    if value.ndim == 2 and value.T.shape == target:
        return value.T, True
    return None, False


def copy_weights(
    t_side: Side, p_side: Side, torch_model: Any, paddle_model: Any, pairing: Pairing, assign: bool = True
) -> TensorPairs:
    """Copy every torch parameter and buffer into its Paddle counterpart through the pairing's
    modules (``assign`` False: only pair them, the weights came from files); layers of neither
    model's forward are paired by name, then by definition order and signature. Raises
    AlignInputError naming what could not be paired (strict: every parameter and buffer of
    both models)."""
    t_layers, p_layers = layers(t_side, torch_model), layers(p_side, paddle_model)
    module_pairs = list(pairing.modules)
    used_t = {t for t, _ in module_pairs}
    used_p = {p for _, p in module_pairs}
    # Layers with tensors that no forward call paired (unused heads, modules called functionally).
    rest_t = [n for n, m in t_layers.items() if n not in used_t and t_side.own_tensors(m)]
    rest_p = [n for n, m in p_layers.items() if n not in used_p and p_side.own_tensors(m)]
    for n in list(rest_t):
        if n in rest_p:
            module_pairs.append((n, n))
            rest_t.remove(n)
            rest_p.remove(n)
    sig_t = [_signature(t_side, t_layers[n]) for n in rest_t]
    sig_p = [_signature(p_side, p_layers[n]) for n in rest_p]
    for tag, i1, i2, j1, _j2 in difflib.SequenceMatcher(None, sig_t, sig_p, autojunk=False).get_opcodes():
        if tag == "equal":
            module_pairs += [(rest_t[i1 + k], rest_p[j1 + k]) for k in range(i2 - i1)]
    # The root module's own tensors (nn.Parameter attributes of the model itself).
    module_pairs.append(("", ""))
    t_all = dict([("", torch_model), *t_side.modules(torch_model)])
    p_all = dict([("", paddle_model), *p_side.modules(paddle_model)])

    out = TensorPairs()
    assigned_t: Dict[str, None] = {}
    assigned_p: Dict[str, None] = {}
    problems: List[str] = []
    seen_p: Dict[str, str] = {}
    for t_name, p_name in module_pairs:
        if p_name in seen_p:  # a Paddle module paired with two torch modules: first one wins
            if seen_p[p_name] != t_name:
                problems.append(f"paddle {p_name or '(model)'} paired with both {seen_p[p_name]} and {t_name}")
            continue
        seen_p[p_name] = t_name
        t_mod, p_mod = t_all[t_name], p_all[p_name]
        own = _own_pairs(t_side, p_side, t_mod, p_mod)
        if own is None:
            if t_name or p_name:
                problems.append(
                    f"torch {t_name} has {len(t_side.own_tensors(t_mod))} tensors, paddle {p_name} "
                    f"{len(p_side.own_tensors(p_mod))}"
                )
            continue
        for t_local, t_tensor, p_local, p_tensor in own:
            tq, pq = _qualified(t_name, t_local), _qualified(p_name, p_local)
            value = t_side.numpy(t_tensor)
            array, transposed = _layout_copy(t_side, p_side, t_mod, p_mod, p_tensor, t_local, value)
            if array is None:
                problems.append(f"torch {tq} {list(value.shape)} does not fit paddle {pq} {list(p_tensor.shape)}")
                continue
            if assign:
                p_side.assign(p_tensor, array)
            assigned_t[tq] = None
            assigned_p[pq] = None
            (out.parameters if t_side.is_trainable(t_tensor) else out.buffers).append((tq, pq))
            if transposed:
                out.transposed.append(tq)
    missing_t = [n for n in _all_tensor_names(t_side, torch_model) if n not in assigned_t]
    missing_p = [n for n in _all_tensor_names(p_side, paddle_model) if n not in assigned_p]
    if missing_t or missing_p or problems:
        parts = []
        if missing_p:
            parts.append(f"{len(missing_p)} paddle tensors not assigned ({_names(missing_p)})")
        if missing_t:
            parts.append(f"{len(missing_t)} torch tensors not used ({_names(missing_t)})")
        parts += problems[:3]
        raise AlignInputError(
            "weights: copying torch into paddle through the pairing failed: "
            + "; ".join(parts)
            + " (give --pairing MAP.json or --paddle-weights)"
        )
    return out


def named_tensors(side: Side, model: Any) -> "OrderedDict[str, Any]":
    """Every parameter and buffer of ``model`` (persistent or not) by qualified name, the live
    tensors (``num_batches_tracked`` left out, as ``own_tensors`` does)."""
    out: "OrderedDict[str, Any]" = OrderedDict(side.own_tensors(model))
    for module_name, module in side.modules(model):
        out.update((_qualified(module_name, n), t) for n, t in side.own_tensors(module))
    return out


def _all_tensor_names(side: Side, model: Any) -> List[str]:
    return list(named_tensors(side, model))


def _names(names: Sequence[str], shown: int = 5) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

"""Where do torch_ref and paddle_impl first disagree?

Forward: forward hooks on every module of both models record each output (cloned: a later
in-place op must not change the record) in execution order. Modules are paired by qualified
name, which is the same on both sides by construction (``paddle_impl`` mirrors ``torch_ref``
attribute for attribute), plus the call index: a module called several times (the relation's
``sr.normalizer`` sigmoid, a bottleneck's shared ``relu``) is paired call by call. A hook fires
when its module RETURNS, so a leaf fires before its container: the first record that differs
in the torch execution order is the innermost, earliest module whose output is wrong.

Backward: the first parameter, in backward-execution order (the reverse of the forward order
of the module that owns it: the loss reaches the head first), whose gradient differs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .compare import Localisation, Row, Tolerance, around, compare_arrays, failed_row, format_rows
from .pairing import trace
from .sides import TORCH, Side, hooks

CONTEXT = 4  # rows shown before and after the first divergence


@dataclass
class Record:
    """The outputs of one module call."""

    name: str  # qualified module name
    call: int  # 0 for the first call of that module in this forward, 1 for the second, ...
    outputs: List[np.ndarray]

    @property
    def key(self) -> Tuple[str, int]:
        return self.name, self.call

    @property
    def label(self) -> str:
        return self.name if self.call == 0 else f"{self.name}#{self.call}"


def capture(side: Side, model: Any, run: Callable[[], Any]) -> List[Record]:
    """Records of every module call of ``model`` while ``run()`` executes without gradients
    (the engine's ``align.pairing.trace`` on every module; hooks removed after)."""
    with side.no_grad():
        _, calls = trace(side, model, run, keep=True, containers=[name for name, _ in side.modules(model)])
    return [Record(c.name, c.call, c.outputs or []) for c in calls]


def _record_rows(t: Record, p: Optional[Record], tol: Tolerance) -> Row:
    """One row per module call: the worst of its outputs."""
    if p is None:
        shape = t.outputs[0].shape if t.outputs else ()
        return failed_row(t.label, "forward", tol, "not called in paddle_impl", shape)
    if len(t.outputs) != len(p.outputs):
        return failed_row(t.label, "forward", tol, f"{len(t.outputs)} outputs in torch, {len(p.outputs)} in paddle")
    rows = [
        compare_arrays(t.label if len(t.outputs) == 1 else f"{t.label}[{i}]", a, b, tol, "forward")
        for i, (a, b) in enumerate(zip(t.outputs, p.outputs))
    ]
    if not rows:
        return Row(t.label, "forward", [], 0.0, 0.0, 0.0, 0.0, tol, True, "no tensor output")
    worst = max(rows, key=lambda r: (not r.passed, r.rel))
    if len(rows) > 1:
        worst.note = (worst.note + "; " if worst.note else "") + f"worst of {len(rows)} outputs"
    return worst


def first_divergent_layer(
    torch_records: Sequence[Record],
    paddle_records: Sequence[Record],
    tol: Tolerance,
    context: int = CONTEXT,
    rows_out: Optional[List[Row]] = None,
) -> Localisation:
    """Compare the records pairwise; name the first divergent module (None when every module
    agrees) and tabulate its neighbours. ``rows_out`` receives every module call's row (the
    divergence plot draws them)."""
    # Relative error only: intermediate activations have arbitrary scales (a convolution output
    # of magnitude 20 is normal), so an absolute mean-abs bound would flag healthy layers.
    tol = Tolerance(tol.rtol)
    by_key = {r.key: r for r in paddle_records}
    rows = [_record_rows(t, by_key.get(t.key), tol) for t in torch_records]
    if rows_out is not None:
        rows_out.extend(rows)
    torch_keys = {t.key for t in torch_records}
    unpaired = [r.label for r in paddle_records if r.key not in torch_keys]
    first = next((i for i, r in enumerate(rows) if not r.passed), None)
    lines: List[str] = []
    if first is None:
        summary = (
            f"all {len(rows)} module outputs agree within {tol.describe()}: the difference "
            f"arises outside the modules, in forward() code after the last module call "
            f"({torch_records[-1].label if torch_records else 'none'}), e.g. a softmax or "
            f"fusion written inline"
        )
        shown = rows[-context:]
        lines.append(f"last {len(shown)} module calls (torch execution order), all within threshold:")
    else:
        summary = (
            f"first divergent module (torch execution order): {rows[first].name} "
            f"(call {first + 1} of {len(rows)}; rel {rows[first].rel:.3e} > {tol.rtol:.0e})"
        )
        shown = around(rows, first, context)
        lines.append(f"module calls around the first divergence (torch execution order, {tol.describe()}):")
    lines += format_rows(shown)
    if unpaired:
        lines.append(f"paddle module calls with no torch counterpart: {', '.join(unpaired[:10])}")
        summary += f"; {len(unpaired)} paddle module calls have no torch counterpart"
    return Localisation(
        None if first is None else rows[first].name, first, lines, [r.to_json() for r in shown], summary, unpaired
    )


# ----------------------------------------------------------------------------------------------
# Backward order
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def backward_parameter_order(torch_model: Any) -> Iterator[List[str]]:
    """Around a forward that happens anyway (the first training step, so finding the order costs
    no extra forward): yields a list that, at the end of the block, holds the parameter names in
    backward-execution order, the reverse of the order in which their owning modules first START
    running; parameters of modules that never ran come last, in state-dict order."""
    owners = dict(torch_model.named_modules())
    started: Dict[str, None] = {}  # an insertion-ordered set
    order: List[str] = []
    with hooks(TORCH, [(m, lambda _inputs, n=n: started.setdefault(n)) for n, m in owners.items()], before=True):
        yield order
    for name in reversed(started):
        order += [f"{name}.{pname}" if name else pname for pname, _ in owners[name].named_parameters(recurse=False)]
    placed = set(order)
    order += [n for n, _ in torch_model.named_parameters() if n not in placed]

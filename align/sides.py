"""The two framework adapters as align sees them: ``TORCH`` (the reference) and ``PADDLE`` (the port).

The adapters live in their framework's package (``torch_ref.adapter``, ``paddle_impl.adapter``);
``create_from`` picks one from a model object's type. ``TORCH`` and ``PADDLE`` load their adapter
(and so torch or Paddle) on first use, so that ``--help`` and bad-input errors stay instant.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np


def import_frameworks() -> None:
    """Import torch and Paddle quietly (Paddle warns about ccache and BN tracking on CPU)."""
    warnings.filterwarnings("ignore", message=".*ccache.*")
    warnings.filterwarnings("ignore", message=".*always track global mean and variance.*")
    import paddle
    import torch  # noqa: F401 - imported for its side effect: loaded now, under the filters above

    paddle.set_device("cpu")


def _torch_adapter() -> Any:
    import_frameworks()
    from torch_ref.adapter import ADAPTER

    return ADAPTER


def _paddle_adapter() -> Any:
    import_frameworks()
    from paddle_impl.adapter import ADAPTER

    return ADAPTER


class _Deferred:
    """An adapter loaded at its first attribute access (its framework imports then)."""

    def __init__(self, load: Callable[[], Any], name: str) -> None:
        self._load = load
        self._adapter: Optional[Any] = None
        self.name = name  # known without loading: reports and dict keys use it

    def __getattr__(self, attribute: str) -> Any:
        if self._adapter is None:
            self._adapter = self._load()
        return getattr(self._adapter, attribute)


# ``Side``: what both adapters provide (torch_ref.adapter.TorchAdapter documents every method).
Side = Any
TORCH: Side = _Deferred(_torch_adapter, "torch")
PADDLE: Side = _Deferred(_paddle_adapter, "paddle")
SIDES: Tuple[Side, Side] = (TORCH, PADDLE)  # reference first


def create_from(model: Any) -> Side:
    """The adapter of ``model`` (a torch ``nn.Module`` or a Paddle ``nn.Layer``), from its type;
    ValueError for anything else."""
    for adapter in SIDES:
        if adapter.owns(model):
            return adapter
    raise ValueError(
        f"{type(model).__module__}.{type(model).__name__} is neither a torch nn.Module nor a Paddle nn.Layer"
    )


def outputs_of(side: Side, model: Any, names: Tuple[str, ...], run: Callable[[], Any]) -> Tuple[Any, List[np.ndarray]]:
    """``run()``'s result and the outputs of the modules ``names`` during it (hooks removed after)."""
    captured: Dict[str, np.ndarray] = {}
    modules = dict(side.modules(model))
    with hooks(side, [(modules[n], lambda out, n=n: captured.setdefault(n, side.numpy(out))) for n in names]):
        result = run()
    return result, [captured[n] for n in names]


@contextlib.contextmanager
def hooks(side: Side, records: Sequence[Tuple[Any, Callable[[Any], None]]], before: bool = False) -> Iterator[None]:
    """``side.hook(module, record, before)`` for every (module, record) pair inside the block."""
    handles = [side.hook(module, record, before) for module, record in records]
    try:
        yield
    finally:
        for h in handles:
            h.remove()

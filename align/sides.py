"""One adapter per framework: everything align does to a model goes through a ``Side``.

Every stage is written once against the ``Side`` protocol and run on ``TORCH`` (torch_ref, the
reference) and ``PADDLE`` (paddle_impl, the port). The model package's modules are looked up at
call time, so that a test's ``monkeypatch`` of ``paddle_impl`` applies.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections import OrderedDict
from types import ModuleType
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Mapping, Protocol, Sequence, Tuple

import numpy as np


class Side(Protocol):
    """What align needs from one framework."""

    name: str  # "torch" or "paddle"
    package_name: str  # "torch_ref" or "paddle_impl"

    def package(self, module: str = "") -> ModuleType: ...
    def tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any: ...
    def is_tensor(self, value: Any) -> bool: ...
    def numpy(self, tensor: Any) -> np.ndarray: ...
    def fill(self, tensor: Any, value: float) -> None: ...
    def no_grad(self) -> ContextManager[Any]: ...
    def build_model(self, model: str, dtype: str) -> Any: ...
    def cast(self, model: Any, dtype: str) -> None: ...
    def load_state(self, model: Any, state: Mapping[str, Any]) -> None: ...
    def clear_grads(self, model: Any) -> None: ...
    def modules(self, model: Any) -> List[Tuple[str, Any]]: ...
    def hook(self, module: Any, record: Callable[[Any], None], before: bool = False) -> Any: ...
    def parameters(self, model: Any) -> "OrderedDict[str, Any]": ...
    def grad(self, param: Any) -> np.ndarray: ...
    def batchnorms(self, model: Any) -> List[str]: ...
    def bn_stats(self, model: Any, name: str) -> Tuple[np.ndarray, np.ndarray]: ...
    def train_step(self, model: Any, recipe: Mapping[str, Any], train_model: Any = None) -> Any: ...


def import_frameworks() -> None:
    """Import torch and Paddle quietly (Paddle warns about ccache and BN tracking on CPU)."""
    warnings.filterwarnings("ignore", message=".*ccache.*")
    warnings.filterwarnings("ignore", message=".*always track global mean and variance.*")
    import paddle
    import torch  # noqa: F401 - imported for its side effect: loaded now, under the filters above

    paddle.set_device("cpu")


def _returning_none(record: Callable[[Any], Any]) -> Callable[..., None]:
    """A framework hook ``(module, inputs[, output])`` that passes its last argument to
    ``record``; it returns None because a hook's return value replaces inputs or output."""

    def hook(module: Any, *args: Any) -> None:
        record(args[-1])

    return hook


def _torch() -> ModuleType:
    import torch

    return torch


def _paddle() -> ModuleType:
    import paddle

    return paddle


class _Side:
    """What both sides share: names and the model package."""

    name = ""
    package_name = ""
    post_hook = ""  # the name of the framework's method that registers a forward (post-)hook

    def package(self, module: str = "") -> ModuleType:
        """``torch_ref`` / ``paddle_impl`` or one of their modules (imported now: patches apply)."""
        return importlib.import_module(self.package_name + (f".{module}" if module else ""))

    def build_model(self, model: str, dtype: str) -> Any:
        """The package's ``build_model(model)`` (its official initialisation), cast to ``dtype``."""
        net = self.package().build_model(model)
        self.cast(net, dtype)
        return net

    def cast(self, model: Any, dtype: str) -> None:
        raise NotImplementedError

    def hook(self, module: Any, record: Callable[[Any], None], before: bool = False) -> Any:
        """Call ``record(output)`` (``record(inputs)`` with ``before``) at every call of
        ``module``; returns a handle with ``remove()``."""
        register = module.register_forward_pre_hook if before else getattr(module, self.post_hook)
        return register(_returning_none(record))

    def device(self) -> Any:
        raise NotImplementedError

    def train_step(self, model: Any, recipe: Mapping[str, Any], train_model: Any = None) -> Any:
        """The trainer's own ``TrainStep`` for ``model`` with ``recipe`` (the ``train``
        section of configs/*.yaml) from its ``build_optimizer`` and ``build_scaler``, on the
        CPU; ``train_model`` (default ``model``) is what the step calls."""
        trainer = self.package("train")
        optimizer, scheduler = trainer.build_optimizer(model, recipe)
        device = self.device()
        scaler = trainer.build_scaler(recipe, device)
        return trainer.TrainStep(
            model if train_model is None else train_model, model, optimizer, scheduler, scaler, recipe, device
        )


class TorchSide(_Side):
    name = "torch"
    package_name = "torch_ref"
    post_hook = "register_forward_hook"

    def device(self) -> Any:
        return _torch().device("cpu")

    def cast(self, model: Any, dtype: str) -> None:
        model.to(getattr(_torch(), dtype))

    def tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any:
        torch = _torch()
        return torch.tensor(array, requires_grad=True) if requires_grad else torch.from_numpy(array.copy())

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, _torch().Tensor)

    def numpy(self, tensor: Any) -> np.ndarray:
        """A numpy copy."""
        return tensor.detach().cpu().numpy().copy()

    def fill(self, tensor: Any, value: float) -> None:
        """Set every element of ``tensor`` (a buffer) to ``value`` in place."""
        with _torch().no_grad():
            tensor.fill_(value)

    def no_grad(self) -> ContextManager[Any]:
        return _torch().no_grad()

    def load_state(self, model: Any, state: Mapping[str, Any]) -> None:
        model.load_state_dict(state, strict=True)

    def clear_grads(self, model: Any) -> None:
        for p in model.parameters():
            p.grad = None

    def modules(self, model: Any) -> List[Tuple[str, Any]]:
        return [(n, m) for n, m in model.named_modules() if n]

    def parameters(self, model: Any) -> "OrderedDict[str, Any]":
        return OrderedDict(model.named_parameters())

    def grad(self, param: Any) -> np.ndarray:
        """The gradient as a numpy VIEW (no copy: compare before the next step changes it)."""
        return param.grad.detach().numpy() if param.grad is not None else np.zeros(tuple(param.shape))

    def batchnorms(self, model: Any) -> List[str]:
        return [n for n, m in self.modules(model) if isinstance(m, _torch().nn.modules.batchnorm._BatchNorm)]

    def bn_stats(self, model: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        bn = model.get_submodule(name)
        return bn.running_mean.detach().numpy(), bn.running_var.detach().numpy()


class PaddleSide(_Side):
    name = "paddle"
    package_name = "paddle_impl"
    post_hook = "register_forward_post_hook"

    def device(self) -> str:
        return "cpu"

    def cast(self, model: Any, dtype: str) -> None:
        model.to(dtype=dtype)

    def tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any:
        return _paddle().to_tensor(array, stop_gradient=not requires_grad)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, _paddle().Tensor)

    def numpy(self, tensor: Any) -> np.ndarray:
        """A numpy copy."""
        return np.array(tensor.numpy())

    def fill(self, tensor: Any, value: float) -> None:
        """Set every element of ``tensor`` (a buffer) to ``value`` in place."""
        tensor.set_value(_paddle().full(tensor.shape, value, dtype=tensor.dtype))

    def no_grad(self) -> ContextManager[Any]:
        return _paddle().no_grad()

    def load_state(self, model: Any, state: Mapping[str, Any]) -> None:
        model.set_state_dict(state)

    def clear_grads(self, model: Any) -> None:
        model.clear_gradients()

    def modules(self, model: Any) -> List[Tuple[str, Any]]:
        return list(model.named_sublayers())

    def parameters(self, model: Any) -> "OrderedDict[str, Any]":
        # BatchNorm's _mean/_variance are parameters with stop_gradient=True in Paddle.
        return OrderedDict((n, p) for n, p in model.named_parameters() if not p.stop_gradient)

    def grad(self, param: Any) -> np.ndarray:
        return param.grad.numpy() if param.grad is not None else np.zeros(tuple(param.shape))

    def batchnorms(self, model: Any) -> List[str]:
        return [n for n, m in self.modules(model) if isinstance(m, _paddle().nn.layer.norm._BatchNormBase)]

    def bn_stats(self, model: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        bn = dict(model.named_sublayers())[name]
        return bn._mean.numpy(), bn._variance.numpy()


TORCH = TorchSide()
PADDLE = PaddleSide()
SIDES: Tuple[Side, Side] = (TORCH, PADDLE)  # reference first


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

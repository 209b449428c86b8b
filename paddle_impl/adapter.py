"""The Paddle adapter: the one object this package gives the framework-free code, ``PaddleAdapter``.

Everything ``align`` does to a model goes through it (tensors, hooks, parameter and buffer
walks, the trainer's step); ``python -m align.env`` reads the framework's facts from it (the
same functions the commands run); :meth:`backend` is what evaluate and predict run on and
:meth:`trainer` the parts the one training loop drives. Its twin is
``torch_ref.adapter.TorchAdapter`` (same methods, same meanings); ``align.sides`` picks one
from a model object's type (``create_from``). The modules of this package that the
adapter hands out (``train``, ``losses``, ``metrics``) are read as attributes at call time, so a
test's ``monkeypatch`` of one of them applies.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from types import ModuleType
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from app.backend import Backend
from app.config import Config

from .sliding_window import AMP_DTYPES

# Module classes whose training-mode behaviour is random (compared in eval mode during a
# training-mode forward: two frameworks never draw the same dropout masks).
RANDOM_IN_TRAINING = (paddle.nn.Dropout, paddle.nn.Dropout2D, paddle.nn.Dropout3D, paddle.nn.AlphaDropout)
# Paddle's BatchNorm statistics under the names torch gives them (``own_tensors``).
COMMON_NAMES = {"_mean": "running_mean", "_variance": "running_var"}


def _returning_none(record: Callable[[Any], Any]) -> Callable[..., None]:
    """A hook ``(module, inputs[, output])`` passing its last argument to ``record``; it returns
    None because a hook's return value would replace the inputs or the output."""

    def hook(module: Any, *args: Any) -> None:
        record(args[-1])

    return hook


class PaddleAdapter:
    """The Paddle side of an alignment (the port)."""

    name = "paddle"
    package_name = "paddle_impl"
    framework_version = paddle.__version__

    # ------------------------------------------------------------------ the model package

    def package(self, module: str = "") -> ModuleType:
        """``paddle_impl`` or one of its modules ``train``, ``losses``, ``metrics``, ``evaluate``."""
        import paddle_impl
        import paddle_impl.evaluate
        import paddle_impl.losses
        import paddle_impl.metrics
        import paddle_impl.train  # noqa: F401 - imported so that the attribute below exists

        return getattr(paddle_impl, module) if module else paddle_impl

    def build_model(self, model: str, dtype: str) -> Any:
        """The package's ``build_model(model)`` (its official initialisation), cast to ``dtype``."""
        net = self.package().build_model(model)
        self.cast(net, dtype)
        return net

    def logit_modules(self, model: str) -> Tuple[str, ...]:
        """The modules whose outputs are the pre-softmax logits of the package's ``model``."""
        return tuple(self.package().LOGIT_MODULES[model])

    # ------------------------------------------------------------------ objects

    @staticmethod
    def owns(obj: Any) -> bool:
        """Is ``obj`` a Paddle model or tensor?"""
        return isinstance(obj, (paddle.nn.Layer, paddle.Tensor))

    def seed(self, seed: int) -> None:
        paddle.seed(seed)

    def device(self) -> Any:
        return "cpu"

    def cast(self, model: Any, dtype: str) -> None:
        model.to(dtype=dtype)

    def tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any:
        return paddle.to_tensor(np.array(array), stop_gradient=not requires_grad)

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, paddle.Tensor)

    def numpy(self, tensor: Any) -> np.ndarray:
        """A numpy copy."""
        return np.array(tensor.numpy())

    def fill(self, tensor: Any, value: float) -> None:
        """Set every element of ``tensor`` (a buffer) to ``value`` in place."""
        tensor.set_value(paddle.full(tensor.shape, value, dtype=tensor.dtype))

    def assign(self, tensor: Any, array: np.ndarray) -> None:
        """Copy ``array`` into the parameter or buffer ``tensor`` (same shape), keeping its dtype."""
        tensor.set_value(np.ascontiguousarray(array).astype(self.dtype_name(tensor)))

    def no_grad(self) -> ContextManager[Any]:
        return paddle.no_grad()

    def dtype_name(self, tensor: Any) -> str:
        return str(tensor.dtype).replace("paddle.", "")

    # ------------------------------------------------------------------ state

    def load_state(self, model: Any, state: Mapping[str, Any]) -> None:
        model.set_state_dict(state)

    def state(self, model: Any) -> "OrderedDict[str, Any]":
        """Parameters and buffers by qualified name (the live tensors)."""
        return OrderedDict(model.state_dict())

    def clear_grads(self, model: Any) -> None:
        model.clear_gradients()

    def modules(self, model: Any) -> List[Tuple[str, Any]]:
        """Every submodule (not the model itself) by qualified name."""
        return list(model.named_sublayers())

    def children(self, module: Any) -> List[Any]:
        return list(module.children())

    def own_tensors(self, module: Any) -> List[Tuple[str, Any]]:
        """The module's own parameters then buffers (not its children's), by local name (BatchNorm
        statistics are parameters here, ``_mean`` and ``_variance``: see ``common_name``)."""
        out = list(module.named_parameters(include_sublayers=False))
        out += [(n, b) for n, b in module.named_buffers(include_sublayers=False) if b is not None]
        return out

    def common_name(self, local: str) -> str:
        """A local tensor name as torch spells it (BatchNorm ``_mean`` -> ``running_mean``)."""
        return COMMON_NAMES.get(local, local)

    def parameters(self, model: Any) -> "OrderedDict[str, Any]":
        """The trainable parameters by qualified name."""
        # BatchNorm's _mean/_variance are parameters with stop_gradient=True in Paddle.
        return OrderedDict((n, p) for n, p in model.named_parameters() if not p.stop_gradient)

    def grad(self, param: Any) -> np.ndarray:
        """The gradient as numpy."""
        return param.grad.numpy() if param.grad is not None else np.zeros(tuple(param.shape))

    def batchnorms(self, model: Any) -> List[str]:
        return [n for n, m in self.modules(model) if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]

    def bn_stats(self, model: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        bn = dict(model.named_sublayers())[name]
        return bn._mean.numpy(), bn._variance.numpy()

    def is_trainable(self, tensor: Any) -> bool:
        """A parameter the optimiser updates (not a buffer or a BatchNorm statistic)."""
        return not tensor.stop_gradient

    def linear_layout(self, module: Any) -> Optional[str]:
        """How a Linear layer stores its weight: "out_in", "in_out", or None (not a Linear)."""
        if isinstance(module, paddle.nn.Linear):
            return "in_out"
        compat = getattr(getattr(paddle, "compat", None), "nn", None)
        return "out_in" if compat is not None and isinstance(module, compat.Linear) else None

    def is_random_in_training(self, module: Any) -> bool:
        return isinstance(module, RANDOM_IN_TRAINING)

    # ------------------------------------------------------------------ running

    def hook(self, module: Any, record: Callable[[Any], None], before: bool = False) -> Any:
        """Call ``record(output)`` (``record(inputs)`` with ``before``) at every call of
        ``module``; returns a handle with ``remove()``."""
        register = module.register_forward_pre_hook if before else module.register_forward_post_hook
        return register(_returning_none(record))

    def backward(self, loss: Any) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: Any) -> None:
        """One step of a user's optimiser, then its gradients cleared."""
        optimizer.step()
        optimizer.clear_grad()

    def train_step(self, model: Any, recipe: Mapping[str, Any], train_model: Optional[Any] = None) -> Any:
        """The trainer's own ``TrainStep`` for ``model`` with ``recipe`` (the ``train`` section
        of configs/*.yaml) from its ``build_optimizer`` and ``build_scaler``, on the CPU;
        ``train_model`` (default ``model``) is what the step calls."""
        trainer = self.package("train")
        optimizer, scheduler = trainer.build_optimizer(model, recipe)
        device = self.device()
        scaler = trainer.build_scaler(recipe, device)
        return trainer.TrainStep(
            model if train_model is None else train_model, model, optimizer, scheduler, scaler, recipe, device
        )

    # ------------------------------------------------------------------ the environment report
    # (python -m align.env: the same functions the commands use)

    def read_facts(self) -> Dict[str, Any]:
        """Paddle's build, devices, cuDNN and oneDNN."""
        compiled = bool(paddle.device.is_compiled_with_cuda())
        info: Dict[str, Any] = {
            "installed": True,
            "version": paddle.__version__,
            "compiled_with_cuda": compiled,
            "cuda_build": paddle.version.cuda() if compiled else None,
            "cudnn": paddle.version.cudnn() if compiled else None,
            "devices": [],
            "gpu_count": 0,
        }
        core = getattr(getattr(paddle, "base", None), "core", None)
        for probe in ("is_compiled_with_onednn", "is_compiled_with_mkldnn"):
            if core is not None and hasattr(core, probe):
                info["onednn"] = bool(getattr(core, probe)())
                break
        info["cpu_kernels"] = f"oneDNN {'compiled in' if info.get('onednn') else 'absent'}"
        if compiled:
            try:
                info["gpu_count"] = paddle.device.cuda.device_count()
                for index in range(info["gpu_count"]):
                    props = paddle.device.cuda.get_device_properties(index)
                    info["devices"].append(
                        {
                            "name": props.name,
                            "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2**30, 1),
                        }
                    )
            except Exception as error:  # noqa: BLE001 - a broken CUDA set-up is a fact too
                lines = str(error).strip().splitlines()
                info["cuda_error"] = f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
        return info

    def autocast_dtype(self, device: str, amp: str) -> str:
        """The dtype one convolution produces under Paddle's autocast for ``amp`` on ``device``
        (the engine's own ``AMP_DTYPES`` table)."""
        paddle.set_device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with paddle.amp.auto_cast(enable=True, dtype=AMP_DTYPES[amp], level="O1"):
                out = F.conv2d(paddle.ones([1, 3, 8, 8]), paddle.ones([4, 3, 3, 3]))
        return str(out.dtype).replace("paddle.", "")

    def train_device(self, config: Config) -> str:
        """The device ``python -m paddle_impl.train`` trains ``config`` on: its own
        ``setup_runtime`` (raises its own refusal)."""
        from .train import setup_runtime  # the trainer pulls in the data pipeline: only when asked

        return str(setup_runtime(config).device)

    def backend(self) -> Backend:
        """The object ``python -m paddle_impl.evaluate`` and ``.predict`` run on."""
        from .backend import BACKEND

        return BACKEND

    def trainer(self) -> Any:
        """The trainer's framework parts (``train.PARTS``) that :mod:`app.train_loop` runs."""
        from .train import PARTS

        return PARTS


ADAPTER = PaddleAdapter()

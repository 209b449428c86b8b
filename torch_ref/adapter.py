"""The PyTorch adapter: the one object this package gives the framework-free code, ``TorchAdapter``.

Everything ``align`` does to a model goes through it (tensors, hooks, parameter and buffer
walks, the trainer's step); ``python -m align.env`` reads the framework's facts from it (the
same functions the commands run); :meth:`backend` is what evaluate and predict run on and
:meth:`trainer` the parts the one training loop drives. Its twin is
``paddle_impl.adapter.PaddleAdapter`` (same methods, same meanings); ``align.sides`` picks one
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
import torch
import torch.nn.functional as F

from app.backend import Backend
from app.config import Config

from .sliding_window import AMP_DTYPES

# Module classes whose training-mode behaviour is random (compared in eval mode during a
# training-mode forward: two frameworks never draw the same dropout masks).
RANDOM_IN_TRAINING = (torch.nn.modules.dropout._DropoutNd,)


def _returning_none(record: Callable[[Any], Any]) -> Callable[..., None]:
    """A hook ``(module, inputs[, output])`` passing its last argument to ``record``; it returns
    None because a hook's return value would replace the inputs or the output."""

    def hook(module: Any, *args: Any) -> None:
        record(args[-1])

    return hook


class TorchAdapter:
    """The torch side of an alignment (the reference)."""

    name = "torch"
    package_name = "torch_ref"
    framework_version = torch.__version__

    # ------------------------------------------------------------------ the model package

    def package(self, module: str = "") -> ModuleType:
        """``torch_ref`` or one of its modules ``train``, ``losses``, ``metrics``, ``evaluate``."""
        import torch_ref
        import torch_ref.evaluate
        import torch_ref.losses
        import torch_ref.metrics
        import torch_ref.train  # noqa: F401 - imported so that the attribute below exists

        return getattr(torch_ref, module) if module else torch_ref

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
        """Is ``obj`` a torch model or tensor?"""
        return isinstance(obj, (torch.nn.Module, torch.Tensor))

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def device(self) -> Any:
        return torch.device("cpu")

    def cast(self, model: Any, dtype: str) -> None:
        model.to(getattr(torch, dtype))

    def tensor(self, array: np.ndarray, requires_grad: bool = False) -> Any:
        return torch.tensor(array, requires_grad=True) if requires_grad else torch.from_numpy(np.array(array))

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor)

    def numpy(self, tensor: Any) -> np.ndarray:
        """A numpy copy."""
        return tensor.detach().cpu().numpy().copy()

    def fill(self, tensor: Any, value: float) -> None:
        """Set every element of ``tensor`` (a buffer) to ``value`` in place."""
        with torch.no_grad():
            tensor.fill_(value)

    def assign(self, tensor: Any, array: np.ndarray) -> None:
        """Copy ``array`` into the parameter or buffer ``tensor`` (same shape), keeping its dtype."""
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(np.ascontiguousarray(array)).to(tensor.dtype))

    def no_grad(self) -> ContextManager[Any]:
        return torch.no_grad()

    def dtype_name(self, tensor: Any) -> str:
        return str(tensor.dtype).replace("torch.", "")

    # ------------------------------------------------------------------ state

    def load_state(self, model: Any, state: Mapping[str, Any]) -> None:
        model.load_state_dict(state, strict=True)

    def state(self, model: Any) -> "OrderedDict[str, Any]":
        """Parameters and buffers by qualified name (the live tensors)."""
        return OrderedDict(model.state_dict(keep_vars=True))

    def clear_grads(self, model: Any) -> None:
        for p in model.parameters():
            p.grad = None

    def modules(self, model: Any) -> List[Tuple[str, Any]]:
        """Every submodule (not the model itself) by qualified name."""
        return [(n, m) for n, m in model.named_modules() if n]

    def children(self, module: Any) -> List[Any]:
        return list(module.children())

    def own_tensors(self, module: Any) -> List[Tuple[str, Any]]:
        """The module's own parameters then buffers (not its children's), by local name;
        ``num_batches_tracked`` (no Paddle counterpart) is left out."""
        out = list(module.named_parameters(recurse=False))
        out += [(n, b) for n, b in module.named_buffers(recurse=False) if n != "num_batches_tracked" and b is not None]
        return out

    def common_name(self, local: str) -> str:
        """A local tensor name as torch spells it (itself)."""
        return local

    def parameters(self, model: Any) -> "OrderedDict[str, Any]":
        """The trainable parameters by qualified name."""
        return OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def grad(self, param: Any) -> np.ndarray:
        """The gradient as a numpy VIEW (no copy: compare before the next step changes it)."""
        return param.grad.detach().numpy() if param.grad is not None else np.zeros(tuple(param.shape))

    def batchnorms(self, model: Any) -> List[str]:
        return [n for n, m in self.modules(model) if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def bn_stats(self, model: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        bn = model.get_submodule(name)
        return bn.running_mean.detach().numpy(), bn.running_var.detach().numpy()

    def is_trainable(self, tensor: Any) -> bool:
        """A parameter the optimiser updates (not a buffer or a BatchNorm statistic)."""
        return bool(getattr(tensor, "requires_grad", False))

    def linear_layout(self, module: Any) -> Optional[str]:
        """How a Linear layer stores its weight: "out_in", "in_out", or None (not a Linear)."""
        return "out_in" if isinstance(module, torch.nn.Linear) else None

    def is_random_in_training(self, module: Any) -> bool:
        return isinstance(module, RANDOM_IN_TRAINING)

    # ------------------------------------------------------------------ running

    def hook(self, module: Any, record: Callable[[Any], None], before: bool = False) -> Any:
        """Call ``record(output)`` (``record(inputs)`` with ``before``) at every call of
        ``module``; returns a handle with ``remove()``."""
        register = module.register_forward_pre_hook if before else module.register_forward_hook
        return register(_returning_none(record))

    def backward(self, loss: Any) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: Any) -> None:
        """One step of a user's optimiser, then its gradients cleared."""
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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
        """torch's build, devices, cuDNN and CPU kernels."""
        info: Dict[str, Any] = {
            "installed": True,
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn": torch.backends.mkldnn.is_available(),
            "onednn_version": None,
            "devices": [],
        }
        for line in torch.__config__.show().splitlines():
            if "MKL-DNN" in line or "oneDNN" in line:
                info["onednn_version"] = line.strip(" -").split("(")[0].strip()
        with warnings.catch_warnings(record=True) as caught:  # a too-new build warns here
            warnings.simplefilter("always")
            info["cuda_available"] = torch.cuda.is_available()
        if caught and not info["cuda_available"]:
            info["cuda_error"] = str(caught[0].message).strip().splitlines()[0][:200]
        if info["cuda_available"]:
            info["cudnn"] = torch.backends.cudnn.version()
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                info["devices"].append(
                    {
                        "name": props.name,
                        "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1),
                    }
                )
            info["bf16_supported"] = torch.cuda.is_bf16_supported()
        onednn = f"{info['onednn_version'] or 'oneDNN'} {'on' if info['onednn'] else 'off'}"
        info["cpu_kernels"] = f"CPU kernels {info['cpu_capability']}, {onednn}"
        return info

    def autocast_dtype(self, device: str, amp: str) -> str:
        """The dtype one convolution produces under torch's autocast for ``amp`` on ``device``
        (the engine's own ``AMP_DTYPES`` table)."""
        x = torch.ones(1, 3, 8, 8, device=device)
        w = torch.ones(4, 3, 3, 3, device=device)
        with torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp]):
            return str(F.conv2d(x, w).dtype).replace("torch.", "")

    def train_device(self, config: Config) -> str:
        """The device ``python -m torch_ref.train`` trains ``config`` on: its own ``setup_runtime``
        (raises its own refusal)."""
        from .train import setup_runtime  # the trainer pulls in the data pipeline: only when asked

        return str(setup_runtime(config).device)

    def backend(self) -> Backend:
        """The object ``python -m torch_ref.evaluate`` and ``.predict`` run on."""
        from .backend import BACKEND

        return BACKEND

    def trainer(self) -> Any:
        """The trainer's framework parts (``train.PARTS``) that :mod:`app.train_loop` runs."""
        from .train import PARTS

        return PARTS


ADAPTER = TorchAdapter()

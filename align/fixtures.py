"""Deterministic fixtures: the same weights, inputs and labels in torch_ref and paddle_impl.

Weights: ``torch_ref``'s official initialisation with every BatchNorm and zero bias randomised
(``randomise_torch_model``), or an official-layout checkpoint (``--torch-ckpt``, read without
executing code); the Paddle model receives them through the project's converter
(``convert.torch_to_paddle``), which the alignment so exercises too. Inputs: ``align.inputs``.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from .config import AlignConfig
from .inputs import IGNORE_INDEX, AlignInputError, load_input, make_inputs
from .sides import PADDLE, SIDES, TORCH, Side, import_frameworks


def randomise_torch_model(model: Any, seed: int) -> None:
    """Give every BatchNorm random affine/statistics and every all-zero bias random values.

    Ranges keep the network well conditioned (weights in 0.5..1.5, variances in 0.5..2, small
    means/biases), so outputs stay O(1) and differences stay measurable.
    """
    import torch

    rng = np.random.default_rng(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                for tensor, values in (
                    (module.weight, rng.uniform(0.5, 1.5, c)),
                    (module.bias, rng.normal(0.0, 0.2, c)),
                    (module.running_mean, rng.normal(0.0, 0.2, c)),
                    (module.running_var, rng.uniform(0.5, 2.0, c)),
                ):
                    tensor.copy_(torch.from_numpy(values))
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None and not bool(module.bias.any()):
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.05, module.bias.shape[0])))


def _checkpoint_state(path: str, model: str) -> "OrderedDict[str, np.ndarray]":
    """The official-layout (torch-named) state dict in ``path``, read without executing code."""
    import convert

    try:
        loaded = convert.read_checkpoint(path)
        if loaded.framework == "paddle":  # a .pdparams works too: back to the official names
            return convert.paddle_to_torch(loaded.state, model)
        convert.validate(loaded.state, model, "torch")
        return loaded.state
    except convert.CheckpointError as exc:
        raise AlignInputError(exc.with_path(path).headline()) from None


@dataclass
class Fixture:
    """Both models with identical weights, the input batch and labels, ready for any stage.

    Stages call ``reset()`` first: it restores the initial weights and buffers of both models
    (a training forward changes BatchNorm statistics and FarSeg's ``buffer_step``) and puts
    both in eval mode.
    """

    config: AlignConfig
    models: Dict[str, Any]  # side name -> model
    states: Dict[str, "OrderedDict[str, Any]"] = field(repr=False)  # side name -> initial state
    x: np.ndarray  # [B,3,H,W], config.dtype
    y: np.ndarray  # [B,H,W] int64, 255 = ignore
    weights: str  # description for reports
    cache: Dict[str, Any] = field(default_factory=dict)  # e.g. the forward stage's torch probs
    dirty: bool = False  # set by anything that may change weights or buffers (training mode)

    @property
    def model_name(self) -> str:
        return self.config.model

    @property
    def torch_model(self) -> Any:
        return self.models[TORCH.name]

    @property
    def paddle_model(self) -> Any:
        return self.models[PADDLE.name]

    @property
    def paddle_state(self) -> "OrderedDict[str, Any]":
        return self.states[PADDLE.name]

    def reset(self) -> None:
        """Initial weights and buffers in both models, eval mode, no gradients.

        Restoring ~0.25 GB per model costs about a second, so it happens only when something
        ran in training mode since the last reset (``mark_dirty``).
        """
        for side in SIDES:
            model = self.models[side.name]
            if self.dirty:
                side.load_state(model, self.states[side.name])
            side.clear_grads(model)
            model.eval()
        self.dirty = False

    def mark_dirty(self) -> None:
        """Call before anything that may change weights or buffers (training-mode forwards)."""
        self.dirty = True

    def inputs(self, side: Side) -> Tuple[Any, Any]:
        """The input batch and labels as ``side``'s tensors."""
        return side.tensor(self.x), side.tensor(self.y)

    def describe(self) -> Dict[str, Any]:
        ignored = f"{int((self.y == IGNORE_INDEX).sum())}/{self.y.size}"
        return {"weights": self.weights, "input": f"{list(self.x.shape)} {self.x.dtype}", "ignored_pixels": ignored}


def build_fixture(config: AlignConfig) -> Fixture:
    """Build both models with identical weights and the inputs of ``config`` (no cache)."""
    import torch

    import convert

    import_frameworks()
    if config.input is not None:
        x = load_input(config.input)
        _, y = make_inputs(x.shape[0], x.shape[2], x.shape[3], config.seed)
    else:
        x, y = make_inputs(config.batch, config.size, config.size, config.seed)
    x = x.astype(config.dtype)

    torch.manual_seed(config.seed)
    torch_model = TORCH.package().build_model(config.model)
    if config.torch_ckpt is not None:
        torch_model.load_state_dict(convert.as_torch(_checkpoint_state(config.torch_ckpt, config.model)), strict=True)
        weights = f"checkpoint {config.torch_ckpt}"
    else:
        randomise_torch_model(torch_model, config.seed)
        weights = f"random (torch_ref init, seed {config.seed}; BN statistics/affine and zero biases randomised)"
    TORCH.cast(torch_model, config.dtype)

    # The reference state at the run's dtype, and the Paddle state made from it by the converter.
    torch_state = OrderedDict((k, v.detach().clone()) for k, v in torch_model.state_dict().items())
    numpy_state = OrderedDict((k, v.numpy()) for k, v in torch_state.items())
    paddle_state = convert.torch_to_paddle(numpy_state, config.model, check_dtypes=False)  # float64 runs too

    import paddle

    paddle.seed(config.seed)
    paddle_model = PADDLE.build_model(config.model, config.dtype)
    PADDLE.load_state(paddle_model, paddle_state)
    models = {TORCH.name: torch_model, PADDLE.name: paddle_model}
    fixture = Fixture(config, models, {TORCH.name: torch_state, PADDLE.name: paddle_state}, x, y, weights)
    fixture.reset()  # (not dirty: only sets eval mode)
    return fixture


_CACHE: List[Tuple[Tuple[Any, ...], Fixture]] = []


def get_fixture(config: AlignConfig) -> Fixture:
    """The fixture of ``config``, reused while only stage settings change (one kept: each holds
    two full models, ~0.5 GB in float64)."""
    key = (config.model, config.dtype, config.batch, config.size, config.seed, config.torch_ckpt, config.input)
    for cached_key, fixture in _CACHE:
        if cached_key == key:
            fixture.config = config
            fixture.reset()
            return fixture
    _CACHE.clear()  # free the old models before building the new ones
    fixture = build_fixture(config)
    _CACHE.append((key, fixture))
    return fixture


def clear_cache() -> None:
    """Forget the cached fixture (tests that rebuild models after patching paddle_impl)."""
    _CACHE.clear()


def versions() -> Dict[str, str]:
    """Framework versions for reports."""
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for side in SIDES:
        out[side.name] = side.framework_version
    return out

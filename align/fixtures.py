"""Deterministic fixtures: the same weights, inputs and labels in torch_ref and paddle_impl.

Weights: by default ``torch_ref.build_model`` under ``torch.manual_seed(seed)`` (the official
initialisation), then every BatchNorm gets random affine parameters and running statistics and
every zero-initialised bias a random value, so that no parameter is trivially 0 or 1 and a
port that ignores one of them is caught. With ``--torch-ckpt`` an official-layout checkpoint
(loaded by ``convert.load_state_dict_file``: no code is executed) replaces them. The Paddle
model then receives exactly these values through the project's converter
(``convert.torch_to_paddle``), so the alignment also exercises the converter.

Inputs: synthetic iSAID-like scenes (``isaid.synth.make_scene``), normalised with the official
mean/std (``isaid.palette.normalize``); labels are their class maps with about 10% ignore
pixels (255): a rectangle per image plus a bottom band like the training padding.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from .config import AlignConfig, AlignInputError, SIZE_MULTIPLE

IGNORE_INDEX = 255

# Where each model's logits leave the network: forward hooks on these modules give the
# pre-softmax logits of the very forward call that produced the probabilities.
LOGIT_MODULES = {"farseg": ("upsample4x_op",), "factseg": ("fg_upsample", "bi_upsample")}
LOGIT_NAMES = {"farseg": ("logits",), "factseg": ("fg_logits", "bi_logits")}
LOSS_KEY = {"farseg": "cls_loss", "factseg": "joint_loss"}


def import_frameworks() -> Tuple[Any, Any]:
    """Import torch and paddle quietly (Paddle warns about ccache and BN tracking on CPU)."""
    warnings.filterwarnings("ignore", message=".*ccache.*")
    warnings.filterwarnings("ignore", message=".*always track global mean and variance.*")
    import paddle
    import torch

    paddle.set_device("cpu")
    return torch, paddle


# ----------------------------------------------------------------------------------------------
# Inputs and labels
# ----------------------------------------------------------------------------------------------

def make_inputs(batch: int, height: int, width: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(x float32 [B,3,H,W] normalised, y int64 [B,H,W] with ~10% ignore) from synthetic scenes."""
    from isaid.palette import normalize
    from isaid.synth import make_scene

    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(batch):
        rgb, index = make_scene(rng, height, width)
        label = index.astype(np.int64)
        # An ignored rectangle (as unlabelled regions) and a bottom band (as training padding).
        h0, w0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        label[h0:h0 + height // 4, w0:w0 + width // 4] = IGNORE_INDEX
        label[height - max(1, height // 16):] = IGNORE_INDEX
        xs.append(normalize(rgb))
        ys.append(label)
    return np.stack(xs), np.stack(ys)


def load_input(path: str) -> np.ndarray:
    """An input batch from ``path`` (.npy [B,3,H,W] or [3,H,W], float); AlignInputError if bad."""
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise AlignInputError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise AlignInputError(f"{path}: expected an array of shape [B,3,H,W] or [3,H,W], got {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise AlignInputError(f"{path}: expected a float array (normalised image), got {x.dtype}")
    height, width = x.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or x.shape[0] < 1:
        raise AlignInputError(f"{path}: height and width must be multiples of {SIZE_MULTIPLE}, got "
                              f"{height}x{width} (pad bottom/right as the evaluator does)")
    if not np.isfinite(x).all():
        raise AlignInputError(f"{path}: the array holds NaN or inf")
    return x


# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

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
                for tensor, values in ((module.weight, rng.uniform(0.5, 1.5, c)),
                                       (module.bias, rng.normal(0.0, 0.2, c)),
                                       (module.running_mean, rng.normal(0.0, 0.2, c)),
                                       (module.running_var, rng.uniform(0.5, 2.0, c))):
                    tensor.copy_(torch.from_numpy(values))
            elif isinstance(module, torch.nn.Conv2d) and module.bias is not None \
                    and not bool(module.bias.any()):
                module.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.05, module.bias.shape[0])))


def _checkpoint_state(path: str, model: str) -> "OrderedDict[str, np.ndarray]":
    """The official-layout (torch-named) state dict in ``path``, read without executing code."""
    import convert

    loaded = convert.read_checkpoint(path)
    state = loaded.state
    if loaded.framework == "paddle":  # a .pdparams works too: back to the official names
        state = convert.paddle_to_torch(state, model)
    else:
        convert.validate(state, model, "torch")
    return state


@dataclass
class Fixture:
    """Both models with identical weights, the input batch and labels, ready for any stage.

    Stages call ``reset()`` first: it restores the initial weights and buffers of both models
    (a training forward changes BatchNorm statistics and FarSeg's ``buffer_step``) and puts
    both in eval mode.
    """

    config: AlignConfig
    torch_model: Any
    paddle_model: Any
    x: np.ndarray  # [B,3,H,W], config.dtype
    y: np.ndarray  # [B,H,W] int64, 255 = ignore
    weights: str  # description for reports
    torch_state: "OrderedDict[str, Any]" = field(repr=False, default_factory=OrderedDict)
    paddle_state: "OrderedDict[str, np.ndarray]" = field(repr=False, default_factory=OrderedDict)
    cache: Dict[str, Any] = field(default_factory=dict)  # e.g. the forward stage's torch probs
    build_seconds: float = 0.0
    dirty: bool = False  # set by anything that may change weights or buffers (training mode)

    @property
    def model_name(self) -> str:
        return self.config.model

    def reset(self) -> None:
        """Initial weights and buffers in both models, eval mode, no gradients.

        Restoring ~0.25 GB per model costs about a second, so it happens only when something
        ran in training mode since the last reset (``mark_dirty``).
        """
        if self.dirty:
            self.torch_model.load_state_dict(self.torch_state, strict=True)
            self.paddle_model.set_state_dict(self.paddle_state)
            self.dirty = False
        for p in self.torch_model.parameters():
            p.grad = None
        self.paddle_model.clear_gradients()
        self.torch_model.eval()
        self.paddle_model.eval()

    def mark_dirty(self) -> None:
        """Call before anything that may change weights or buffers (training-mode forwards)."""
        self.dirty = True

    def torch_inputs(self) -> Tuple[Any, Any]:
        import torch

        return torch.from_numpy(self.x.copy()), torch.from_numpy(self.y.copy())

    def paddle_inputs(self) -> Tuple[Any, Any]:
        import paddle

        return paddle.to_tensor(self.x), paddle.to_tensor(self.y)

    def describe(self) -> Dict[str, Any]:
        n_ignored = int((self.y == IGNORE_INDEX).sum())
        return {"weights": self.weights, "input": f"{list(self.x.shape)} {self.x.dtype}",
                "ignored_pixels": f"{n_ignored}/{self.y.size}"}


def build_fixture(config: AlignConfig) -> Fixture:
    """Build both models with identical weights and the inputs of ``config`` (no cache)."""
    start = time.perf_counter()
    config.validate()
    torch, paddle = import_frameworks()
    import convert
    import paddle_impl
    import torch_ref

    if config.input is not None:
        x = load_input(config.input)
        _, y = make_inputs(x.shape[0], x.shape[2], x.shape[3], config.seed)
    else:
        x, y = make_inputs(config.batch, config.size, config.size, config.seed)
    x = x.astype(config.dtype)

    torch.manual_seed(config.seed)
    torch_model = torch_ref.build_model(config.model)
    if config.torch_ckpt is not None:
        try:
            state = _checkpoint_state(config.torch_ckpt, config.model)
        except convert.CheckpointError as exc:
            raise AlignInputError(exc.with_path(config.torch_ckpt).headline()) from None
        torch_model.load_state_dict(convert.as_torch(state), strict=True)
        weights = f"checkpoint {config.torch_ckpt}"
    else:
        randomise_torch_model(torch_model, config.seed)
        weights = f"random (torch_ref init, seed {config.seed}; BN statistics/affine and zero biases randomised)"
    torch_model = torch_model.to(getattr(torch, config.dtype))

    # The reference state at the run's dtype, and the Paddle state made from it by the converter.
    torch_state = OrderedDict((k, v.detach().clone()) for k, v in torch_model.state_dict().items())
    numpy_state = OrderedDict((k, v.numpy()) for k, v in torch_state.items())
    paddle_state = convert.torch_to_paddle(numpy_state, config.model, check_dtypes=False)  # float64 runs too

    paddle.seed(config.seed)
    paddle_model = paddle_impl.build_model(config.model)
    paddle_model.to(dtype=config.dtype)
    paddle_model.set_state_dict(paddle_state)
    fixture = Fixture(config, torch_model, paddle_model, x, y, weights, torch_state, paddle_state)
    fixture.reset()  # (not dirty: only sets eval mode)
    fixture.build_seconds = time.perf_counter() - start
    return fixture


_CACHE: List[Tuple[Tuple[Any, ...], Fixture]] = []


def _cache_key(config: AlignConfig) -> Tuple[Any, ...]:
    return (config.model, config.dtype, config.batch, config.size, config.seed, config.torch_ckpt,
            config.input)


def get_fixture(config: AlignConfig) -> Fixture:
    """The fixture of ``config``, reused while only stage settings change (one kept: each holds
    two full models, ~0.5 GB in float64)."""
    key = _cache_key(config)
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


def to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a torch or Paddle tensor (or array)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy().copy()
    return np.asarray(value.numpy()).copy()


def versions() -> Dict[str, str]:
    """Framework versions for reports."""
    out = {"python": sys.version.split()[0], "numpy": np.__version__}
    for name in ("torch", "paddle"):
        module = sys.modules.get(name)
        if module is not None:
            out[name] = getattr(module, "__version__", "?")
    return out

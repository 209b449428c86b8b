"""Paddle's trainer: FarSeg / FactSeg on iSAID patches, the official recipe by default.

Usage::

    python -m paddle_impl.train --config configs/farseg_isaid.yaml [--set KEY=VALUE ...]
                                [--resume PATH|auto] [--no-progress] [--print-config]
    python -m paddle.distributed.launch --nproc_per_node 2 paddle_impl/train.py --config ...

The recipe, the samples and the loop (resume, checkpoints, non-finite losses, logging,
progress: ``app.train_loop``) are ``torch_ref.train``'s; this file holds what is Paddle:
:class:`PaddleTrainerParts` (runtime and fleet's DataParallel, model and SyncBN,
:func:`build_optimizer` with ``ClipGradByGlobalNorm``, :class:`TrainStep` with ``auto_cast``
and the GradScaler, the DataLoader, state as numpy). Written to ``train.out_dir``:
``checkpoints/ckpt_<iteration>.pdckpt`` (numpy arrays and Python values in a pickle that
convert's restricted reader reads), ``metrics.jsonl``, ``config.yaml``, VisualDL logs, and at
the end ``model_final.pdparams``: a bare state dict (``python -m convert`` ports it to torch).
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

if __package__ in (None, ""):
    # Started as a script path (launchers that cannot run "-m"): import from the repository
    # root instead of this folder, whose module names (data, losses, ...) must not shadow.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import paddle
import paddle.distributed as dist
import paddle.nn as nn
from paddle import DataParallel

from app import train_loop
from app.config import Config
from app.train_loop import CHECKPOINT_FORMAT, Runtime, StepResult, Training, choose_device
from convert import imagenet_encoder_state, save_paddle, validate
from paddle_impl import build_model
from paddle_impl.data import build_loader, to_device

__all__ = ["CHECKPOINT_FORMAT", "Runtime", "StepResult", "TrainStep", "build_optimizer", "build_training", "main"]

FRAMEWORK = "paddle"
CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pdckpt$")
FINAL_WEIGHTS = "model_final.pdparams"
# Measured with Paddle 3.3.1: on CPU auto_cast only warns and computes in float32.
CPU_AMP_MISSING = "Paddle has no mixed precision on CPU (paddle.amp.auto_cast is a no-op there)"


def setup_runtime(config: Config) -> Runtime:
    """Pick the device (``train.device``, checked with ``train.amp``) and join the process
    group when started by paddle.distributed.launch."""
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    on_gpu = choose_device(config, has_gpu, f"Paddle {paddle.__version__}", (), CPU_AMP_MISSING)
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", "0"))
    device = f"gpu:{dist.ParallelEnv().device_id}" if on_gpu else "cpu"
    paddle.set_device(device)
    if on_gpu:  # fixed input sizes: let cuDNN search the fastest kernels once
        paddle.set_flags({"FLAGS_cudnn_exhaustive_search": True})
    if world_size > 1:
        dist.init_parallel_env()
    return Runtime(device, dist.get_rank() if world_size > 1 else 0, world_size, local_rank)


def load_imagenet(net: nn.Layer, path: str, model_name: str) -> int:
    """Copy the ImageNet encoder weights into ``net``; the file must cover the encoder exactly."""
    state = imagenet_encoder_state(path, model_name, FRAMEWORK)
    own = net.state_dict()
    train_loop.check_encoder_fit(path, model_name, state, {k: tuple(v.shape) for k, v in own.items()})
    full = OrderedDict(own)  # the encoder replaced in the whole state: a strict load
    full.update((k, paddle.to_tensor(np.array(v))) for k, v in state.items())
    net.set_state_dict(full)
    return len(state)


def load_initial_state(net: nn.Layer, state: Mapping[str, Any], model_name: str) -> None:
    """Start from ``state`` (numpy, Paddle's key names: every weight and buffer), checked
    against the layout first (``align.train`` converts one torch initialisation for both)."""
    validate(OrderedDict((k, np.asarray(v)) for k, v in state.items()), model_name, FRAMEWORK)
    net.set_state_dict(OrderedDict((k, paddle.to_tensor(np.array(v))) for k, v in state.items()))


# ------------------------------------------------------------------------------ model, step


def build_optimizer(model: nn.Layer, recipe: Mapping[str, Any]) -> Tuple[paddle.optimizer.Momentum, Any]:
    """(optimizer, scheduler) of ``recipe`` (the ``train`` section of configs/*.yaml) for ``model``.

    Momentum SGD with L2 weight decay on every trainable parameter, clipping by the GLOBAL norm
    of all gradients (``ClipGradByGlobalNorm`` is torch's ``clip_grad_norm_``;
    ``ClipGradByNorm`` would clip each tensor alone), and the poly learning rate
    ``lr * (1 - k / iterations) ** poly_power`` stepped once per iteration.
    """
    scheduler = paddle.optimizer.lr.PolynomialDecay(
        learning_rate=recipe["lr"], decay_steps=recipe["iterations"], end_lr=0.0, power=recipe["poly_power"]
    )
    # BatchNorm's running statistics are parameters with stop_gradient=True in Paddle.
    params = [p for p in model.parameters() if not p.stop_gradient]
    clip = nn.ClipGradByGlobalNorm(recipe["clip_norm"]) if recipe["clip_norm"] > 0 else None
    optimizer = paddle.optimizer.Momentum(
        learning_rate=scheduler,
        momentum=recipe["momentum"],
        parameters=params,
        weight_decay=recipe["weight_decay"],
        grad_clip=clip,
    )
    return optimizer, scheduler


def build_scaler(recipe: Mapping[str, Any], device: str) -> paddle.amp.GradScaler:
    """The loss scaler of ``recipe``: dynamic scaling for fp16 (apex O1's defaults), else off."""
    del device  # Paddle's scaler follows the current device; kept to mirror torch_ref
    return paddle.amp.GradScaler(
        enable=recipe["amp"] == "fp16",
        init_loss_scaling=2.0**16,
        incr_ratio=2.0,
        decr_ratio=0.5,
        incr_every_n_steps=2000,
        decr_every_n_nan_or_inf=1,
    )


def build_training(
    config: Config, runtime: Runtime, imagenet: Optional[str], initial_state: Optional[Mapping[str, Any]] = None
):
    """(net, train_model, optimizer, scheduler, scaler) for ``config`` on ``runtime``.

    ``net`` is the bare model (its state dict is what is saved); ``train_model`` is what the
    step calls (SyncBN-converted and DataParallel-wrapped when several GPUs train). Parameters
    are created on the device chosen by ``setup_runtime``.
    """
    train = config["train"]
    name = config["model"]["name"]
    net = build_model(name, num_classes=config["model"]["num_classes"])
    if initial_state is not None:
        load_initial_state(net, initial_state, name)
    elif imagenet is not None:
        load_imagenet(net, imagenet, name)
    if runtime.world_size > 1 and runtime.on_gpu and train["sync_bn"]:
        # GPU only: both frameworks' SyncBatchNorm kernels exist only for GPUs
        # (docs/official_models.md, "Initialisation and framework facts").
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if train["channels_last"] or train["compile"]:
        warnings.warn("train.channels_last and train.compile apply to torch only; ignored", stacklevel=2)
    train_model: nn.Layer = net
    if runtime.world_size > 1:
        # Buffers are not broadcast each step, as with apex's DDP in the official run.
        train_model = DataParallel(net)
    optimizer, scheduler = build_optimizer(net, train)
    return net, train_model, optimizer, scheduler, build_scaler(train, runtime.device)


class TrainStep:
    """One training iteration of ``recipe``: forward under autocast, (scaled) backward,
    unscaling, clipping by the global norm, SGD step, loss-scaler update, zeroing the
    gradients, learning-rate step.

    ``step(images, labels)`` runs it whole; :meth:`compute_gradients` and
    :meth:`apply_gradients` are its two halves, for callers that inspect the gradients in
    between (``align.backward``).
    """

    def __init__(
        self, train_model: nn.Layer, net: nn.Layer, optimizer, scheduler, scaler, recipe: Mapping[str, Any], device: str
    ) -> None:
        self.train_model, self.net = train_model, net
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.amp, self.clip_norm, self.device = recipe["amp"], float(recipe["clip_norm"]), device
        # The dtype of a disabled auto_cast is never used.
        self.amp_dtype = "float16" if self.amp == "fp16" else "bfloat16"
        self.train_model.train()

    def __call__(self, images: paddle.Tensor, labels: paddle.Tensor) -> StepResult:
        """Train on one batch."""
        result = self.compute_gradients(images, labels)
        self.apply_gradients(result.grad_norm)
        return result

    def compute_gradients(self, images: paddle.Tensor, labels: paddle.Tensor) -> StepResult:
        """Forward, scaled backward and unscaling: ``.grad`` holds the true gradients."""
        lr = float(self.optimizer.get_lr())
        with paddle.amp.auto_cast(enable=self.amp != "none", dtype=self.amp_dtype, level="O1"):
            losses = self.train_model(images, {"cls": labels})
        loss = sum(losses.values())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16; step() will not repeat it
        squares = [(p.grad * p.grad).sum() for p in self.net.parameters() if p.grad is not None]
        return StepResult(loss.detach(), lr, paddle.sqrt(paddle.add_n(squares)))

    def apply_gradients(self, grad_norm: paddle.Tensor) -> None:
        """Step the optimizer, which clips by the global norm (its ``grad_clip``; ``grad_norm``
        is recomputed there) and is skipped by the scaler on inf/NaN; zero the gradients,
        step the lr."""
        del grad_norm  # Paddle's grad_clip computes the norm itself
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.clear_grad(set_to_zero=False)
        self.scheduler.step()


# ------------------------------------------------------------------------------ state and I/O


def to_numpy(value: Any) -> Any:
    """``value`` with every Paddle tensor turned into a numpy array (nested dicts and lists)."""
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return type(value)((k, to_numpy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value


def save_final_weights(out_dir: str, net: nn.Layer, model_name: str) -> str:
    """``model_final.pdparams``: a bare state dict (what ``paddle.save`` writes for one)."""
    del model_name  # torch_ref checks its official layout here; Paddle's names are convert's
    state = OrderedDict((k, v.numpy()) for k, v in net.state_dict().items())
    return str(save_paddle(state, os.path.join(out_dir, FINAL_WEIGHTS)))


class PaddleTrainerParts:
    """Paddle's side of ``app.train_loop`` (its ``TrainerParts`` protocol)."""

    framework, program = FRAMEWORK, "paddle_impl.train"
    launch = "python -m paddle.distributed.launch --nproc_per_node N paddle_impl/train.py ..."
    checkpoint_suffix, checkpoint_pattern, final_weights = ".pdckpt", CHECKPOINT_PATTERN, FINAL_WEIGHTS
    scalar_log = ("VisualDL", "visualdl")

    def setup_runtime(self, config: Config) -> Runtime:
        return setup_runtime(config)

    def seed(self, seed: int) -> None:
        paddle.seed(seed)

    def rng_state(self) -> list:
        # Paddle's generator states pickle only as objects; keep their plain-value state.
        return [generator.__getstate__() for generator in paddle.get_rng_state()]

    def set_rng_state(self, states: list) -> None:
        generators = []
        for values in states:
            generator_type = type(paddle.get_rng_state()[0])
            generator = generator_type.__new__(generator_type)  # no Python constructor exists
            generator.__setstate__(tuple(values))
            generators.append(generator)
        paddle.set_rng_state(generators)

    def build_training(self, config: Config, runtime: Runtime, imagenet, initial_state) -> Training:
        return Training(*build_training(config, runtime, imagenet, initial_state))

    def train_step(self, training: Training, recipe: Mapping[str, Any], runtime: Runtime) -> TrainStep:
        model, net = training.train_model, training.net
        return TrainStep(model, net, training.optimizer, training.scheduler, training.scaler, recipe, runtime.device)

    def build_loader(self, patches, plan, window: int, start: int, end: int, workers: int, runtime: Runtime):
        del runtime  # no pinned memory option
        return build_loader(patches, plan, window, start, end, workers)

    def to_device(self, batch, runtime: Runtime, recipe: Mapping[str, Any]) -> Tuple[paddle.Tensor, paddle.Tensor]:
        return to_device(batch, runtime.device)  # no channels_last in Paddle

    def training_state(self, training: Training, copy: bool) -> Dict[str, Any]:
        del copy  # numpy arrays: always a copy
        return {
            "model": to_numpy(training.net.state_dict()),
            "optimizer": to_numpy(training.optimizer.state_dict()),
            "scheduler": training.scheduler.state_dict(),
            "scaler": to_numpy(training.scaler.state_dict()),
        }

    def load_training_state(self, training: Training, state: Mapping[str, Any]) -> None:
        training.net.set_state_dict(state["model"])
        training.optimizer.set_state_dict(state["optimizer"])
        training.scheduler.set_state_dict(state["scheduler"])
        if state["scaler"]:
            training.scaler.load_state_dict(state["scaler"])

    def write_state(self, handle, state: Dict[str, Any], path: str) -> None:
        # Plain pickle of numpy arrays and Python values: convert's restricted reader reads it.
        pickle.dump(state, handle, protocol=4)

    def save_final_weights(self, out_dir: str, net: nn.Layer, model_name: str) -> str:
        return save_final_weights(out_dir, net, model_name)

    def scalar_writer(self, out_dir: str, start: int):
        from visualdl import LogWriter

        return LogWriter(logdir=os.path.join(out_dir, "visualdl"))

    def free_gpu_memory(self, runtime: Runtime) -> Optional[int]:
        index = int(str(runtime.device).split(":")[1])
        total = paddle.device.cuda.get_device_properties(index).total_memory
        return int(total - paddle.device.cuda.memory_reserved(index))

    def scalar(self, value: float, runtime: Runtime, integer: bool = False) -> paddle.Tensor:
        return paddle.full([], value, dtype="int64" if integer else "float32")

    def nonfinite(self, value: paddle.Tensor) -> paddle.Tensor:
        return ~paddle.isfinite(value)

    def where(self, condition: paddle.Tensor, value: paddle.Tensor, other: paddle.Tensor) -> paddle.Tensor:
        return paddle.where(condition, value, other)

    def all_reduce(self, value: paddle.Tensor, op: str) -> None:
        dist.all_reduce(value, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

    def finish(self, runtime: Runtime) -> None:
        dist.barrier()
        dist.destroy_process_group()


PARTS = PaddleTrainerParts()


def train(
    config: Config,
    resume_path: Optional[str] = None,
    imagenet: Optional[str] = None,
    progress: bool = True,
    initial_state: Optional[Mapping[str, Any]] = None,
) -> str:
    """Train with Paddle: ``app.train_loop.train`` given :class:`PaddleTrainerParts`. Returns
    the output folder; ``initial_state`` (Paddle-named numpy) replaces a fresh initialisation."""
    return train_loop.train(PARTS, config, resume_path, imagenet, progress, initial_state)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m paddle_impl.train``; exit status 0, or 2 after a one-line error."""
    # Paddle's BatchNorm warns at every training forward that it tracks running statistics,
    # which is what training wants.
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    return train_loop.main(PARTS, argv)


if __name__ == "__main__":
    sys.exit(main())

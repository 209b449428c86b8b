"""PyTorch's trainer: FarSeg / FactSeg on iSAID patches, the official recipe by default.

Usage::

    python -m torch_ref.train --config configs/farseg_isaid.yaml [--set KEY=VALUE ...]
                              [--resume PATH|auto] [--no-progress] [--print-config]
    torchrun --nproc_per_node 2 -m torch_ref.train --config configs/farseg_isaid.yaml

Recipe (docs/official_models.md, "Training recipe"): SGD (momentum 0.9, weight decay 1e-4 on all parameters), poly
learning rate per iteration without warm-up, gradient clipping by the GLOBAL L2 norm,
ImageNet ResNet-50 initialisation, SyncBatchNorm across GPUs. Samples and augmentation are
drawn by ``isaid.augment`` from (seed, iteration, rank): a resumed run continues with exactly
the batches of an uninterrupted one, and ``paddle_impl.train`` sees the same batches.

The loop (resume, checkpoints, non-finite losses, logging, progress) is ``app.train_loop``,
shared with ``paddle_impl.train``; this file holds what is torch: :class:`TorchTrainerParts`
(runtime and DDP, model and SyncBN, :func:`build_optimizer`, :class:`TrainStep` with autocast
and the GradScaler, the DataLoader, state save/load). Written to ``train.out_dir``:
``checkpoints/ckpt_<iteration>.pt`` (``torch.save``), ``metrics.jsonl``, ``config.yaml``,
TensorBoard events, and at the end ``model_final.pth``: a bare state dict in the official key
layout (``python -m convert`` ports it to Paddle).
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections import OrderedDict
from copy import deepcopy
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

if __package__ in (None, ""):
    # Started as a script path (launchers that cannot run "-m"): import from the repository
    # root instead of this folder, whose module names (data, losses, ...) must not shadow.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from app import train_loop
from app.config import Config
from app.train_loop import CHECKPOINT_FORMAT, Runtime, StepResult, Training, choose_device
from convert import imagenet_encoder_state, save_torch, validate
from torch_ref import build_model
from torch_ref.data import build_loader, to_device

__all__ = ["CHECKPOINT_FORMAT", "Runtime", "StepResult", "TrainStep", "build_optimizer", "build_training", "main"]

FRAMEWORK = "torch"
CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
FINAL_WEIGHTS = "model_final.pth"
CPU_AMP = ("bf16",)  # measured: CPU autocast computes convolutions in bfloat16 (tests/test_train.py)


def setup_runtime(config: Config) -> Runtime:
    """Pick the device (``train.device``, checked with ``train.amp``) and join the process
    group when started by torchrun."""
    on_gpu = choose_device(config, torch.cuda.is_available(), f"torch {torch.__version__}", CPU_AMP, "")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return Runtime(device, dist.get_rank() if world_size > 1 else 0, world_size, local_rank)


def load_imagenet(net: nn.Module, path: str, model_name: str) -> int:
    """Copy the ImageNet encoder weights into ``net``; every encoder key must be covered."""
    state = imagenet_encoder_state(path, model_name, FRAMEWORK)
    own = net.state_dict()
    train_loop.check_encoder_fit(path, model_name, state, {k: tuple(v.shape) for k, v in own.items()})
    # The whole state with the encoder replaced, so that the load itself is strict.
    full = OrderedDict(own)
    full.update((k, torch.from_numpy(np.array(v))) for k, v in state.items())
    net.load_state_dict(full)
    return len(state)


def load_initial_state(net: nn.Module, state: Mapping[str, Any], model_name: str) -> None:
    """Start from ``state``: every weight and buffer of the model (numpy arrays, torch's key
    names), checked against the layout first (``align.train`` starts both trainers from one
    torch initialisation converted by ``convert``)."""
    validate(OrderedDict((k, np.asarray(v)) for k, v in state.items()), model_name, FRAMEWORK)
    net.load_state_dict(OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state.items()))


# ------------------------------------------------------------------------------ model, step


def build_optimizer(model: nn.Module, recipe: Mapping[str, Any]) -> Tuple[torch.optim.SGD, Any]:
    """(optimizer, scheduler) of ``recipe`` (the ``train`` section of configs/*.yaml) for ``model``.

    SGD with momentum and L2 weight decay on every parameter, and the poly learning rate
    ``lr * (1 - k / iterations) ** poly_power`` stepped once per iteration. Clipping by the
    global norm (``clip_norm``) is done by :class:`TrainStep` (torch has no optimizer option).
    """
    params = list(model.parameters())
    optimizer = torch.optim.SGD(
        params,
        lr=recipe["lr"],
        momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"],
        fused=True if params and params[0].is_cuda else None,
    )
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=recipe["iterations"], power=recipe["poly_power"]
    )
    return optimizer, scheduler


def build_scaler(recipe: Mapping[str, Any], device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of ``recipe``: dynamic scaling for fp16 (apex O1's defaults), else off."""
    return torch.amp.GradScaler(
        device.type,
        enabled=recipe["amp"] == "fp16",
        init_scale=2.0**16,
        growth_factor=2.0,
        backoff_factor=0.5,
        growth_interval=2000,
    )


def build_training(
    config: Config, runtime: Runtime, imagenet: Optional[str], initial_state: Optional[Mapping[str, Any]] = None
):
    """(net, train_model, optimizer, scheduler, scaler) for ``config`` on ``runtime``.

    ``net`` is the bare model (its state dict is what is saved); ``train_model`` is what the
    step calls (SyncBN-converted and DDP-wrapped when several GPUs train, compiled if asked).
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
    net.to(runtime.device)
    if train["channels_last"]:
        net.to(memory_format=torch.channels_last)
    train_model: nn.Module = net
    if runtime.world_size > 1:
        # No buffer broadcast, as apex's DDP in the official run and Paddle's DataParallel.
        train_model = DistributedDataParallel(
            net, device_ids=[runtime.device.index] if runtime.on_gpu else None, broadcast_buffers=False
        )
    if train["compile"]:
        train_model = torch.compile(train_model)
    optimizer, scheduler = build_optimizer(net, train)
    return net, train_model, optimizer, scheduler, build_scaler(train, runtime.device)


class TrainStep:
    """One torch training iteration of ``recipe``: forward under ``torch.autocast``, backward
    of the GradScaler-scaled loss, unscaling, clipping by the global norm
    (``clip_grads_with_norm_``), SGD step, scaler update, ``zero_grad``, lr step.

    ``step(images, labels)`` runs it whole; :meth:`compute_gradients` and
    :meth:`apply_gradients` are its halves, for ``align.backward`` to read the gradients.
    """

    def __init__(
        self,
        train_model: nn.Module,
        net: nn.Module,
        optimizer,
        scheduler,
        scaler,
        recipe: Mapping[str, Any],
        device: torch.device,
    ) -> None:
        self.train_model, self.net = train_model, net
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.amp, self.clip_norm, self.device = recipe["amp"], float(recipe["clip_norm"]), device
        # The dtype of a disabled autocast is never used; bfloat16 keeps torch from warning.
        self.amp_dtype = torch.float16 if self.amp == "fp16" else torch.bfloat16
        self.train_model.train()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """Train on one batch of torch tensors."""
        result = self.compute_gradients(images, labels)
        self.apply_gradients(result.grad_norm)
        return result

    def compute_gradients(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """Forward, scaled backward and ``unscale_``: ``p.grad`` holds the true gradients."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp != "none"):
            losses = self.train_model(images, {"cls": labels})
        loss = sum(losses.values())
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # a no-op unless fp16
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        return StepResult(loss.detach(), lr, torch.nn.utils.get_total_norm(grads))

    def apply_gradients(self, grad_norm: torch.Tensor) -> None:
        """Clip by the global norm ``grad_norm`` (from :meth:`compute_gradients`), step the
        optimizer (skipped by the scaler on inf/NaN), zero the gradients, step the lr."""
        if self.clip_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(self.net.parameters(), self.clip_norm, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


# ------------------------------------------------------------------------------ state and I/O


def torch_save_to(handle, state: Any, path: str) -> None:
    """``torch.save(state, handle)``; its C++ writer reports a failed write (a full disk) as a
    RuntimeError, turned here into the OSError every other writer raises."""
    try:
        torch.save(state, handle)
    except RuntimeError as error:
        text = " ".join(str(error).split())
        raise OSError(errno.EIO, f"write failed ({text}; is the disk full?)", path) from None


def to_torch(value: Any) -> Any:
    """``value`` with every numpy array turned into a torch tensor (a copy; nested dicts and lists)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, dict):
        return type(value)((k, to_torch(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_torch(v) for v in value)
    return value


def save_final_weights(out_dir: str, net: nn.Module, model_name: str) -> str:
    """``model_final.pth``: a bare state dict in the official key layout (checked)."""
    state = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in net.state_dict().items())
    validate(OrderedDict((k, v.numpy()) for k, v in state.items()), model_name, FRAMEWORK)
    return str(save_torch(state, os.path.join(out_dir, FINAL_WEIGHTS)))


class TorchTrainerParts:
    """What ``app.train_loop`` needs from torch (its ``TrainerParts`` protocol)."""

    framework, program, launch = FRAMEWORK, "torch_ref.train", "torchrun --nproc_per_node N -m torch_ref.train ..."
    checkpoint_suffix, checkpoint_pattern, final_weights = ".pt", CHECKPOINT_PATTERN, FINAL_WEIGHTS
    scalar_log = ("TensorBoard", "tensorboard")

    def setup_runtime(self, config: Config) -> Runtime:
        return setup_runtime(config)

    def seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def rng_state(self) -> list:
        return [torch.get_rng_state()] + (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])

    def set_rng_state(self, states: list) -> None:
        states = to_torch(states)  # read back from a checkpoint as numpy
        torch.set_rng_state(states[0])
        if torch.cuda.is_available() and len(states) > 1:
            torch.cuda.set_rng_state_all(states[1:])

    def build_training(self, config: Config, runtime: Runtime, imagenet, initial_state) -> Training:
        return Training(*build_training(config, runtime, imagenet, initial_state))

    def train_step(self, training: Training, recipe: Mapping[str, Any], runtime: Runtime) -> TrainStep:
        parts = (training.train_model, training.net, training.optimizer, training.scheduler, training.scaler)
        return TrainStep(*parts, recipe, runtime.device)

    def build_loader(self, patches, plan, window: int, start: int, end: int, workers: int, runtime: Runtime):
        return build_loader(patches, plan, window, start, end, workers, pin_memory=runtime.on_gpu)

    def to_device(self, batch, runtime: Runtime, recipe: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
        return to_device(batch, runtime.device, recipe["channels_last"])

    def training_state(self, training: Training, copy: bool) -> Dict[str, Any]:
        state = {
            "model": training.net.state_dict(),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "scaler": training.scaler.state_dict(),
        }
        return deepcopy(state) if copy else state

    def load_training_state(self, training: Training, state: Mapping[str, Any]) -> None:
        state = to_torch({k: state[k] for k in ("model", "optimizer", "scheduler", "scaler")})
        training.net.load_state_dict(state["model"])
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            training.scaler.load_state_dict(state["scaler"])

    def write_state(self, handle, state: Dict[str, Any], path: str) -> None:
        torch_save_to(handle, state, path)

    def save_final_weights(self, out_dir: str, net: nn.Module, model_name: str) -> str:
        return save_final_weights(out_dir, net, model_name)

    def scalar_writer(self, out_dir: str, start: int):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start + 1)

    def free_gpu_memory(self, runtime: Runtime) -> Optional[int]:
        return int(torch.cuda.mem_get_info(runtime.device)[0])

    def scalar(self, value: float, runtime: Runtime, integer: bool = False) -> torch.Tensor:
        return torch.full([], value, dtype=torch.int64 if integer else torch.float32, device=runtime.device)

    def nonfinite(self, value: torch.Tensor) -> torch.Tensor:
        return ~torch.isfinite(value)

    def where(self, condition: torch.Tensor, value: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.where(condition, value, other)

    def all_reduce(self, value: torch.Tensor, op: str) -> None:
        dist.all_reduce(value, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

    def finish(self, runtime: Runtime) -> None:
        dist.barrier()
        dist.destroy_process_group()


PARTS = TorchTrainerParts()


def train(
    config: Config,
    resume_path: Optional[str] = None,
    imagenet: Optional[str] = None,
    progress: bool = True,
    initial_state: Optional[Mapping[str, Any]] = None,
) -> str:
    """Train with torch (``app.train_loop.train`` with :class:`TorchTrainerParts`); returns
    the output folder. ``initial_state``: torch-named numpy arrays for a fresh start."""
    return train_loop.train(PARTS, config, resume_path, imagenet, progress, initial_state)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m torch_ref.train``: 0 done, 2 a one-line error."""
    return train_loop.main(PARTS, argv)


if __name__ == "__main__":
    sys.exit(main())

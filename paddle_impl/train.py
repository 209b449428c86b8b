"""Train FarSeg / FactSeg on iSAID patches with Paddle; the official recipe by default.

Usage::

    python -m paddle_impl.train --config configs/farseg_isaid.yaml [--set KEY=VALUE ...]
                                [--resume PATH|auto] [--no-progress] [--print-config]
    python -m paddle.distributed.launch --nproc_per_node 2 paddle_impl/train.py --config ...

Recipe (docs/official_models.md, "Training recipe"): SGD (momentum 0.9, weight decay 1e-4 on all parameters), poly
learning rate per iteration without warm-up, gradient clipping by the GLOBAL L2 norm,
ImageNet ResNet-50 initialisation, SyncBatchNorm across GPUs. Samples and augmentation are
drawn by ``isaid.augment`` from (seed, iteration, rank): a resumed run continues with exactly
the batches of an uninterrupted one, and ``torch_ref.train`` sees the same batches.

Written to ``train.out_dir``: ``checkpoints/ckpt_<iteration>.pdckpt`` (model, optimizer,
scheduler, AMP scaler, RNG states as numpy in a pickle; written atomically), ``metrics.jsonl``
(iteration, loss, lr, grad_norm, images_per_s), ``config.yaml``, VisualDL logs, and at the end
``model_final.pdparams``: a bare state dict (``python -m convert`` ports it to torch).
Mirror: ``torch_ref/train.py`` reads the same, line for line.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import random
import re
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
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

from app.config import Config, ConfigError, dump_config, load_config, resolve_out_dir
from app.training import (
    MetricsFile,
    NonFiniteGuard,
    TrainError,
    check_training_checkpoint,
    checkpoint_dir,
    list_checkpoints,
    one_line,
    remove_checkpoint_file,
    starting_point,
    write_checkpoint_file,
)
from app.training import build_parser as build_train_parser
from common.atomic import describe_os_error, remove_stale_temporaries
from convert import CheckpointError, atomic_write, imagenet_encoder_state, save_paddle, validate
from convert.safe_load import read_object
from isaid.augment import DataError, SamplePlan, load_patch_index
from paddle_impl import build_model
from paddle_impl.data import build_loader, to_device
from weights import ENCODER_PREFIX

FRAMEWORK = "paddle"
CHECKPOINT_FORMAT = "rsseg-train-checkpoint-v1"
CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pdckpt$")
FINAL_WEIGHTS = "model_final.pdparams"


# ------------------------------------------------------------------------------ runtime


@dataclass
class Runtime:
    """Where this process trains: device and its place among the data-parallel processes."""

    device: str
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("gpu")


def setup_runtime(config: Config) -> Runtime:
    """Pick the device and join the process group when started by paddle.distributed.launch."""
    want = config["train"]["device"]
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if want in ("cuda", "gpu") and not has_gpu:
        raise TrainError(
            f"train.device={want}: Paddle {paddle.__version__} sees no CUDA GPU; use train.device=cpu or auto"
        )
    on_gpu = has_gpu if want == "auto" else want in ("cuda", "gpu")
    if not on_gpu and config["train"]["amp"] != "none":
        # Measured with Paddle 3.3.1: on CPU auto_cast only warns and computes in float32.
        raise TrainError(
            f"train.amp={config['train']['amp']}: Paddle has no mixed precision on"
            " CPU (paddle.amp.auto_cast is a no-op there); use train.amp=none"
        )
    world_size = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    local_rank = int(os.environ.get("PADDLE_LOCAL_RANK", "0"))
    if on_gpu:
        device = f"gpu:{dist.ParallelEnv().device_id}"
        paddle.set_device(device)
        # Fixed input sizes: let cuDNN pick the fastest kernels once.
        paddle.set_flags({"FLAGS_cudnn_exhaustive_search": True})
    else:
        device = "cpu"
        paddle.set_device(device)
    if world_size > 1:
        dist.init_parallel_env()
    rank = dist.get_rank() if world_size > 1 else 0
    return Runtime(device, rank, world_size, local_rank)


def seed_everything(seed: int) -> None:
    """Seed every generator the process owns (initialisation draws from the framework's)."""
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def rng_state() -> Dict[str, Any]:
    """The RNG states of this process, as plain Python values and tensors."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        # Paddle's generator states pickle only as objects; keep their plain-value state.
        "framework": [generator.__getstate__() for generator in paddle.get_rng_state()],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    generators = []
    for values in state["framework"]:
        generator_type = type(paddle.get_rng_state()[0])
        generator = generator_type.__new__(generator_type)  # no Python constructor exists
        generator.__setstate__(tuple(values))
        generators.append(generator)
    paddle.set_rng_state(generators)


# ------------------------------------------------------------------------------ ImageNet init


def load_imagenet(net: nn.Layer, path: str, model_name: str) -> int:
    """Copy the ImageNet encoder weights into ``net``; every encoder key must be covered."""
    state = imagenet_encoder_state(path, model_name, FRAMEWORK)
    own = net.state_dict()
    prefix = ENCODER_PREFIX[model_name]
    problems = [f"unexpected {k}" for k in state if k not in own]
    problems += [
        f"{k} is {tuple(state[k].shape)} but the model has {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems += [f"missing {k}" for k in own if k.startswith(prefix) and k not in state]
    if problems:
        raise CheckpointError(
            f"does not fit the {model_name} encoder ({len(problems)} problems: {'; '.join(problems[:3])})", path=path
        )
    # The whole state with the encoder replaced, so that the load itself is strict.
    full = OrderedDict(own)
    full.update((k, paddle.to_tensor(np.array(v))) for k, v in state.items())
    net.set_state_dict(full)
    return len(state)


def load_initial_state(net: nn.Layer, state: Mapping[str, Any], model_name: str) -> None:
    """Start from ``state``: every weight and buffer of the model (numpy arrays, this
    framework's key names), checked against the layout first (``align.train`` starts both
    trainers from one torch initialisation converted by ``convert``)."""
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


@dataclass
class StepResult:
    """What one training iteration reports (tensors stay on the device: no synchronisation)."""

    loss: paddle.Tensor  # the summed training loss (detached)
    lr: float  # the learning rate this iteration's update used
    grad_norm: paddle.Tensor  # global L2 norm of the unscaled gradients, before clipping


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


# ------------------------------------------------------------------------------ checkpoints


def to_numpy(value: Any) -> Any:
    """``value`` with every Paddle tensor turned into a numpy array (nested dicts and lists)."""
    if isinstance(value, paddle.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return type(value)((k, to_numpy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    return value


def save_checkpoint(
    out_dir: str, iteration: int, config: Config, runtime: Runtime, net, optimizer, scheduler, scaler, keep: int
) -> str:
    """Write ``ckpt_<iteration>`` and its checksum atomically, then drop all but the newest ``keep``."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "framework": FRAMEWORK,
        "iteration": iteration,
        "world_size": runtime.world_size,
        "config": config,
        "model": to_numpy(net.state_dict()),
        "optimizer": to_numpy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "scaler": to_numpy(scaler.state_dict()),
        "rng": rng_state(),  # of rank 0; the loop itself draws no random numbers
    }
    path = os.path.join(checkpoint_dir(out_dir), f"ckpt_{iteration:07d}.pdckpt")
    # Plain pickle of numpy arrays and Python values: convert's restricted reader reads it.
    write_checkpoint_file(path, lambda handle: pickle.dump(state, handle, protocol=4))
    if keep > 0:
        for _, old in list_checkpoints(out_dir, CHECKPOINT_PATTERN)[:-keep]:
            remove_checkpoint_file(old)
    return path


def load_checkpoint(path: str, config: Config, runtime: Runtime, net, optimizer, scheduler, scaler) -> int:
    """Restore everything :func:`save_checkpoint` wrote; returns the iteration reached.

    Read by convert's reader (no code executed, bounded time and memory; the file's checksum
    was checked by ``starting_point``), checked (``check_training_checkpoint``), then loaded.
    """
    state = read_object(path)[1]
    check_training_checkpoint(path, state, CHECKPOINT_FORMAT, "paddle_impl.train", config)
    try:
        net.set_state_dict(state["model"])
        optimizer.set_state_dict(state["optimizer"])
        scheduler.set_state_dict(state["scheduler"])
        if state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        raise TrainError(f"{path}: does not fit this model and optimizer ({one_line(error)[:300]})") from None
    return int(state["iteration"])


def save_final_weights(out_dir: str, net: nn.Layer, model_name: str) -> str:
    """``model_final.pdparams``: a bare state dict (what ``paddle.save`` writes for one)."""
    state = OrderedDict((k, v.numpy()) for k, v in net.state_dict().items())
    return str(save_paddle(state, os.path.join(out_dir, FINAL_WEIGHTS)))


# ------------------------------------------------------------------------------ logging


class MetricsLog:
    """``metrics.jsonl`` (always) and VisualDL (when installed), written by rank 0 only."""

    def __init__(self, out_dir: str, backend: str, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.rows = MetricsFile(out_dir, start)
        if backend == "auto":
            try:
                from visualdl import LogWriter
            except ImportError as error:
                warnings.warn(
                    f"VisualDL logging off ({error}); pip install visualdl"
                    " to enable it. metrics.jsonl is written regardless",
                    stacklevel=2,
                )
            else:
                self.writer = LogWriter(logdir=os.path.join(out_dir, "visualdl"))

    def log(self, iteration: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self.rows.append(iteration, values)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(tag=f"train/{key}", value=value, step=iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def finite_on_all_processes(loss: paddle.Tensor, runtime: Runtime) -> bool:
    """Whether ``loss`` is finite in every process (every process must call this)."""
    bad = (~paddle.isfinite(loss)).astype("float32")
    if runtime.world_size > 1:
        dist.all_reduce(bad)
    return float(bad.item()) == 0.0


def first_bad_over_processes(first_bad: paddle.Tensor, runtime: Runtime) -> int:
    """The earliest non-finite iteration recorded by any process (-1: none)."""
    if runtime.world_size > 1:
        # -1 means none: take the max of the negated values that are set
        marked = paddle.where(first_bad < 0, paddle.full_like(first_bad, -(2**62)), -first_bad)
        dist.all_reduce(marked, op=dist.ReduceOp.MAX)
        return -1 if int(marked.item()) == -(2**62) else -int(marked.item())
    return int(first_bad.item())


def training_snapshot(net, optimizer, scheduler, scaler) -> Tuple[Any, ...]:
    """Copies of everything one step changes (for train.skip_nonfinite), as numpy arrays."""
    return (
        to_numpy(net.state_dict()),
        to_numpy(optimizer.state_dict()),
        copy.deepcopy(scheduler.state_dict()),
        to_numpy(scaler.state_dict()),
    )


def restore_snapshot(snapshot: Tuple[Any, ...], net, optimizer, scheduler, scaler) -> None:
    """Undo a step: back to :func:`training_snapshot`'s state."""
    model, optim, sched, scale = snapshot
    net.set_state_dict(model)
    optimizer.set_state_dict(optim)
    scheduler.set_state_dict(sched)
    if scale:
        scaler.load_state_dict(scale)


def mean_over_processes(value: paddle.Tensor, runtime: Runtime) -> float:
    """The mean of ``value`` over all processes (every process must call this)."""
    if runtime.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value = value / runtime.world_size
    return float(value.item())


# ------------------------------------------------------------------------------ the run


def train(
    config: Config,
    resume_path: Optional[str] = None,
    imagenet: Optional[str] = None,
    progress: bool = True,
    initial_state: Optional[Mapping[str, Any]] = None,
) -> str:
    """Run the training of ``config``, from scratch (encoder from ``imagenet`` unless None)
    or from the checkpoint ``resume_path``; returns the output folder. ``initial_state`` (all
    weights and buffers, numpy, this framework's names) replaces the initialisation of a
    fresh start (``align.train`` uses it)."""
    from tqdm import tqdm

    train_cfg, name = config["train"], config["model"]["name"]
    window = config["data"]["window"]
    patches = load_patch_index(config["data"]["root"], config["data"]["split"], window)
    runtime = setup_runtime(config)
    out_dir = resolve_out_dir(config, FRAMEWORK)
    seed_everything(train_cfg["seed"])
    net, train_model, optimizer, scheduler, scaler = build_training(
        config, runtime, None if resume_path else imagenet, None if resume_path else initial_state
    )
    step = TrainStep(train_model, net, optimizer, scheduler, scaler, train_cfg, runtime.device)

    start = 0
    if resume_path is not None:
        start = load_checkpoint(resume_path, config, runtime, net, optimizer, scheduler, scaler)
    iterations = train_cfg["iterations"]
    if runtime.is_main:
        os.makedirs(out_dir, exist_ok=True)
        remove_stale_temporaries(out_dir)  # config.yaml / metrics / final weights of a killed run
        atomic_write(
            os.path.join(out_dir, "config.yaml"), lambda handle: handle.write(dump_config(config).encode("utf-8"))
        )
        origin = (
            f"resumed from {resume_path} at iteration {start}"
            if resume_path
            else (
                "from a given initial state"
                if initial_state is not None
                else f"from scratch, encoder {imagenet or 'random (init.imagenet=none)'}"
            )
        )
        print(
            f"{FRAMEWORK}: {name}, {len(patches)} patches, global batch"
            f" {train_cfg['batch_size']} on {runtime.world_size} process(es) ({runtime.device}),"
            f" {iterations} iterations, {origin}; output {out_dir}",
            flush=True,
        )
    metrics = MetricsLog(out_dir, train_cfg["log_backend"], start, runtime.is_main)

    plan = SamplePlan(
        len(patches),
        train_cfg["batch_size"],
        train_cfg["seed"],
        runtime.world_size,
        runtime.rank,
        config["augment"]["hflip"],
        config["augment"]["vflip"],
        config["augment"]["rot90"],
    )
    loader = build_loader(patches, plan, window, start, iterations, train_cfg["num_workers"])
    bar = tqdm(
        total=iterations,
        initial=start,
        desc=f"{name} {FRAMEWORK}",
        unit="it",
        disable=not (progress and runtime.is_main),
        dynamic_ncols=True,
    )
    window_loss = paddle.zeros([], dtype="float32")
    window_grad_norm = paddle.zeros_like(window_loss)
    window_start, window_time, started = start, time.perf_counter(), time.perf_counter()
    guard = NonFiniteGuard(train_cfg["skip_nonfinite"], train_cfg["max_nonfinite"])
    # Iteration of the first NaN/Inf loss (-1: none), kept on the device: no sync per step.
    first_bad = paddle.full([], -1, dtype="int64")
    window_count = 0
    for iteration, batch in enumerate(loader, start):
        images, labels = to_device(batch, runtime.device)
        snapshot = training_snapshot(net, optimizer, scheduler, scaler) if guard.skip else None
        result = step(images, labels)
        lr, loss = result.lr, result.loss
        done = iteration + 1
        bar.update(1)
        if snapshot is not None and not finite_on_all_processes(loss, runtime):
            restore_snapshot(snapshot, net, optimizer, scheduler, scaler)
            bar.write(guard.skipped(done, float(loss)), file=sys.stderr)
        else:
            first_bad = paddle.where(
                (first_bad < 0) & ~paddle.isfinite(loss), paddle.full_like(first_bad, done), first_bad
            )
            window_loss = window_loss + loss
            window_grad_norm = window_grad_norm + result.grad_norm
            window_count += 1
        saving = runtime.is_main and (done % train_cfg["checkpoint_every"] == 0 or done == iterations)
        logging_now = done % train_cfg["log_every"] == 0 or done == iterations
        if logging_now or done % train_cfg["checkpoint_every"] == 0:  # the same steps on every rank
            guard.check_first(first_bad_over_processes(first_bad, runtime))
        if logging_now:
            loss = mean_over_processes(window_loss, runtime) / max(window_count, 1)
            # Gradients are already averaged over the processes: every rank has this norm.
            grad_norm = float(window_grad_norm.item()) / max(window_count, 1)
            now = time.perf_counter()
            speed = (done - window_start) * train_cfg["batch_size"] / (now - window_time)
            metrics.log(
                done,
                {
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "images_per_s": speed,
                    "seconds": now - started,
                    **({"skipped_nonfinite": guard.count} if guard.skip else {}),
                },
            )
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
            window_loss = paddle.zeros_like(window_loss)
            window_grad_norm = paddle.zeros_like(window_grad_norm)
            window_start, window_time, window_count = done, now, 0
        if saving:
            save_checkpoint(
                out_dir, done, config, runtime, net, optimizer, scheduler, scaler, train_cfg["keep_checkpoints"]
            )
    bar.close()
    metrics.close()
    if runtime.is_main:
        path = save_final_weights(out_dir, net, name)
        print(f"{FRAMEWORK}: final weights {path}", flush=True)
    if runtime.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out_dir


# ------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m paddle_impl.train``."""
    return build_train_parser(
        "python -m paddle_impl.train", "python -m paddle.distributed.launch --nproc_per_node N paddle_impl/train.py ..."
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # Paddle's BatchNorm warns at every training forward that it tracks running statistics,
    # which is what training wants.
    warnings.filterwarnings("ignore", message="When training, we now always track global mean")
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        resume_path, imagenet = starting_point(config, args.resume, FRAMEWORK, CHECKPOINT_PATTERN)
        train(config, resume_path, imagenet, args.progress)
    except (ConfigError, DataError, CheckpointError, TrainError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    except OSError as error:  # a write failed (disk full, read-only folder): the earlier files are intact
        print(f"error: {describe_os_error(error, with_file=True)}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

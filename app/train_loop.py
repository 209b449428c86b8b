"""The training loop of ``python -m torch_ref.train`` and ``python -m paddle_impl.train``, written once.

One loop, the frameworks injected (as PaddleSeg's single ``train()`` takes its model, optimiser
and data): this module owns everything that is not framework code -- where a run starts
(fresh, ``--resume PATH``, ``--resume auto``), the checks before the first step (device,
``train.amp``, the batch against memory, the worker count), the checkpoint envelope and its
atomic writing, RNG states, non-finite losses (``train.skip_nonfinite``), ``metrics.jsonl``
and the scalar log, progress, the final weights and the one-line errors of ``main``.

Each framework's ``train.py`` passes a :class:`TrainerParts`: the runtime (device, DDP or
fleet), the model with SyncBN and ImageNet or given initial weights, ``build_optimizer`` and
``TrainStep`` (AMP, clipping; the names ``align`` proves), the data loader, how its training
state is saved, copied and loaded, and five tensor operations the loop does on the device.
"""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Pattern, Protocol, Sequence, Tuple

import numpy as np

from common import atomic
from common.resources import MemoryBudgetError, check_memory
from convert import CheckpointError, atomic_write
from convert.safe_load import read_object
from isaid.augment import DataError, SamplePlan, load_patch_index
from weights import ENCODER_PREFIX

from .config import Config, ConfigError, dump_config, load_config, resolve_out_dir
from .training import (
    MetricsFile,
    NonFiniteGuard,
    TrainError,
    amp_policy,
    build_parser,
    check_training_checkpoint,
    checkpoint_dir,
    list_checkpoints,
    one_line,
    remove_checkpoint_file,
    starting_point,
    write_checkpoint_file,
)

CHECKPOINT_FORMAT = "rsseg-train-checkpoint-v1"
# Memory one FarSeg training step holds per input pixel in float32, a LOWER bound (a batch is
# refused only when it surely cannot fit): the peak RSS of one CPU step grew by 2.3 to 3.4 kB
# per pixel added to the batch, torch and Paddle, 256^2 x 2 to 512^2 x 2; about 3/4 of the
# lowest slope (benchmarks/train_memory.py -> benchmarks/results/train_memory.json).
ACTIVATION_BYTES_PER_PIXEL = 1600


# ------------------------------------------------------------------------------ what a framework provides


@dataclass
class Runtime:
    """Where this process trains: device and its place among the data-parallel processes."""

    device: Any  # torch.device or Paddle's place string ("cpu", "gpu:0")
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return str(self.device).split(":")[0] in ("cuda", "gpu")


@dataclass
class StepResult:
    """What one training iteration reports (tensors stay on the device: no synchronisation)."""

    loss: Any  # the summed training loss (detached)
    lr: float  # the learning rate this iteration's update used
    grad_norm: Any  # global L2 norm of the unscaled gradients, before clipping


@dataclass
class Training:
    """What a framework's ``build_training`` returns, by name."""

    net: Any  # the bare model: its state is what is saved
    train_model: Any  # what the step calls (SyncBN, DDP / DataParallel, compiled)
    optimizer: Any
    scheduler: Any
    scaler: Any


class TrainerParts(Protocol):
    """What differs between the trainers; everything else is this module's."""

    framework: str  # "torch" / "paddle": train.out_dir's {framework}, message prefixes
    program: str  # "torch_ref.train"
    launch: str  # the command that starts several processes (for --help)
    checkpoint_suffix: str  # ".pt"
    checkpoint_pattern: Pattern[str]  # a checkpoint's file name, iteration as group 1
    final_weights: str  # "model_final.pth"
    scalar_log: Tuple[str, str]  # (name, pip package) of the TensorBoard-like writer

    def setup_runtime(self, config: Config) -> Runtime:
        """Device and process group (calls :func:`choose_device`)."""

    def seed(self, seed: int) -> None:
        """Seed the framework's generators."""

    def rng_state(self) -> Any:
        """The framework's generator states as plain values / numpy (pickled in checkpoints)."""

    def set_rng_state(self, states: Any) -> None:
        """Restore :meth:`rng_state`."""

    def build_training(
        self, config: Config, runtime: Runtime, imagenet: Optional[str], initial_state: Optional[Mapping[str, Any]]
    ) -> Training:
        """The model (SyncBN, DDP) with its optimizer (``build_optimizer``), scheduler and scaler."""

    def train_step(self, training: Training, recipe: Mapping[str, Any], runtime: Runtime) -> Any:
        """The framework's ``TrainStep``: ``step(images, labels) -> StepResult``."""

    def build_loader(
        self, patches: Any, plan: SamplePlan, window: int, start: int, end: int, workers: int, runtime: Runtime
    ) -> Any:
        """Batches of iterations ``start .. end-1`` of ``plan``."""

    def to_device(self, batch: Any, runtime: Runtime, recipe: Mapping[str, Any]) -> Tuple[Any, Any]:
        """(images, labels) of a loader batch on the device."""

    def training_state(self, training: Training, copy: bool) -> Dict[str, Any]:
        """{"model", "optimizer", "scheduler", "scaler"} state dicts as saved in checkpoints
        (``copy``: detached from the live tensors, for undoing a step)."""

    def load_training_state(self, training: Training, state: Mapping[str, Any]) -> None:
        """Load what :meth:`training_state` gave (or a checkpoint read back as numpy)."""

    def write_state(self, handle: Any, state: Dict[str, Any], path: str) -> None:
        """Serialise a checkpoint into ``handle`` (a failed write raises OSError)."""

    def save_final_weights(self, out_dir: str, net: Any, model_name: str) -> str:
        """Write the bare state dict ``final_weights``; returns its path."""

    def scalar_writer(self, out_dir: str, start: int) -> Any:
        """A writer with ``add_scalar(tag, value, step)`` and ``close()`` (ImportError: none)."""

    def free_gpu_memory(self, runtime: Runtime) -> Optional[int]:
        """Bytes still free on the runtime's GPU (None: unknown)."""

    def scalar(self, value: float, runtime: Runtime, integer: bool = False) -> Any:
        """A 0-d float32 (int64) tensor on the device."""

    def nonfinite(self, value: Any) -> Any:
        """A 0-d bool tensor: ``value`` is NaN or Inf."""

    def where(self, condition: Any, value: Any, other: Any) -> Any:
        """Elementwise ``value if condition else other`` (0-d tensors)."""

    def all_reduce(self, value: Any, op: str) -> None:
        """In place over all processes; ``op`` is "sum" or "max"."""

    def finish(self, runtime: Runtime) -> None:
        """Wait for every process and leave the process group."""


# ------------------------------------------------------------------------------ checks before the first step


def choose_device(config: Config, has_gpu: bool, framework: str, cpu_amp: Sequence[str], cpu_amp_missing: str) -> bool:
    """Whether this run trains on a GPU (``train.device``); TrainError, one line, when the
    device does not exist or ``train.amp`` cannot run there (:func:`app.training.amp_policy`).
    ``framework`` names the framework and its version in the message."""
    want, amp = config["train"]["device"], config["train"]["amp"]
    if want in ("cuda", "gpu") and not has_gpu:
        raise TrainError(f"train.device={want}: {framework} sees no CUDA GPU; use train.device=cpu or auto")
    on_gpu = has_gpu if want == "auto" else want in ("cuda", "gpu")
    decision = amp_policy("gpu" if on_gpu else "cpu", amp, cpu_amp, cpu_amp_missing)
    if decision.refusal:
        raise TrainError(decision.refusal)
    return on_gpu


def check_batch_memory(parts: TrainerParts, config: Config, runtime: Runtime) -> None:
    """TrainError naming ``train.batch_size`` when this process's share of the batch cannot
    fit: its activations (:data:`ACTIVATION_BYTES_PER_PIXEL`, halved under AMP) against the
    GPU's free memory, or on a CPU against :func:`common.resources.available_memory`."""
    train, window = config["train"], config["data"]["window"]
    samples = max(train["batch_size"] // runtime.world_size, 1)
    need = samples * window * window * ACTIVATION_BYTES_PER_PIXEL // (2 if train["amp"] != "none" else 1)
    what = f"train.batch_size={train['batch_size']}: {samples} samples of {window}x{window} per process"
    hint = "lower train.batch_size (or data.window)"
    if runtime.on_gpu:
        try:
            free = parts.free_gpu_memory(runtime)
        except Exception:  # noqa: BLE001 - a driver that cannot say: no check, as on an unknown limit
            free = None
        if free is not None and need > free:
            gib = 2**30
            raise TrainError(
                f"{what} need about {need / gib:.1f} GB for activations, more than the"
                f" {free / gib:.1f} GB free on {runtime.device}; {hint}"
            )
        return
    try:
        check_memory(need, what + " (activations)", hint)
    except MemoryBudgetError as error:
        raise TrainError(str(error).replace(" needs about ", " need about ", 1)) from None


def worker_count(requested: int, cores: Optional[int] = None) -> Tuple[int, Optional[str]]:
    """(data-loader workers to start, info line or None): ``train.num_workers`` capped at the
    CPU cores this process may use (more workers than cores only compete for them)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested <= cores:
        return requested, None
    return cores, f"info: train.num_workers={requested} capped at {cores}, the CPU cores this process may use"


def check_encoder_fit(
    path: str, model_name: str, state: Mapping[str, Any], own_shapes: Mapping[str, Tuple[int, ...]]
) -> None:
    """CheckpointError unless ImageNet ``state`` covers the model's encoder exactly (shapes
    ``own_shapes`` of every model key)."""
    prefix = ENCODER_PREFIX[model_name]
    problems = [f"unexpected {k}" for k in state if k not in own_shapes]
    problems += [
        f"{k} is {tuple(state[k].shape)} but the model has {tuple(own_shapes[k])}"
        for k in state
        if k in own_shapes and tuple(state[k].shape) != tuple(own_shapes[k])
    ]
    problems += [f"missing {k}" for k in own_shapes if k.startswith(prefix) and k not in state]
    if problems:
        raise CheckpointError(
            f"does not fit the {model_name} encoder ({len(problems)} problems: {'; '.join(problems[:3])})", path=path
        )


# ------------------------------------------------------------------------------ state


def seed_everything(parts: TrainerParts, seed: int) -> None:
    """Seed every generator the process owns (initialisation draws from the framework's)."""
    random.seed(seed)
    np.random.seed(seed)
    parts.seed(seed)


def rng_state(parts: TrainerParts) -> Dict[str, Any]:
    """The RNG states of this process, as plain Python values (and the framework's)."""
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "framework": parts.rng_state(),
    }


def set_rng_state(parts: TrainerParts, state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), *rest))
    parts.set_rng_state(state["framework"])


def save_checkpoint(
    parts: TrainerParts, out_dir: str, iteration: int, config: Config, runtime: Runtime, training: Training, keep: int
) -> str:
    """Write ``ckpt_<iteration>`` and its checksum atomically, then drop all but the newest ``keep``."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "framework": parts.framework,
        "iteration": iteration,
        "world_size": runtime.world_size,
        "config": config,
        **parts.training_state(training, copy=False),  # model, optimizer, scheduler, scaler
        "rng": rng_state(parts),  # of rank 0; the loop itself draws no random numbers
    }
    path = os.path.join(checkpoint_dir(out_dir), f"ckpt_{iteration:07d}{parts.checkpoint_suffix}")
    write_checkpoint_file(path, lambda handle: parts.write_state(handle, state, path))
    if keep > 0:
        for _, old in list_checkpoints(out_dir, parts.checkpoint_pattern)[:-keep]:
            remove_checkpoint_file(old)
    return path


def load_checkpoint(parts: TrainerParts, path: str, config: Config, training: Training) -> int:
    """Restore everything :func:`save_checkpoint` wrote; returns the iteration reached.

    Read by convert's reader (no code executed, bounded time and memory; the file's checksum
    was checked by ``starting_point``), checked (``check_training_checkpoint``), then loaded.
    """
    state = read_object(path)[1]
    check_training_checkpoint(path, state, CHECKPOINT_FORMAT, parts.program, config)
    try:
        parts.load_training_state(training, state)
        set_rng_state(parts, state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        raise TrainError(f"{path}: does not fit this model and optimizer ({one_line(error)[:300]})") from None
    return int(state["iteration"])


# ------------------------------------------------------------------------------ logging


class MetricsLog:
    """``metrics.jsonl`` (always) and the framework's scalar log (when installed), rank 0 only."""

    def __init__(self, parts: TrainerParts, out_dir: str, backend: str, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.rows = MetricsFile(out_dir, start)
        if backend == "auto":
            try:
                self.writer = parts.scalar_writer(out_dir, start)
            except ImportError as error:
                name, package = parts.scalar_log
                warnings.warn(
                    f"{name} logging off ({error}); pip install {package}"
                    " to enable it. metrics.jsonl is written regardless",
                    stacklevel=2,
                )

    def log(self, iteration: int, values: Dict[str, float]) -> None:
        if not self.enabled:
            return
        self.rows.append(iteration, values)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------ across processes


def finite_on_all_processes(parts: TrainerParts, loss: Any, runtime: Runtime) -> bool:
    """Whether ``loss`` is finite in every process (every process must call this)."""
    bad = parts.where(parts.nonfinite(loss), parts.scalar(1.0, runtime), parts.scalar(0.0, runtime))
    if runtime.world_size > 1:
        parts.all_reduce(bad, "sum")
    return float(bad.item()) == 0.0


def first_bad_over_processes(parts: TrainerParts, first_bad: Any, runtime: Runtime) -> int:
    """The earliest non-finite iteration recorded by any process (-1: none)."""
    if runtime.world_size > 1:
        # -1 means none: take the max of the negated values that are set
        marked = parts.where(first_bad < 0, parts.scalar(-(2**62), runtime, integer=True), -first_bad)
        parts.all_reduce(marked, "max")
        return -1 if int(marked.item()) == -(2**62) else -int(marked.item())
    return int(first_bad.item())


def mean_over_processes(parts: TrainerParts, value: Any, runtime: Runtime) -> float:
    """The mean of ``value`` over all processes (every process must call this)."""
    if runtime.world_size > 1:
        value = value.clone()
        parts.all_reduce(value, "sum")
        value = value / runtime.world_size
    return float(value.item())


# ------------------------------------------------------------------------------ the run


def describe_origin(resume_path: Optional[str], start: int, imagenet: Optional[str], given_state: bool) -> str:
    """Where the run's weights come from, for its first line."""
    if resume_path:
        return f"resumed from {resume_path} at iteration {start}"
    if given_state:
        return "from a given initial state"
    return f"from scratch, encoder {imagenet or 'random (init.imagenet=none)'}"


def train(
    parts: TrainerParts,
    config: Config,
    resume_path: Optional[str] = None,
    imagenet: Optional[str] = None,
    progress: bool = True,
    initial_state: Optional[Mapping[str, Any]] = None,
    hooks: Sequence[Callable[[int, Training], None]] = (),
) -> str:
    """Run the training of ``config`` with ``parts``, from scratch (encoder from ``imagenet``
    unless None) or from the checkpoint ``resume_path``; returns the output folder.
    ``initial_state`` (all weights and buffers, numpy, the framework's names) replaces the
    initialisation of a fresh start (``align.train`` uses it). Each of ``hooks`` (evaluation,
    export, ...) is called as ``hook(iteration, training)`` on the main process after every
    checkpoint is written (a hook that switches the model to eval mode switches it back)."""
    from tqdm import tqdm

    train_cfg, name, framework = config["train"], config["model"]["name"], parts.framework
    window = config["data"]["window"]
    patches = load_patch_index(config["data"]["root"], config["data"]["split"], window)
    runtime = parts.setup_runtime(config)
    check_batch_memory(parts, config, runtime)
    out_dir = resolve_out_dir(config, framework)
    seed_everything(parts, train_cfg["seed"])
    training = parts.build_training(
        config, runtime, None if resume_path else imagenet, None if resume_path else initial_state
    )
    step = parts.train_step(training, train_cfg, runtime)

    start = 0
    if resume_path is not None:
        start = load_checkpoint(parts, resume_path, config, training)
    iterations = train_cfg["iterations"]
    workers, note = worker_count(train_cfg["num_workers"])
    if runtime.is_main:
        os.makedirs(out_dir, exist_ok=True)
        atomic.remove_stale_temporaries(out_dir)  # config.yaml / metrics / final weights of a killed run
        atomic_write(
            os.path.join(out_dir, "config.yaml"), lambda handle: handle.write(dump_config(config).encode("utf-8"))
        )
        if note:
            print(note, flush=True)
        origin = describe_origin(resume_path, start, imagenet, initial_state is not None)
        print(
            f"{framework}: {name}, {len(patches)} patches, global batch"
            f" {train_cfg['batch_size']} on {runtime.world_size} process(es) ({runtime.device}),"
            f" {iterations} iterations, {origin}; output {out_dir}",
            flush=True,
        )
    metrics = MetricsLog(parts, out_dir, train_cfg["log_backend"], start, runtime.is_main)

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
    loader = parts.build_loader(patches, plan, window, start, iterations, workers, runtime)
    bar = tqdm(
        total=iterations,
        initial=start,
        desc=f"{name} {framework}",
        unit="it",
        disable=not (progress and runtime.is_main),
        dynamic_ncols=True,
    )
    window_loss = parts.scalar(0.0, runtime)
    window_grad_norm = parts.scalar(0.0, runtime)
    window_start, window_time, started = start, time.perf_counter(), time.perf_counter()
    guard = NonFiniteGuard(train_cfg["skip_nonfinite"], train_cfg["max_nonfinite"])
    # Iteration of the first NaN/Inf loss (-1: none), kept on the device: no sync per step.
    first_bad = parts.scalar(-1, runtime, integer=True)
    window_count = 0
    for iteration, batch in enumerate(loader, start):
        images, labels = parts.to_device(batch, runtime, train_cfg)
        snapshot = parts.training_state(training, copy=True) if guard.skip else None
        result = step(images, labels)
        lr, loss = result.lr, result.loss
        done = iteration + 1
        bar.update(1)
        if snapshot is not None and not finite_on_all_processes(parts, loss, runtime):
            parts.load_training_state(training, snapshot)  # the batch is undone
            bar.write(guard.skipped(done, float(loss)), file=sys.stderr)
        else:
            first_bad = parts.where(
                (first_bad < 0) & parts.nonfinite(loss), parts.scalar(done, runtime, integer=True), first_bad
            )
            window_loss = window_loss + loss
            window_grad_norm = window_grad_norm + result.grad_norm
            window_count += 1
        saving = runtime.is_main and (done % train_cfg["checkpoint_every"] == 0 or done == iterations)
        logging_now = done % train_cfg["log_every"] == 0 or done == iterations
        if logging_now or done % train_cfg["checkpoint_every"] == 0:  # the same steps on every rank
            guard.check_first(first_bad_over_processes(parts, first_bad, runtime))
        if logging_now:
            loss = mean_over_processes(parts, window_loss, runtime) / max(window_count, 1)
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
            window_loss = parts.scalar(0.0, runtime)
            window_grad_norm = parts.scalar(0.0, runtime)
            window_start, window_time, window_count = done, now, 0
        if saving:
            save_checkpoint(parts, out_dir, done, config, runtime, training, train_cfg["keep_checkpoints"])
            for hook in hooks:
                hook(done, training)
    bar.close()
    metrics.close()
    if runtime.is_main:
        path = parts.save_final_weights(out_dir, training.net, name)
        print(f"{framework}: final weights {path}", flush=True)
    if runtime.world_size > 1:
        parts.finish(runtime)
    return out_dir


# ------------------------------------------------------------------------------ CLI


def main(parts: TrainerParts, argv: Optional[Sequence[str]] = None) -> int:
    """``python -m <framework package>.train``: 0 done, 2 a one-line ``error:`` on stderr."""
    args = build_parser(f"python -m {parts.program}", parts.launch).parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        resume_path, imagenet = starting_point(config, args.resume, parts.framework, parts.checkpoint_pattern)
        train(parts, config, resume_path, imagenet, args.progress)
    except (ConfigError, DataError, CheckpointError, TrainError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return 2
    except OSError as error:  # a write failed (disk full, read-only folder): the earlier files are intact
        print(f"error: {atomic.describe_os_error(error, with_file=True)}", file=sys.stderr, flush=True)
        return 2
    return 0

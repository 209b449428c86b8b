"""Framework-free parts of the trainers ``python -m torch_ref.train`` and ``python -m
paddle_impl.train``: the command line, where a run starts from (checkpoint or ImageNet file),
the checkpoint files and their checks, ``metrics.jsonl``, the mixed-precision policy
(:func:`amp_policy`) and one-line error messages. The loop itself is ``app.train_loop``; the
model, optimiser, step and state conversion are in each framework's ``train.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Pattern, Sequence, Tuple

import numpy as np

from common import atomic
from isaid.imageio import atomic_output, write_bytes_atomic

from .config import Config, changed_keys, describe_keys, resolve_imagenet_path, resolve_out_dir

IMAGENET_URL = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
# A resumed run must draw the same batches and follow the same schedule as the first one.
RESUME_MUST_MATCH = (
    "model.name",
    "model.num_classes",
    "data.window",
    "train.iterations",
    "train.batch_size",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.poly_power",
    "train.clip_norm",
    "train.seed",
    "train.amp",
    "augment.hflip",
    "augment.vflip",
    "augment.rot90",
)


class TrainError(RuntimeError):
    """A training run that cannot start or continue; the message is one line."""


# ------------------------------------------------------------------------------ mixed precision


@dataclass(frozen=True)
class AmpDecision:
    """What ``train.amp`` does on a device: the precision the run computes in, or why it is refused."""

    effective: Optional[str]  # "none", "fp16" or "bf16"; None when refused
    refusal: Optional[str]  # one line naming train.amp; None when the run goes ahead


def amp_policy(device: str, amp: str, cpu_amp: Sequence[str], cpu_amp_missing: str = "") -> AmpDecision:
    """The decision both trainers take for ``train.amp=amp`` on ``device`` ("cpu", "cuda:0",
    "gpu:0"): GPUs run every mode; a CPU never runs fp16 (autocast there has no fast float16
    kernels: a FarSeg step that takes a second in float32 takes minutes), and runs another
    mode only when the framework really computes in it there (``cpu_amp``; otherwise
    ``cpu_amp_missing`` says why). The environment report asks this same function."""
    if amp == "none" or str(device).split(":")[0] != "cpu":
        return AmpDecision(amp, None)
    alternatives = " or ".join([*(mode for mode in cpu_amp if mode != "fp16"), "none"])
    if amp == "fp16":
        reason = (
            "no float16 training on a CPU (float16 autocast there is emulated, orders of magnitude slower than float32)"
        )
    elif amp in cpu_amp:
        return AmpDecision(amp, None)
    else:
        reason, alternatives = cpu_amp_missing or f"no {amp} mixed precision on a CPU", "none"
    return AmpDecision(None, f"train.amp={amp}: {reason}; use train.amp={alternatives}")


# ------------------------------------------------------------------------------ where a run starts


def imagenet_missing_message(path: str, model_name: str) -> str:
    """One line: the file is missing, and how to make it."""
    return (
        f"init.imagenet: {path}: file not found. Download torchvision's ImageNet ResNet-50"
        f" {IMAGENET_URL} (resnet50-19c8e357.pth) and convert it:"
        f" `python -m convert resnet50-19c8e357.pth --model resnet50 --target {model_name}"
        f" -o {path}`; or pass --set init.imagenet=none to train from random"
        f" initialisation on purpose"
    )


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def list_checkpoints(out_dir: str, pattern: Pattern[str]) -> List[Tuple[int, str]]:
    """(iteration, path) of the complete checkpoints in ``out_dir``, oldest first; ``pattern``
    matches a checkpoint's file name with the iteration as its first group."""
    folder = checkpoint_dir(out_dir)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return sorted(found)


# ------------------------------------------------------------------------------ checkpoint files
#
# Each checkpoint ``ckpt_<iteration>.<ext>`` has a checksum file next to it,
# ``ckpt_<iteration>.<ext>.sha256`` in ``sha256sum`` format (``sha256sum -c`` checks it by hand).
# Both are written through temporary files and renamed, the checksum first: a checkpoint under
# its final name therefore always has its checksum, and one that does not match (a disk error,
# a file cut or overwritten later) is never resumed from without saying so.

CHECKSUM_SUFFIX = ".sha256"
_HASH_CHUNK = 4 * 2**20
_MAX_CHECKSUM_FILE = 4096


def _sha256_of_descriptor(fd: int) -> str:
    digest, offset = hashlib.sha256(), 0
    while True:
        chunk = os.pread(fd, _HASH_CHUNK, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)


def _open_regular(path: str) -> int:
    """A read descriptor of the regular file ``path`` (a FIFO or device: OSError, no blocking)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


def write_checkpoint_file(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Write a checkpoint with ``write(handle)`` and its checksum file, both atomically.

    The payload goes to a temporary file, is flushed to disk and hashed as it is on disk; the
    checksum file is written (temporary + rename), then the payload is renamed into place.
    A killed write leaves only hidden temporary files (removed by ``remove_stale_temporaries``).
    """
    with atomic_output(path) as temporary:
        with open(temporary, "w+b") as handle:  # readable too: hashed as written
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            digest = _sha256_of_descriptor(handle.fileno())
        line = f"{digest}  {os.path.basename(path)}\n".encode("ascii")
        with atomic_output(path + CHECKSUM_SUFFIX) as checksum_temporary:
            with open(checksum_temporary, "wb") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
    return path


def remove_checkpoint_file(path: str) -> None:
    """Delete a checkpoint and its checksum file (either may already be gone)."""
    for name in (path, path + CHECKSUM_SUFFIX):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


def checkpoint_problem(path: str) -> Optional[str]:
    """Why the checkpoint ``path`` cannot be trusted (None when its checksum matches)."""
    try:
        fd = _open_regular(path + CHECKSUM_SUFFIX)
    except FileNotFoundError:
        return (
            f"no checksum file {os.path.basename(path)}{CHECKSUM_SUFFIX} next to it (every checkpoint"
            f" of this trainer has one): incomplete, or not written by this trainer"
        )
    except OSError as error:
        return f"cannot read its checksum file ({error.strerror or error})"
    try:
        text = os.pread(fd, _MAX_CHECKSUM_FILE, 0)
    finally:
        os.close(fd)
    match = re.fullmatch(rb"([0-9a-f]{64}) [ *]?(\S.*)\n?", text)
    if match is None:
        return f"its checksum file {os.path.basename(path)}{CHECKSUM_SUFFIX} is not in sha256sum format"
    try:
        fd = _open_regular(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot read ({error.strerror or error})"
    try:
        actual = _sha256_of_descriptor(fd)
    finally:
        os.close(fd)
    if actual != match.group(1).decode("ascii"):
        return (
            f"corrupt: its sha256 is {actual[:12]}..., its checksum file says "
            f"{match.group(1).decode('ascii')[:12]}... (truncated, overwritten or damaged on disk)"
        )
    return None


def remove_stale_temporaries(out_dir: str, pattern: Pattern[str]) -> List[str]:
    """Delete the hidden temporary files that killed checkpoint writes left in ``out_dir``'s
    checkpoint folder (a checkpoint's or its checksum file's); returns their paths. A writer
    that is still running keeps its files (``common.atomic.remove_stale_temporaries``)."""

    def is_checkpoint(target: str) -> bool:
        base = target[: -len(CHECKSUM_SUFFIX)] if target.endswith(CHECKSUM_SUFFIX) else target
        return bool(pattern.match(base))

    return atomic.remove_stale_temporaries(checkpoint_dir(out_dir), is_checkpoint)


def find_resume(resume: Optional[str], out_dir: str, pattern: Pattern[str]) -> Optional[str]:
    """The checkpoint to continue from: ``resume`` itself, or for "auto" the newest INTACT one
    in ``out_dir`` (None when there is none: a fresh start).

    An explicit ``resume`` whose checksum does not match is a TrainError. For "auto", a newest
    checkpoint that is corrupt, truncated or without its checksum is skipped with a warning on
    stderr naming it and the reason, and the previous one is tried; TrainError when
    checkpoints exist but none is intact (a fresh start would silently discard them).
    """
    if resume != "auto":
        if resume is None:
            return None
        problem = checkpoint_problem(resume)
        if problem:
            raise TrainError(f"--resume {resume}: {problem}")
        return resume
    found = list_checkpoints(out_dir, pattern)
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        print(
            f"warning: --resume auto: skipping {path}: {problem}; falling back to the previous checkpoint",
            file=sys.stderr,
            flush=True,
        )
    if found:
        raise TrainError(
            f"--resume auto: none of the {len(found)} checkpoints in {checkpoint_dir(out_dir)} is"
            f" intact (see the warnings above); resume from one explicitly or move them away"
        )
    return None


def check_training_checkpoint(path: str, state: Any, checkpoint_format: str, program: str, config: Config) -> None:
    """What a trainer's checkpoint must hold before anything of it is used (TrainError, one line):
    the format tag, the recipe of ``config`` (``RESUME_MUST_MATCH``), the entries
    ``save_checkpoint`` writes, and finite model and optimizer arrays (a diverged run's
    checkpoint is not resumed from silently)."""
    if not isinstance(state, dict) or state.get("format") != checkpoint_format:
        raise TrainError(f"{path}: not a training checkpoint of {program}")
    if not isinstance(state.get("config"), dict):
        raise TrainError(f"{path}: entry 'config' missing or not a dict (damaged checkpoint)")
    changed = changed_keys(state["config"], config, RESUME_MUST_MATCH)
    if changed:
        raise TrainError(
            f"{path}: the checkpoint was trained with other settings"
            f" ({'; '.join(changed)}); resume with the same recipe"
        )
    wanted = {"iteration": int, "model": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "rng": dict}
    for key, kind in wanted.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise TrainError(f"{path}: entry {key!r} missing or not a {kind.__name__} (damaged checkpoint)")
    for part in ("model", "optimizer"):
        bad = _first_nonfinite(state[part], part)
        if bad:
            raise TrainError(f"{path}: {bad} holds NaN/Inf values: refusing to resume from it")


def write_checksum(path: str) -> str:
    """Write the checksum file of the existing checkpoint ``path`` (e.g. after editing one by
    hand; ``sha256sum ckpt > ckpt.sha256`` does the same); returns its path."""
    fd = _open_regular(path)
    try:
        digest = _sha256_of_descriptor(fd)
    finally:
        os.close(fd)
    write_bytes_atomic(path + CHECKSUM_SUFFIX, f"{digest}  {os.path.basename(path)}\n".encode("ascii"))
    return path + CHECKSUM_SUFFIX


def _first_nonfinite(value: Any, where: str) -> Optional[str]:
    """Where the first floating-point array holding NaN/Inf is in ``value`` (nested dicts and lists)."""
    if isinstance(value, np.ndarray):
        return where if value.dtype.kind in "fc" and value.size and not np.isfinite(value).all() else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        label = key if isinstance(key, int) else str(key)[:60]
        found = _first_nonfinite(item, f"{where}[{label!r}]")
        if found:
            return found
    return None


def starting_point(
    config: Config, resume: Optional[str], framework: str, pattern: Pattern[str]
) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint to resume from, ImageNet file for the encoder) of a run; either may be None.

    TrainError when a fresh start needs an ImageNet file that does not exist.
    """
    out_dir = resolve_out_dir(config, framework)
    if os.environ.get("RANK", "0") == "0":
        stale = remove_stale_temporaries(out_dir, pattern)
        if stale:
            print(
                f"removed {len(stale)} temporary files of interrupted checkpoint writes from {checkpoint_dir(out_dir)}",
                file=sys.stderr,
                flush=True,
            )
    resume_path = find_resume(resume, out_dir, pattern)
    # A resumed run takes every weight from its checkpoint; a fresh one needs the
    # ImageNet file unless init.imagenet=none says otherwise (no silent random start).
    imagenet = None if resume_path else resolve_imagenet_path(config)
    if imagenet is not None and not os.path.isfile(imagenet):
        raise TrainError(imagenet_missing_message(imagenet, config["model"]["name"]))
    return resume_path, imagenet


# ------------------------------------------------------------------------------ logging


class MetricsFile:
    """``metrics.jsonl`` in ``out_dir``: one JSON row per logged iteration."""

    def __init__(self, out_dir: str, start: int) -> None:
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self._truncate_after(start)

    def _truncate_after(self, iteration: int) -> None:
        """Forget rows past ``iteration`` (logged by a run killed after its last checkpoint)."""
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:  # a row cut by the kill
                    continue
                if row.get("iteration", 0) <= iteration:
                    kept.append(json.dumps(row) + "\n")
        write_bytes_atomic(self.path, "".join(kept).encode("utf-8"))

    def append(self, iteration: int, values: Dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"iteration": iteration, **values}) + "\n")


# ------------------------------------------------------------------------------ CLI


def build_parser(prog: str, several_processes: str) -> argparse.ArgumentParser:
    """The trainer's argparse parser; ``several_processes`` is the framework's launch command."""
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or with --set):\n" + "\n".join(describe_keys()),
        prog=prog,
        description="Train FarSeg or FactSeg on iSAID patches (official recipe by default)."
        f" Several processes: {several_processes}",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="YAML",
        help="recipe file, e.g. configs/farseg_isaid.yaml (keys listed below)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, values parsed as YAML: --set"
        " train.iterations=100 train.amp=bf16 init.imagenet=none",
    )
    parser.add_argument(
        "--resume",
        metavar="PATH|auto",
        default=None,
        help="continue from a checkpoint file, or 'auto': the newest in"
        " train.out_dir (a fresh start when there is none)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (metrics.jsonl and the logs are still written)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (file + overrides) as YAML and exit"
    )
    return parser


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (DataLoader workers prepend their traceback).

    An error with a ``headline()`` (convert's CheckpointError, whose further lines are a
    key-by-key report) gives its headline.
    """
    headline = getattr(error, "headline", None)
    if callable(headline):
        return headline()
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", text)


# ------------------------------------------------------------------------------ non-finite losses


class NonFiniteGuard:
    """What a trainer does with a NaN/Inf training loss (``train.skip_nonfinite``).

    Off (the default): the run stops with a TrainError naming the first such iteration, before
    any checkpoint or final weights are written from the poisoned model. The loop records that
    iteration on the device and asks :meth:`check_first` only when it logs or saves, so a
    healthy run pays no per-iteration device synchronisation.

    On: the loop snapshots the training state before each step and, when the step's loss is
    not finite, restores it (weights, BatchNorm statistics, optimiser, schedule, loss scaler:
    the batch is undone) and calls :meth:`skipped`, which counts and reports it; past
    ``train.max_nonfinite`` skipped batches the run stops anyway.
    """

    def __init__(self, skip: bool, limit: int) -> None:
        self.skip, self.limit = skip, limit
        self.count = 0

    def check_first(self, first_bad: int) -> None:
        """TrainError if ``first_bad`` (iteration of the first non-finite loss, -1: none) is set."""
        if first_bad >= 0:
            raise TrainError(
                f"iteration {first_bad}: the training loss is NaN/Inf; stopping before the"
                " model is saved (the checkpoints written so far are intact). Lower"
                " train.lr or check the data; --set train.skip_nonfinite=true skips such"
                " batches instead"
            )

    def skipped(self, iteration: int, value: float) -> str:
        """Count a skipped batch; returns the warning line to print. TrainError past the limit."""
        self.count += 1
        if self.count > self.limit:
            raise TrainError(
                f"iteration {iteration}: {self.count} batches with a NaN/Inf loss skipped, more"
                f" than train.max_nonfinite={self.limit}; stopping (the training has"
                " diverged or the data is broken)"
            )
        return (
            f"warning: iteration {iteration}: loss {value} is not finite; batch skipped, training state"
            f" restored ({self.count} skipped so far)"
        )

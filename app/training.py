"""Framework-free parts of the trainers ``python -m torch_ref.train`` and ``python -m
paddle_impl.train``: the command line, where a run starts from (checkpoint or ImageNet file),
the checkpoint folder, ``metrics.jsonl`` and one-line error messages. The model, optimiser,
step, checkpoint contents and scalar writers are in each framework's ``train.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Dict, List, Optional, Pattern, Tuple

from isaid.imageio import write_bytes_atomic

from .config import Config, describe_keys, resolve_imagenet_path, resolve_out_dir

IMAGENET_URL = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
# A resumed run must draw the same batches and follow the same schedule as the first one.
RESUME_MUST_MATCH = ("model.name", "model.num_classes", "data.window", "train.iterations",
                     "train.batch_size", "train.lr", "train.momentum", "train.weight_decay",
                     "train.poly_power", "train.clip_norm", "train.seed", "train.amp",
                     "augment.hflip", "augment.vflip", "augment.rot90")


class TrainError(RuntimeError):
    """A training run that cannot start or continue; the message is one line."""


# ------------------------------------------------------------------------------ where a run starts


def imagenet_missing_message(path: str, model_name: str) -> str:
    """One line: the file is missing, and how to make it."""
    return (f"init.imagenet: {path}: file not found. Download torchvision's ImageNet ResNet-50"
            f" {IMAGENET_URL} (resnet50-19c8e357.pth) and convert it:"
            f" `python -m convert resnet50-19c8e357.pth --model resnet50 --target {model_name}"
            f" -o {path}`; or pass --set init.imagenet=none to train from random"
            f" initialisation on purpose")


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(out_dir, "checkpoints")


def list_checkpoints(out_dir: str, pattern: Pattern[str]) -> List[Tuple[int, str]]:
    """(iteration, path) of the complete checkpoints in ``out_dir``, oldest first; ``pattern``
    matches a checkpoint's file name with the iteration as its first group."""
    folder = checkpoint_dir(out_dir)
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := pattern.match(name))]
    return sorted(found)


def find_resume(resume: Optional[str], out_dir: str, pattern: Pattern[str]) -> Optional[str]:
    """The checkpoint to continue from: ``resume`` itself, or for "auto" the newest in
    ``out_dir`` (None when there is none: a fresh start)."""
    if resume != "auto":
        return resume
    found = list_checkpoints(out_dir, pattern)
    return found[-1][1] if found else None


def starting_point(config: Config, resume: Optional[str], framework: str,
                   pattern: Pattern[str]) -> Tuple[Optional[str], Optional[str]]:
    """(checkpoint to resume from, ImageNet file for the encoder) of a run; either may be None.

    TrainError when a fresh start needs an ImageNet file that does not exist.
    """
    resume_path = find_resume(resume, resolve_out_dir(config, framework), pattern)
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
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="recipe file, e.g. configs/farseg_isaid.yaml (keys listed below)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                        metavar="KEY=VALUE",
                        help="override config keys, values parsed as YAML: --set"
                             " train.iterations=100 train.amp=bf16 init.imagenet=none")
    parser.add_argument("--resume", metavar="PATH|auto", default=None,
                        help="continue from a checkpoint file, or 'auto': the newest in"
                             " train.out_dir (a fresh start when there is none)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (metrics.jsonl and the logs are still written)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides) as YAML and exit")
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

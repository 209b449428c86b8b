"""argparse pieces shared by the project's command lines (evaluate, predict, export, infer):
the one-line error parser and the bounded option types of :mod:`common.cli` (re-exported here
for the commands of ``app`` and the model packages), and ``--device auto``'s resolution."""

from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence, Set

from common.cli import (
    MAX_WINDOW,
    MIN_STRIDE,
    MIN_WINDOW,
    WINDOW_MULTIPLE,
    OneLineArgumentParser,
    batch_size,
    device_or_auto,
    device_spec,
    float_in_range,
    int_in_range,
    max_threads,
    non_negative_float,
    parse_device,
    positive_int,
    stride_px,
    thread_count,
    window_problem,
    window_side,
)

__all__ = [
    "MAX_WINDOW",
    "MIN_STRIDE",
    "MIN_WINDOW",
    "WINDOW_MULTIPLE",
    "OneLineArgumentParser",
    "auto_device",
    "batch_size",
    "device_or_auto",
    "device_spec",
    "float_in_range",
    "int_in_range",
    "max_threads",
    "non_negative_float",
    "parse_device",
    "positive_int",
    "stride_px",
    "thread_count",
    "window_problem",
    "window_side",
]


def auto_device(requested: str, gpu_name: str, gpu_available: Callable[[], bool]) -> str:
    """The device a command runs on for ``--device requested``: ``auto`` is ``gpu_name`` when
    the framework sees a GPU, else ``cpu``; any other value is kept (``python -m align.env``
    reports what ``auto`` resolves to through this function)."""
    if requested != "auto":
        return requested
    return gpu_name if gpu_available() else "cpu"


CONFIG_HELP = (
    "the training YAML (configs/*.yaml, or a run's OUT/config.yaml): its model.name, data.window"
    " and data.stride become --model, --window and --stride, so that evaluation and prediction"
    " slide the windows training used; options given explicitly on the command line win over"
    " the file. Normalisation (the iSAID mean/std) and the 16 classes are the same fixed"
    " constants in training, evaluate and predict"
)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config CONFIG.yaml`` for evaluate and predict (see :data:`CONFIG_HELP`)."""
    parser.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)


def explicit_options(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The ``dest`` of every option ``argv`` gives explicitly (abbreviations and ``--opt=value``
    included): ``argv`` parsed again with every default suppressed, so only what the user typed
    lands in the namespace. ``argv`` must already parse with ``parser``."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))

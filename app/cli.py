"""argparse pieces shared by the project's command lines (evaluate, predict, export, infer):
the one-line error parser and the bounded option types of :mod:`common.cli` (re-exported here
for the commands of ``app`` and the model packages), and ``--device auto``'s resolution."""

from __future__ import annotations

from typing import Callable

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

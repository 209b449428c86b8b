"""argparse pieces shared by the project's command lines (evaluate, predict, export, infer):
one-line errors with exit status 2, and the option types they have in common."""

from __future__ import annotations

import argparse
from typing import Callable, NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: ... (see --help)``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0 (NaN refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def auto_device(requested: str, gpu_name: str, gpu_available: Callable[[], bool]) -> str:
    """The device a command runs on for ``--device requested``: ``auto`` is ``gpu_name`` when
    the framework sees a GPU, else ``cpu``; any other value is kept (``python -m align.env``
    reports what ``auto`` resolves to through this function)."""
    if requested != "auto":
        return requested
    return gpu_name if gpu_available() else "cpu"

"""argparse pieces for every command of the project: the one-line error parser (exit status 2)
and the option types (``type=`` functions raising ``argparse.ArgumentTypeError``) that bound
every numeric and device flag. Standard library only, so that the leaf ``isaid`` can use them."""

from __future__ import annotations

import argparse
import os
from typing import Callable, NoReturn, Optional


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


# Bounds of the sliding window every command (and model.yml) accepts: the models' output
# stride is 32 and their smallest useful input 64 (FPN levels down to 1/32 of the window);
# above 4096 one window's forward pass alone needs over 13 GB (808 bytes a pixel, measured in
# docs/untrusted_inputs.md). A stride below 32 only
# multiplies the work (windows per scene grow with (window / stride)^2) for no new pixel.
WINDOW_MULTIPLE = 32
MIN_WINDOW = 64
MAX_WINDOW = 4096
MIN_STRIDE = 32
MAX_BATCH = 256  # windows per forward pass (one 896^2 FarSeg window: ~0.65 GB at 808 B/px)
MAX_THREADS_PER_CORE = 4
MAX_GPU_INDEX = 63


def int_in_range(low: int, high: int, what: str = "an integer") -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} ({low}..{high}), got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} in {low}..{high}, got {value}")
        return value

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in some messages
    return parse


def float_in_range(low: float, high: float, what: str = "a number") -> Callable[[str], float]:
    """argparse type: a finite number in ``[low, high]`` (NaN refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} in [{low:g}, {high:g}], got {text[:40]}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


def max_threads() -> int:
    """The most CPU threads a ``--threads`` may ask for: a few per core this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores) * MAX_THREADS_PER_CORE


def thread_count(text: str) -> int:
    """argparse type of ``--threads``: 1 .. :func:`max_threads` (a huge count aborts the
    frameworks' thread pools; a negative one was silently taken as "all")."""
    return int_in_range(1, max_threads(), "a thread count")(text)


def window_problem(window: int, stride: Optional[int] = None) -> Optional[str]:
    """Why ``window`` (and ``stride``) cannot be run, or None: the window a multiple of 32 in
    [64, 4096], the stride in [32, window]. Used by the argparse types and by model.yml."""
    if isinstance(window, bool) or not isinstance(window, int):
        return f"window must be an integer, got {type(window).__name__}"
    if window % WINDOW_MULTIPLE or not MIN_WINDOW <= window <= MAX_WINDOW:
        return f"window must be a multiple of {WINDOW_MULTIPLE} in {MIN_WINDOW}..{MAX_WINDOW}, got {window}"
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, int):
        return f"stride must be an integer, got {type(stride).__name__}"
    if not MIN_STRIDE <= stride <= window:
        return f"stride must lie in {MIN_STRIDE}..window ({window}), got {stride}"
    return None


def window_side(text: str) -> int:
    """argparse type of ``--window``: a multiple of 32 in [64, 4096]."""
    value = int_in_range(MIN_WINDOW, MAX_WINDOW, "a window side")(text)
    problem = window_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def stride_px(text: str) -> int:
    """argparse type of ``--stride``: 32..4096 (that it is at most the window is checked
    once both are known: :func:`window_problem`)."""
    return int_in_range(MIN_STRIDE, MAX_WINDOW, "a stride")(text)


def batch_size(text: str) -> int:
    """argparse type of an inference ``--batch-size``: 1..256 windows."""
    return int_in_range(1, MAX_BATCH, "a batch size")(text)


def parse_device(text: str, allow_auto: bool = True) -> str:
    """``cpu``, ``gpu``, ``gpu:N``, ``cuda``, ``cuda:N`` (N 0..63), or ``auto``; lower-cased.
    argparse.ArgumentTypeError otherwise (one message for every command)."""
    value = text.strip().lower()
    kind, _, index = value.partition(":")
    allowed = "cpu, gpu, gpu:N, cuda, cuda:N" + (" or auto" if allow_auto else "")
    if value in ("cpu", "gpu", "cuda") or (value == "auto" and allow_auto):
        return value
    if kind in ("gpu", "cuda") and index.isdigit() and index.isascii() and int(index) <= MAX_GPU_INDEX:
        return f"{kind}:{int(index)}"
    raise argparse.ArgumentTypeError(f"expected a device ({allowed}), got {text[:40]!r}")


def device_spec(text: str) -> str:
    """argparse type of ``--device`` where ``auto`` is not offered: :func:`parse_device`."""
    return parse_device(text, allow_auto=False)


def device_or_auto(text: str) -> str:
    """argparse type of ``--device`` with ``auto``: :func:`parse_device`."""
    return parse_device(text, allow_auto=True)

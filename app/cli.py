"""argparse pieces shared by the project's command lines (evaluate, predict, export, infer):
one-line errors with exit status 2, and the option types they have in common."""

from __future__ import annotations

import argparse
from typing import Callable, NoReturn, Optional, Sequence, Set


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

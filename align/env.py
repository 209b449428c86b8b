"""``python -m align.env``: the environment report (the entry point the README documents).

The report itself is framework-free, in :mod:`app.environment` (facts, the commands' plan, the
text) and :mod:`app.install_check` (the installation mistakes); each framework's facts come
from its own package's adapter (``torch_ref.adapter``, ``paddle_impl.adapter``), imported here
explicitly so that a framework that is absent or broken becomes a reported fact. It lives
under ``align`` only because ``align`` is the one package allowed to import both frameworks;
nothing in the alignment stages imports it.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from app.environment import (
    Framework,
    FrameworkLoader,
    read_cpu,  # noqa: F401  (benchmarks/eval_bench.py reads the CPU facts from here)
    run_report,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_torch() -> Framework:
    """torch's adapter (raises when torch does not import)."""
    from torch_ref.adapter import ADAPTER

    return ADAPTER


def load_paddle() -> Framework:
    """Paddle's adapter (raises when Paddle does not import)."""
    from paddle_impl.adapter import ADAPTER

    return ADAPTER


LOADERS = {"torch": load_torch, "paddle": load_paddle}


def main(argv: Optional[Sequence[str]] = None, loaders: Optional[dict[str, FrameworkLoader]] = None) -> int:
    """Print the report; exit status 2 when an installation mistake is found, else 0."""
    return run_report(argv, LOADERS if loaders is None else loaders, ROOT)


if __name__ == "__main__":
    sys.exit(main())

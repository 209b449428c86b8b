"""``python -m align``: every stage for every model (see ``python -m align --help``)."""

from __future__ import annotations

from .cli import main_for
from .stages import RUNNERS

if __name__ == "__main__":
    raise SystemExit(main_for(None, runners=RUNNERS))

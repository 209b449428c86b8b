"""X2Paddle as a third opinion on the Paddle port (optional extra; nothing heavy imported here)."""
from __future__ import annotations

import importlib.util

X2PADDLE_VERSION = "1.6.0"
INSTALL_MESSAGE = ('X2Paddle is an optional extra: install it with  pip install -e ".[x2paddle]"  '
                   f"(x2paddle=={X2PADDLE_VERSION} plus six and requests, which X2Paddle imports)")


def x2paddle_available() -> bool:
    """True when x2paddle and the packages it imports unconditionally (six, requests) are
    installed. Looks them up without importing them (importing x2paddle imports Paddle)."""
    return all(importlib.util.find_spec(name) is not None for name in ("x2paddle", "six", "requests"))

"""X2Paddle as a third opinion on the Paddle port (an optional extra).

X2Paddle's ``pytorch2paddle`` traces ``torch_ref`` into an independent, generated Paddle
program. Comparing three ways tells WHICH side is wrong when torch_ref and paddle_impl disagree:
the generated program sides with torch_ref against paddle_impl (a porting bug), or differs from
both while they agree (a conversion problem).

``python -m align.x2paddle --model farseg`` or ``python -m align.forward --against x2paddle``.
Modules: ``guard`` (no network, output, exit(0) or static export escapes a conversion),
``conversion`` (one ``pytorch2paddle`` run; loading and running its program), ``plans`` (what
to convert per model), ``check`` (the three-way comparison), ``report``, ``cli``.

Everything runs in float32, as X2Paddle does; what it cannot convert is reported in
``untraceable`` with the error seen. This file imports nothing heavy.
"""

from __future__ import annotations

import importlib.util

X2PADDLE_VERSION = "1.6.0"
ATOL_MEAN, RTOL_MAX = 1e-5, 1e-4  # default pass thresholds: mean |d|, max |d| / max |reference|
INSTALL_MESSAGE = (
    'X2Paddle is an optional extra: install it with  pip install -e ".[x2paddle]"  '
    f"(x2paddle=={X2PADDLE_VERSION} plus six and requests, which X2Paddle imports)"
)


def x2paddle_available() -> bool:
    """True when x2paddle and the packages it imports unconditionally (six, requests) are
    installed. Looks them up without importing them (importing x2paddle imports Paddle)."""
    return all(importlib.util.find_spec(name) is not None for name in ("x2paddle", "six", "requests"))

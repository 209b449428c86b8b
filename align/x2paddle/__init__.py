"""X2Paddle as a third opinion on the Paddle port (an optional extra).

X2Paddle's ``pytorch2paddle`` traces ``torch_ref`` with ``torch.jit.trace`` and writes an
independent, automatically generated Paddle program (``x2paddle_code.py`` + ``model.pdparams``).
Comparing three ways (torch_ref, paddle_impl, the generated program) tells WHICH side is wrong
when torch_ref and paddle_impl disagree: if the generated program agrees with torch_ref and not
with paddle_impl, the hand port has the bug; if torch_ref and paddle_impl agree and the generated
program differs from both, X2Paddle mistranslated something.

``python -m align.x2paddle --model farseg [--size 64] [--batch 1] [--seed 0] [--out DIR]``, or
``python -m align.forward --against x2paddle``. Modules:

- ``guard``: no network (X2Paddle's usage report is refused at once), output, exit(0) or static
  export escapes a conversion;
- ``conversion``: one ``pytorch2paddle`` run (fingerprinted, atomic folder), loading and running
  the generated program;
- ``plans``: what to convert per model (eval forward in one trace; else the logits path; else
  its sub-parts) and the torch wrappers that make each one traceable; training probes;
- ``check``: the three-way comparison with align's ``compare_arrays`` and align's fixture;
- ``report``: verdicts (which side differs) and the text report; ``cli``: the command line.

Everything runs in float32 (X2Paddle's tracer and generated code are float32). Whatever X2Paddle
cannot convert is reported in ``untraceable`` with the error observed in this run. Nothing heavy
is imported by this file: ``x2paddle_available()`` is instant.
"""
from __future__ import annotations

import importlib.util

X2PADDLE_VERSION = "1.6.0"
INSTALL_MESSAGE = ('X2Paddle is an optional extra: install it with  pip install -e ".[x2paddle]"  '
                   f"(x2paddle=={X2PADDLE_VERSION} plus six and requests, which X2Paddle imports)")


def x2paddle_available() -> bool:
    """True when x2paddle and the packages it imports unconditionally (six, requests) are
    installed. Looks them up without importing them (importing x2paddle imports Paddle)."""
    return all(importlib.util.find_spec(name) is not None for name in ("x2paddle", "six", "requests"))


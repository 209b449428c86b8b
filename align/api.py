"""The Python API for any torch model and its Paddle port: :func:`compare` (``align.compare``).

It runs the engine's stages (:mod:`align.engine`) as ``python -m align.forward`` / ``.backward
--torch SPEC --paddle SPEC`` do, on model objects instead of SPECs, and returns their results.
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional

import numpy as np

from .compare import StageResult
from .engine import backward, forward, prepare, user_call
from .inputs import AlignInputError


def compare(
    torch_model: Any,
    paddle_model: Any,
    inputs: np.ndarray,
    *,
    targets: Optional[np.ndarray] = None,
    torch_loss: Optional[Callable[[Any, Any], Any]] = None,
    paddle_loss: Optional[Callable[[Any, Any], Any]] = None,
    torch_optimizer: Optional[Callable[[Any], Any]] = None,
    paddle_optimizer: Optional[Callable[[Any], Any]] = None,
    steps: int = 2,
    dtype: str = "float64",
    pairing: str = "auto",
    mapping: Optional[Mapping[str, str]] = None,
    copy_weights: bool = True,
    rtol: Optional[float] = None,
    out: Optional[str] = None,
    step_start: str = "paddle",
) -> List[StageResult]:
    """Compare a torch model with its Paddle port: the forward stage, and the backward stage
    when ``targets``, both losses and both optimiser factories (``model -> optimizer``) are
    given. ``inputs``: one array; the torch weights are copied into the Paddle model through
    the pairing unless ``copy_weights`` is False. ``step_start``: see ``backward``. ``out``: a
    folder for DIR/forward/ and DIR/backward/ (diff.json, diff.txt, divergence.png). Raises
    AlignInputError on bad input.

    Example::

        import align
        forward, backward = align.compare(net, port, x, targets=y, torch_loss=tl, paddle_loss=pl,
                                          torch_optimizer=to, paddle_optimizer=po)
        assert forward.passed, forward.first_divergence
    """
    from pathlib import Path

    from .compare import pair_tolerances

    x = np.asarray(inputs)
    x = x.astype(dtype) if x.dtype.kind == "f" else x.astype(np.int64)  # token ids stay integers
    tols = pair_tolerances(dtype, rtol)
    pair = prepare(torch_model, paddle_model, x, dtype, pairing, mapping, copy_weights)
    results = [forward(pair, x, dtype, tols, None if out is None else Path(out) / "forward")]
    wants = (targets, torch_loss, paddle_loss, torch_optimizer, paddle_optimizer)
    if any(v is not None for v in wants):
        if any(v is None for v in wants):
            raise AlignInputError(
                "backward needs targets, torch_loss, paddle_loss, torch_optimizer and paddle_optimizer"
            )
        assert torch_optimizer is not None and paddle_optimizer is not None
        y = np.asarray(targets)
        y = y.astype(dtype) if y.dtype.kind == "f" else y.astype(np.int64)
        t_opt = user_call("--torch-optimizer", lambda: torch_optimizer(torch_model))
        p_opt = user_call("--paddle-optimizer", lambda: paddle_optimizer(paddle_model))
        results.append(
            backward(
                pair,
                x,
                y,
                torch_loss,
                paddle_loss,
                t_opt,
                p_opt,
                steps,
                dtype,
                tols,
                None if out is None else Path(out) / "backward",
                step_start=step_start,
            )
        )
    return results

"""Stage 1, forward: the same weights and input through torch_ref and paddle_impl.

Compared: eval-mode probabilities and pre-softmax logits (FactSeg: both heads, multi-class
``fg`` [B,16,H,W] and binary ``bi`` [B,1,H,W]) from ONE eval forward per side (the logits are
taken by forward hooks on the modules that produce them), and the training-mode logits (BatchNorm
normalises with batch statistics). On a failure the localiser re-runs the failing mode with hooks
on every module and names the first module whose output differs.

``python -m align.forward --model farseg [--against x2paddle]``; see ``--help``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .compare import Divergence, Localisation, Row, StageResult, Tolerance, compare_arrays, failed_row, finish_stage
from .config import LOGIT_NAMES, AlignConfig
from .fixtures import Fixture, get_fixture, versions
from .localise import capture, first_divergent_layer
from .sides import SIDES, Side, outputs_of
from .x2paddle import ATOL_MEAN, RTOL_MAX

STAGE = "forward"
X2PADDLE_TOLERANCE = Tolerance(RTOL_MAX, ATOL_MEAN)  # align.x2paddle's own defaults (float32)


def side_outputs(fx: Fixture, side: Side) -> Dict[str, np.ndarray]:
    """Eval-mode probabilities and logits (captured by hooks on the package's LOGIT_MODULES
    during the same eval forward), then the training-mode logits, of one side's model."""
    name = fx.model_name
    model = fx.models[side.name]
    x, _ = fx.inputs(side)
    model.eval()
    with side.no_grad():
        probs, logits = outputs_of(side, model, side.logit_modules(name), lambda: model(x))
    out = {"eval/probs": side.numpy(probs)}
    out.update((f"eval/{key}", value) for key, value in zip(LOGIT_NAMES[name], logits))
    fx.mark_dirty()  # training mode updates the BatchNorm statistics
    model.train()
    with side.no_grad():
        train = model.logits(x)
    model.eval()
    for key, value in zip(LOGIT_NAMES[name], train if isinstance(train, tuple) else (train,)):
        out[f"train/{key}"] = side.numpy(value)
    return out


def localise_forward(fx: Fixture, mode: str, tol: Any, rows_out: Optional[List[Row]] = None) -> Localisation:
    """Hook every module of both models, run ``mode`` ("eval": model(x); "train": training-mode
    logits) once more, and name the first module whose output differs beyond ``tol``
    (``rows_out`` receives every module call's row)."""
    fx.reset()
    records = []
    for side in SIDES:
        model = fx.models[side.name]
        x, _ = fx.inputs(side)
        if mode == "train":
            fx.mark_dirty()
            model.train()
        records.append(
            capture(side, model, (lambda m=model, x=x: m.logits(x)) if mode == "train" else (lambda m=model, x=x: m(x)))
        )
    fx.reset()  # the training-mode pass moved the BatchNorm statistics
    found = first_divergent_layer(*records, tol, rows_out=rows_out)
    found.mode = mode
    return found


def run(config: AlignConfig, fixture: Optional[Fixture] = None, progress: bool = False) -> StageResult:
    """Run the forward stage for ``config``; write its files when ``config.out`` is set. With
    ``config.against == "x2paddle"`` the rows (kind ``x2paddle``) and report of ``run_x2paddle`` join."""
    start = time.perf_counter()
    fx = fixture if fixture is not None else get_fixture(config)
    tols = config.tolerances()
    tol, tol_train = tols["forward"], tols["forward_train"]
    fx.reset()
    t_out, p_out = (side_outputs(fx, side) for side in SIDES)
    fx.reset()
    fx.cache["torch_probs"] = t_out["eval/probs"]  # the metric stage scores its argmax

    result = StageResult(STAGE, config.model, config.dtype)
    result.settings = {
        **fx.describe(),
        "batch": fx.x.shape[0],
        "size": f"{fx.x.shape[2]}x{fx.x.shape[3]}",
        "seed": config.seed,
        "tolerances": {"forward": tol.describe(), "forward_train": tol_train.describe()},
        **versions(),
    }
    for key, reference in t_out.items():
        kind = "forward_train" if key.startswith("train/") else "forward"
        result.rows.append(compare_arrays(key, reference, p_out[key], tols[kind], kind))
    result.pairing = [{"torch": n, "paddle": n} for n, _ in SIDES[0].modules(fx.torch_model)]
    failed = result.failed_rows()
    failed_mode = failed[0].name.split("/")[0] if failed else None
    if failed:
        summary = f"{failed[0].name} differs (rel {failed[0].rel:.3e})"
        result.first_divergence = Divergence(None, summary, failed_mode)
    # Every module call of both modes, for divergence.png (and the localisation on a failure).
    for mode in ("eval", "train") if config.out is not None or (failed and config.localise) else ():
        rows: List[Row] = []
        found = localise_forward(fx, mode, tol_train if mode == "train" else tol, rows)
        result.layers[f"{mode} mode"] = rows
        if mode == failed_mode and config.localise:
            result.localisation = found
            result.first_divergence = Divergence(found.first, f"[{mode} mode] {found.summary}", mode)
    if config.against == "x2paddle":
        lines, rows = run_x2paddle(fx, config.out, progress)
        result.rows += rows
        result.notes += lines
    return finish_stage(result, start, config.out_dir(STAGE), t_out, p_out)


def run_x2paddle(fx: Fixture, out_root: Optional[str], progress: bool = True) -> Tuple[List[str], List[Row]]:
    """The X2Paddle third opinion (``align.x2paddle``, float32): (report lines, rows; a failing
    row when nothing was compared). AlignConfig has checked that the optional extra is installed."""
    from pathlib import Path

    from .x2paddle.check import compare_with_x2paddle
    from .x2paddle.report import format_report

    target = Path(out_root or "out/align") / fx.model_name / "forward" / "x2paddle"
    fx.reset()
    report = compare_with_x2paddle(
        fx.model_name, fx.torch_model, fx.paddle_model, fx.x, target, seed=fx.config.seed, progress=progress
    )
    fx.reset()
    lines = [
        f"x2paddle third opinion ({fx.model_name}, float32; programs in {target}):",
        *format_report(report).splitlines(),
    ]
    rows = [
        Row(
            f"x2paddle/{r['pair']}/{r['output']}",
            "x2paddle",
            list(r["shape"]) if isinstance(r["shape"], (list, tuple)) else [],
            float(r["max_abs"]),
            float(r["mean_abs"]),
            float(r["max_rel"]),
            math.nan,
            X2PADDLE_TOLERANCE,
            bool(r["passed"]),
        )
        for r in report.get("rows", [])
    ]
    if not rows and not report.get("passed", False):
        rows = [failed_row("x2paddle/no_comparison", "x2paddle", X2PADDLE_TOLERANCE, "nothing converted")]
    return lines, rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.forward`` (with ``--torch``/``--paddle``: a user's pair, ``align.anycli``)."""
    from .anycli import pair_main
    from .cli import stage_main

    code = pair_main(STAGE, argv)
    if code is not None:
        return code

    return stage_main(STAGE, argv, run)


if __name__ == "__main__":
    raise SystemExit(main())

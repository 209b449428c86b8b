"""How sharp is ``align.backward`` at each step, and how far does each planted trainer bug move it?

Usage::

    python benchmarks/backward_sensitivity.py            # ~5 min on 2 CPU cores
    python benchmarks/backward_sensitivity.py --quick    # FarSeg only, fewer runs

Runs the backward stage (the trainers' own ``build_optimizer`` + ``TrainStep`` on the default
fixture: 64x64, batch 2, seed 2333) in-process and records, per step, the worst relative error
of each group of compared values (loss, lr, grad_norm, grad, param, running_mean, running_var):

- clean, float64, at the default learning-rate scale (0.01) and at the official lr (scale 1),
  for ``--steps`` steps (default 5): how fast torch and Paddle drift apart when nothing is wrong;
- clean, float32, at its default scale (1);
- FarSeg float64 with each bug of tests/trainer_bugs.py planted in
  ``paddle_impl.train.build_optimizer``: the size of what it moves and the stage's verdict.

These numbers are the measurements behind ``align.compare.DEFAULT_TOLERANCES`` (backward kinds)
and ``DEFAULT_LR_SCALE``. Results: ``benchmarks/results/backward_sensitivity.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = Path(_common.ROOT)
sys.path.insert(0, str(ROOT / "tests"))  # trainer_bugs is a test helper

from trainer_bugs import TRAINER_BUGS  # noqa: E402  (tests/trainer_bugs.py)

from align import AlignConfig, backward  # noqa: E402
from align.fixtures import get_fixture  # noqa: E402
from convert import atomic_write  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "backward_sensitivity.json"
# Steps each bug needs to show: momentum, scheduler and accumulation bugs act from step 2.
BUG_STEPS = {
    "weight_decay_x10": 1,
    "per_tensor_clip": 1,
    "scheduler_twice": 2,
    "poly_power_1": 2,
    "momentum_0": 2,
    "gradients_not_cleared": 2,
}


def worst_per_step(result: Any) -> Dict[str, Dict[str, float]]:
    """{"step1": {"grad": worst rel, "param": ..., ...}, ...} from a backward StageResult."""
    out: Dict[str, Dict[str, float]] = {}
    for row in result.rows:
        step, group = row.name.split("/")[:2]
        out.setdefault(step, {})
        out[step][group] = max(out[step].get(group, 0.0), float(row.rel))
    return out


def measure(config: AlignConfig, bug: Optional[str] = None) -> Dict[str, Any]:
    """One backward run of ``config`` (with ``bug`` planted in the Paddle trainer)."""
    import paddle_impl.train as trainer

    original = trainer.build_optimizer
    if bug is not None:
        trainer.build_optimizer = TRAINER_BUGS[bug](original)
    try:
        start = time.perf_counter()
        result = backward.run(config, get_fixture(config))
    finally:
        trainer.build_optimizer = original
    return {
        "model": config.model,
        "dtype": config.dtype,
        "lr_scale": config.effective_lr_scale,
        "steps": config.steps,
        "bug": bug,
        "passed": result.passed,
        "first_divergence": result.first_divergence and result.first_divergence.summary,
        "seconds": round(time.perf_counter() - start, 1),
        "worst_rel": worst_per_step(result),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="steps of the clean runs (default 5)")
    parser.add_argument("--quick", action="store_true", help="FarSeg only, no lr-scale-1 or float32 runs")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    base = AlignConfig(out=None)
    runs: List[AlignConfig] = []
    for model in ("farseg",) if args.quick else ("farseg", "factseg"):
        runs.append(base.with_(model=model, steps=args.steps))
        if not args.quick:
            runs.append(base.with_(model=model, steps=3, lr_scale=1.0))
            runs.append(base.with_(model=model, steps=3, dtype="float32"))
    results = []
    for config in runs:
        results.append(measure(config))
        print(json.dumps(results[-1]), flush=True)
    for bug, steps in BUG_STEPS.items():
        results.append(measure(base.with_(model="farseg", steps=steps), bug))
        print(json.dumps(results[-1]), flush=True)
    document = {
        "command": "python benchmarks/backward_sensitivity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "fixture": "64x64, batch 2, seed 2333, random weights (align.fixtures)",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "runs": results,
    }
    text = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    atomic_write(args.out, lambda handle: handle.write(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

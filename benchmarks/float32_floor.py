"""How far float32 rounding alone moves the align fixture's values: torch_ref against itself.

The float32 thresholds of ``align.compare.DEFAULT_TOLERANCES`` must not be tighter than what
float32 does to ONE framework. This script runs torch_ref on the default align fixture (64x64,
batch 2, seed 2333, the deterministic random weights of ``align.fixtures``) once in float64 and
once in a float32 copy, and measures with the align stage's own relative error
(``max|a - b| / max(max|a|, floor)``, the same gradient floor) how far apart they are:

- eval-mode logits and probabilities;
- the training-mode loss and every parameter gradient of the first training step.

A torch-vs-Paddle float32 difference of the same size is rounding, not a porting bug; that is
why float32 backward only catches gross errors and float64 is the default.

Usage (from the repository root)::

    python benchmarks/float32_floor.py [--model farseg factseg] [--out benchmarks/results/float32_floor.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)
import numpy as np

ROOT = Path(_common.ROOT)

from align import AlignConfig  # noqa: E402
from align.compare import GRAD_FLOOR_FRACTION  # noqa: E402
from align.fixtures import get_fixture  # noqa: E402
from align.sides import TORCH  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "float32_floor.json"


def relative(reference: np.ndarray, other: np.ndarray, floor: float = 0.0) -> float:
    """max|reference - other| / max(max|reference|, floor): the project's one relative error."""
    return _common.rel_error(other, reference, floor=max(floor, 1e-300))


def measure(model_name: str) -> Dict[str, Any]:
    import torch

    fx = get_fixture(AlignConfig(model=model_name, dtype="float64"))
    x64, y64 = fx.inputs(TORCH)
    labels = {"cls": y64}
    models = {"float64": copy.deepcopy(fx.torch_model), "float32": copy.deepcopy(fx.torch_model).float()}
    inputs = {"float64": x64, "float32": x64.float()}
    eval_out, grads, losses = {}, {}, {}
    for dtype, model in models.items():
        model.eval()
        with torch.no_grad():
            eval_out[dtype] = {"logits": model.logits(inputs[dtype]), "probs": model(inputs[dtype])}
        model.train()
        model.zero_grad()
        out = model(inputs[dtype], labels)
        loss = sum(out.values())
        loss.backward()
        losses[dtype] = loss.item()
        grads[dtype] = {n: p.grad.detach().double().numpy() for n, p in model.named_parameters() if p.grad is not None}

    def as_arrays(value: Any) -> Dict[str, np.ndarray]:
        if isinstance(value, (tuple, list)):  # FactSeg's logits: (multi-class, binary)
            return {str(i): v.detach().double().numpy() for i, v in enumerate(value)}
        return {"": value.detach().double().numpy()}

    forward = {}
    for name in ("logits", "probs"):
        ref, f32 = as_arrays(eval_out["float64"][name]), as_arrays(eval_out["float32"][name])
        forward[name] = max(relative(ref[k], f32[k]) for k in ref)
    largest = max(float(np.max(np.abs(g))) for g in grads["float64"].values() if g.size)
    floor = GRAD_FLOOR_FRACTION["float32"] * largest
    per_param = {n: relative(grads["float64"][n], grads["float32"][n], floor) for n in grads["float64"]}
    worst = sorted(per_param.items(), key=lambda kv: kv[1], reverse=True)[:5]
    return {
        "eval_rel": forward,
        "loss_rel": abs(losses["float64"] - losses["float32"]) / abs(losses["float64"]),
        "grad_rel_worst": [{"param": n, "rel": round(r, 4)} for n, r in worst],
        "grad_rel_median": float(np.median(list(per_param.values()))),
        "parameters": len(per_param),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/float32_floor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        nargs="+",
        default=["farseg", "factseg"],
        choices=["farseg", "factseg"],
        help="models to measure (default both)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {}
    for model_name in args.model:
        results[model_name] = measure(model_name)
        print(f"{model_name}: {json.dumps(results[model_name])}")
    document = {
        "command": "python benchmarks/float32_floor.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "torch_ref float32 vs torch_ref float64 on the default align fixture (64x64, batch 2, seed 2333)",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1),
        "models": results,
    }
    from common.atomic import write_bytes_atomic

    write_bytes_atomic(args.out, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The pass band of the train stage, measured: torch_ref.train against ITSELF under harmless perturbations.

``python -m align.train`` compares two float32 training runs. float32 training from random
weights is chaotic: any rounding difference (another thread count, another convolution kernel)
grows step by step, so the two runs of a correct port differ, and the stage's thresholds must be
set from how much a correct run differs from itself, not from hope. This script runs, on the
stage's own set-up (``align.train.build_setup``: the same recipe overrides, synthetic data,
initial weights and evaluation), for each model and seed:

- the reference: ``torch_ref.train`` with one intra-op thread;
- the same training perturbed: two threads (other reduction order in every parallel kernel),
  and ``train.channels_last=true`` (other convolution kernels and summation order);
- ``paddle_impl.train`` (the port), for the record: the numbers the README quotes;

and measures every perturbed run against the reference with the stage's own comparison
(``align.train.compare_runs``): per kind (``train_*`` in ``align/compare.py``) the worst value.
The floor of a kind is its worst value over all perturbations, seeds and models; the thresholds
in ``align/compare.py`` are a margin above it, and the JSON records threshold / floor for each.

Usage (from the repository root; about 3 minutes per model and seed on 2 quiet CPU cores)::

    python benchmarks/train_align_floor.py [--model farseg factseg] [--seeds 2333 1]
        [--iterations 60] [--perturb threads channels_last] [--out benchmarks/results/train_align_floor.json]
    # at full scale, before trusting the default band there (GPU; see README):
    python benchmarks/train_align_floor.py --model farseg --config configs/farseg_isaid.yaml \\
        --data data/isaid --device cuda --iterations 2000 --perturb channels_last --no-paddle
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = Path(_common.ROOT)

from align import AlignConfig  # noqa: E402
from align.compare import TRAIN_FLOOR, TRAIN_MARGIN, TRAIN_TOLERANCES, Tolerance  # noqa: E402
from align.config import DEFAULT_TRAIN_ITERATIONS  # noqa: E402
from align.train import TRAIN_KINDS, build_setup, compare_runs, relative_curve, run_trainer  # noqa: E402
from common.atomic import write_bytes_atomic  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_align_floor.json"
# Harmless perturbations of the torch run: (overrides, intra-op threads).
PERTURBATIONS = {"threads": ((), 2), "channels_last": (("train.channels_last=true",), 1)}
WIDE = {kind: Tolerance(float("inf")) for kind in TRAIN_KINDS}


def measured(rows: Sequence[Any]) -> Dict[str, float]:
    """The worst relative value of each train kind among ``rows``."""
    out: Dict[str, float] = {}
    for row in rows:
        if row.kind in TRAIN_KINDS:
            out[row.kind] = max(out.get(row.kind, 0.0), float(row.rel))
    return out


def per_iteration(reference: Any, other: Any) -> Dict[str, list]:
    """Relative difference of loss and gradient norm at every iteration (for the envelope)."""
    return {
        key: [float(f"{x:.3g}") for x in relative_curve(getattr(reference, key), getattr(other, key))]
        for key in ("loss", "grad_norm")
    }


def measure(model: str, seed: int, args: argparse.Namespace, work: str) -> Dict[str, Any]:
    """Reference, perturbed and Paddle runs of one model and seed; their measured differences."""
    config = AlignConfig(
        model=model,
        seed=seed,
        size=args.size,
        batch=args.batch,
        train_iterations=args.iterations,
        train_config=args.config,
        data=args.data,
        device=args.device,
        out=None,
    ).validate()
    setup = build_setup(config, work)
    tols = {**{k: Tolerance(0.0) for k in ("counter", "exact")}, **WIDE}
    reference = run_trainer(setup, "torch", os.path.join(work, "torch"), label="torch", threads=1)
    out: Dict[str, Any] = {
        "setup": setup.describe(),
        "reference": {
            "seconds": round(reference.seconds, 1),
            "final_loss": float(reference.loss[-1]),
            "miou": reference.miou,
            "curves": reference.curves(),
        },
        "torch_vs_torch": {},
    }
    for name in args.perturb:
        extra, threads = PERTURBATIONS[name]
        other = run_trainer(
            setup, "torch", os.path.join(work, f"torch_{name}"), extra=extra, label=f"torch {name}", threads=threads
        )
        rows, _ = compare_runs(reference, other, setup.initial_state, tols, model)
        out["torch_vs_torch"][name] = {
            **measured(rows),
            "seconds": round(other.seconds, 1),
            "miou": other.miou,
            "per_iteration": per_iteration(reference, other),
            "curves": other.curves(),
        }
        print(f"{model} seed {seed} torch vs torch ({name}): {_brief(out['torch_vs_torch'][name])}", flush=True)
    if args.paddle:
        other = run_trainer(setup, "paddle", os.path.join(work, "paddle"), label="paddle", threads=1)
        rows, _ = compare_runs(reference, other, setup.initial_state, tols, model)
        out["torch_vs_paddle"] = {
            **measured(rows),
            "seconds": round(other.seconds, 1),
            "miou": other.miou,
            "per_iteration": per_iteration(reference, other),
            "curves": other.curves(),
        }
        print(f"{model} seed {seed} torch vs paddle: {_brief(out['torch_vs_paddle'])}", flush=True)
    return out


def _brief(values: Dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k not in ("per_iteration", "curves")})


def summarise(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per kind: the floor (worst torch vs torch), the worst torch vs Paddle, the threshold and margin."""
    summary: Dict[str, Any] = {}
    for kind in TRAIN_KINDS:
        floor = max(
            (
                p.get(kind, 0.0)
                for per_seed in results.values()
                for m in per_seed.values()
                for p in m["torch_vs_torch"].values()
            ),
            default=0.0,
        )
        port = max(
            (
                m["torch_vs_paddle"].get(kind, 0.0)
                for per_seed in results.values()
                for m in per_seed.values()
                if "torch_vs_paddle" in m
            ),
            default=None,
        )
        threshold = TRAIN_TOLERANCES[kind].rtol
        summary[kind] = {
            "floor_torch_vs_torch": floor,
            "torch_vs_paddle": port,
            "threshold": threshold,
            "threshold_over_floor": threshold / floor if floor > 0 else None,
            "floor_in_compare_py": TRAIN_FLOOR[kind],
            "margin": TRAIN_MARGIN,
        }
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/train_align_floor.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model",
        nargs="+",
        default=["farseg", "factseg"],
        choices=["farseg", "factseg"],
        help="models to measure (default both)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[2333, 1],
        help="seeds of the initial weights, sampling and synthetic data (default 2333 1)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_TRAIN_ITERATIONS,
        help=f"iterations per run (default {DEFAULT_TRAIN_ITERATIONS}, the stage's default)",
    )
    parser.add_argument("--size", type=int, default=64, help="patch side on synthetic data (default 64, the stage's)")
    parser.add_argument("--batch", type=int, default=2, help="batch on synthetic data (default 2, the stage's)")
    parser.add_argument(
        "--perturb",
        nargs="+",
        choices=sorted(PERTURBATIONS),
        default=sorted(PERTURBATIONS),
        help="harmless perturbations of the torch run (default: all)",
    )
    parser.add_argument("--config", help="recipe YAML (default configs/<model>_isaid.yaml)")
    parser.add_argument("--data", help="an isaid.prepare output instead of synthetic data")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda", "gpu", "auto"], help="device of every run (default cpu)"
    )
    parser.add_argument(
        "--no-paddle", dest="paddle", action="store_false", help="skip the torch-vs-Paddle run (only the floor)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--resummarise",
        action="store_true",
        help="run nothing: recompute the summary of --out against the thresholds now in "
        "align/compare.py (after TRAIN_FLOOR was set from it)",
    )
    args = parser.parse_args(argv)
    if args.resummarise:
        document = json.loads(args.out.read_text())
        document["summary"] = summarise(document["runs"])
        _print_summary(document["summary"])
        _write(args.out, document)
        return 0
    started = time.perf_counter()
    results: Dict[str, Dict[str, Any]] = {}
    for model in args.model:
        results[model] = {}
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="train_floor_") as work:
                results[model][str(seed)] = measure(model, seed, args, work)
    summary = summarise(results)
    _print_summary(summary)
    import torch

    document = {
        "command": "python benchmarks/train_align_floor.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "align.train's comparison of torch_ref.train against itself under harmless perturbations "
        "(the floor under the train_* thresholds), and against paddle_impl.train",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "runs": results,
    }
    _write(args.out, document)
    return 0


def _print_summary(summary: Dict[str, Any]) -> None:
    for kind, values in summary.items():
        port = values["torch_vs_paddle"]
        print(
            f"{kind:<18} floor {values['floor_torch_vs_torch']:.3e}  torch-vs-paddle "
            f"{'-' if port is None else format(port, '.3e')}  threshold {values['threshold']:.1e}"
        )


def _write(path: Path, document: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))


if __name__ == "__main__":
    raise SystemExit(main())

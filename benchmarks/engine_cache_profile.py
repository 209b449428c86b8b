"""Where a cold engine-cache run of ``paddle_impl.evaluate --weights`` spends its time (issue 21).

Usage::

    python benchmarks/engine_cache_profile.py [--model farseg] [--threads 2] [--repeats 1]
        [--out benchmarks/results/engine_cache_profile.json]

Runs :func:`paddle_impl.engine_cache.open_inference_engine` as ``paddle_impl.evaluate`` does
(random weights, seed 0, saved as ``.pdparams``), alternating a cold run (empty cache folder:
the entry is exported, written, verified, then the predictor is built and probed) and a warm
run (the same folder again: the entry is read back, verified, the predictor built and probed).
Each step is timed by wrapping the function ``engine_cache`` calls for it:

- ``weights_sha256``: sha256 of the weights file (key and manifest);
- ``code_hash``: sha256 of the program's source files;
- ``export``: ``paddle.jit.to_static`` + ``paddle.jit.save`` (``save_inference_model``);
- ``manifest``: size and sha256 of each written file;
- ``verify_entry``: the untrusted-entry checks (sizes, sha256s, op allow-list, model.yml);
- ``predictor``: Paddle Inference predictor creation and its own first run (``DeployedModel``);
- ``probe``: the dynamic graph against the predictor on the probe input (``probe_difference``);
- ``evict``: the cache's size bound.

The JSON keeps every run, the CPU flags (``lscpu``) and the load (``uptime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import paddle  # noqa: E402

from align.env import read_cpu  # noqa: E402
from common.atomic import write_bytes_atomic  # noqa: E402
from paddle_impl import build_model, engine_cache  # noqa: E402
from paddle_impl.sliding_window import load_weights  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "engine_cache_profile.json")
# engine_cache attribute -> step name
STEPS = {
    "sha256_file": "sha256 (weights, manifest, verify)",
    "program_code_hash": "code_hash",
    "save_inference_model": "export",
    "manifest_for": "manifest",
    "verify_entry": "verify_entry",
    "DeployedModel": "predictor",
    "probe_difference": "probe",
    "evict": "evict",
}


def timed_run(model: Any, name: str, weights: str, how: str, cache: str, threads: int) -> Dict[str, float]:
    """One ``open_inference_engine`` call with each step of :data:`STEPS` timed (seconds)."""
    times: Dict[str, float] = defaultdict(float)
    originals = {attr: getattr(engine_cache, attr) for attr in STEPS}

    def wrap(attr: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                times[STEPS[attr]] += time.perf_counter() - start

        return wrapper

    for attr, function in originals.items():
        setattr(engine_cache, attr, wrap(attr, function))
    try:
        start = time.perf_counter()
        deployed, runs = engine_cache.open_inference_engine(model, name, weights, how, None, cache, threads, print)
        times["total"] = time.perf_counter() - start
    finally:
        for attr, function in originals.items():
            setattr(engine_cache, attr, function)
    result = {step: round(value, 3) for step, value in times.items()}
    result["runs"] = runs  # type: ignore[assignment]
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Profile cold and warm engine-cache runs; write the JSON; print one line per run."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/engine_cache_profile.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", choices=("farseg", "factseg"), default="farseg", help="model (default farseg)")
    parser.add_argument("--threads", type=int, default=2, help="Paddle Inference CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="cold + warm pairs (default 1)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="JSON written (default benchmarks/results/engine_cache_profile.json)"
    )
    args = parser.parse_args(argv)
    paddle.set_device("cpu")
    load_at_start = os.getloadavg()
    folder = tempfile.mkdtemp(prefix="engine_cache_profile.")
    try:
        paddle.seed(0)
        model = build_model(args.model)
        weights = os.path.join(folder, f"{args.model}.pdparams")
        paddle.save(model.state_dict(), weights)
        model = build_model(args.model)
        how = load_weights(model, args.model, weights)
        runs: Dict[str, Any] = {"cold": [], "warm": []}
        for repeat in range(args.repeats):
            cache = os.path.join(folder, f"cache{repeat}")
            for kind in ("cold", "warm"):
                result = timed_run(model, args.model, weights, how, cache, args.threads)
                runs[kind].append(dict(result, load_average_1min=round(os.getloadavg()[0], 2)))
                steps = ", ".join(f"{k} {v:.2f}s" for k, v in result.items() if k not in ("runs", "total"))
                print(f"{kind} #{repeat}: total {result['total']:.2f}s: {steps}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    document = {
        "benchmark": "engine cache cold vs warm (paddle_impl.engine_cache.open_inference_engine)",
        "command": "python benchmarks/engine_cache_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": args.model,
        "machine": {
            "platform": platform.platform(),
            "paddle": paddle.__version__,
            "threads": args.threads,
            "cpu": read_cpu(),
            "load_average_at_start": [round(v, 2) for v in load_at_start],
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

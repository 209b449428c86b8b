"""Speed and memory of align on a ResNet-50-sized pair, with PaDiff 0.2.0 beside it.

The pair: ``tests/align_pairs/resnet_zoo.py`` ResNet-50 (torchvision's layout, 23.5 M
parameters, 10 classes), torch and Paddle with the same names, inputs 2x3x224x224 in float64.
Each run is a child process (its wall seconds include importing the frameworks, as a user sees
it; its peak RSS is the child's ``ru_maxrss`` from ``wait4``):

- ``align.forward``: eval and training-mode forward, every layer compared;
- ``align.backward``: 2 steps of loss, backward and SGD-momentum step, everything compared;
- ``padiff``: PaDiff's ``auto_diff`` on the same models in float64 (strict compare, rtol 1e-6),
  loss and optimiser, 2 steps (it runs forward and backward together), if PaDiff is installed.

Goal (issue 18): forward + 2-step backward under 60 s on 2 CPU cores and under 4 GB.

Usage (from the repository root)::

    python benchmarks/align_any_bench.py [--threads 2] [--out benchmarks/results/align_any_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "align_any_bench.json"
ZOO = "tests/align_pairs/resnet_zoo.py"
INPUTS = "2x3x224x224"
TARGETS = "2:0:10"

PADIFF_CHILD = r"""
import importlib.util, sys
import numpy as np, paddle, torch
from padiff import auto_diff
spec = importlib.util.spec_from_file_location("zoo", sys.argv[1])
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)
paddle.set_default_dtype("float64")
module, layer = zoo.torch_resnet50().double(), zoo.paddle_resnet50()
x = np.random.default_rng(0).standard_normal((2, 3, 224, 224))
y = np.random.default_rng(1).integers(0, 10, (2,))
loss_fn = (lambda out: zoo.paddle_loss(out, paddle.to_tensor(y)), lambda out: zoo.torch_loss(out, torch.from_numpy(y)))
optimizer = (zoo.paddle_optimizer(layer), zoo.torch_optimizer(module))
options = {"compare_mode": "strict", "rtol": 1e-6, "atol": 0}
ok = auto_diff(layer, module, ({"x": paddle.to_tensor(x)}, {"x": torch.from_numpy(x)}), auto_weights=True,
               options=options, loss_fn=loss_fn, optimizer=optimizer, steps=2)
print("PADIFF_OK", bool(ok))
"""


def run_child(command: List[str], threads: int, cwd: Path) -> Dict[str, Any]:
    """Run ``command``; wall seconds, exit status, peak RSS (GiB) and the last stderr line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        err.seek(0)
        out.seek(0)
        tail = (err.read().decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        stdout = out.read().decode("utf-8", "replace")
    return {
        "seconds": round(seconds, 1),
        "exit_status": child.returncode,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),  # Linux: kilobytes
        "last_stderr_line": tail[:300],
        "stdout_verdict": [line for line in stdout.splitlines() if line.startswith("PADIFF_OK")][-1:],
    }


def _command_output(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Time align forward, align backward and PaDiff on the ResNet-50 pair; write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/align_any_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2)")
    parser.add_argument("--skip-padiff", action="store_true", help="leave PaDiff out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    common = ["--torch", f"{ZOO}:torch_resnet50", "--paddle", f"{ZOO}:paddle_resnet50", "--inputs", INPUTS]
    common += ["--dtype", "float64"]
    backward = ["--targets", TARGETS, "--steps", "2"]
    for option in ("torch-loss", "paddle-loss", "torch-optimizer", "paddle-optimizer"):
        backward += [f"--{option}", f"{ZOO}:{option.replace('-', '_')}"]
    uptime_before = _command_output(["uptime"])
    runs: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs["align_forward"] = run_child(
            [sys.executable, "-m", "align.forward", *common, "--out", f"{tmp}/forward"], args.threads, ROOT
        )
        print("align_forward", json.dumps(runs["align_forward"]), flush=True)
        runs["align_backward_2_steps"] = run_child(
            [sys.executable, "-m", "align.backward", *common, *backward, "--out", f"{tmp}/backward"], args.threads, ROOT
        )
        print("align_backward_2_steps", json.dumps(runs["align_backward_2_steps"]), flush=True)
        if not args.skip_padiff:
            runs["padiff_forward_backward_2_steps"] = run_child(
                [sys.executable, "-c", PADIFF_CHILD, str(ROOT / ZOO)], args.threads, Path(tmp)
            )
            print("padiff", json.dumps(runs["padiff_forward_backward_2_steps"]), flush=True)
    align_total = runs["align_forward"]["seconds"] + runs["align_backward_2_steps"]["seconds"]
    flags = [line for line in _command_output(["lscpu"]).splitlines() if line.startswith("Flags")]
    document = {
        "command": "python benchmarks/align_any_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "ResNet-50 pair (tests/align_pairs/resnet_zoo.py), 2x3x224x224 float64: align forward, align "
        "backward 2 steps, PaDiff auto_diff 2 steps; child processes, wall seconds with imports, peak RSS",
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_flags": flags[:1]},
        "uptime_before": uptime_before,
        "uptime_after": _command_output(["uptime"]),
        "runs": runs,
        "align_forward_plus_backward_seconds": round(align_total, 1),
        "goal": {"seconds": 60, "peak_rss_gib": 4},
    }
    from common.atomic import write_bytes_atomic

    data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    write_bytes_atomic(args.out, data)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

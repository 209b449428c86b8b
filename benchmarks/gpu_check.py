"""The one-shot GPU check: correctness on the GPU against the CPU, then the GPU figures.

Usage::

    python benchmarks/gpu_check.py                 # on a GPU machine; < 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --smoke         # everything on the CPU with tiny sizes (< 1 min)
    python benchmarks/gpu_check.py --sections parity,train --frameworks torch --budget 300

No network, nothing installed. Sections, each for torch and for Paddle wherever that
framework sees a GPU (``--smoke``: wherever it imports, on the CPU):

- ``parity``: the model on the GPU against the same weights on the CPU, float64: eval
  probabilities, training loss, every gradient, then ``--steps`` steps of the trainer's own
  ``TrainStep`` (losses and every parameter and buffer afterwards); then the GPU in float32
  (TF32 off) and under bf16 autocast against the float64 CPU reference. Limits in
  :data:`PARITY_LIMITS`; a value above its limit fails the check.
- ``train``: training throughput through ``benchmarks/train_bench.py``'s worker (the trainers'
  ``build_training`` + ``TrainStep``): 896x896, batch 8, bf16, channels_last, torch eager and
  ``torch.compile``, FarSeg and FactSeg; Paddle bf16. Goals: :data:`GOALS`.
- ``eval``: one synthetic 4000x4000 scene with the official protocol through
  ``benchmarks/eval_bench.py``'s worker: float32 batch 1 (the protocol as published) and bf16
  batch 8. Goal: under 2 s.
- ``predict``: a synthetic 8000x8000 GeoTIFF through ``benchmarks/predict_bench.py``'s worker
  (skipped when rasterio does not import).
- ``lite``: the lite chain's framework half on the device, command by command (``python -m``
  train -> predict -> evaluate, Paddle also export -> infer), with predict's classes tied to
  evaluate's confusion matrix, as ``tests/test_lite_chain.py`` does on the CPU.

Each measurement runs in its own process (``--smoke``: in this process, to stay fast) under
what is left of ``--budget`` seconds; sections that no longer fit are skipped and say so.
Writes ``benchmarks/results/gpu_check.json`` (``--smoke``: ``gpu_check_smoke.json``; atomic):
GPU, driver, versions (``align.env``), every figure and verdict; prints a summary. Exit status
0 all ran and passed, 1 a check failed or errored, 2 no GPU (without ``--smoke``) or bad options.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence

import _common
import gpu_check_sections as sections

from common.constants import FRAMEWORKS

ROOT = _common.ROOT
RESULTS = _common.RESULTS
SECTIONS = ("parity", "train", "eval", "predict", "lite")
MODELS = sections.MODELS
GOALS = sections.GOALS
SIZES = sections.SIZES


# ------------------------------------------------------------------------------ the check


class Check:
    """Runs the sections in order within a time budget and collects the document."""

    def __init__(self, args: argparse.Namespace, devices: Dict[str, Optional[str]]) -> None:
        self.args = args
        self.mode = "smoke" if args.smoke else "full"
        self.sizes = SIZES[self.mode]
        self.devices = devices
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget
        self.sections: List[Dict[str, Any]] = []
        self.folder = tempfile.mkdtemp(prefix="gpu_check_")

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def record(self, name: str, run: Callable[[], Dict[str, Any]], minimum: float) -> None:
        """Run one measurement (or skip it when the budget is spent) and keep its record."""
        entry: Dict[str, Any] = {"name": name}
        if not self.args.smoke and self.remaining() < minimum:
            entry.update(status="skipped", reason=f"time budget: {self.remaining():.0f}s left, needs ~{minimum}s")
        else:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                result = run()
            except Exception as error:  # noqa: BLE001 - one failure must not stop the check
                lines = str(error).strip().splitlines() or [type(error).__name__]
                entry.update(
                    status="error",
                    error=f"{type(error).__name__}: {lines[0][:400]}",
                    traceback=traceback.format_exc()[-2000:],
                )
            else:
                failed = result.get("passed") is False or "error" in result
                entry.update(status="failed" if failed else "ok", result=result)
            entry["seconds"] = round(time.perf_counter() - started, 2)
            print(
                f"    {entry['status']} in {entry['seconds']}s"
                + (f": {entry.get('error')}" if "error" in entry else ""),
                file=sys.stderr,
                flush=True,
            )
        self.sections.append(entry)

    def skip(self, name: str, reason: str) -> None:
        self.sections.append({"name": name, "status": "skipped", "reason": reason})

    # -- workers run in a subprocess (full) or in this process (smoke)

    def worker(
        self, script: str, function: str, spec: Dict[str, Any], environment: Optional[Dict[str, str]] = None
    ) -> Dict[str, Any]:
        """``function(spec)`` of the benchmark script ``script``: in a child process of this
        script (``--worker``), or in this process with ``--smoke``."""
        if self.args.smoke:
            return getattr(importlib.import_module(script), function)(spec)
        path = os.path.join(self.folder, f"spec_{len(self.sections)}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(spec, handle)
        arguments = ["--worker", f"{script}:{function}", path]
        return _common.run_child(os.path.abspath(__file__), arguments, self.remaining(), environment)

    # -- sections

    def run(self) -> None:
        active = [(fw, self.devices[fw]) for fw in self.args.frameworks if self.devices.get(fw)]
        for framework in self.args.frameworks:
            if not self.devices.get(framework):
                self.skip(f"{framework} (all sections)", self.devices.get(f"{framework}_reason", "unavailable"))
        chosen = set(self.args.sections)
        for framework, device in active:
            if "parity" in chosen:
                sections.parity(self, framework, device)
        if "train" in chosen:
            for framework, device in active:
                sections.train(self, framework, device, compiled=False)
        for framework, device in active:
            if "eval" in chosen:
                sections.evaluate(self, framework, device)
        for framework, device in active:
            if "predict" in chosen:
                sections.predict(self, framework, device)
        for framework, device in active:
            if "lite" in chosen:
                sections.lite(self, framework, device)
        # torch.compile last: its compilation is the slowest part and the first to go when time is short.
        if "train" in chosen and any(fw == "torch" for fw, _ in active):
            if self.args.smoke:
                self.skip("train torch compiled", "--smoke: torch.compile takes minutes of CPU compilation")
            else:
                sections.train(self, "torch", self.devices["torch"], compiled=True)


def summary_lines(sections: List[Dict[str, Any]]) -> List[str]:
    """One line per section: status, the figure that matters, the goal when there is one."""
    lines = []
    for entry in sections:
        name, status = entry["name"], entry["status"]
        result = entry.get("result") or {}
        if status == "skipped":
            lines.append(f"SKIP  {name}: {entry['reason']}")
            continue
        if status == "error":
            lines.append(f"ERROR {name}: {entry['error']}")
            continue
        detail = ""
        if name.startswith("parity"):
            parts = []
            for model, values in result.get("models", {}).items():
                f64 = values["float64"]
                parts.append(
                    f"{model}: f64 probs {f64['probabilities']['rel']:.1e}, grads"
                    f" {f64['gradients']['rel']:.1e}, params after steps"
                    f" {f64['parameters_after_steps']['rel']:.1e}; f32 probs"
                    f" {values['float32']['probabilities']['rel']:.1e}; bf16 probs"
                    f" {values['bf16']['probabilities']['rel']:.1e}"
                    + (f" [{'; '.join(values['failures'])}]" if values["failures"] else "")
                )
            detail = " | ".join(parts)
        elif name.startswith("train"):
            detail = f"{result.get('images_per_s', float('nan')):.1f} images/s"
            if "goal_images_per_s" in result:
                detail += f" (goal {result['goal_images_per_s']:.0f}: {'met' if result['meets_goal'] else 'NOT met'})"
            if result.get("peak_memory_mb"):
                detail += f", peak {result['peak_memory_mb']:.0f} MiB"
        elif name.startswith("eval"):
            detail = f"{result.get('seconds')} s, {result.get('windows_per_s')} windows/s"
            if "goal_seconds" in result:
                detail += f" (goal < {result['goal_seconds']} s: {'met' if result['meets_goal'] else 'NOT met'})"
        elif name.startswith("predict"):
            detail = (
                f"{result.get('predict_seconds')} s, {result.get('megapixels_per_second')} Mpx/s,"
                f" peak RSS {result.get('peak_rss_mb')} MB"
            )
        elif name.startswith("lite"):
            detail = (
                f"{len(result.get('steps', []))} commands, predict == evaluate: {result.get('predict_equals_evaluate')}"
            )
        lines.append(f"{'OK   ' if status == 'ok' else 'FAIL '} {name}: {detail}")
    return lines


def detect_devices(smoke: bool, facts: Dict[str, Any]) -> Dict[str, Optional[str]]:
    """The device each framework's half runs on (None with a reason when it cannot run)."""
    devices: Dict[str, Optional[str]] = {}
    for framework, gpu_name in (("torch", "cuda"), ("paddle", "gpu")):
        info = facts.get(framework) or {}
        if not info.get("installed") or info.get("error"):
            devices[framework] = None
            devices[f"{framework}_reason"] = info.get("error") or f"{framework} is not installed"
        elif smoke:
            devices[framework] = "cpu"
        elif info.get("cuda_available") or (info.get("gpu_count") or 0) > 0:
            devices[framework] = gpu_name
        else:
            devices[framework] = None
            build = f"a CUDA {info['cuda_build']} build" if info.get("cuda_build") else "a CPU build"
            devices[f"{framework}_reason"] = f"{framework} {info.get('version')} ({build}) sees no GPU"
    return devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description="One-shot GPU check: GPU-vs-CPU parity (float64, float32, bf16), training throughput,"
        " 4000x4000 evaluation, 8000x8000 GeoTIFF prediction and the lite chain, for torch"
        " and (where it sees a GPU) Paddle; writes benchmarks/results/gpu_check.json.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run everything on the CPU with tiny sizes, in this process (the CI test of"
        " this script; writes gpu_check_smoke.json)",
    )
    parser.add_argument(
        "--sections",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(SECTIONS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)",
    )
    parser.add_argument(
        "--frameworks",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(FRAMEWORKS),
        metavar="LIST",
        help="comma-separated subset of torch,paddle (default both; Paddle's half runs only"
        " where paddle sees a GPU, or with --smoke)",
    )
    parser.add_argument(
        "--models",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(MODELS),
        metavar="LIST",
        help="comma-separated subset of farseg,factseg for parity and training (default both)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting sections after this many seconds (default 470 on a GPU, i.e."
        " under 8 minutes; 600 with --smoke); skipped sections are listed",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE.json",
        help="results (default benchmarks/results/gpu_check.json, or gpu_check_smoke.json"
        " with --smoke); written atomically",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SCRIPT:FUNCTION", "SPEC.json"), help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        script, function = args.worker[0].split(":")
        with open(args.worker[1], encoding="utf-8") as handle:
            spec = json.load(handle)
        _common.print_result(getattr(importlib.import_module(script), function)(spec))
        return 0
    for option, values, allowed in (
        ("--sections", args.sections, SECTIONS),
        ("--frameworks", args.frameworks, FRAMEWORKS),
        ("--models", args.models, MODELS),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            print(
                f"{parser.prog}: error: {option}: expected a subset of {','.join(allowed)}, got"
                f" {','.join(values) or '(empty)'}",
                file=sys.stderr,
            )
            return 2
    args.budget = args.budget if args.budget is not None else (600.0 if args.smoke else 470.0)
    out = args.out or os.path.join(RESULTS, "gpu_check_smoke.json" if args.smoke else "gpu_check.json")

    from align.env import LOADERS
    from app.environment import gather_facts, load_frameworks
    from app.install_check import diagnose

    facts = gather_facts(load_frameworks(LOADERS))
    devices = detect_devices(args.smoke, facts)
    if not any(devices.get(fw) for fw in args.frameworks):
        reasons = "; ".join(devices.get(f"{fw}_reason", "") for fw in args.frameworks)
        print(
            f"{parser.prog}: error: no framework sees a GPU ({reasons}); python -m align.env says why,"
            " --smoke runs the check on the CPU",
            file=sys.stderr,
        )
        return 2
    check = Check(args, devices)
    try:
        check.run()
    finally:
        import shutil

        shutil.rmtree(check.folder, ignore_errors=True)
    lines = summary_lines(check.sections)
    document = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": check.mode,
        "sizes": check.sizes,
        "goals": GOALS,
        "devices": {fw: devices.get(fw) for fw in FRAMEWORKS},
        "gpu": (facts["torch"].get("devices") or facts["paddle"].get("devices") or None),
        "driver": facts["driver"],
        "versions": {k: v for k, v in facts["distributions"].items() if v},
        "environment": facts,
        "environment_findings": [f.line() for f in diagnose(facts)],
        "seconds": round(time.perf_counter() - check.started, 1),
        "sections": check.sections,
        "summary": lines,
    }
    from common.atomic import write_bytes_atomic

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_bytes_atomic(out, (json.dumps(document, indent=1, default=float) + "\n").encode("utf-8"))
    print("\n".join(lines))
    print(f"{document['seconds']} s in all; wrote {os.path.relpath(out)}")
    return 1 if any(s["status"] in ("failed", "error") for s in check.sections) else 0


if __name__ == "__main__":
    sys.exit(main())

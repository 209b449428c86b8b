"""Time the alignment stages and the converter; optionally re-measure the alignment thresholds.

Usage (from the repository root)::

    python benchmarks/align_bench.py                       # align per model + converter
    python benchmarks/align_bench.py --sweep 1,2 --sweep-dtypes float64,float32

Measured:

- ``python -m align --model M`` as a child process (imports included, as a user runs it): wall
  time, CPU time and peak RSS of that child (``os.wait4``), and each stage's own time and
  worst relative error per kind from its ``diff.json``. Goal: FarSeg under 60 s on 2 cores.
- the converter on a full-size FarSeg checkpoint in the official wrapper layout
  (``{"model": {"module." + k: v}, "opt": {}, "global_step": 0}``, written to a temporary
  folder): ``python -m convert`` as a child, 3 times (wall of each, process start and imports
  included, peak RSS), and the in-process API ``convert.convert_file`` (best of 3, with
  ``tracemalloc``'s peak of Python/numpy allocations). Goal: under 2 s for the whole process
  (``convert_cli_seconds``, best of the 3 runs).
- ``--sweep``: the alignment run again for other seeds (and dtypes), keeping the worst relative
  error per kind of compared value: the measurements behind ``align.compare.DEFAULT_TOLERANCES``.

Writes ``benchmarks/results/align_bench.json`` (atomically) with the machine, the load average
before and after (the machine is shared: wall times scale with it), and the command line.
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
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = Path(_common.ROOT)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "align_bench.json"
GOALS = {"align_farseg_seconds": 60.0, "convert_seconds": 2.0, "convert_cli_seconds": 2.0}


def machine_info() -> Dict[str, Any]:
    """CPU, memory and package versions (read without importing the frameworks)."""
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    for package in ("torch", "paddlepaddle", "numpy", "reprod_log"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


load_average = _common.load_average  # the 1/5/15-minute load, as every benchmark records it


def run_child(args: Sequence[str], timeout: float = 3600) -> Dict[str, Any]:
    """Run ``args``; wall time, CPU time and peak RSS of that child alone (os.wait4)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(list(args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        output = out.read().decode("utf-8", "replace")
    return {
        "command": " ".join(args),
        "returncode": proc.returncode,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "output_tail": output[-1500:],
    }


def stage_summaries(folder: Path, model: str) -> Dict[str, Any]:
    """Per stage: passed, seconds, number of values, worst rel per kind (from diff.json)."""
    out: Dict[str, Any] = {}
    from align.config import STAGES

    for stage in STAGES:
        path = folder / model / stage / "diff.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        worst: Dict[str, Dict[str, Any]] = {}
        for row in report["rows"]:
            rel = row["rel"] if isinstance(row["rel"], float) else float(row["rel"])
            kind = row["kind"]
            if kind not in worst or rel > worst[kind]["rel"]:
                worst[kind] = {
                    "rel": rel,
                    "mean_abs": row["mean_abs"],
                    "value": row["name"],
                    "threshold": row["tol"]["rtol"],
                }
        out[stage] = {
            "passed": report["passed"],
            "seconds": report["seconds"],
            "values": report["num_values"],
            "failed": report["num_failed"],
            "worst_by_kind": worst,
            "notes": report["notes"],
        }
    return out


def bench_align(models: Sequence[str], dtype: str, size: int, work: Path) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    for model in models:
        folder = work / f"align_{model}_{dtype}"
        child = run_child(
            [
                sys.executable,
                "-m",
                "align",
                "--model",
                model,
                "--dtype",
                dtype,
                "--size",
                str(size),
                "--out",
                str(folder),
            ]
        )
        child["stages"] = stage_summaries(folder, model)
        results[model] = child
        print(
            f"align {model} {dtype}: exit {child['returncode']}, {child['wall_seconds']} s wall, "
            f"{child['cpu_seconds']} s CPU, peak RSS {child['peak_rss_mib']} MiB; stages "
            + ", ".join(f"{s} {v['seconds']} s" for s, v in child["stages"].items()),
            flush=True,
        )
    return results


def make_checkpoint(path: Path) -> Dict[str, Any]:
    """A full-size FarSeg checkpoint in the official training wrapper layout."""
    import torch

    import torch_ref

    torch.manual_seed(0)
    model = torch_ref.build_model("farseg")
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "opt": {}, "global_step": 0}, path)
    return {"path": str(path), "bytes": path.stat().st_size, "tensors": len(state)}


def bench_convert(work: Path, repeats: int = 3) -> Dict[str, Any]:
    import tracemalloc

    import convert

    ckpt = work / "farseg50.pth"
    info: Dict[str, Any] = {"checkpoint": make_checkpoint(ckpt)}
    walls = []
    for _ in range(repeats):  # the machine is shared: keep every run, report the best
        child = run_child([sys.executable, "-m", "convert", str(ckpt), "-o", str(work / "cli.pdparams")])
        walls.append(child["wall_seconds"])
        print(
            f"python -m convert: exit {child['returncode']}, {child['wall_seconds']} s wall (process "
            f"start and imports included), peak RSS {child['peak_rss_mib']} MiB",
            flush=True,
        )
    info["cli"] = {**child, "wall_seconds_runs": walls, "best_wall_seconds": min(walls)}
    timings = []
    peak = 0
    for i in range(repeats):
        tracemalloc.start()
        start = time.perf_counter()
        convert.convert_file(ckpt, work / f"api{i}.pdparams")
        timings.append(time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    info["api"] = {
        "call": "convert.convert_file(ckpt, out) (in-process, imports done)",
        "seconds": [round(t, 3) for t in timings],
        "best_seconds": round(min(timings), 3),
        "tracemalloc_peak_mib": round(peak / 2**20, 1),
    }
    print(
        f"convert.convert_file: best {min(timings):.3f} s of {repeats}, tracemalloc peak {peak / 2**20:.1f} MiB",
        flush=True,
    )
    return info


def sweep(
    models: Sequence[str], seeds: Sequence[int], dtypes: Sequence[str], sizes: Sequence[int], work: Path
) -> Dict[str, Any]:
    """Worst rel per (dtype, kind) over every run, with where it occurred."""
    worst: Dict[str, Dict[str, Any]] = {}
    runs = []
    for dtype in dtypes:
        for size in sizes:
            for seed in seeds:
                for model in models:
                    folder = work / f"sweep_{model}_{dtype}_{size}_{seed}"
                    child = run_child(
                        [
                            sys.executable,
                            "-m",
                            "align",
                            "--model",
                            model,
                            "--dtype",
                            dtype,
                            "--size",
                            str(size),
                            "--seed",
                            str(seed),
                            "--out",
                            str(folder),
                        ]
                    )
                    stages = stage_summaries(folder, model)
                    runs.append(
                        {
                            "model": model,
                            "dtype": dtype,
                            "size": size,
                            "seed": seed,
                            "returncode": child["returncode"],
                            "wall_seconds": child["wall_seconds"],
                        }
                    )
                    for stage, summary in stages.items():
                        for kind, w in summary["worst_by_kind"].items():
                            entry = worst.setdefault(dtype, {}).get(kind)
                            if entry is None or w["rel"] > entry["rel"]:
                                worst[dtype][kind] = {**w, "model": model, "size": size, "seed": seed, "stage": stage}
                    print(f"sweep {model} {dtype} size {size} seed {seed}: exit {child['returncode']}", flush=True)
    return {"runs": runs, "worst_by_dtype_and_kind": worst}


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    from common.atomic import write_bytes_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="farseg,factseg", help="comma-separated (default both)")
    parser.add_argument(
        "--dtype",
        default="float64",
        choices=("float64", "float32"),
        help="dtype of the timed align runs (default float64, the CLI default)",
    )
    parser.add_argument("--size", type=int, default=64, help="input size of the timed runs (default 64)")
    parser.add_argument("--skip-align", action="store_true", help="do not time python -m align")
    parser.add_argument("--skip-convert", action="store_true", help="do not time the converter")
    parser.add_argument(
        "--sweep", default="", metavar="SEEDS", help="comma-separated seeds for the threshold sweep (default: no sweep)"
    )
    parser.add_argument("--sweep-dtypes", default="float64", help="dtypes of the sweep (default float64)")
    parser.add_argument("--sweep-sizes", default="64", help="input sizes of the sweep (default 64)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"result file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]

    result: Dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "load_average_before": load_average(),
        "goals": GOALS,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with tempfile.TemporaryDirectory(prefix="align_bench_") as tmp:
        work = Path(tmp)
        if not args.skip_align:
            result["align"] = {
                "dtype": args.dtype,
                "size": args.size,
                "runs": bench_align(models, args.dtype, args.size, work),
            }
            farseg = result["align"]["runs"].get("farseg")
            if farseg:
                result["align_farseg_seconds"] = farseg["wall_seconds"]
        if not args.skip_convert:
            result["convert"] = bench_convert(work)
            result["convert_seconds"] = result["convert"]["api"]["best_seconds"]
            result["convert_cli_seconds"] = result["convert"]["cli"]["best_wall_seconds"]
        if args.sweep:
            result["sweep"] = sweep(
                models,
                [int(s) for s in args.sweep.split(",")],
                [d for d in args.sweep_dtypes.split(",") if d],
                [int(s) for s in args.sweep_sizes.split(",")],
                work,
            )
    result["load_average_after"] = load_average()
    # Sections not re-run this time (e.g. a later --sweep with --skip-align --skip-convert) keep
    # their earlier results; "runs_log" records which command produced which sections.
    merged: Dict[str, Any] = {}
    if args.out.exists():
        try:
            merged = json.loads(args.out.read_text())
        except (OSError, ValueError):
            merged = {}
    sections = [k for k in ("align", "convert", "sweep") if k in result]
    merged.setdefault("runs_log", []).append(
        {
            "command": result["command"],
            "started": result["started"],
            "sections": sections,
            "load_average": [result["load_average_before"], result["load_average_after"]],
        }
    )
    merged.update({k: v for k, v in result.items()})
    merged["goals_met"] = {k: (merged[k] <= v) for k, v in GOALS.items() if k in merged}
    write_json_atomic(args.out, merged)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

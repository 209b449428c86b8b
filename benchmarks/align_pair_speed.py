"""Time and memory of ``align`` on a ResNet-50-sized pair (issue 18: forward and a 2-step backward at
2x3x224x224 in float64 under 60 s on 2 CPU cores and under 4 GB).

Runs ``python -m align.forward`` and ``python -m align.backward --steps 2`` on
benchmarks/resnet50_pair.py, each as a child process (wall time, CPU time, peak RSS of that child,
``os.wait4``), with the CPU flags (``lscpu``) and the load (``uptime``) before and after: on a
shared machine the wall time is only meaningful next to the load.

Usage (from the repository root)::

    OMP_NUM_THREADS=2 python benchmarks/align_pair_speed.py [--size 224] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.align_bench import load_average, machine_info, run_child  # noqa: E402

PAIR = "benchmarks/resnet50_pair.py"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "align_pair_speed.json"
GOALS = {"total_seconds": 60.0, "peak_rss_mib": 4096.0}


def cpu_flags() -> Optional[str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Flags")), None)


def uptime() -> Optional[str]:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commands(size: int, out: Path) -> Dict[str, List[str]]:
    common = ["--torch", f"{PAIR}:torch_model", "--paddle", f"{PAIR}:paddle_model", "--inputs", f"2x3x{size}x{size}"]
    common += ["--dtype", "float64"]
    backward: List[str] = []
    for option in ("torch-loss", "paddle-loss", "torch-optimizer", "paddle-optimizer"):
        backward += [f"--{option}", f"{PAIR}:{option.replace('-', '_')}"]
    return {
        "forward": [sys.executable, "-m", "align.forward", *common, "--out", str(out / "forward")],
        "backward": [
            sys.executable,
            "-m",
            "align.backward",
            *common,
            "--targets",
            "2:0:10",
            *backward,
            "--steps",
            "2",
            "--out",
            str(out / "backward"),
        ],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON")
    args = parser.parse_args(argv)
    record: Dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    record.update(machine=machine_info(), cpu_flags=cpu_flags(), uptime_before=uptime(), load_before=load_average())
    with tempfile.TemporaryDirectory() as folder:
        runs = {name: run_child(cmd) for name, cmd in commands(args.size, Path(folder)).items()}
    record.update(uptime_after=uptime(), load_after=load_average(), runs=runs)
    total = sum(r["wall_seconds"] for r in runs.values())
    peak = max(r["peak_rss_mib"] for r in runs.values())
    record["summary"] = {"total_seconds": round(total, 1), "peak_rss_mib": peak, "goals": GOALS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({**record["summary"], **{k: (r["returncode"], r["wall_seconds"]) for k, r in runs.items()}}))
    return 0 if all(r["returncode"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

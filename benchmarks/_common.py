"""What the benchmark scripts share, written once: the project on ``sys.path``, the "run this
script as a child and read its record back" runner, the relative error, and the record of the
machine a figure was measured on (CPU ISA flags, load).

Every script runs as ``python benchmarks/<name>.py`` (its folder is then ``sys.path[0]``) and
starts with ``import _common``, which puts the project root on ``sys.path`` so that the
project's packages import without installing it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# A child prints its record as one line "RESULT <json>" (anything else it prints is ignored).
RESULT_PREFIX = "RESULT "


class ChildError(RuntimeError):
    """A child run failed, timed out or printed no record; the message is its last stderr line."""


def print_result(record: Mapping[str, Any]) -> None:
    """The child's side of :func:`run_child`: print ``record`` as the RESULT line."""
    print(RESULT_PREFIX + json.dumps(record, default=float), flush=True)


def run_child(
    script: str, args: Sequence[str], timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """Run ``python script *args`` from the project root (the project on ``PYTHONPATH``, ``env``
    added to this process's environment) and return the record of its last RESULT line.

    A fresh process per measurement keeps one measurement's allocator, threads and compiled
    kernels out of the next. Raises :class:`ChildError` on a non-zero exit, a timeout or no
    record.
    """
    child_env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])), **(env or {})
    )
    try:
        result = subprocess.run(
            [sys.executable, script, *args],
            cwd=ROOT,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=None if timeout is None else max(1.0, timeout),
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ChildError(f"{os.path.basename(script)}: timed out after {timeout:.0f}s") from None
    records = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not records:
        tail = [line for line in result.stderr.strip().splitlines() if line.strip()][-1:]
        raise ChildError((tail[0] if tail else f"exit status {result.returncode}, no record")[:400])
    return json.loads(records[-1][len(RESULT_PREFIX) :])


def rel_error(value: Any, reference: Any, floor: float = 1e-6) -> float:
    """max|value - reference| / max(max|reference|, floor) in float64; inf when a difference is
    not finite; ValueError when the shapes differ (no broadcasting)."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"shapes differ: {value.shape} vs {reference.shape}")
    difference = np.abs(value - reference)
    if not np.isfinite(difference).all():
        return float("inf")
    return float(difference.max(initial=0.0) / max(float(np.abs(reference).max(initial=0.0)), floor))


def load_average() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (``uptime``'s figures), or None where unknown."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_record() -> Dict[str, Any]:
    """Where a figure was measured: platform, Python, usable cores, the CPU model and the ISA
    flags that decide float32/bf16 speed (``app.environment.read_cpu``: /proc/cpuinfo, the
    flags ``lscpu`` lists) and the load average at the time of the call."""
    from app.environment import read_cpu

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus_usable": cores,
        "cpu": read_cpu(),
        "load_average_1_5_15min": load_average(),
    }

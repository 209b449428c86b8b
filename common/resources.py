"""How much memory this process may still use, and a clear refusal when a job needs more.

Commands that must hold something proportional to a scene's size (``isaid.prepare`` decodes
a scene whole; ``predict`` keeps one band of probabilities as wide as the scene) estimate what
they need from the file's header and call :func:`check_memory` before allocating it, so a
too-large scene is a one-line error naming the size and the limit instead of an empty
``MemoryError`` (or the kernel's OOM killer) after minutes of work.
"""

from __future__ import annotations

from typing import Optional, Tuple

GIB = 2**30


class MemoryBudgetError(Exception):
    """A job needs more memory than is available; the message is one line."""


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_virtual_size() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_available() -> Optional[int]:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            current = int(handle.read().strip())
        return max(int(limit) - current, 0)
    except (OSError, ValueError):
        return None


def available_memory() -> Tuple[Optional[int], str]:
    """(bytes this process can still allocate, what limits it), the tightest of: the
    address-space limit (``ulimit -v``) minus what is mapped already, the cgroup limit, and
    the system's available memory. (None, "") when none can be read."""
    candidates = []
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            candidates.append((max(soft - _own_virtual_size(), 0), "address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):
        pass
    cgroup = _cgroup_available()
    if cgroup is not None:
        candidates.append((cgroup, "container memory limit"))
    system = _meminfo_available()
    if system is not None:
        candidates.append((system, "available system memory"))
    if not candidates:
        return None, ""
    return min(candidates)


def format_bytes(count: float) -> str:
    """``1.5 GB`` (GiB, one decimal) or ``340 MB`` (MiB)."""
    return f"{count / GIB:.1f} GB" if count >= GIB else f"{count / 2**20:.0f} MB"


def check_memory(need: int, what: str, hint: str = "") -> None:
    """Raise :class:`MemoryBudgetError` when ``need`` bytes exceed :func:`available_memory`.

    ``what`` says what needs it (``"scene P0001 (28000x28000)"``), ``hint`` what to do.
    Nothing is checked when the limit cannot be read.
    """
    available, source = available_memory()
    if available is not None and need > available:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(need)} of memory, more than the"
            f" {format_bytes(available)} of {source}" + (f"; {hint}" if hint else "")
        )

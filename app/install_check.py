"""Installation mistakes, found from the facts :mod:`app.environment` gathers (pure functions).

:func:`diagnose` reads a facts dictionary (versions, the NVIDIA driver, each framework's build
and devices) and returns one :class:`Finding` per mistake, each with the command that fixes
it: a CPU-only Paddle beside a CUDA torch (or the reverse), a CUDA build newer than the
driver, ``paddlepaddle`` and ``paddlepaddle-gpu`` installed together, a framework that is
installed but does not import, or a GPU the ``--expect`` answer wanted and did not get.
Nothing here reads the machine, so the tests feed it faked machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

EXPECT_CHOICES = ("auto", "cpu", "torch-gpu", "paddle-gpu", "gpu")
# The framework versions the project pins (pyproject.toml, extra "cpu").
TORCH_VERSION, PADDLE_VERSION = "2.13.0", "3.3.1"
# CUDA variants of the wheel indexes named in the README (Paddle: documented for 3.3.x; torch:
# the variants published for the 2.9 series, the newest whose list was checked here).
PADDLE_CUDA_INDEXES = ("11.8", "12.6", "12.9", "13.0")
TORCH_CUDA_INDEXES = ("12.6", "12.8", "13.0")
PADDLE_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cu{tag}/"
TORCH_INDEX = "https://download.pytorch.org/whl/cu{tag}"


@dataclass
class Finding:
    """One diagnosis: ``level`` is "error" (exit 2) or "note"; ``fix`` a command or action."""

    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


# ------------------------------------------------------------------------------ the CUDA wheels


def parse_cuda_version(text: Any) -> Optional[Tuple[int, int]]:
    """ "12.4" / "12040" / 12040 / "cu124"-free strings -> (12, 4); None when not a CUDA version."""
    if text is None or text is False:
        return None
    value = str(text).strip().lower()
    if value in ("", "false", "none", "0"):
        return None
    if value.isdigit() and len(value) >= 4:  # the driver API's integer: 1000 * major + 10 * minor
        number = int(value)
        return number // 1000, (number % 1000) // 10
    parts = value.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def format_cuda(version: Optional[Tuple[int, int]]) -> str:
    return "none" if version is None else f"{version[0]}.{version[1]}"


def best_index(driver_cuda: Optional[Tuple[int, int]], available: Sequence[str]) -> Optional[str]:
    """The newest CUDA variant in ``available`` that a driver supporting ``driver_cuda`` runs
    (the newest overall when the driver is unknown). Without one at or below the driver's CUDA,
    the oldest of the same major version (it runs by CUDA's minor-version compatibility); None
    when the driver is too old for all."""
    versions = sorted((parse_cuda_version(v), v) for v in available)
    if driver_cuda is None:
        return versions[-1][1] if versions else None
    usable = [tag for version, tag in versions if version <= driver_cuda]
    same_major = [tag for version, tag in versions if version[0] == driver_cuda[0]]
    return usable[-1] if usable else (same_major[0] if same_major else None)


def index_tag(version: str) -> str:
    return version.replace(".", "")


def paddle_install(driver_cuda: Optional[Tuple[int, int]]) -> str:
    """The command that installs Paddle's GPU wheel for a driver supporting ``driver_cuda``."""
    tag = best_index(driver_cuda, PADDLE_CUDA_INDEXES)
    if tag is None:
        return (
            f"update the NVIDIA driver (Paddle {PADDLE_VERSION} GPU wheels need CUDA {PADDLE_CUDA_INDEXES[0]} or newer)"
        )
    return (
        f"pip uninstall -y paddlepaddle paddlepaddle-gpu && pip install paddlepaddle-gpu=={PADDLE_VERSION}"
        f" -i {PADDLE_INDEX.format(tag=index_tag(tag))}"
    )


def torch_install(driver_cuda: Optional[Tuple[int, int]]) -> str:
    """The command that installs torch's CUDA build for a driver supporting ``driver_cuda``."""
    tag = best_index(driver_cuda, TORCH_CUDA_INDEXES)
    if tag is None:
        return f"update the NVIDIA driver (torch CUDA wheels need CUDA {TORCH_CUDA_INDEXES[0]} or newer)"
    return (
        f"pip uninstall -y torch && pip install torch=={TORCH_VERSION}"
        f" --index-url {TORCH_INDEX.format(tag=index_tag(tag))}"
    )


def _gpu_seen(facts: Dict[str, Any]) -> bool:
    """Whether the machine has an NVIDIA GPU: the driver answered, or a framework sees one."""
    driver = facts.get("driver") or {}
    torch_facts = facts.get("torch") or {}
    paddle_facts = facts.get("paddle") or {}
    return bool(
        driver.get("gpus")
        or driver.get("cuda")
        or torch_facts.get("cuda_available")
        or (paddle_facts.get("gpu_count") or 0) > 0
    )


def _build_vs_driver(
    name: str, build: Optional[Tuple[int, int]], driver: Optional[Tuple[int, int]], usable: bool, fix: str
) -> List[Finding]:
    """Findings for a framework's CUDA build against the driver's newest supported CUDA."""
    if build is None or driver is None or build <= driver:
        return []
    if build[0] > driver[0] or not usable:
        return [
            Finding(
                "error",
                f"{name} is built for CUDA {format_cuda(build)} but the NVIDIA driver"
                f" supports CUDA {format_cuda(driver)} at most" + ("" if usable else f", so {name} sees no GPU"),
                fix,
            )
        ]
    # Same major version: CUDA's minor-version compatibility lets it run; say so.
    return [
        Finding(
            "note",
            f"{name} is built for CUDA {format_cuda(build)}, newer than the driver's"
            f" {format_cuda(driver)}; it runs by CUDA minor-version compatibility"
            " (kernels that need a newer driver, e.g. PTX JIT, would fail)",
            fix,
        )
    ]


def diagnose(facts: Dict[str, Any], expect: str = "auto") -> List[Finding]:
    """The installation mistakes in ``facts`` (as :func:`gather_facts` returns them).

    ``facts`` keys used: ``distributions`` (name -> version or None), ``driver`` (``cuda``:
    newest CUDA the driver supports as "12.4", ``gpus``: names), ``torch`` and ``paddle``
    (``installed``, ``error``: import failure, ``cuda_build``: "12.8" or None for a CPU build,
    ``cuda_available`` / ``gpu_count``). ``expect``: one of :data:`EXPECT_CHOICES`.
    """
    if expect not in EXPECT_CHOICES:
        raise ValueError(f"unknown expect {expect!r}: one of {', '.join(EXPECT_CHOICES)}")
    findings: List[Finding] = []
    dists = facts.get("distributions") or {}
    driver_facts = facts.get("driver") or {}
    driver = parse_cuda_version(driver_facts.get("cuda"))
    torch_facts = facts.get("torch") or {}
    paddle_facts = facts.get("paddle") or {}
    gpu = _gpu_seen(facts)

    if dists.get("paddlepaddle") and dists.get("paddlepaddle-gpu"):
        findings.append(
            Finding(
                "error",
                f"both paddlepaddle {dists['paddlepaddle']} and paddlepaddle-gpu"
                f" {dists['paddlepaddle-gpu']} are installed; they share the 'paddle' package"
                " and the one installed last silently wins",
                paddle_install(driver)
                if gpu
                else f"pip uninstall -y paddlepaddle paddlepaddle-gpu && pip install paddlepaddle=={PADDLE_VERSION}",
            )
        )
    for name, info in (("torch", torch_facts), ("paddle", paddle_facts)):
        if info.get("error"):
            findings.append(
                Finding(
                    "error",
                    f"{name} is installed but does not import ({info['error']})",
                    "reinstall it with the README's Install commands",
                )
            )

    torch_ok = bool(torch_facts.get("installed")) and not torch_facts.get("error")
    paddle_ok = bool(paddle_facts.get("installed")) and not paddle_facts.get("error")
    torch_build = parse_cuda_version(torch_facts.get("cuda_build")) if torch_ok else None
    paddle_build = parse_cuda_version(paddle_facts.get("cuda_build")) if paddle_ok else None
    torch_gpu = torch_ok and bool(torch_facts.get("cuda_available"))
    paddle_gpu = paddle_ok and (paddle_facts.get("gpu_count") or 0) > 0

    findings += _build_vs_driver("torch", torch_build, driver, torch_gpu, torch_install(driver))
    findings += _build_vs_driver("paddle", paddle_build, driver, paddle_gpu, paddle_install(driver))
    if (
        torch_build is not None
        and not torch_gpu
        and gpu
        and not any(f.level == "error" and f.message.startswith("torch is built") for f in findings)
    ):
        findings.append(
            Finding(
                "error",
                f"torch {torch_facts.get('version')} is a CUDA"
                f" {format_cuda(torch_build)} build but sees no GPU"
                f" ({torch_facts.get('cuda_error') or 'cuda.is_available() is False'})",
                "check nvidia-smi and CUDA_VISIBLE_DEVICES",
            )
        )
    if (
        paddle_build is not None
        and not paddle_gpu
        and gpu
        and not any(f.level == "error" and f.message.startswith("paddle is built") for f in findings)
    ):
        findings.append(
            Finding(
                "error",
                f"paddle {paddle_facts.get('version')} is a CUDA {format_cuda(paddle_build)} build but sees no GPU",
                "check nvidia-smi and CUDA_VISIBLE_DEVICES",
            )
        )

    # One framework on the GPU, the other one's CPU build beside it.
    if torch_gpu and paddle_ok and paddle_build is None and expect not in ("torch-gpu", "cpu"):
        findings.append(
            Finding(
                "error",
                f"CPU-only Paddle {paddle_facts.get('version')} beside a CUDA torch that sees"
                f" the GPU: python -m paddle_impl.* would run on the CPU",
                paddle_install(driver) + " (or --expect torch-gpu if a CPU Paddle is intended)",
            )
        )
    if paddle_gpu and torch_ok and torch_build is None and expect not in ("paddle-gpu", "cpu"):
        findings.append(
            Finding(
                "error",
                f"CPU-only torch {torch_facts.get('version')} beside a CUDA Paddle that sees"
                f" the GPU: python -m torch_ref.* would run on the CPU",
                torch_install(driver) + " (or --expect paddle-gpu if a CPU torch is intended)",
            )
        )

    # What --expect asked for.
    wanted = {"cpu": (), "torch-gpu": ("torch",), "paddle-gpu": ("paddle",), "gpu": ("torch", "paddle"), "auto": ()}[
        expect
    ]
    for name, info, ok, on_gpu in (
        ("torch", torch_facts, torch_ok, torch_gpu),
        ("paddle", paddle_facts, paddle_ok, paddle_gpu),
    ):
        if name not in wanted:
            continue
        fix = INSTALL_COMMANDS[name](driver)
        if not info.get("installed"):
            findings.append(Finding("error", f"--expect {expect}: {name} is not installed", fix))
        elif ok and not on_gpu and not any(f.level == "error" and f.message.startswith(name) for f in findings):
            why = "no NVIDIA GPU or driver is visible" if not gpu else f"{name} is a CPU build"
            findings.append(
                Finding(
                    "error",
                    f"--expect {expect}: {name} does not see a GPU ({why})",
                    fix if gpu else "run on a machine with an NVIDIA GPU and driver",
                )
            )
    for name, info in (("torch", torch_facts), ("paddle", paddle_facts)):
        if not info.get("installed") and name not in wanted:
            module = PACKAGES[name]
            findings.append(
                Finding("note", f"{name} is not installed: python -m {module}.* and the alignment are unavailable")
            )
    if expect == "cpu" and (torch_gpu or paddle_gpu):
        findings.append(
            Finding(
                "note",
                "--expect cpu, but a framework sees a GPU: --device auto will use it;"
                " pass --device cpu (train: --set train.device=cpu) to stay on the CPU",
            )
        )
    return findings


def exit_status(findings: Sequence[Finding]) -> int:
    """2 when any finding is an error, else 0."""
    return 2 if any(f.level == "error" for f in findings) else 0


# Per framework: the command that installs its GPU build, and the package of its commands.
INSTALL_COMMANDS = {"torch": torch_install, "paddle": paddle_install}
PACKAGES = {"torch": "torch_ref", "paddle": "paddle_impl"}

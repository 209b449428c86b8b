"""The environment report: versions, devices, and what ``--device auto`` and ``--amp`` will do.

Run as ``python -m align.env [--json] [--expect auto|cpu|torch-gpu|paddle-gpu|gpu]`` (that
entry point hands this module each framework's adapter as its :class:`Framework`,
``torch_ref.adapter.ADAPTER`` and ``paddle_impl.adapter.ADAPTER``; ``app`` imports no framework).

Prints the versions of Python, torch, Paddle, numpy, x2paddle and onnxruntime; for each
framework the devices it sees (CUDA build, GPU names, cuDNN; on CPU the ISA extensions that
matter for these models: AVX2, AVX-512, AVX-512 BF16, AMX, and oneDNN); the NVIDIA driver and
the newest CUDA it supports; and, per command, what ``--device auto`` resolves to and what
``--amp`` does. Every row is derived from what the command itself runs, so the report cannot
drift from the code: the trainer's own device resolution on the shipped config (a refusal is
reported as the refusal), the evaluate/predict parsers' defaults resolved by
``app.cli.auto_device`` and the backend's ``resolve_device``, the backend's ``check_amp`` (the
check ``build_engine`` runs first: a refused ``--amp`` is shown as the command's exit-2 line),
and for an accepted ``--amp`` a one-convolution probe under the framework's autocast.

The installation mistakes are found by :func:`app.install_check.diagnose` (pure), each
reported as one ``error: ...; fix: ...`` line, exit status 2 (0 when none).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import warnings
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

from common.constants import FRAMEWORKS

from .backend import Backend
from .cli import OneLineArgumentParser
from .config import Config, load_config
from .install_check import EXPECT_CHOICES, Finding, diagnose, exit_status, format_cuda, parse_cuda_version

# Distributions whose versions are reported (``None`` when absent).
DISTRIBUTIONS = (
    "torch",
    "paddlepaddle",
    "paddlepaddle-gpu",
    "numpy",
    "x2paddle",
    "onnxruntime",
    "onnx",
    "paddle2onnx",
    "rasterio",
    "reprod_log",
    "pillow",
    "pyyaml",
    "tqdm",
)
# /proc/cpuinfo flags that decide how fast float32 and bf16 CPU kernels are.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
)

# Which distributions make each framework "installed" (either Paddle wheel provides ``paddle``).
FRAMEWORK_DISTRIBUTIONS = {"torch": ("torch",), "paddle": ("paddlepaddle", "paddlepaddle-gpu")}
AMP_MODES = ("fp16", "bf16")
# The config the train rows resolve (the one the README trains with).
SHIPPED_CONFIG = os.path.join("configs", "farseg_isaid.yaml")


class Framework(Protocol):
    """What the report needs from a framework: its adapter (``torch_ref.adapter.ADAPTER``,
    ``paddle_impl.adapter.ADAPTER``), the one object each framework package gives align, the
    report and the tools."""

    name: str  # "torch" / "paddle"
    package_name: str  # "torch_ref" / "paddle_impl"

    def read_facts(self) -> Dict[str, Any]:
        """Build, devices, cuDNN / oneDNN."""
        ...

    def autocast_dtype(self, device: str, amp: str) -> str:
        """The dtype one convolution computes under the framework's autocast for ``amp``."""
        ...

    def train_device(self, config: Config) -> str:
        """The trainer's own device for ``config`` (raises the trainer's refusal)."""
        ...

    def backend(self) -> Backend:
        """The evaluate/predict backend."""
        ...


# How the entry point imports a framework's facts module (explicit imports, in align.env).
FrameworkLoader = Callable[[], Framework]


def cpu_features(flags: Sequence[str]) -> Dict[str, bool]:
    """The ISA extensions of :data:`CPU_FLAGS` present in a /proc/cpuinfo ``flags`` list."""
    present = set(flags)
    return {flag: flag in present for flag in CPU_FLAGS}


def cpu_bf16_note(features: Dict[str, bool]) -> str:
    """What bf16 autocast costs on a CPU with ``features``."""
    if features.get("amx_bf16"):
        return "AMX-BF16: bf16 matrix units, bf16 convolutions run natively (oneDNN)"
    if features.get("avx512_bf16"):
        return "AVX512-BF16: native bf16 dot products (oneDNN)"
    if features.get("avx512f"):
        return "no bf16 instructions: bf16 is emulated with AVX-512 (often slower than float32)"
    return "no bf16 or AVX-512 instructions: bf16 is emulated (slower than float32)"


# ------------------------------------------------------------------------------ gathering facts


def _version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_cpu() -> Dict[str, Any]:
    """CPU model and the flags of :data:`CPU_FLAGS` from /proc/cpuinfo (Linux; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                if model and flags and key == "":
                    break
    except OSError:
        pass
    features = cpu_features(flags)
    return {
        "model": model,
        "cores": os.cpu_count(),
        "features": features,
        "bf16": cpu_bf16_note(features),
        "cpuinfo_read": bool(flags),
    }


def read_driver(timeout: float = 20.0) -> Dict[str, Any]:
    """The NVIDIA driver: newest CUDA it supports (``cuDriverGetVersion`` from libcuda, which
    needs no GPU context), its version and the GPUs (``nvidia-smi``, when on PATH)."""
    info: Dict[str, Any] = {"cuda": None, "version": None, "gpus": []}
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        value = ctypes.c_int(0)
        if library.cuDriverGetVersion(ctypes.byref(value)) == 0 and value.value > 0:
            info["cuda"] = format_cuda(parse_cuda_version(value.value))
        break
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return info
    if out.returncode == 0:
        for line in out.stdout.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 2:
                info["gpus"].append(f"{parts[0]} ({parts[2]})" if len(parts) > 2 else parts[0])
                info["version"] = parts[1]
    return info


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def load_frameworks(loaders: Mapping[str, FrameworkLoader]) -> Dict[str, Any]:
    """name -> the imported facts module, or the facts dict of a framework that is absent or
    does not import (``installed``, ``error``): an import failure is a fact to report."""
    loaded: Dict[str, Any] = {}
    for name, load in loaders.items():
        installed = any(_version(dist) is not None for dist in FRAMEWORK_DISTRIBUTIONS[name])
        try:
            with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded[name] = load()
        except Exception as error:  # noqa: BLE001 - any import failure is a fact to report
            loaded[name] = {"installed": installed, **({"error": _first_line(error)} if installed else {})}
    return loaded


def gather_facts(frameworks: Mapping[str, Any]) -> Dict[str, Any]:
    """Everything :func:`app.install_check.diagnose` and the report use, read from this machine."""
    facts: Dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        "distributions": {name: _version(name) for name in DISTRIBUTIONS},
        "cpu": read_cpu(),
        "driver": read_driver(),
    }
    for name, framework in frameworks.items():
        facts[name] = framework if isinstance(framework, dict) else framework.read_facts()
    return facts


# ------------------------------------------------------------------------------ the commands


def amp_effects(framework: Framework, backend: Optional[Backend], device: str, engine: str = "auto") -> str:
    """What each ``--amp`` does on ``device`` with ``--engine engine``: the backend's own answer
    (``check_amp``, what the command runs before anything else: a refusal, exit 2, or the engine
    that computes it) or else the autocast probe's dtype."""
    parts = []
    for amp in AMP_MODES:
        try:
            computed_by = backend.check_amp(device, amp, engine) if backend is not None else None
            effect = computed_by or f"autocast convolutions in {framework.autocast_dtype(device, amp)}"
        except ValueError as error:
            effect = f"refused, exit 2 ({str(error).strip().splitlines()[0]})"
        except Exception as error:  # noqa: BLE001 - report, do not crash the report
            effect = f"probe fails ({_first_line(error)})"
        parts.append(f"{amp} -> {effect}")
    return "; ".join(parts)


def _refusal(error: BaseException) -> str:
    """The first line of a command's refusal (a TrainError carries it in ``message``)."""
    return (getattr(error, "message", None) or str(error)).strip().splitlines()[0]


def train_amp_effects(framework: Framework, root: str, device: str) -> str:
    """What each ``train.amp`` does on the trainer's device: the trainer's own resolution of the
    shipped config with that ``train.amp`` (its refusal, exit 2), else the autocast probe."""
    parts = []
    for amp in AMP_MODES:
        try:
            framework.train_device(load_config(os.path.join(root, SHIPPED_CONFIG), [f"train.amp={amp}"]))
        except Exception as error:  # noqa: BLE001 - the trainer's own refusal is the answer
            parts.append(f"{amp} -> refused, exit 2 ({_refusal(error)})")
            continue
        try:
            parts.append(f"{amp} -> autocast convolutions in {framework.autocast_dtype(device, amp)}")
        except Exception as error:  # noqa: BLE001 - report, do not crash the report
            parts.append(f"{amp} -> probe fails ({_first_line(error)})")
    return "; ".join(parts)


def train_row(framework: Framework, root: str) -> Dict[str, Any]:
    """``train.device`` and the config's ``train.amp`` through the trainer's own resolution."""
    config = load_config(os.path.join(root, SHIPPED_CONFIG), [])
    amp = config["train"]["amp"]
    row: Dict[str, Any] = {
        "command": f"python -m {framework.package_name}.train",
        "device_option": f"train.device={config['train']['device']}",
        "amp_option": f"train.amp={amp} (config default)",
    }
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        row["resolves_to"] = "not resolved here (launched inside a distributed job)"
        return row
    try:
        device = framework.train_device(config)
    except Exception as error:  # noqa: BLE001 - the trainer's own refusal is the answer
        row["resolves_to"] = f"refused: {_refusal(error)}"
        try:
            device = framework.train_device(load_config(os.path.join(root, SHIPPED_CONFIG), ["train.amp=none"]))
        except Exception:  # noqa: BLE001 - refused again: the first refusal stands as the answer
            return row
        row["resolves_to"] += f"; with train.amp=none: {device}, float32"
    else:
        row["resolves_to"] = device
    row["amp_effect"] = f"train.amp on {device}: " + train_amp_effects(framework, root, device)
    return row


def inference_rows(framework: Framework) -> List[Dict[str, Any]]:
    """evaluate and predict: the parsers' defaults resolved as the commands resolve them."""
    from .cli import auto_device
    from .evaluation import build_parser as eval_parser
    from .predict import build_predict_parser

    backend = framework.backend()
    rows = []
    for verb in ("evaluate", "predict"):
        prog = f"python -m {framework.package_name}.{verb}"
        if verb == "evaluate":
            parser = eval_parser(prog, backend.name, backend.gpu_name)
        else:
            parser = build_predict_parser(
                prog, backend.display_name, backend.gpu_name, model_dir=backend.supports_model_dir
            )
        requested, amp = parser.get_default("device"), parser.get_default("amp")
        device = auto_device(requested, backend.gpu_name, backend.gpu_available)
        resolved = str(backend.resolve_device(device))
        rows.append(
            {
                "command": prog,
                "device_option": f"--device {requested}",
                "resolves_to": resolved,
                "amp_option": f"--amp {amp} (default: float32)",
                "amp_effect": f"--amp on {resolved}: " + amp_effects(framework, backend, device),
            }
        )
    return rows


def command_plan(frameworks: Mapping[str, Any], root: str) -> List[Dict[str, Any]]:
    """Per command: the ``--device`` default, what it resolves to here, and what ``--amp``
    does, for each framework that imports (errors are reported in the row, not raised).
    ``root``: the project folder holding the shipped config."""
    rows: List[Dict[str, Any]] = []
    for name, framework in frameworks.items():
        if isinstance(framework, dict):  # absent or broken: its facts say so
            continue
        for build in (lambda side: [train_row(side, root)], inference_rows):
            try:
                with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rows += build(framework)
            except Exception as error:  # noqa: BLE001 - one broken command must not hide the rest
                rows.append({"command": f"{name} commands", "error": _first_line(error)})
    return rows


# ------------------------------------------------------------------------------ report


def format_report(facts: Dict[str, Any], plan: List[Dict[str, Any]], findings: List[Finding]) -> str:
    """The human-readable report."""
    dists = facts["distributions"]
    python = facts["python"]
    lines = [
        f"Python {python['version']} ({python['executable']}) on {python['platform']}",
        "packages: " + ", ".join(f"{name} {version}" for name, version in dists.items() if version),
    ]
    missing = [name for name in ("torch", "numpy", "x2paddle", "onnxruntime") if not dists.get(name)]
    if not dists.get("paddlepaddle") and not dists.get("paddlepaddle-gpu"):
        missing.insert(1, "paddlepaddle")
    if missing:
        lines.append("not installed: " + ", ".join(missing))
    cpu = facts["cpu"]
    shown = [flag for flag, present in cpu["features"].items() if present]
    lines.append(f"CPU: {cpu['model']}, {cpu['cores']} logical cores; ISA: {' '.join(shown) or 'unknown'}")
    lines.append(f"  bf16 on this CPU: {cpu['bf16']}")
    driver = facts["driver"]
    if driver.get("cuda") or driver.get("gpus"):
        lines.append(
            f"NVIDIA driver {driver.get('version') or '?'} (CUDA <= {driver.get('cuda') or '?'}):"
            f" {'; '.join(driver.get('gpus') or []) or 'no GPU listed'}"
        )
    else:
        lines.append("NVIDIA driver: none found (no libcuda, no nvidia-smi)")
    for name in FRAMEWORKS:
        info = facts.get(name) or {}
        if not info.get("installed"):
            lines.append(f"{name}: not installed")
            continue
        if info.get("error"):
            lines.append(f"{name}: does not import ({info['error']})")
            continue
        build = f"CUDA {info['cuda_build']} build" if info.get("cuda_build") else "CPU build"
        gpus = info.get("devices") or []
        seen = "; ".join(f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)" for d in gpus)
        extra = f", cuDNN {info['cudnn']}" if info.get("cudnn") else ""
        lines.append(f"{name} {info['version']}: {build}{extra}; GPUs: {seen or 'none'}; {info.get('cpu_kernels')}")
    if plan:
        lines.append("what the commands will do here:")
        for row in plan:
            if "error" in row:
                lines.append(f"  {row['command']}: could not resolve ({row['error']})")
                continue
            lines.append(f"  {row['command']}: {row['amp_option']}; {row['device_option']} -> {row['resolves_to']}")
            if row.get("amp_effect"):
                lines.append(f"      {row['amp_effect']}")
    lines += [finding.line() for finding in findings]
    if not any(f.level == "error" for f in findings):
        lines.append("ok: no installation problem found")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m align.env``."""
    parser = OneLineArgumentParser(
        prog="python -m align.env",
        description="Report versions, devices and what --device auto / --amp do in each command;"
        " exit 2 with a one-line fix for each installation mistake found.",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document (facts, plan, findings) instead of the text report"
    )
    parser.add_argument(
        "--expect",
        choices=EXPECT_CHOICES,
        default="auto",
        help="which install was meant: auto (default: every installed framework uses"
        " the GPU when there is one), cpu, torch-gpu (Paddle may stay on the CPU),"
        " paddle-gpu (torch may stay on the CPU), gpu (both on the GPU)",
    )
    parser.add_argument(
        "--no-plan",
        action="store_true",
        help="skip resolving the commands' devices and the autocast probes (faster: no trainer,"
        " backend or autocast probe is run)",
    )
    return parser


def run_report(argv: Optional[Sequence[str]], loaders: Mapping[str, FrameworkLoader], root: str) -> int:
    """``python -m align.env``: gather, resolve, diagnose, print; returns the exit status."""
    args = build_parser().parse_args(argv)
    frameworks = load_frameworks(loaders)
    facts = gather_facts(frameworks)
    plan = [] if args.no_plan else command_plan(frameworks, root)
    findings = diagnose(facts, args.expect)
    if args.json:
        print(
            json.dumps(
                {
                    "facts": facts,
                    "plan": plan,
                    "expect": args.expect,
                    "findings": [asdict(f) for f in findings],
                    "exit_status": exit_status(findings),
                },
                indent=1,
                default=str,
            )
        )
    else:
        print(format_report(facts, plan, findings))
    return exit_status(findings)

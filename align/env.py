"""The environment report: versions, devices, and what ``--device auto`` and ``--amp`` will do.

Usage::

    python -m align.env [--json] [--expect auto|cpu|torch-gpu|paddle-gpu|gpu]

Prints the versions of Python, torch, Paddle, numpy, x2paddle and onnxruntime; for each
framework the devices it sees (CUDA build, GPU names, cuDNN; on CPU the ISA extensions that
matter for these models: AVX2, AVX-512, AVX-512 BF16, AMX, and oneDNN); the NVIDIA driver and
the newest CUDA it supports; and, per command, what ``--device auto`` resolves to and what
``--amp`` does. The device rows come from the commands' own resolution functions
(``torch_ref.inference.gpu_available``, ``paddle_impl.inference.gpu_available``,
``app.cli.auto_device``, each trainer's ``setup_runtime`` on the shipped config) and the
autocast rows from a one-convolution probe under each framework's autocast on that device, so
the report cannot drift from the code.

The usual installation mistakes are reported as one ``error: ...; fix: ...`` line each, exit
status 2 (0 when none): a CPU-only Paddle beside a CUDA torch (or the reverse), a CUDA build of
torch or Paddle newer than the driver, ``paddlepaddle`` and ``paddlepaddle-gpu`` installed
together, a framework that is installed but does not import. ``--expect`` says which of the
four installs of the README was meant (``auto``, the default: every installed framework should
use the GPU when there is one); ``torch-gpu`` accepts a CPU Paddle beside a CUDA torch.

Everything that decides is a pure function of the gathered facts (:func:`diagnose`), so the
tests feed it faked machines. This module imports nothing from the rest of ``align``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

EXPECT_CHOICES = ("auto", "cpu", "torch-gpu", "paddle-gpu", "gpu")
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
# The framework versions the project pins (pyproject.toml, extra "cpu").
TORCH_VERSION, PADDLE_VERSION = "2.13.0", "3.3.1"
# CUDA variants of the wheel indexes named in the README (Paddle: documented for 3.3.x; torch:
# the variants published for the 2.9 series, the newest whose list was checked here).
PADDLE_CUDA_INDEXES = ("11.8", "12.6", "12.9", "13.0")
TORCH_CUDA_INDEXES = ("12.6", "12.8", "13.0")
PADDLE_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/cu{tag}/"
TORCH_INDEX = "https://download.pytorch.org/whl/cu{tag}"
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


@dataclass
class Finding:
    """One diagnosis: ``level`` is "error" (exit 2) or "note"; ``fix`` a command or action."""

    level: str
    message: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


# ------------------------------------------------------------------------------ pure helpers


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
        fix = torch_install(driver) if name == "torch" else paddle_install(driver)
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
            module = "torch_ref" if name == "torch" else "paddle_impl"
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


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


def read_torch() -> Dict[str, Any]:
    """torch's build, devices, cuDNN and CPU kernels (``installed`` False when absent)."""
    info: Dict[str, Any] = {"installed": _version("torch") is not None}
    try:
        import torch
    except Exception as error:  # noqa: BLE001 - any import failure is a fact to report
        if info["installed"]:
            info["error"] = _first_line(error)
        return info
    info.update(
        installed=True,
        version=torch.__version__,
        cuda_build=torch.version.cuda,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn=torch.backends.mkldnn.is_available(),
        onednn_version=None,
        devices=[],
    )
    for line in torch.__config__.show().splitlines():
        if "MKL-DNN" in line or "oneDNN" in line:
            info["onednn_version"] = line.strip(" -").split("(")[0].strip()
    with warnings.catch_warnings(record=True) as caught:  # a too-new build warns here
        warnings.simplefilter("always")
        info["cuda_available"] = torch.cuda.is_available()
    if caught and not info["cuda_available"]:
        info["cuda_error"] = str(caught[0].message).strip().splitlines()[0][:200]
    if info["cuda_available"]:
        info["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            info["devices"].append(
                {
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                }
            )
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def read_paddle() -> Dict[str, Any]:
    """Paddle's build, devices, cuDNN and oneDNN (``installed`` False when absent)."""
    installed = _version("paddlepaddle") is not None or _version("paddlepaddle-gpu") is not None
    info: Dict[str, Any] = {"installed": installed}
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import paddle
    except Exception as error:  # noqa: BLE001 - any import failure is a fact to report
        if installed:
            info["error"] = _first_line(error)
        return info
    compiled = bool(paddle.device.is_compiled_with_cuda())
    info.update(
        installed=True,
        version=paddle.__version__,
        compiled_with_cuda=compiled,
        cuda_build=paddle.version.cuda() if compiled else None,
        cudnn=paddle.version.cudnn() if compiled else None,
        devices=[],
        gpu_count=0,
    )
    core = getattr(getattr(paddle, "base", None), "core", None)
    for probe in ("is_compiled_with_onednn", "is_compiled_with_mkldnn"):
        if core is not None and hasattr(core, probe):
            info["onednn"] = bool(getattr(core, probe)())
            break
    if compiled:
        try:
            info["gpu_count"] = paddle.device.cuda.device_count()
            for index in range(info["gpu_count"]):
                props = paddle.device.cuda.get_device_properties(index)
                info["devices"].append(
                    {
                        "name": props.name,
                        "capability": f"{props.major}.{props.minor}",
                        "memory_gib": round(props.total_memory / 2**30, 1),
                    }
                )
        except Exception as error:  # noqa: BLE001 - a broken CUDA set-up is a fact too
            info["cuda_error"] = _first_line(error)
    return info


def gather_facts() -> Dict[str, Any]:
    """Everything :func:`diagnose` and the report use, read from this machine."""
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        "distributions": {name: _version(name) for name in DISTRIBUTIONS},
        "cpu": read_cpu(),
        "driver": read_driver(),
        "torch": read_torch(),
        "paddle": read_paddle(),
    }


# ------------------------------------------------------------------------------ the commands


def _autocast_probe(framework: str, device: str, amp: str) -> str:
    """The dtype one convolution really produces under the framework's autocast for ``amp`` on
    ``device`` (the engines' own dtype tables), or why it could not run."""
    try:
        if framework == "torch":
            import torch
            import torch.nn.functional as F

            from torch_ref.inference import AMP_DTYPES

            x = torch.ones(1, 3, 8, 8, device=device)
            w = torch.ones(4, 3, 3, 3, device=device)
            with torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp]):
                return str(F.conv2d(x, w).dtype).replace("torch.", "")
        import paddle
        import paddle.nn.functional as F

        from paddle_impl.inference import AMP_DTYPES

        paddle.set_device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with paddle.amp.auto_cast(enable=True, dtype=AMP_DTYPES[amp], level="O1"):
                out = F.conv2d(paddle.ones([1, 3, 8, 8]), paddle.ones([4, 3, 3, 3]))
        return str(out.dtype).replace("paddle.", "")
    except Exception as error:  # noqa: BLE001 - report, do not crash the report
        return f"fails ({_first_line(error)})"


def _amp_summary(framework: str, device: str) -> str:
    parts = [f"{amp} -> {_autocast_probe(framework, device, amp)}" for amp in ("fp16", "bf16")]
    return "autocast convolutions: " + ", ".join(parts)


def _train_row(framework: str) -> Dict[str, Any]:
    """``--set train.device=auto`` and the config's ``train.amp`` through the trainer's own
    ``setup_runtime`` on the shipped FarSeg config."""
    from app.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "configs", "farseg_isaid.yaml"), [])
    amp = config["train"]["amp"]
    module = "torch_ref.train" if framework == "torch" else "paddle_impl.train"
    row: Dict[str, Any] = {
        "command": f"python -m {module}",
        "device_option": f"train.device={config['train']['device']}",
        "amp_option": f"train.amp={amp} (config default)",
    }
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("PADDLE_TRAINERS_NUM", "1")) > 1:
        row["resolves_to"] = "not resolved here (launched inside a distributed job)"
        return row
    trainer = importlib.import_module(module)
    try:
        runtime = trainer.setup_runtime(config)
    except Exception as error:  # noqa: BLE001 - the trainer's own refusal is the answer
        message = getattr(error, "message", None) or str(error)
        row["resolves_to"] = f"refused: {message.strip().splitlines()[0]}"
        none = load_config(os.path.join(root, "configs", "farseg_isaid.yaml"), ["train.amp=none"])
        try:
            runtime = trainer.setup_runtime(none)
        except Exception:  # noqa: BLE001 - refused again: the first refusal stands as the answer
            return row
        row["resolves_to"] += f"; with train.amp=none: {runtime.device}, float32"
        return row
    device = str(runtime.device)
    row["resolves_to"] = device
    row["amp_effect"] = (
        f"{amp} on {device}: " + _amp_summary(framework, device) + ("; GradScaler on" if amp == "fp16" else "")
    )
    return row


def _inference_rows(framework: str) -> List[Dict[str, Any]]:
    """evaluate and predict: the parsers' defaults resolved by ``app.cli.auto_device``."""
    from app.cli import auto_device
    from app.evaluation import build_parser as eval_parser
    from app.predict import build_predict_parser

    package = "torch_ref" if framework == "torch" else "paddle_impl"
    backend = importlib.import_module(f"{package}.backend").BACKEND
    rows = []
    for verb in ("evaluate", "predict"):
        prog = f"python -m {package}.{verb}"
        if verb == "evaluate":
            parser = eval_parser(prog, backend.name, backend.gpu_name)
        else:
            parser = build_predict_parser(
                prog, backend.display_name, backend.gpu_name, model_dir=backend.supports_model_dir
            )
        requested, amp = parser.get_default("device"), parser.get_default("amp")
        device = auto_device(requested, backend.gpu_name, backend.gpu_available)
        resolved = backend.resolve_device(device)
        rows.append(
            {
                "command": prog,
                "device_option": f"--device {requested}",
                "resolves_to": str(resolved),
                "amp_option": f"--amp {amp} (default: float32)",
                "amp_effect": "with --amp fp16|bf16 on "
                + str(resolved)
                + ": "
                + _amp_summary(framework, str(resolved)),
            }
        )
    return rows


def command_plan(facts: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per command: the ``--device`` default, what it resolves to here, and what ``--amp``
    does, for each framework that imports (errors are reported in the row, not raised)."""
    rows: List[Dict[str, Any]] = []
    for framework in ("torch", "paddle"):
        info = facts.get(framework) or {}
        if not info.get("installed") or info.get("error"):
            continue
        for build in (_train_row, _inference_rows):
            try:
                with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    built = build(framework)
                rows += built if isinstance(built, list) else [built]
            except Exception as error:  # noqa: BLE001 - one broken command must not hide the rest
                rows.append({"command": f"{framework} commands", "error": _first_line(error)})
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
    for name in ("torch", "paddle"):
        info = facts[name]
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
        cpu_side = (
            f"CPU kernels {info.get('cpu_capability')}, {info.get('onednn_version') or 'oneDNN'}"
            f" {'on' if info.get('onednn') else 'off'}"
            if name == "torch"
            else f"oneDNN {'compiled in' if info.get('onednn') else 'absent'}"
        )
        lines.append(f"{name} {info['version']}: {build}{extra}; GPUs: {seen or 'none'}; {cpu_side}")
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
    parser = argparse.ArgumentParser(
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
        help="skip resolving the commands' devices and the autocast probes (faster; imports no project module)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    facts = gather_facts()
    plan = [] if args.no_plan else command_plan(facts)
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


if __name__ == "__main__":
    sys.exit(main())

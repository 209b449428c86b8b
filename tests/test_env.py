"""``python -m align.env``: the installation mistakes on faked machines, and the real report here.

The diagnosis is a pure function of the facts, so each usual mistake is planted in an
otherwise healthy fake GPU machine and must give exactly its error (exit status 2), while the
healthy machine and the four intended installs give none.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from align import env

ROOT = Path(__file__).resolve().parents[1]

HEALTHY_GPU = {
    "distributions": {"torch": "2.13.0+cu128", "paddlepaddle": None, "paddlepaddle-gpu": "3.3.1"},
    "driver": {"cuda": "12.8", "version": "570.86", "gpus": ["NVIDIA H100 80GB HBM3 (81559 MiB)"]},
    "torch": {"installed": True, "version": "2.13.0+cu128", "cuda_build": "12.8", "cuda_available": True},
    "paddle": {"installed": True, "version": "3.3.1", "cuda_build": "12.6", "gpu_count": 1},
}
CPU_ONLY = {
    "distributions": {"torch": "2.13.0+cpu", "paddlepaddle": "3.3.1", "paddlepaddle-gpu": None},
    "driver": {"cuda": None, "version": None, "gpus": []},
    "torch": {"installed": True, "version": "2.13.0+cpu", "cuda_build": None, "cuda_available": False},
    "paddle": {"installed": True, "version": "3.3.1", "cuda_build": None, "gpu_count": 0},
}


def machine(base, **changes):
    """A deep copy of ``base`` with ``section={key: value}`` changes merged in."""
    facts = copy.deepcopy(base)
    for section, values in changes.items():
        facts[section].update(values)
    return facts


def errors(facts, expect="auto"):
    return [f for f in env.diagnose(facts, expect) if f.level == "error"]


@pytest.mark.parametrize(
    "facts, expect",
    [
        (HEALTHY_GPU, "auto"),
        (HEALTHY_GPU, "gpu"),
        (CPU_ONLY, "auto"),
        (CPU_ONLY, "cpu"),
        # torch on the GPU with a CPU Paddle, as intended
        (
            machine(
                HEALTHY_GPU,
                paddle={"cuda_build": None, "gpu_count": 0},
                distributions={"paddlepaddle": "3.3.1", "paddlepaddle-gpu": None},
            ),
            "torch-gpu",
        ),
        # Paddle on the GPU with a CPU torch, as intended
        (machine(HEALTHY_GPU, torch={"cuda_build": None, "cuda_available": False}), "paddle-gpu"),
    ],
)
def test_intended_installs_pass(facts, expect):
    found = env.diagnose(facts, expect)
    assert env.exit_status(found) == 0, [f.line() for f in found]


def test_cpu_paddle_beside_cuda_torch():
    facts = machine(
        HEALTHY_GPU,
        paddle={"cuda_build": None, "gpu_count": 0},
        distributions={"paddlepaddle": "3.3.1", "paddlepaddle-gpu": None},
    )
    (error,) = errors(facts)
    assert "CPU-only Paddle" in error.message
    # The fix names Paddle's own index for a CUDA the driver runs (12.8 -> cu126), never PyPI.
    assert "paddlepaddle-gpu==3.3.1 -i https://www.paddlepaddle.org.cn/packages/stable/cu126/" in error.fix
    assert env.exit_status(env.diagnose(facts)) == 2


def test_cpu_torch_beside_cuda_paddle():
    facts = machine(HEALTHY_GPU, torch={"cuda_build": None, "cuda_available": False})
    (error,) = errors(facts)
    assert "CPU-only torch" in error.message
    assert "--index-url https://download.pytorch.org/whl/cu128" in error.fix


def test_torch_build_newer_than_driver():
    # A CUDA 13.0 torch on a driver that stops at CUDA 12.4: torch sees no GPU.
    facts = machine(
        HEALTHY_GPU,
        driver={"cuda": "12.4"},
        torch={"version": "2.13.0+cu130", "cuda_build": "13.0", "cuda_available": False},
        paddle={"cuda_build": "11.8"},
    )
    (error,) = errors(facts)
    assert error.message.startswith("torch is built for CUDA 13.0") and "supports CUDA 12.4" in error.message
    # No torch variant <= 12.4: the oldest 12.x runs by CUDA's minor-version compatibility.
    assert error.fix.endswith("--index-url https://download.pytorch.org/whl/cu126")


def test_newer_minor_version_is_a_note_when_it_runs():
    facts = machine(HEALTHY_GPU, driver={"cuda": "12.4"}, paddle={"cuda_build": "11.8"})
    found = env.diagnose(facts)
    assert env.exit_status(found) == 0
    assert any(f.level == "note" and "minor-version compatibility" in f.message for f in found)


def test_paddle_build_newer_than_driver():
    facts = machine(
        HEALTHY_GPU,
        driver={"cuda": "11.8"},
        torch={"cuda_build": "11.8"},
        paddle={"cuda_build": "12.9", "gpu_count": 0},
    )
    (error,) = errors(facts)
    assert error.message.startswith("paddle is built for CUDA 12.9")
    assert error.fix.endswith("-i https://www.paddlepaddle.org.cn/packages/stable/cu118/")


def test_driver_too_old_for_every_wheel():
    facts = machine(
        HEALTHY_GPU,
        driver={"cuda": "10.2"},
        torch={"cuda_build": "12.6", "cuda_available": False},
        paddle={"cuda_build": "11.8", "gpu_count": 0},
    )
    found = errors(facts)
    assert {f.message.split()[0] for f in found} == {"torch", "paddle"}
    assert all(f.fix.startswith("update the NVIDIA driver") for f in found)


def test_both_paddle_distributions_installed():
    facts = machine(HEALTHY_GPU, distributions={"paddlepaddle": "3.3.1"})
    (error,) = errors(facts)
    assert "both paddlepaddle 3.3.1 and paddlepaddle-gpu 3.3.1" in error.message
    assert error.fix.startswith("pip uninstall -y paddlepaddle paddlepaddle-gpu")


def test_broken_import_and_missing_framework():
    facts = machine(CPU_ONLY, paddle={"installed": True, "error": "ImportError: libcudart.so.12: cannot open"})
    (error,) = errors(facts)
    assert "paddle is installed but does not import (ImportError: libcudart" in error.message
    facts = machine(CPU_ONLY, paddle={"installed": False})
    assert errors(facts) == []  # a missing framework is a note by default ...
    assert any("paddle is not installed" in f.message for f in env.diagnose(facts))
    assert "not installed" in errors(facts, "paddle-gpu")[0].message  # ... an error when expected


def test_expect_gpu_without_a_gpu():
    (error,) = errors(CPU_ONLY, "torch-gpu")
    assert "--expect torch-gpu: torch does not see a GPU (no NVIDIA GPU or driver is visible)" in error.message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12.4", (12, 4)),
        ("13.0", (13, 0)),
        (12040, (12, 4)),
        ("11080", (11, 8)),
        ("12", (12, 0)),
        (None, None),
        ("False", None),
        (False, None),
        ("", None),
        ("n/a", None),
    ],
)
def test_parse_cuda_version(text, expected):
    assert env.parse_cuda_version(text) == expected


def test_best_index_and_cpu_notes():
    assert env.best_index((12, 8), env.PADDLE_CUDA_INDEXES) == "12.6"
    assert env.best_index((13, 1), env.PADDLE_CUDA_INDEXES) == "13.0"
    assert env.best_index(None, env.TORCH_CUDA_INDEXES) == "13.0"
    assert env.best_index((11, 0), env.TORCH_CUDA_INDEXES) is None
    assert env.best_index((12, 2), env.TORCH_CUDA_INDEXES) == "12.6"  # minor-version compatibility
    assert env.best_index((11, 4), env.PADDLE_CUDA_INDEXES) == "11.8"
    features = env.cpu_features(["avx2", "avx512f", "amx_bf16", "amx_tile"])
    assert features["amx_bf16"] and not features["avx512_bf16"]
    assert env.cpu_bf16_note(features).startswith("AMX-BF16")
    assert "emulated" in env.cpu_bf16_note(env.cpu_features(["avx2"]))


def test_report_on_this_machine():
    """The real command here (CPU torch and CPU Paddle): exit 0, every section present, and
    ``--device auto`` resolved to cpu by the commands' own functions."""
    result = subprocess.run(
        [sys.executable, "-m", "align.env", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    facts = document["facts"]
    assert facts["torch"]["installed"] and facts["paddle"]["installed"]
    assert set(env.CPU_FLAGS) == set(facts["cpu"]["features"])
    commands = {row["command"]: row for row in document["plan"]}
    for framework in ("torch_ref", "paddle_impl"):
        for verb in ("train", "evaluate", "predict"):
            row = commands[f"python -m {framework}.{verb}"]
            assert "cpu" in row["resolves_to"], row
    # Paddle's trainer refuses its config's fp16 on a CPU; the report shows the refusal.
    assert commands["python -m paddle_impl.train"]["resolves_to"].startswith("refused: train.amp=fp16")
    assert document["exit_status"] == 0
    assert all(f["level"] == "note" for f in document["findings"])

"""``python -m align.env``: the installation mistakes on faked machines, the real report here, and
the report agreeing with what the commands do.

The diagnosis is a pure function of the facts, so each usual mistake is planted in an
otherwise healthy fake GPU machine and must give exactly its error (exit status 2), while the
healthy machine and the four intended installs give none.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, run_module

from app import environment, install_check

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
    return [f for f in install_check.diagnose(facts, expect) if f.level == "error"]


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
    found = install_check.diagnose(facts, expect)
    assert install_check.exit_status(found) == 0, [f.line() for f in found]


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
    assert install_check.exit_status(install_check.diagnose(facts)) == 2


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
    found = install_check.diagnose(facts)
    assert install_check.exit_status(found) == 0
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
    assert any("paddle is not installed" in f.message for f in install_check.diagnose(facts))
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
    assert install_check.parse_cuda_version(text) == expected


def test_best_index_and_cpu_notes():
    assert install_check.best_index((12, 8), install_check.PADDLE_CUDA_INDEXES) == "12.6"
    assert install_check.best_index((13, 1), install_check.PADDLE_CUDA_INDEXES) == "13.0"
    assert install_check.best_index(None, install_check.TORCH_CUDA_INDEXES) == "13.0"
    assert install_check.best_index((11, 0), install_check.TORCH_CUDA_INDEXES) is None
    assert install_check.best_index((12, 2), install_check.TORCH_CUDA_INDEXES) == "12.6"  # minor-version compatibility
    assert install_check.best_index((11, 4), install_check.PADDLE_CUDA_INDEXES) == "11.8"
    features = environment.cpu_features(["avx2", "avx512f", "amx_bf16", "amx_tile"])
    assert features["amx_bf16"] and not features["avx512_bf16"]
    assert environment.cpu_bf16_note(features).startswith("AMX-BF16")
    assert "emulated" in environment.cpu_bf16_note(environment.cpu_features(["avx2"]))


@pytest.fixture(scope="module")
def report():
    """``python -m align.env --json`` on this machine (CPU torch and CPU Paddle)."""
    result = run_module("align.env", "--json", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_report_on_this_machine(report):
    """The real command here: exit 0, every section present, and ``--device auto`` resolved to
    cpu by the commands' own functions."""
    document = report
    facts = document["facts"]
    assert facts["torch"]["installed"] and facts["paddle"]["installed"]
    assert set(environment.CPU_FLAGS) == set(facts["cpu"]["features"])
    commands = {row["command"]: row for row in document["plan"]}
    for framework in ("torch_ref", "paddle_impl"):
        for verb in ("train", "evaluate", "predict"):
            row = commands[f"python -m {framework}.{verb}"]
            assert "cpu" in row["resolves_to"], row
    # Paddle's trainer refuses its config's fp16 on a CPU; the report shows the refusal.
    assert commands["python -m paddle_impl.train"]["resolves_to"].startswith("refused: train.amp=fp16")
    assert document["exit_status"] == 0
    assert all(f["level"] == "note" for f in document["findings"])


def amp_disagreement(amp_effect: str, amp: str, exit_status: int, stderr: str) -> str:
    """Why the report's ``amp_effect`` for ``--amp amp`` contradicts what the command did
    (its exit status and stderr), or "" when they agree."""
    effect = amp_effect.split(f"{amp} -> ", 1)[1].split("; ", 1)[0] if f"{amp} -> " in amp_effect else ""
    if exit_status == 2:
        refusal = stderr.strip().splitlines()[-1].removeprefix("error: ")
        if not effect.startswith("refused, exit 2") or refusal.split(";")[0] not in effect:
            return f"the command refused ({refusal!r}) but the report says {effect!r}"
        return ""
    if effect.startswith("refused"):
        return f"the report says {effect!r} but the command ran (exit {exit_status})"
    return ""


def paddle_evaluate_with_amp(tmp_path: Path, amp: str, *extra: str) -> subprocess.CompletedProcess:
    """``python -m paddle_impl.evaluate --device cpu --amp AMP [extra]`` on one tiny scene."""
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(images / "P0001.png")
    Image.new("RGB", (64, 64), (0, 0, 0)).save(masks / "P0001_instance_color_RGB.png")
    weights = tmp_path / "farseg.pdparams"
    weights.write_bytes(b"stand-in weights: a refusal of --amp comes before reading them")
    command = [
        "--model",
        "farseg",
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--weights",
        str(weights),
        "--device",
        "cpu",
    ]
    return run_module("paddle_impl.evaluate", *command, "--amp", amp, *extra, timeout=300)


def test_report_says_what_paddle_evaluate_does_with_amp(report, tmp_path):
    """The report's --amp row for paddle_impl.evaluate on the CPU agrees with the command: the
    plain command runs bf16 in Paddle Inference (the --amp check passes; the stand-in weights
    file is what it then refuses), and with --engine dygraph both refuse bf16 with the same line
    (both call the backend's check_amp)."""
    from paddle_impl.adapter import ADAPTER as paddle_environment

    row = {r["command"]: r for r in report["plan"]}["python -m paddle_impl.evaluate"]
    assert "bf16 -> Paddle Inference oneDNN bf16" in row["amp_effect"]
    plain = paddle_evaluate_with_amp(tmp_path / "plain", "bf16")
    assert plain.returncode == 2 and "farseg.pdparams: a text file" in plain.stderr  # --amp bf16 accepted
    dygraph = paddle_evaluate_with_amp(tmp_path / "dygraph", "bf16", "--engine", "dygraph")
    assert dygraph.returncode == 2 and "Traceback" not in dygraph.stderr, dygraph.stderr[-2000:]
    effects = environment.amp_effects(paddle_environment, paddle_environment.backend(), "cpu", "dygraph")
    assert amp_disagreement(effects, "bf16", dygraph.returncode, dygraph.stderr) == ""


def test_planted_report_that_only_probes_autocast_is_caught(tmp_path):
    """The old report probed autocast without asking the backend: on a CPU it said bf16
    computes in float32 while the dygraph engine refuses. Planted (no backend given to
    ``amp_effects``), the agreement check sees it."""
    from paddle_impl.adapter import ADAPTER as paddle_environment

    result = paddle_evaluate_with_amp(tmp_path, "bf16", "--engine", "dygraph")
    probed_only = environment.amp_effects(paddle_environment, None, "cpu", "dygraph")
    assert "float32" in probed_only
    assert "refused" in amp_disagreement(probed_only, "bf16", result.returncode, result.stderr)
    honest = environment.amp_effects(paddle_environment, paddle_environment.backend(), "cpu", "dygraph")
    assert amp_disagreement(honest, "bf16", result.returncode, result.stderr) == ""


def test_report_says_what_paddle_train_does_with_amp(report, prepared, tmp_path):
    """The report's train.amp row for paddle_impl.train agrees with the trainer run here on the
    shipped config: both refuse bf16 on a CPU with the trainer's own line."""
    sets = ["init.imagenet=none", f"data.root={prepared}", "data.window=64", "train.amp=bf16", "train.device=cpu"]
    sets += [f"train.out_dir={tmp_path / 'run'}", "train.num_workers=0", "train.batch_size=2", "train.iterations=1"]
    config = ROOT / "configs" / "farseg_isaid.yaml"
    result = run_module("paddle_impl.train", "--config", config, "--no-progress", "--set", *sets, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    row = {r["command"]: r for r in report["plan"]}["python -m paddle_impl.train"]
    assert amp_disagreement(row["amp_effect"], "bf16", result.returncode, result.stderr) == ""

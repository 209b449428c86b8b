"""``benchmarks/gpu_check.py``: the whole check on the CPU (``--smoke``), its refusals, and
planted bugs that its GPU-vs-CPU parity must catch (the "device" is the CPU here, so a bug is
planted in the second of the two runs it compares)."""

from __future__ import annotations

import json
import subprocess

import _common  # benchmarks/ is on sys.path (conftest)
import gpu_check_parity
import numpy as np
import pytest
from conftest import ROOT, run_command, run_script

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

TINY = {"device": "cpu", "models": ["farseg"], "size": 32, "batch": 2, "steps": 1}


def run_check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return run_script(SCRIPT, *args, timeout=timeout)


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run_check("--smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document["mode"] == "smoke" and document["devices"] == {"torch": "cpu", "paddle": "cpu"}
    status = {section["name"]: section["status"] for section in document["sections"]}
    expected = [
        "parity torch cpu",
        "parity paddle cpu",
        "train torch farseg eager",
        "train torch factseg eager",
        "train paddle farseg eager",
        "train paddle factseg eager",
        "eval torch cpu amp=none batch=1",
        "eval paddle cpu amp=none batch=1",
        "predict torch cpu 96x96 GeoTIFF",
        "predict paddle cpu 96x96 GeoTIFF",
        "lite chain torch cpu",
        "lite chain paddle cpu",
    ]
    assert [name for name in status if name in expected] == expected
    assert all(status[name] == "ok" for name in expected), status
    assert status["train torch compiled"] == "skipped"
    sections = {section["name"]: section for section in document["sections"]}
    parity = sections["parity torch cpu"]["result"]["models"]
    assert set(parity) == {"farseg", "factseg"}
    # CPU against CPU in float64: the comparison itself must find nothing.
    assert parity["farseg"]["float64"]["parameters_after_steps"]["rel"] == 0.0
    assert parity["factseg"]["float64"]["gradients"]["count"] > 200  # every parameter tensor
    assert sections["lite chain paddle cpu"]["result"]["predict_equals_evaluate"] is True
    assert sections["eval torch cpu amp=none batch=1"]["result"]["pixels_counted"] == 96 * 96
    assert document["versions"]["torch"] and document["driver"] is not None
    assert len(document["summary"]) == len(document["sections"])
    assert "wrote" in result.stdout


def test_refuses_without_a_gpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run_check("--sections", "parity", "--out", str(out), timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("python benchmarks/gpu_check.py: error: no framework sees a GPU")
    assert "--smoke" in lines[-1]
    assert not out.exists()


@pytest.mark.parametrize("option", [["--sections", "parity,speed"], ["--frameworks", "jax"], ["--models", ""]])
def test_bad_options(option):
    result = run_check(*option, "--smoke", timeout=120)
    assert result.returncode == 2 and "error:" in result.stderr


def test_relative_error_helpers():
    reference = {"a": np.array([1.0, 2.0]), "b": np.array([0.0, 0.0])}
    assert _common.rel_error(reference["a"], reference["a"]) == 0.0
    assert _common.rel_error(np.array([1.0, 2.5]), reference["a"]) == pytest.approx(0.25)
    assert _common.rel_error(np.array([np.nan, 2.0]), reference["a"]) == float("inf")
    found = gpu_check_parity.worst({"a": reference["a"], "b": np.array([0.0, 1e-7])}, reference)
    assert found["worst"] == "b" and found["rel"] == pytest.approx(0.1)  # floor 1e-6 for all-zero tensors
    with pytest.raises(ValueError):
        gpu_check_parity.worst({"a": reference["a"]}, reference)
    assert gpu_check_parity.judge({"loss": {"rel": 2e-9}, "x": {"rel": float("nan")}}, {"loss": 1e-9, "x": 1.0}) == [
        "loss rel 2e-09 > 1e-09",
        "x rel nan > 1",
    ]


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_parity_catches_weights_not_copied_exactly(framework, monkeypatch):
    """The device model gets the CPU weights rounded to float32 (a lossy transfer): every
    float64 figure must fail, the float32 ones (rounded anyway) need not."""
    adapter = gpu_check_parity.PARITY_SIDES[framework]
    original = adapter.copy_state
    calls = []

    def lossy(self, snapshot, target):
        calls.append(1)
        if len(calls) == 1:  # the float64 device run
            snapshot = {k: v.astype(np.float32).astype(np.float64) for k, v in snapshot.items()}
        original(self, snapshot, target)

    monkeypatch.setattr(adapter, "copy_state", lossy)
    result = gpu_check_parity.parity_worker(dict(TINY, framework=framework))
    failures = result["models"]["farseg"]["failures"]
    assert not result["passed"]
    assert {"float64 probabilities", "float64 loss", "float64 gradients"} <= {
        " ".join(f.split()[:2]) for f in failures
    }, failures


def test_parity_catches_a_trainer_step_bug(monkeypatch):
    """A bug planted in torch_ref.train's TrainStep, in the device run only (its clipping norm
    halved): the forward and the gradients still agree, the step does not."""
    from torch_ref import train

    original = train.TrainStep.__init__
    instances = []

    def planted(self, train_model, net, optimizer, scheduler, scaler, recipe, device):
        instances.append(1)
        if len(instances) == 2:  # the float64 device run (the first one is the CPU reference)
            recipe = dict(recipe, clip_norm=recipe["clip_norm"] / 2)
        original(self, train_model, net, optimizer, scheduler, scaler, recipe, device)

    monkeypatch.setattr(train.TrainStep, "__init__", planted)
    result = gpu_check_parity.parity_worker(dict(TINY, framework="torch"))
    failures = [" ".join(f.split()[:2]) for f in result["models"]["farseg"]["failures"]]
    assert failures == ["float64 parameters_after_steps"], failures


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "usage: benchmarks/gpu_bundle.sh download|install|check"),
        (["install", "--dir", "/nonexistent/wheels"], "/nonexistent/wheels: no such folder"),
        (["download", "--bogus"], "unknown option --bogus"),
    ],
)
def test_bundle_script_refuses_bad_use(args, message):
    result = run_command(["bash", ROOT / "benchmarks" / "gpu_bundle.sh", *args], timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_worker_runs_as_a_child_and_its_record_comes_back(tmp_path):
    """The full (GPU) mode runs each measurement as ``gpu_check.py --worker SCRIPT:FUNCTION
    SPEC.json`` in a child process and reads its RESULT line back (``_common.run_child``);
    --smoke runs in-process, so this path is exercised here on the CPU. A failing child is one
    ChildError naming its last stderr line."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(dict(TINY, framework="torch")))
    record = _common.run_child(str(SCRIPT), ["--worker", "gpu_check_parity:parity_worker", str(spec)], 600)
    assert record["passed"] and record["models"]["farseg"]["float64"]["loss"]["rel"] == 0.0
    spec.write_text(json.dumps(dict(TINY, framework="torch", models=["nosuchmodel"])))
    with pytest.raises(_common.ChildError, match="nosuchmodel"):
        _common.run_child(str(SCRIPT), ["--worker", "gpu_check_parity:parity_worker", str(spec)], 600)

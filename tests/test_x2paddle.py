"""X2Paddle as a third opinion (align/x2paddle/).

The comparisons are checked both ways: on a correct port every row passes, and with a bug
planted in paddle_impl the rows that involve paddle_impl fail while torch_ref vs X2Paddle still
passes, so the verdict names paddle_impl. FarSeg and FactSeg at 64x64, batch 1, float32.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from align import x2paddle as xc
from align.compare import Tolerance, compare_arrays
from align.x2paddle import check, cli, conversion, guard, plans, report

pytestmark = pytest.mark.skipif(not xc.x2paddle_available(), reason=f"x2paddle not importable. {xc.INSTALL_MESSAGE}")


def rows_by(result, output):
    return {r["pair"]: r for r in result["rows"] if r["output"] == output}


def build_fixture(model):
    """align's fixture in float32, as the x2paddle CLI builds it: (torch model, Paddle model, x)."""
    from align import AlignConfig
    from align.fixtures import build_fixture as build

    fx = build(AlignConfig(model=model, dtype="float32", batch=1, size=64, seed=0, out=None))
    return fx.torch_model, fx.paddle_model, fx.x


def leaked_modules():
    return sorted(m for m in sys.modules if m.startswith("_x2paddle_generated") or m == "x2paddle_code")


@pytest.fixture(scope="module")
def farseg():
    return build_fixture("farseg")


@pytest.fixture(scope="module")
def farseg_result(farseg, tmp_path_factory):
    torch_model, paddle_model, x = farseg
    path_before = list(sys.path)
    out_dir = tmp_path_factory.mktemp("x2p_farseg")
    result = check.compare_with_x2paddle("farseg", torch_model, paddle_model, x, out_dir, reuse=True, progress=False)
    return result, path_before


# ----------------------------------------------------------------------------------------------
# No network, ever
# ----------------------------------------------------------------------------------------------


def test_network_guard_refuses_x2paddle_usage_report_at_once():
    """X2Paddle's usage report (what disable_feedback switches off) is refused inside the guard
    and returns at once instead of waiting on DNS or its 2 s connect timeout on a machine
    without network; the refusal is recorded."""
    from x2paddle.utils import ConverterCheck

    original = socket.getaddrinfo
    with guard.network_guard() as attempts:
        ConverterCheck(task="PyTorch", time_info=0, convert_state="Start").run()  # swallows errors
        start = time.perf_counter()  # timed second: the first call pays requests' lazy imports
        ConverterCheck(task="PyTorch", time_info=0, convert_state="Success").run()
        elapsed = time.perf_counter() - start
        with pytest.raises(OSError):
            socket.create_connection(("192.0.2.1", 80), timeout=5)
    assert attempts == ["getaddrinfo('paddlepaddle.org.cn', 80)"] * 2 + ["create_connection('192.0.2.1', 80)"]
    assert elapsed < 0.5
    assert socket.getaddrinfo is original  # restored


def test_feedback_is_off_in_pytorch2paddle_calls(monkeypatch, tmp_path):
    """The conversion never constructs X2Paddle's usage reporter (disable_feedback=True)."""
    import torch
    import x2paddle.convert

    def refuse(*args, **kwargs):
        raise AssertionError("ConverterCheck constructed: feedback is not disabled")

    monkeypatch.setattr(x2paddle.convert, "ConverterCheck", refuse)
    conv = conversion.convert_with_x2paddle(torch.nn.Conv2d(3, 4, 3), [torch.zeros(1, 3, 8, 8)], tmp_path / "conv")
    assert conv.ok, conv.error
    assert conv.network_attempts == []
    assert (tmp_path / "conv" / conversion.CODE_FILE).is_file() and not list(tmp_path.glob(".conv.*"))


def test_x2paddle_exit_during_trace_becomes_an_error_not_an_exit(tmp_path):
    """X2Paddle's tracer answers a RuntimeError with print(e); exit(0), which would end the
    caller's process with status 0. It is turned into a conversion error."""
    import torch

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("planted failure inside forward")

    conv = conversion.convert_with_x2paddle(Broken(), [torch.zeros(1, 3, 8, 8)], tmp_path / "broken")
    assert not conv.ok and conv.error == "X2Paddle called exit(0) after: planted failure inside forward"
    assert not (tmp_path / "broken").exists() and (tmp_path / "broken.failed.log").is_file()


# ----------------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------------


def test_compare_arrays_thresholds_shapes_and_nan():
    """The three-way rows use align's own comparison (align.compare.compare_arrays)."""
    a = np.linspace(-2.0, 2.0, 64, dtype=np.float32).reshape(4, 16)
    tol = Tolerance(1e-4, 1e-5)
    assert check.compare_pair("p", "o", a, a + 1e-6, 1e-5, 1e-4)["passed"]
    assert not check.compare_pair("p", "o", a, a + 1e-3, 1e-5, 1e-4)["passed"]
    row = compare_arrays("o", a, a.T.copy().T.reshape(16, 4), tol, "x2paddle")  # same data, other shape
    assert not row.passed and "shape mismatch" in row.note
    b = a.copy()
    b[0, 0] = np.nan
    assert not compare_arrays("o", a, b, tol, "x2paddle").passed


def test_verdicts_name_the_odd_one_out():
    def rows(tx, px, tp):
        return [{"output": "o", "pair": p, "passed": v} for p, v in zip(report.PAIRS, (tx, px, tp))]

    assert report.verdicts(rows(True, True, True))["o"] == "all agree"
    assert report.verdicts(rows(True, False, False))["o"].startswith("paddle_impl differs")
    assert report.verdicts(rows(False, False, True))["o"].startswith("x2paddle differs")
    assert report.verdicts(rows(False, True, False))["o"].startswith("both Paddle programs agree")
    assert report.verdicts([{"output": "o", "pair": report.PAIRS[2], "passed": True}])["o"].startswith("no X2Paddle")


# ----------------------------------------------------------------------------------------------
# FarSeg
# ----------------------------------------------------------------------------------------------


def test_farseg_three_way_comparison_passes(farseg_result, farseg):
    result, path_before = farseg_result
    assert result["passed"], report.format_report(result)
    for output in ("logits", "probs"):
        rows = rows_by(result, output)
        assert set(rows) == set(report.PAIRS)
        assert all(r["passed"] and r["shape"] == [1, 16, 64, 64] for r in rows.values())
    assert result["verdicts"] == {"logits": "all agree", "probs": "all agree"}
    assert result["network_attempts"] == []
    generated = Path(result["generated_dir"])
    assert all((generated / "eval" / name).is_file() for name in (conversion.CODE_FILE, conversion.PARAMS_FILE))
    # The generated code was imported without registering anything; X2Paddle's own
    # sys.path/sys.modules side effects were kept out.
    assert leaked_modules() == []
    assert sys.path == path_before
    # The caller's models are untouched (the training probe ran on copies).
    torch_model, _, _ = farseg
    assert float(torch_model.buffer_step) == 0.0 and not torch_model.training


def test_farseg_untraceable_parts_carry_the_observed_errors(farseg_result):
    result, _ = farseg_result
    why = {u["part"]: u["why"] for u in result["untraceable"]}
    loss = next(w for p, w in why.items() if p.startswith("training-mode forward after the logits"))
    assert "aten::zeros_like" in loss and "KeyError" in loss
    bn = next(w for p, w in why.items() if p.startswith("training-mode BatchNorm"))
    assert "is_test=True" in bn and "max_abs" in bn
    # FarSeg's step counter is a Python number inside the trace: frozen.
    step = next(p for p in why if p.startswith("torch_ref/farseg.py:"))
    assert "buffer_step.item()" in step
    assert any(p.startswith("torch_ref/shapes.py:") for p in why)  # the input-size check


def test_planted_paddle_bug_is_blamed_on_paddle_impl(farseg, farseg_result, monkeypatch):
    """align_corners=False in paddle_impl's decoder upsampling: X2Paddle (traced from
    torch_ref) still agrees with torch_ref, and disagrees with paddle_impl. The bug is on the
    Paddle side only, so the programs generated from torch_ref are reused (same fingerprint)."""
    import paddle.nn.functional as F

    from paddle_impl.layers import UpsamplingBilinear2D

    torch_model, paddle_model, x = farseg

    def wrong_corners(self, t):
        return F.interpolate(t, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)

    planted = 0  # on the shared fixture's instances; monkeypatch restores them afterwards
    for layer in paddle_model.decoder.sublayers():
        if isinstance(layer, UpsamplingBilinear2D):
            monkeypatch.setattr(layer, "forward", types.MethodType(wrong_corners, layer), raising=False)
            planted += 1
    assert planted == 6  # 0 + 1 + 2 + 3 stages with an upsample

    out_dir = Path(farseg_result[0]["generated_dir"])
    result = check.compare_with_x2paddle(
        "farseg", torch_model, paddle_model, x, out_dir, check_training=False, reuse=True, progress=False
    )
    assert [(c["target"], c["reused"]) for c in result["conversions"]] == [("eval tail", True), ("eval", True)]
    assert not result["passed"]
    for output in ("logits", "probs"):
        rows = rows_by(result, output)
        assert rows["torch_ref vs x2paddle"]["passed"]
        assert not rows["paddle_impl vs x2paddle"]["passed"]
        assert not rows["torch_ref vs paddle_impl"]["passed"]
        assert result["verdicts"][output].startswith("paddle_impl differs")


def test_sub_part_fallback_when_the_logits_path_does_not_convert(farseg, tmp_path, monkeypatch):
    """Planted: the whole-model conversions fail. The check falls back to the logits path's
    sub-parts, each converted on torch_ref's inputs, and still compares three ways. To keep
    the test short only the parts after the FPN are listed (a tensor plus a list in, a list
    in, a lone upsample without parameters); the encoder and FPN take the same path."""
    real = conversion.convert_with_x2paddle
    plan = plans.PLANS["farseg"]
    monkeypatch.setitem(plans.PLANS, "farseg", dataclasses.replace(plan, parts=plan.parts[3:]))

    def failing_whole_model(module, examples, target_dir, target=None, **kwargs):
        if target in ("eval", "logits"):
            return conversion.Conversion(target, None, 0.0, error="planted failure")
        return real(module, examples, target_dir, target, **kwargs)

    monkeypatch.setattr(conversion, "convert_with_x2paddle", failing_whole_model)
    torch_model, paddle_model, x = farseg
    result = check.compare_with_x2paddle(
        "farseg", torch_model, paddle_model, x, tmp_path, check_training=False, progress=False
    )
    parts = [u["part"] for u in result["untraceable"]]
    assert parts[:2] == ["eval forward (logits and probabilities, one trace)", "logits path (model.logits)"]
    x2p_outputs = {r["output"] for r in result["rows"] if r["pair"] == "torch_ref vs x2paddle"}
    assert x2p_outputs == {
        "relation[0]",
        "relation[1]",
        "relation[2]",
        "relation[3]",
        "decoder",
        "classifier",
        "upsample x4",
    }
    assert result["passed"], report.format_report(result)
    assert rows_by(result, "probs").keys() == {"torch_ref vs paddle_impl"}  # nothing composes them
    assert "eval forward: probabilities" in parts  # the softmax alone converts, the logits do not


# ----------------------------------------------------------------------------------------------
# FactSeg
# ----------------------------------------------------------------------------------------------


def test_factseg_logits_three_way_and_the_untraceable_parts_reported(tmp_path):
    torch_model, paddle_model, x = build_fixture("factseg")
    result = check.compare_with_x2paddle("factseg", torch_model, paddle_model, x, tmp_path, progress=False)
    assert result["passed"], report.format_report(result)
    for output, channels in (("fg_logits", 16), ("bi_logits", 1)):
        rows = rows_by(result, output)
        assert set(rows) == set(report.PAIRS)
        assert all(r["passed"] and r["shape"] == [1, channels, 64, 64] for r in rows.values())
    # The fused probabilities: no X2Paddle program (log_sigmoid/logsumexp), torch vs paddle only.
    assert rows_by(result, "probs").keys() == {"torch_ref vs paddle_impl"}
    fusion = next(u["why"] for u in result["untraceable"] if "fusion" in u["part"])
    assert "aten::log_sigmoid" in fusion and "aten::logsumexp" in fusion
    assert "not attempted" in fusion  # the whole eval forward contains the fusion: skipped
    assert [c["target"] for c in result["conversions"]][:2] == ["eval tail", "logits"]
    # Training probes: the loss fails on the same ops; small-object mining on its own fails on
    # a full reduction (sum without dim), and its k is a Python int frozen by the tracer.
    why = {u["part"]: u["why"] for u in result["untraceable"]}
    assert "aten::log_sigmoid" in why["training-mode forward after the logits (joint_loss)"]
    assert "aten::sum" in why["loss piece losses.small_object_mining"]
    assert any(p.startswith("torch_ref/losses.py:") and "numel()" in p for p in why)
    assert (tmp_path / "eval_tail.failed.log").is_file() and (tmp_path / "logits" / conversion.CODE_FILE).is_file()
    assert result["network_attempts"] == [] and leaked_modules() == []


def test_float64_models_are_checked_in_float32_and_left_untouched(farseg, farseg_result):
    """align.forward runs in float64: the check makes float32 copies and leaves the caller's
    models as they were (dtype and mode). Same float32 weights and input: the program converted
    above is reused."""
    import paddle
    import torch

    torch_model, paddle_model, x = farseg
    torch64 = copy.deepcopy(torch_model).double().train()
    paddle64 = copy.deepcopy(paddle_model)
    paddle64.to(dtype="float64")
    result = check.compare_with_x2paddle(
        "farseg",
        torch64,
        paddle64,
        x.astype(np.float64),
        Path(farseg_result[0]["generated_dir"]),
        check_training=False,
        reuse=True,
        progress=False,
    )
    assert result["passed"], report.format_report(result)
    assert result["dtype"] == "float32" and result["conversions"][-1]["reused"]
    assert torch64.training and torch64.en.resnet.conv1.weight.dtype == torch.float64
    assert paddle64.en.resnet.conv1.weight.dtype == paddle.float64


def test_cli_writes_report_and_json_and_rejects_bad_input(farseg_result, tmp_path, capsys, monkeypatch):
    out_dir = farseg_result[0]["generated_dir"]
    report_file = tmp_path / "report.json"
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "align.x2paddle",
            "--model",
            "farseg",
            "--out",
            out_dir,
            "--reuse",
            "--no-training",
            "--json",
            str(report_file),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert code.returncode == 0, code.stdout + code.stderr
    assert "PASSED" in code.stdout and "verdict logits: all agree" in code.stdout
    saved = json.loads(report_file.read_text())
    assert saved["passed"] and {r["pair"] for r in saved["rows"]} == set(report.PAIRS)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically

    with pytest.raises(SystemExit) as bad_size:
        cli.main(["--model", "farseg", "--size", "48"])
    assert bad_size.value.code == 2 and "multiple of 32" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli.main(["--model", "farseg", "--out", str(a_file)]) == 2
    assert f"{a_file}: exists and is not a folder" in capsys.readouterr().err
    monkeypatch.setattr(xc, "x2paddle_available", lambda: False)  # looked up by main at call time
    assert cli.main(["--model", "factseg"]) == 2
    assert 'pip install -e ".[x2paddle]"' in capsys.readouterr().err

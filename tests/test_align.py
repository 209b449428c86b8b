"""The alignment stages pass on the real ports, the CLI contract holds, and the comparison rules
themselves catch what they exist to catch.

Small fixtures (batch 2, 32x32 for the per-dtype stage runs) keep this file at a few minutes on
two CPU cores; ``benchmarks/align_bench.py`` and the README measure the default 64x64 set-up.
The planted porting bugs are in ``tests/test_planted_bugs.py``.
"""

from __future__ import annotations

import json
import logging
import subprocess

import numpy as np
import pytest
from conftest import ROOT, run_module

from align import AlignConfig, AlignInputError, Tolerance
from align.compare import (
    DEFAULT_TOLERANCES,
    StageResult,
    compare_arrays,
    format_report,
    grad_floor,
    tolerances,
    write_reprod_log,
)

# 64 px: at 32 px layer4 is 1x1, and training-mode BN over 2 values per channel is ill-conditioned.
SMALL = dict(batch=2, size=64, out=None)


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_module(*args, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# The comparison rules (framework-free)
# ----------------------------------------------------------------------------------------------


def test_relative_error_is_scale_aware_and_catches_a_small_perturbation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 5)) * 1e3
    tol = Tolerance(1e-9)
    assert compare_arrays("same", a, a.copy(), tol, "forward").passed
    b = a.copy()
    b[1, 2] += 1e-6 * np.abs(a).max()  # a 1e-6 relative slip in one element
    row = compare_arrays("slip", a, b, tol, "forward")
    assert not row.passed and row.rel == pytest.approx(1e-6, rel=1e-6)
    # The same relative slip on a tensor 1e6 times smaller gives the same verdict.
    row_small = compare_arrays("slip", a * 1e-6, b * 1e-6, tol, "forward")
    assert not row_small.passed and row_small.rel == pytest.approx(row.rel, rel=1e-6)


def test_mean_abs_bound_is_enforced():
    a = np.zeros(100)
    a[0] = 1.0
    b = a.copy()
    b[1:] += 2e-5
    row = compare_arrays("m", a, b, Tolerance(1e-4, 1e-5), "forward")
    assert row.rel < 1e-4 and row.mean_abs > 1e-5 and not row.passed


def test_shapes_must_match_exactly_no_transpose_or_broadcast():
    # reprod_log 1.0.1 silently transposes [3,2] vs [2,3] and broadcasts [3] vs [2,3]; we fail.
    a = np.arange(6.0).reshape(2, 3)
    assert not compare_arrays("t", a, a.T.copy(), Tolerance(1.0), "forward").passed
    assert "shape mismatch" in compare_arrays("t", a, a.T.copy(), Tolerance(1.0), "forward").note
    assert not compare_arrays("b", a, a[0], Tolerance(1.0), "forward").passed


def test_nan_and_inf_must_match_in_place():
    a = np.array([1.0, np.nan, np.inf, 2.0])
    assert compare_arrays("same", a, a.copy(), Tolerance(0.0), "exact").passed
    b = a.copy()
    b[1] = 0.0
    row = compare_arrays("nan", a, b, Tolerance(1.0), "exact")
    assert not row.passed and "NaN/inf mismatches" in row.note
    c = a.copy()
    c[2] = -np.inf
    assert not compare_arrays("inf", a, c, Tolerance(1.0), "exact").passed


def test_gradient_floor_ignores_rounding_on_mathematically_zero_gradients():
    big = np.ones(10)
    zero_t = np.full(4, 3e-19)  # e.g. a conv bias in front of a training-mode BatchNorm
    zero_p = np.full(4, -2e-19)
    floor = grad_floor([big, zero_t], "float64")
    assert compare_arrays("bias", zero_t, zero_p, DEFAULT_TOLERANCES["float64"]["grad"], "grad", floor=floor).passed
    # Without the floor the same rounding noise would be a relative error of order 1.
    assert not compare_arrays("bias", zero_t, zero_p, DEFAULT_TOLERANCES["float64"]["grad"], "grad").passed
    # A real error on such a tensor still fails.
    assert not compare_arrays(
        "bias", zero_t, zero_p + 1e-3, DEFAULT_TOLERANCES["float64"]["grad"], "grad", floor=floor
    ).passed


def test_tolerance_overrides():
    table = tolerances("float32", rtol=0.5)
    assert (
        table["forward"].rtol == 0.5
        and table["forward"].mean_atol == DEFAULT_TOLERANCES["float32"]["forward"].mean_atol
    )
    assert table["exact"].rtol == 0.0  # exact kinds stay exact
    table = tolerances("float64", per_kind={"param": Tolerance(1e-3)})
    assert table["param"].rtol == 1e-3
    with pytest.raises(ValueError, match="unknown tolerance kind 'nope'"):
        tolerances("float64", per_kind={"nope": Tolerance(1.0)})


def test_reprod_log_file_format_and_no_root_logger_handlers(tmp_path):
    handlers = list(logging.getLogger().handlers)
    path = write_reprod_log(tmp_path / "torch.npy", {"a": np.arange(3.0), "b": np.eye(2)})
    from reprod_log import ReprodDiffHelper

    loaded = ReprodDiffHelper().load_info(str(path))
    assert set(loaded) == {"a", "b"} and np.array_equal(loaded["b"], np.eye(2))
    assert logging.getLogger().handlers == handlers
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_align_builds_no_optimiser_of_its_own():
    """The backward stage runs the trainers' build_optimizer / TrainStep: no optimiser, scheduler
    or clipping piece is named anywhere in align's code (docstrings aside)."""
    import ast

    pieces = {
        "SGD",
        "Momentum",
        "PolynomialLR",
        "PolynomialDecay",
        "clip_grad_norm_",
        "clip_grads_with_norm_",
        "ClipGradByGlobalNorm",
        "ClipGradByNorm",
        "GradScaler",
    }
    used = set()
    for path in (ROOT / "align").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in pieces:
                used.add(f"{path.relative_to(ROOT)}: {name}")
    assert not used, sorted(used)


def test_backward_recipe_is_the_config_files_train_section():
    from app.config import load_config

    for model in ("farseg", "factseg"):
        train = load_config(str(ROOT / "configs" / f"{model}_isaid.yaml"))["train"]
        recipe = AlignConfig(model=model).recipe()
        assert recipe["lr"] == pytest.approx(train["lr"] * 0.01) and recipe["amp"] == "none"
        assert {k: recipe[k] for k in ("momentum", "weight_decay", "poly_power", "clip_norm", "iterations")} == {
            k: train[k] for k in ("momentum", "weight_decay", "poly_power", "clip_norm", "iterations")
        }
    recipe = AlignConfig(dtype="float32", iterations=100, clip_norm=1.0).recipe()
    assert (recipe["lr"], recipe["iterations"], recipe["clip_norm"]) == (train["lr"], 100, 1.0)


def test_empty_result_does_not_pass():
    assert not StageResult("forward", "farseg", "float64").passed


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (("align.forward", "--model", "farseg", "--size", "70"), "--size 70 is not a positive multiple of 32"),
        (("align", "--model", "farseg", "--torch-ckpt", "missing.pth"), "missing.pth: no such file"),
        (("align.loss", "--model", "farsseg"), "invalid choice: 'farsseg'"),
        (("align", "--stages", "forward,nope"), "unknown stage nope"),
        (("align.backward", "--model", "farseg", "--steps", "0"), "--steps must be at least 1"),
        (("align", "--torch-ckpt", "x.pth"), "--torch-ckpt needs a single --model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_cli(*args, "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_input_array_names_the_file(tmp_path):
    bad = tmp_path / "x.npy"
    np.save(bad, np.zeros((1, 3, 48, 64), dtype=np.float32))
    with pytest.raises(AlignInputError, match=r"x\.npy: height and width must be multiples of 32"):
        AlignConfig(input=str(bad)).validate()
    np.save(bad, np.zeros((1, 4, 64, 64), dtype=np.float32))
    with pytest.raises(AlignInputError, match=r"x\.npy: expected an array of shape"):
        AlignConfig(input=str(bad)).validate()
    text = tmp_path / "t.npy"
    text.write_text("not an array")
    with pytest.raises(AlignInputError, match=r"t\.npy: not a readable \.npy array"):
        AlignConfig(input=str(text)).validate()


def test_against_x2paddle_without_the_extra_says_how_to_install(monkeypatch, capsys, tmp_path):
    import importlib.util

    from align.cli import main_for

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "x2paddle" else real(name, *args)
    )
    code = main_for("forward", ["--model", "farseg", "--against", "x2paddle", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and 'pip install -e ".[x2paddle]"' in err[0]
    assert not (tmp_path / "o").exists()


def test_help_documents_every_option():
    proc = run_cli("align.backward", "--help", timeout=60)
    assert proc.returncode == 0
    for option in (
        "--model",
        "--dtype",
        "--batch",
        "--size",
        "--seed",
        "--torch-ckpt",
        "--input",
        "--out",
        "--rtol",
        "--atol",
        "--tol",
        "--steps",
        "--clip",
        "--loss-scale",
        "--full-logs",
        "--no-localise",
    ):
        assert option in proc.stdout
    assert "--against" in run_cli("align.forward", "--help", timeout=60).stdout


# ----------------------------------------------------------------------------------------------
# Every stage passes on the real ports, both models, both dtypes
# ----------------------------------------------------------------------------------------------


def test_full_cli_run_exit_0_and_files(tmp_path):
    """``python -m align`` end to end (FarSeg, float64, small): exit 0, four reports, reprod_log files."""
    proc = run_cli("align", "--model", "farseg", "--size", "64", "--out", str(tmp_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all 4 stage runs passed" in proc.stdout
    for stage in ("forward", "loss", "backward", "metric"):
        folder = tmp_path / "farseg" / stage
        report = json.loads((folder / "diff.json").read_text())
        assert report["passed"] and report["num_values"] > 0 and report["num_failed"] == 0
        assert "RESULT: PASS" in (folder / "diff.txt").read_text()
        t = np.load(folder / "torch.npy", allow_pickle=True).tolist()
        p = np.load(folder / "paddle.npy", allow_pickle=True).tolist()
        assert set(t) == set(p) and t
    backward = json.loads((tmp_path / "farseg" / "backward" / "diff.json").read_text())
    assert any("clipping binds" in n for n in backward["notes"])
    assert {r["name"] for r in backward["rows"]} >= {"step1/lr", "step3/lr", "final/buffer_step"}


# 64 px, the CLI default: the thresholds are measured there (float32: see align/compare.py).
@pytest.mark.parametrize("model, dtype", [("factseg", "float64"), ("farseg", "float32"), ("factseg", "float32")])
def test_every_stage_passes(model, dtype):
    from align import run_all

    results = run_all(AlignConfig(model=model, dtype=dtype, **SMALL))
    for result in results:
        assert result.passed, format_report(result)
        assert result.first_divergence is None


def test_paddle_batchnorm_updates_running_var_with_the_biased_variance():
    """The measurement behind the backward stage's n/(n-1) correction (Paddle 3.3.1 vs torch)."""
    import paddle
    import torch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)) * 2 + 1
    n = 2 * 4 * 4
    biased = x.transpose(1, 0, 2, 3).reshape(3, -1).var(axis=1)
    t_bn = torch.nn.BatchNorm2d(3, momentum=0.1).double().train()
    t_bn(torch.from_numpy(x))
    p_bn = paddle.nn.BatchNorm2D(3, momentum=0.9)
    p_bn.to(dtype="float64")
    p_bn.train()
    p_bn(paddle.to_tensor(x))
    np.testing.assert_allclose(t_bn.running_var.numpy(), 0.9 + 0.1 * biased * n / (n - 1), rtol=1e-12)
    np.testing.assert_allclose(p_bn._variance.numpy(), 0.9 + 0.1 * biased, rtol=1e-6)  # float32 momentum


def test_hooked_logits_equal_the_models_logits():
    """The forward stage reads the logits off the eval forward with hooks (the model package's
    LOGIT_MODULES)."""
    import torch

    from align import forward
    from align.fixtures import get_fixture
    from align.sides import TORCH

    fx = get_fixture(AlignConfig(model="factseg", **SMALL))
    outputs = forward.side_outputs(fx, TORCH)
    fx.reset()
    with torch.no_grad():
        fg, bi = fx.torch_model.logits(torch.from_numpy(fx.x))
    assert np.array_equal(outputs["eval/fg_logits"], fg.numpy())
    assert np.array_equal(outputs["eval/bi_logits"], bi.numpy())


def test_checkpoint_input_and_wrong_model_checkpoint(tmp_path):
    """--torch-ckpt: an official-layout wrapper file aligns; a FarSeg file for FactSeg is bad input."""
    import torch

    import torch_ref
    from align import forward
    from align.fixtures import clear_cache

    torch.manual_seed(1)
    model = torch_ref.build_model("farseg")
    path = tmp_path / "farseg50.pth"
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}, "opt": {}, "global_step": 0}, path)
    del model
    clear_cache()
    result = forward.run(AlignConfig(model="farseg", torch_ckpt=str(path), **SMALL))
    assert result.passed, format_report(result)
    assert result.settings["weights"] == f"checkpoint {path}"
    clear_cache()
    with pytest.raises(AlignInputError, match="farseg50.pth: does not match the factseg layout"):
        forward.run(AlignConfig(model="factseg", torch_ckpt=str(path), **SMALL))
    clear_cache()

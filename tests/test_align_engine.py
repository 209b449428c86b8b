"""The engine behind ``align`` for any model pair (align.engine, align.pairing, the adapters).

Tiny models from tests/engine_pairs.py, in-process. Each check has a planted bug that it must
catch: a forward bug named at its layer, backward bugs named by step / kind / parameter, the
Linear layout rule, the BatchNorm running-variance conversion, the strict weight copy, the
adapter picked from the model's type. The command-line contract is tested in
tests/test_align_any.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import engine_pairs as pairs  # tests/engine_pairs.py
import numpy as np
import pytest

import align
from align import engine, pairing
from align.inputs import AlignInputError
from align.sides import PADDLE, TORCH, create_from

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
Y = np.array([1, 3], dtype=np.int64)
X_MLP = np.random.default_rng(1).standard_normal((4, 6))


def forward(paddle_factory: Any, dtype: str = "float64", torch_factory: Any = None, x: Any = X, **kw: Any) -> Any:
    torch_model = (torch_factory or pairs.torch_net)()
    (result,) = align.compare(torch_model, paddle_factory(), x, dtype=dtype, **kw)
    return result


def backward(paddle_factory: Any, dtype: str = "float64", **factories: Any) -> Any:
    options = dict(
        torch_loss=pairs.torch_loss,
        paddle_loss=pairs.paddle_loss,
        torch_optimizer=pairs.torch_sgd,
        paddle_optimizer=pairs.paddle_sgd,
    )
    options.update(factories)
    _, result = align.compare(pairs.torch_net(), paddle_factory(), X, targets=Y, dtype=dtype, steps=2, **options)
    return result


def test_adapter_is_picked_from_the_model_type() -> None:
    assert create_from(pairs.torch_net()) is TORCH
    assert create_from(pairs.paddle_same()) is PADDLE
    with pytest.raises(ValueError, match="neither a torch nn.Module nor a Paddle nn.Layer"):
        create_from(object())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("factory", ["paddle_same", "paddle_renamed", "paddle_compat"])
def test_clean_pairs_pass(factory: str, dtype: str) -> None:
    result = forward(getattr(pairs, factory), dtype)
    assert result.passed and result.first_divergence is None, result.failed_rows()
    assert result.structure == []


def test_renamed_pair_pairs_layers_and_containers() -> None:
    table = {(p["torch"], p["paddle"]) for p in forward(pairs.paddle_renamed).pairing}
    expected = {("stem", "features.0"), ("stem_bn", "features.1"), ("block", "body"), ("block.conv", "body.conv")}
    expected |= {("fc", "classifier"), ("relu", "features.2"), ("relu", "head_act"), ("pool", "gap")}
    assert expected <= table, table


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_bug_is_named_at_its_layer(dtype: str) -> None:
    result = forward(pairs.paddle_bad_act, dtype)
    d = result.first_divergence
    assert not result.passed
    assert (d.torch, d.paddle, d.stage, d.mode) == ("block.act", "block.act", "forward", "eval"), d


def test_a_bug_in_a_block_s_own_code_is_named_at_the_block() -> None:
    d = forward(pairs.paddle_bad_block).first_divergence
    assert (d.torch, d.paddle) == ("block", "block"), d


def test_square_linear_layout_comes_from_the_layer_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for factory in (pairs.paddle_mlp, pairs.paddle_mlp_compat):
        assert forward(factory, torch_factory=pairs.torch_mlp, x=X_MLP).passed
    # Planted: Paddle's Linear said to store [out, in] like torch: square weights go in untransposed.
    monkeypatch.setattr(type(PADDLE._adapter), "linear_layout", lambda self, module: "out_in")
    result = forward(pairs.paddle_mlp, torch_factory=pairs.torch_mlp, x=X_MLP)
    assert not result.passed and result.first_divergence.torch == "hidden"


def test_a_layer_on_one_side_only_is_named_not_copied_silently() -> None:
    with pytest.raises(AlignInputError, match=r"paddle tensors not assigned \(extra\.weight, extra\.bias\)"):
        forward(pairs.paddle_mlp_extra, torch_factory=pairs.torch_mlp, x=X_MLP)


def test_structural_mismatch_is_reported_as_such() -> None:
    torch_model, paddle_model = pairs.torch_net(), pairs.paddle_same()
    nn = PADDLE.package().nn
    paddle_model.block.act = nn.Sequential(nn.ReLU(), nn.Tanh())  # planted: a layer more
    (result,) = align.compare(torch_model, paddle_model, X)
    assert result.structure == ["paddle only: block.act.1 (tanh)"], result.structure
    assert {"torch": "block.act", "paddle": "block.act.0"} in result.pairing
    assert "layers on one side only" in result.first_divergence.summary
    assert "not called" not in json.dumps(result.to_json())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clean_backward_passes(dtype: str) -> None:
    result = backward(pairs.paddle_renamed, dtype)
    assert result.passed, result.failed_rows()[:3]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_optimiser_bug_is_named_by_step_kind_parameter(dtype: str) -> None:
    d = backward(pairs.paddle_renamed, dtype, paddle_optimizer=pairs.paddle_bad_momentum).first_divergence
    assert (d.step, d.kind, d.stage) == (2, "param", "backward"), d  # momentum acts from step 2
    assert d.torch == d.parameter and d.paddle is not None and d.torch.split(".")[0] in ("fc", "block", "stem")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_bug_is_named_at_step_1(dtype: str) -> None:
    d = backward(pairs.paddle_same, dtype, paddle_loss=pairs.paddle_bad_loss).first_divergence
    assert (d.step, d.kind) == (1, "loss"), d


def test_running_variance_conversion_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    from align.batchnorm import BatchNormRecorder

    assert backward(pairs.paddle_same).passed
    # Planted: torch's unbiased running variance compared as it is.
    monkeypatch.setattr(BatchNormRecorder, "paddle_equivalent_var", lambda self, name, var, steps: var)
    d = backward(pairs.paddle_same).first_divergence
    assert (d.step, d.kind) == (1, "buffer") and d.torch.endswith("running_var"), d


def test_pairing_modes_and_map(tmp_path: Path) -> None:
    t_calls = [pairing.Call(n, 0, "conv2d", ()) for n in ("a", "b", "c")]
    p_calls = [pairing.Call(n, 0, "conv2d", ()) for n in ("x", "b", "y")]
    auto = pairing.pair_calls(t_calls, p_calls, "auto")
    assert auto.modules == [("a", "x"), ("b", "b"), ("c", "y")]
    assert pairing.pair_calls(t_calls, p_calls, "name").modules == [("b", "b")]
    mapped = pairing.pair_calls(t_calls, p_calls, "auto", {"a": "y", "c": "x"})
    assert ("a", "y") in mapped.modules and ("c", "x") in mapped.modules
    # A layer on one side only stays unpaired (structure), its neighbours still pair.
    extra = pairing.pair_calls(t_calls, [p_calls[0], pairing.Call("r", 0, "relu", ()), *p_calls[1:]], "order")
    assert extra.modules == [("a", "x"), ("b", "b"), ("c", "y")] and extra.paddle_only == [1]


def test_divergence_plot_is_written_or_skipped_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from align import plot

    forward(pairs.paddle_bad_act, out=str(tmp_path / "a"))
    png = tmp_path / "a" / "forward" / "divergence.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    diff = json.loads((tmp_path / "a" / "forward" / "diff.json").read_text())
    assert diff["passed"] is False and diff["first_divergence"]["torch"] == "block.act"
    assert {"torch": "fc", "paddle": "fc"} in diff["pairing"]
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    result = forward(pairs.paddle_same, out=str(tmp_path / "b"))
    assert plot.INSTALL_HINT in result.notes
    assert not (tmp_path / "b" / "forward" / "divergence.png").exists()


def test_divergence_plot_labels_do_not_overlap() -> None:
    """Two curves diverging at the same layer (a backward run: gradients and parameters of one
    step): their "first divergence" labels do not overlap each other."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from align import plot
    from align.compare import Tolerance, compare_arrays

    def curve(prefix: str) -> List[Any]:
        tol = Tolerance(1e-6)
        return [
            compare_arrays(f"{prefix}/layer{i}.weight", np.ones(3), np.ones(3) * (1 + 10.0 ** (i - 8)), tol, "grad")
            for i in range(6)
        ]

    fig = plot.divergence_figure({"step 2 gradients": curve("g"), "step 2 parameters": curve("p")}, "t")
    try:
        renderer = fig.canvas.get_renderer()
        labels = [t for t in fig.axes[0].texts if t.get_text().startswith("first divergence")]
        assert len(labels) == 2
        # The text boxes only (an Annotation's own extent includes its arrow).
        a, b = (matplotlib.text.Text.get_window_extent(t, renderer) for t in labels)
        assert not a.overlaps(b), (a, b)
    finally:
        plt.close(fig)


def test_spec_and_file_readers_refuse_bad_input(tmp_path: Path) -> None:
    from align import spec

    bad: List[Any] = [
        lambda: spec.load_spec("nowhere.py:f", "--torch"),
        lambda: spec.load_spec("no_colon", "--torch"),
        lambda: spec.read_inputs("2x0x4", "float64", 0),
        lambda: spec.read_targets("2x4:5:5", "float64", 0),
    ]
    pickled = tmp_path / "p.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bad.append(lambda: spec.read_inputs(str(pickled), "float64", 0))
    huge = tmp_path / "map.json"
    huge.write_bytes(b"{" + b" " * (spec.MAX_MAP_BYTES + 1) + b"}")
    bad.append(lambda: spec.read_pair_map(str(huge)))
    for call in bad:
        with pytest.raises(AlignInputError):
            call()
    assert engine.ENGINE_MODEL == "pair"


def test_weight_files_load_strictly_and_in_their_own_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import paddle
    import torch

    from align import anycli

    torch_model, paddle_model = pairs.torch_mlp(), pairs.paddle_mlp()
    torch.save(torch_model.state_dict(), tmp_path / "t.pth")
    state = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    paddle_model.set_state_dict({k: v.T if k.endswith("weight") else v for k, v in state.items()})
    paddle.save(paddle_model.state_dict(), str(tmp_path / "p.pdparams"))
    base = ["--torch", "tests/engine_pairs.py:torch_mlp", "--paddle", "tests/engine_pairs.py:paddle_mlp"]
    base += ["--inputs", "4x6", "--out", str(tmp_path / "out")]
    files = ["--torch-weights", str(tmp_path / "t.pth"), "--paddle-weights", str(tmp_path / "p.pdparams")]
    assert anycli.main("forward", base + files) == 0
    # Planted: the torch file given as the Paddle weights (square Linear: shapes alone cannot tell).
    capsys.readouterr()
    assert anycli.main("forward", base + ["--paddle-weights", str(tmp_path / "t.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a torch checkpoint" in err[0]


def test_integer_inputs_and_a_model_that_needs_the_whole_batch() -> None:
    ids = np.array([[1, 2, 3], [4, 5, 10]], dtype=np.int64)
    for dtype in ("float32", "float64"):
        result = forward(pairs.paddle_tokens, dtype, torch_factory=pairs.torch_tokens, x=ids)
        assert result.passed, result.failed_rows()
    assert {"torch": "head", "paddle": "head"} in result.pairing


def test_float32_gradient_bound_follows_torchs_own_float32_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 backward: each step's gradient bound is max(fixed, FLOAT32_BAND_MARGIN x torch's
    worst error against its float64 twin). A small net keeps the fixed bound; a twin whose
    gradients sit 20% off (what a deep BatchNorm net's float32 does, ResNet-50 at 224 px: 0.17)
    widens it to 3 x 0.2 / 1.2 = 0.5, and the note says so."""
    clean = backward(pairs.paddle_same, "float32")
    assert clean.passed
    assert {r.tol.rtol for r in clean.rows if "/grad/" in r.name} == {0.1}
    real = engine._float64_grads

    def off_by_a_fifth(*args: Any) -> Any:
        return {name: grad * 1.2 for name, grad in real(*args).items()}

    monkeypatch.setattr(engine, "_float64_grads", off_by_a_fifth)
    widened = backward(pairs.paddle_same, "float32")
    assert {r.tol.rtol for r in widened.rows if "/grad/" in r.name} == {0.5}
    assert any("float32 gradient bound 0.5" in note for note in widened.notes), widened.notes

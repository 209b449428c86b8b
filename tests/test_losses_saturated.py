"""The losses on logits of a confident model (logit gaps in the hundreds, mislabelled pixels,
binary logits of +-40 and beyond): Paddle equals torch in float64 at align's usual thresholds.

Paddle 3.3.1 clamps ``F.log_softmax`` / ``F.softmax`` / ``F.cross_entropy`` at a log-probability
of -64 and its ``F.log_sigmoid`` drops log1p's precision (docs/paddle_numerics.md), so
paddle_impl.losses uses its own ``log_softmax`` / ``log_sigmoid``. The planted tests put
Paddle's primitives back and see the comparison fail.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn.functional as PF
import pytest
import torch
import torch.nn.functional as TF
from test_models import official_annealing_loss  # tests/test_models.py: the official formula

from align.compare import compare_arrays, tolerances
from align.saturated import saturated_inputs
from paddle_impl import losses as paddle_losses
from torch_ref import losses as torch_losses

SHAPE = (2, 16, 32, 32)
TOL = tolerances("float64")
STEPS = [1, 5000, 30000]  # inside the cosine ramp (two weights) and after it (pure focal)


@pytest.fixture(scope="module")
def inputs():
    return saturated_inputs(SHAPE, seed=2333)


def farseg_losses(fg, labels, step):
    """(torch, paddle): each a (loss, gradient w.r.t. the logits) of FarSeg's loss."""
    t_logits = torch.tensor(fg, requires_grad=True)
    t_loss = torch_losses.annealing_softmax_focal_loss(t_logits, torch.from_numpy(labels), step)
    t_loss.backward()
    p_logits = paddle.to_tensor(fg, stop_gradient=False)
    p_loss = paddle_losses.annealing_softmax_focal_loss(p_logits, paddle.to_tensor(labels), step)
    p_loss.backward()
    return (t_loss.item(), t_logits.grad.numpy()), (p_loss.item(), p_logits.grad.numpy())


def factseg_values(fg, bi, labels):
    """name -> (torch value, paddle value): joint loss, its gradients, fused log-probs and probs."""
    t_fg, t_bi = torch.tensor(fg, requires_grad=True), torch.tensor(bi, requires_grad=True)
    t_loss = torch_losses.joint_loss(t_fg, t_bi, torch.from_numpy(labels))
    t_loss.backward()
    p_fg, p_bi = paddle.to_tensor(fg, stop_gradient=False), paddle.to_tensor(bi, stop_gradient=False)
    p_loss = paddle_losses.joint_loss(p_fg, p_bi, paddle.to_tensor(labels))
    p_loss.backward()
    with torch.no_grad():
        t_log_p = torch_losses.joint_log_probs(torch.tensor(fg), torch.tensor(bi)).numpy()
    with paddle.no_grad():
        p_log_p = paddle_losses.joint_log_probs(paddle.to_tensor(fg), paddle.to_tensor(bi)).numpy()
    return {
        "joint_loss": (t_loss.item(), p_loss.item()),
        "grad_fg_logits": (t_fg.grad.numpy(), p_fg.grad.numpy()),
        "grad_bi_logits": (t_bi.grad.numpy(), p_bi.grad.numpy()),
        "fused_log_probs": (t_log_p, p_log_p),
        "fused_probs": (np.exp(t_log_p), np.exp(p_log_p)),
    }


def farseg_rows(fg, labels, step):
    (t_loss, t_grad), (p_loss, p_grad) = farseg_losses(fg, labels, step)
    return [
        compare_arrays("loss", t_loss, p_loss, TOL["loss"], "loss"),
        compare_arrays("grad_logits", t_grad, p_grad, TOL["loss"], "loss"),
    ]


def factseg_rows(fg, bi, labels):
    rows = []
    for name, (t_value, p_value) in factseg_values(fg, bi, labels).items():
        kind = "forward" if name.startswith("fused") else "loss"  # the eval output is a forward value
        rows.append(compare_arrays(name, t_value, p_value, TOL[kind], kind))
    return rows


def describe(rows):
    return "; ".join(f"{r.name}: rel {r.rel:.2e} (<= {r.tol.rtol:.0e}: {r.passed})" for r in rows)


# ----------------------------------------------------------------------------------------------
# The fixture reaches the regime
# ----------------------------------------------------------------------------------------------


def test_fixture_is_saturated(inputs):
    fg, bi, labels = inputs
    top2 = np.sort(fg, axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    valid = labels != 255
    true_logit = np.take_along_axis(fg, np.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    trailing = (fg.max(axis=1) - true_logit)[valid]
    assert (gaps > 100).mean() > 0.8  # gaps in the hundreds
    assert (trailing > 64).mean() > 0.1  # mislabelled pixels beyond Paddle's clamp
    assert np.abs(bi).max() >= 40 and (np.abs(bi) >= 20).mean() > 0.8 and (bi == 0).sum() > 0
    assert (labels == 255).mean() > 0.05


# ----------------------------------------------------------------------------------------------
# Paddle equals torch, and torch equals the official formula, in this regime
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_farseg_loss_and_gradient_equal_torch(inputs, step):
    fg, _, labels = inputs
    rows = farseg_rows(fg, labels, step)
    assert all(r.passed for r in rows), describe(rows)


@pytest.mark.parametrize("step", STEPS)
def test_torch_farseg_loss_equals_the_official_formula_when_saturated(inputs, step):
    """torch's own F.cross_entropy / softmax are exact here: torch_ref is the right reference."""
    fg, _, labels = inputs
    ref_logits = torch.tensor(fg, requires_grad=True)
    ref = official_annealing_loss(ref_logits, torch.from_numpy(labels), step)
    ref.backward()
    (t_loss, t_grad), _ = farseg_losses(fg, labels, step)
    assert abs(t_loss - ref.item()) <= 1e-12 * abs(ref.item())
    assert np.abs(t_grad - ref_logits.grad.numpy()).max() <= 1e-12 * np.abs(ref_logits.grad.numpy()).max()


def test_factseg_loss_gradients_and_fused_probabilities_equal_torch(inputs):
    rows = factseg_rows(*inputs)
    assert all(r.passed for r in rows), describe(rows)


def test_factseg_fused_probabilities_equal_a_direct_formula(inputs):
    """log P = log q_c + log sigmoid(+-bi), renormalised, written in numpy extended precision."""
    fg, bi, _ = inputs
    x = fg.astype(np.longdouble)
    log_q = x - x.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    b = bi.astype(np.longdouble)
    log_sig = np.minimum(b, 0) - np.log1p(np.exp(-np.abs(b)))  # log sigmoid(b)
    log_sig_neg = np.minimum(-b, 0) - np.log1p(np.exp(-np.abs(b)))  # log sigmoid(-b)
    joint = np.concatenate([log_q[:, :1] + log_sig_neg, log_q[:, 1:] + log_sig], axis=1)
    top = joint.max(axis=1, keepdims=True)
    ref = joint - top - np.log(np.exp(joint - top).sum(axis=1, keepdims=True))
    with paddle.no_grad():
        got = paddle_losses.joint_log_probs(paddle.to_tensor(fg), paddle.to_tensor(bi)).numpy()
    assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()


# ----------------------------------------------------------------------------------------------
# The exact helpers, elementwise, against torch's primitives (values and gradients)
# ----------------------------------------------------------------------------------------------

# Looked up in paddle_impl.losses at call time, so that the planted tests' patches apply.
HELPERS = {
    "log_softmax": (lambda x: paddle_losses.log_softmax(x, axis=1), lambda x: TF.log_softmax(x, dim=1)),
    "log_sigmoid": (lambda x: paddle_losses.log_sigmoid(x), TF.logsigmoid),
}
# Paddle's own primitives, the ones the helpers replace.
PADDLE_PRIMITIVES = {"log_softmax": lambda x, axis: PF.log_softmax(x, axis=axis), "log_sigmoid": PF.log_sigmoid}


def elementwise_error(name, inputs):
    """max over elements of |paddle - torch| / max(|torch|, tiny), for the value and the gradient."""
    fg, bi, _ = inputs
    x = fg if name == "log_softmax" else bi
    p_fn, t_fn = HELPERS[name]
    weights = np.random.default_rng(0).standard_normal(x.shape)  # a generic upstream gradient
    px = paddle.to_tensor(x, stop_gradient=False)
    p_out = p_fn(px)
    (p_out * paddle.to_tensor(weights)).sum().backward()
    tx = torch.tensor(x, requires_grad=True)
    t_out = t_fn(tx)
    (t_out * torch.from_numpy(weights)).sum().backward()
    tiny = np.finfo(np.float64).tiny
    errors = {}
    for what, p, t in (("value", p_out.numpy(), t_out.detach().numpy()), ("grad", px.grad.numpy(), tx.grad.numpy())):
        errors[what] = float(np.max(np.abs(p - t) / np.maximum(np.abs(t), tiny)))
    return errors


@pytest.mark.parametrize("name", list(HELPERS))
def test_exact_helpers_equal_torch_elementwise(inputs, name):
    errors = elementwise_error(name, inputs)
    assert errors["value"] <= 1e-12 and errors["grad"] <= 1e-12, errors


# ----------------------------------------------------------------------------------------------
# Planted: Paddle's clamped / imprecise primitive back in paddle_impl.losses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PADDLE_PRIMITIVES))
def test_planted_paddle_primitive_fails_the_elementwise_check(inputs, name, monkeypatch):
    monkeypatch.setattr(paddle_losses, name, PADDLE_PRIMITIVES[name])
    errors = elementwise_error(name, inputs)
    assert errors["value"] > 1e-3, errors  # -64 for -200; 0 for -exp(-40)


@pytest.mark.parametrize("step", STEPS)
def test_planted_clamped_log_softmax_fails_farseg(inputs, step, monkeypatch):
    monkeypatch.setattr(paddle_losses, "log_softmax", PADDLE_PRIMITIVES["log_softmax"])
    fg, _, labels = inputs
    rows = {r.name: r for r in farseg_rows(fg, labels, step)}
    assert not rows["loss"].passed and rows["loss"].rel > 0.1, describe(rows.values())
    # The gradient of the plain cross entropy (p - onehot) survives the clamp; the focal weights,
    # renormalised by sum(l) / sum(l*m), do not. At step 1 they carry weight 1 - a(1) = 2.5e-8.
    if step > 1:
        grad = rows["grad_logits"]
        assert not grad.passed and grad.rel > 1e3 * TOL["loss"].rtol, describe(rows.values())


def test_planted_clamped_log_softmax_fails_factseg(inputs, monkeypatch):
    monkeypatch.setattr(paddle_losses, "log_softmax", PADDLE_PRIMITIVES["log_softmax"])
    rows = {r.name: r for r in factseg_rows(*inputs)}
    failed = {name for name, r in rows.items() if not r.passed}
    # Every compared value leaves torch's: the loss, both gradients, the fused distribution
    # (log-probabilities by -64 against -200; probabilities flip where the branches disagree).
    assert failed == set(rows), describe(rows.values())
    assert rows["joint_loss"].rel > 0.1 and rows["fused_probs"].rel > 0.5, describe(rows.values())


# ----------------------------------------------------------------------------------------------
# The align loss stage: its saturated rows pass clean and catch the planted clamp
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["farseg", "factseg"])
def test_align_loss_stage_catches_the_clamped_log_softmax(model, monkeypatch):
    from align import AlignConfig, loss
    from align.compare import format_report

    config = AlignConfig(model=model, dtype="float64", batch=2, size=64, out=None)
    clean = loss.run(config)
    saturated = [r for r in clean.rows if r.name.startswith("saturated/")]
    assert clean.passed and len(saturated) == (6 if model == "farseg" else 5), format_report(clean)
    monkeypatch.setattr(paddle_losses, "log_softmax", PADDLE_PRIMITIVES["log_softmax"])
    planted = loss.run(config)
    failed = {r.name for r in planted.failed_rows()}
    # N(0, 3^2) logits never reach the clamp: only the saturated rows fail, and the report says so.
    assert failed and all(name.startswith("saturated/") for name in failed), format_report(planted)
    assert planted.first_divergence.where.startswith("saturated/")
    if model == "factseg":
        assert {"saturated/joint_loss", "saturated/fused_probs"} <= failed


# ----------------------------------------------------------------------------------------------
# docs/paddle_numerics.md still describes the installed Paddle
# ----------------------------------------------------------------------------------------------


def _clamping_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paddle_clamping.py"
    spec = importlib.util.spec_from_file_location("paddle_clamping", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_paddle_numerics_note_matches_the_installed_paddle(dtype):
    """If a Paddle release fixes (or moves) the clamp, this says the note is out of date."""
    results = _clamping_script().measure(dtype)
    verdicts = {name: (entry["verdict"], entry["onset"]) for name, entry in results.items()}
    for name in ("log_softmax", "softmax", "cross_entropy", "softmax_with_cross_entropy"):
        assert verdicts[name] == ("wrong", "gap 70"), (name, verdicts[name])
    for name in (
        "paddle_impl.losses.log_softmax",
        "paddle_impl.losses.log_sigmoid",
        "x - logsumexp(x)",
        "logsumexp",
        "sigmoid",
        "exp",
        "log",
        "log1p",
    ):
        assert verdicts[name][0] == "exact", (name, verdicts[name])
    assert verdicts["log_sigmoid"][0] == "imprecise" and verdicts["softplus"][0] == "imprecise"
    assert verdicts["bce_with_logits(label=1)"] == ("wrong", "x 0")

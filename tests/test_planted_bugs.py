"""Each planted porting bug makes the right stage fail AND the report names the right place.

The bugs are planted in-process (pytest ``monkeypatch``) in paddle_impl -- module functions,
or attributes of the one Paddle model the fixture built -- and, for the trainer, in
``paddle_impl.train.build_optimizer`` (tests/trainer_bugs.py): what the backward stage runs is
the trainer's own optimiser, scheduler and ``TrainStep``, so a bug there is a bug in training.
``monkeypatch`` undoes each one, so the cached fixture is reused clean by the next test. float64
(the default) keeps the signal crisp: a correct port agrees to ~1e-10, every bug here moves a
value by far more than the thresholds.

Backward bugs that show on the first step run one step only (the stage's sharpest checks are
the step-1 gradients, parameters and BatchNorm statistics); momentum and scheduler bugs, which
only show from step 2, run two. Not planted: fp16 clipping before unscaling, which needs an fp16
pair, and Paddle 3.3.1 has no CPU mixed precision (tests/test_train.py::test_paddle_amp_on_cpu).
"""

from __future__ import annotations

import math

import pytest
from trainer_bugs import plant  # tests/trainer_bugs.py

from align import AlignConfig, backward, forward, loss, metric
from align.cli import main_for
from align.compare import format_report
from align.fixtures import get_fixture

FARSEG = AlignConfig(model="farseg", dtype="float64", batch=2, size=64, out=None)
FACTSEG = AlignConfig(model="factseg", dtype="float64", batch=2, size=64, out=None)
# Bugs that the looser float32 thresholds (set from the measured float32 rounding floor) must
# catch as well.
BOTH_DTYPES = pytest.mark.parametrize("config", [FARSEG, FARSEG.with_(dtype="float32")], ids=["float64", "float32"])


def _wrong_upsample(layer):
    """A bilinear upsample with align_corners=False (the official one uses True)."""
    import paddle.nn.functional as F

    def forward_(x):
        return F.interpolate(x, scale_factor=layer.scale_factor, mode="bilinear", align_corners=False)

    return forward_


def _assert_fails(result, *, message=""):
    assert not result.passed, f"the planted bug went unnoticed ({message})\n" + format_report(result)
    assert result.first_divergence is not None


# ----------------------------------------------------------------------------------------------
# FarSeg
# ----------------------------------------------------------------------------------------------


@BOTH_DTYPES
def test_farseg_decoder_upsample_align_corners_false(monkeypatch, config):
    fx = get_fixture(config)
    stage = fx.paddle_model.decoder.blocks[1][0][3]  # the stride-8 block's x2 upsample
    monkeypatch.setattr(stage, "forward", _wrong_upsample(stage))
    result = forward.run(config, fx)
    _assert_fails(result)
    assert not result.row("eval/logits").passed and not result.row("eval/probs").passed
    assert result.first_divergence.where == "decoder.blocks.1.0.3", result.first_divergence
    assert "decoder.blocks.1.0.3" in "\n".join(result.localisation.lines)


def test_farseg_relation_from_reencoded_features(monkeypatch):
    fx = get_fixture(FARSEG)
    sr = fx.paddle_model.sr

    def swapped(scene, features):
        # (content encoders still run, so every module is called as in torch_ref)
        content = [encode(f) for encode, f in zip(sr.content_encoders, features)]
        scenes = [encode(scene) for encode in sr.scene_encoder]
        reencoded = [encode(f) for encode, f in zip(sr.feature_reencoders, features)]
        # BUG: the relation must come from the CONTENT features, not the re-encoded ones.
        relations = [sr.normalizer((s * r).sum(axis=1, keepdim=True)) for s, r in zip(scenes, reencoded)]
        del content
        return [r * p for r, p in zip(relations, reencoded)]

    monkeypatch.setattr(sr, "forward", swapped)
    result = forward.run(FARSEG, fx)
    _assert_fails(result)
    assert result.first_divergence.where == "sr.normalizer", result.first_divergence


@BOTH_DTYPES
def test_farseg_batchnorm_momentum_0_1(monkeypatch, config):
    import paddle

    fx = get_fixture(config)
    for layer in fx.paddle_model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            monkeypatch.setattr(layer, "_momentum", 0.1)  # PaddleRS's bug: torch momentum 0.9
    result = backward.run(config.with_(steps=1), fx)
    _assert_fails(result)
    failed = {r.name.split("/")[1] for r in result.failed_rows()}
    assert failed == {"running_mean", "running_var"}, failed  # gradients and parameters agree
    assert "BatchNorm running_mean of en.resnet.bn1" in result.first_divergence.where
    assert "running-statistics update" in result.first_divergence.summary


@BOTH_DTYPES
def test_farseg_loss_without_plus_batch_size(monkeypatch, config):
    import paddle_impl.farseg
    import paddle_impl.losses

    original = paddle_impl.losses.annealing_softmax_focal_loss

    def without_batch(logits, target, step, *args, **kwargs):
        valid = float((target != 255).astype("float64").sum())
        loss_value = original(logits, target, step, *args, **kwargs)
        if valid == 0:  # the all-ignored case: 0 either way
            return loss_value
        # BUG: sum / N_valid instead of sum / (N_valid + batch size)
        return loss_value * ((valid + logits.shape[0]) / valid)

    monkeypatch.setattr(paddle_impl.losses, "annealing_softmax_focal_loss", without_batch)
    monkeypatch.setattr(paddle_impl.farseg, "annealing_softmax_focal_loss", without_batch)
    result = loss.run(config, get_fixture(config))
    _assert_fails(result)
    assert result.first_divergence.where == "step1/loss"
    assert not result.row("step5000/grad_logits").passed and not result.row("model/cls_loss").passed
    assert result.row("identity/paddle/value_step5000_eq_step0").passed  # the identity still holds


def test_farseg_annealing_identity_catches_unnormalised_weights(monkeypatch):
    import paddle
    import paddle.nn.functional as F

    import paddle_impl.losses

    def unnormalised(logits, target, step, *args, **kwargs):
        # BUG: w = a + (1-a) * (1-p)^2, without the renormalisation z = sum(l) / sum(l*m)
        valid = target != 255
        safe = paddle.where(valid, target, paddle.zeros_like(target)).unsqueeze(1)
        losses = -paddle.take_along_axis(F.log_softmax(logits, axis=1), safe, axis=1).squeeze(1) * valid.astype(
            logits.dtype
        )
        with paddle.no_grad():
            p = paddle.take_along_axis(F.softmax(logits, axis=1), safe, axis=1).squeeze(1)
            a = 0.0 if step > 10000 else (math.cos(math.pi * step / 10000) + 1) / 2
            weights = a + (1 - a) * (1 - p) ** 2
        return (losses * weights).sum() / (valid.astype(logits.dtype).sum() + logits.shape[0])

    monkeypatch.setattr(paddle_impl.losses, "annealing_softmax_focal_loss", unnormalised)
    result = loss.run(FARSEG, get_fixture(FARSEG))
    _assert_fails(result)
    assert not result.row("identity/paddle/value_step5000_eq_step0").passed
    assert result.row("identity/torch/value_step5000_eq_step0").passed


def test_farseg_all_ignored_batch_not_guarded(monkeypatch):
    import paddle_impl.losses

    original = paddle_impl.losses.annealing_softmax_focal_loss

    def unguarded(logits, target, step, *args, **kwargs):
        if not bool((target != 255).any()):
            return (logits * float("nan")).sum()  # the official 0/0
        return original(logits, target, step, *args, **kwargs)

    monkeypatch.setattr(paddle_impl.losses, "annealing_softmax_focal_loss", unguarded)
    result = loss.run(FARSEG, get_fixture(FARSEG))
    _assert_fails(result)
    assert not result.row("all_ignored/loss").passed and result.row("step1/loss").passed


def test_farseg_train_mode_batchnorm_uses_running_statistics(monkeypatch):
    import paddle

    fx = get_fixture(FARSEG)
    for layer in fx.paddle_model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            monkeypatch.setattr(layer, "_use_global_stats", True)
    result = forward.run(FARSEG, fx)
    _assert_fails(result)
    assert result.row("eval/probs").passed and not result.row("train/logits").passed
    assert result.first_divergence.mode == "train"
    assert result.first_divergence.where == "en.resnet.bn1"


def test_farseg_converter_swapping_one_batchnorm_mean_and_variance(monkeypatch):
    # As if the converter had mapped running_mean -> _variance and back for one BatchNorm: the
    # converted state that every reset() loads into the Paddle model is planted.
    fx = get_fixture(FARSEG)
    key = "en.resnet.layer2.1.bn2"
    mean, var = fx.paddle_state[f"{key}._mean"], fx.paddle_state[f"{key}._variance"]
    monkeypatch.setitem(fx.paddle_state, f"{key}._mean", var)
    monkeypatch.setitem(fx.paddle_state, f"{key}._variance", mean**2 + 0.5)  # kept positive
    fx.mark_dirty()
    try:
        result = forward.run(FARSEG, fx)
    finally:
        fx.mark_dirty()  # the next reset() reloads the correct state (monkeypatch restores it)
    _assert_fails(result)
    assert result.first_divergence.mode == "eval"
    assert result.first_divergence.where == key


def test_farseg_gradient_bug_is_localised_in_backward_order(monkeypatch):
    import paddle.nn.functional as F

    fx = get_fixture(FARSEG)
    relu = fx.paddle_model.decoder.blocks[0][0][2]

    def relu_wrong_gradient(x):
        # Same forward value, gradient + 0.5: only the backward pass can see it.
        return F.relu(x) + 0.5 * (x - x.detach())

    monkeypatch.setattr(relu, "forward", relu_wrong_gradient)
    result = backward.run(FARSEG.with_(steps=1), fx)
    _assert_fails(result)
    assert result.row("step1/loss").passed
    assert result.first_divergence.where.startswith("decoder.blocks.0.0.1."), result.first_divergence
    assert "backward-execution order" in result.localisation.lines[0]


def test_farseg_confusion_matrix_transposed(monkeypatch):
    import paddle_impl.metrics

    original = paddle_impl.metrics.confusion_matrix
    monkeypatch.setattr(paddle_impl.metrics, "confusion_matrix", lambda *a, **k: original(*a, **k).T)
    result = metric.run(FARSEG, get_fixture(FARSEG))
    _assert_fails(result)
    assert result.first_divergence.where == "random/confusion"
    assert result.row("random/confusion_vs_numpy").passed  # the torch count is right


# ----------------------------------------------------------------------------------------------
# FactSeg
# ----------------------------------------------------------------------------------------------


def test_factseg_som_ratio_0_2(monkeypatch):
    import paddle_impl.losses

    original = paddle_impl.losses.small_object_mining
    monkeypatch.setattr(paddle_impl.losses, "small_object_mining", lambda losses, ratio=0.1: original(losses, 0.2))
    result = loss.run(FACTSEG, get_fixture(FACTSEG))
    _assert_fails(result)
    assert result.first_divergence.where == "joint_loss"
    assert not result.row("grad_fg_logits").passed


def test_factseg_k_from_valid_pixels_only(monkeypatch):
    import paddle

    import paddle_impl.losses as L

    def k_from_valid(fg_logits, bi_logits, target, ratio=0.1, ignore_index=255):
        valid = target != ignore_index
        safe = paddle.where(valid, target, paddle.zeros_like(target)).unsqueeze(1)
        log_p = L.joint_log_probs(fg_logits, bi_logits)
        losses = -paddle.take_along_axis(log_p, safe, axis=1).squeeze(1) * valid.astype(log_p.dtype)
        k = int(ratio * int(valid.astype("int64").sum()))  # BUG: N must count ignored pixels too
        top, _ = paddle.topk(losses.reshape([-1]), k)
        nonzero = top != 0
        return paddle.masked_select(top, nonzero).sum() / (nonzero.astype(top.dtype).sum() + 1e-6)

    monkeypatch.setattr(L, "joint_loss", k_from_valid)
    result = loss.run(FACTSEG, get_fixture(FACTSEG))
    _assert_fails(result)
    assert result.first_divergence.where == "joint_loss"


def test_factseg_binary_head_upsample_align_corners_false(monkeypatch):
    fx = get_fixture(FACTSEG)
    monkeypatch.setattr(fx.paddle_model.bi_upsample, "forward", _wrong_upsample(fx.paddle_model.bi_upsample))
    result = forward.run(FACTSEG, fx)
    _assert_fails(result)
    assert result.row("eval/fg_logits").passed and not result.row("eval/bi_logits").passed
    assert result.first_divergence.where == "bi_upsample"


def test_factseg_softmax_and_sigmoid_swapped_in_the_fusion(monkeypatch):
    import paddle
    import paddle.nn.functional as F

    import paddle_impl.factseg
    import paddle_impl.losses

    def swapped(fg_logits, bi_logits):
        log_q = F.log_sigmoid(fg_logits)  # BUG: sigmoid where the multi-class branch needs softmax,
        log_fg = F.log_softmax(bi_logits, axis=1)  # and softmax where the binary one needs sigmoid
        log_bg = paddle.log(1.0 - paddle.exp(log_fg))
        joint = paddle.concat([log_q[:, :1] + log_bg, log_q[:, 1:] + log_fg], axis=1)
        return joint - paddle.logsumexp(joint, axis=1, keepdim=True)

    monkeypatch.setattr(paddle_impl.losses, "joint_log_probs", swapped)
    monkeypatch.setattr(paddle_impl.factseg, "joint_log_probs", swapped)
    fx = get_fixture(FACTSEG)
    result = forward.run(FACTSEG, fx)
    _assert_fails(result)
    assert result.row("eval/fg_logits").passed and not result.row("eval/probs").passed
    # No module output differs: the localiser says the fusion is in forward() code, not a layer.
    assert result.first_divergence.where is None
    assert "outside the modules" in result.first_divergence.summary
    _assert_fails(loss.run(FACTSEG, fx), message="loss stage")


# ----------------------------------------------------------------------------------------------
# The trainer (issue 9): bugs planted in paddle_impl.train.build_optimizer, caught by align.backward
# ----------------------------------------------------------------------------------------------


def _optimiser_step_differs(result, step):
    assert all(r.passed for r in result.rows if r.name.startswith(f"step{step}/grad"))  # gradients agree
    assert f"step {step}: parameter" in result.first_divergence.where
    assert "after the update" in result.first_divergence.where
    assert "optimiser step differs" in result.first_divergence.summary


@pytest.mark.parametrize("config", [FARSEG, FARSEG.with_(dtype="float32")], ids=["float64", "float32"])
def test_trainer_per_tensor_clipping(monkeypatch, config):
    # float64: ClipGradByNorm's rule written with float64-capable ops; float32: Paddle's own class.
    plant(monkeypatch, "per_tensor_clip")
    result = backward.run(config.with_(steps=1), get_fixture(config))
    _assert_fails(result)
    _optimiser_step_differs(result, 1)
    assert any("clipping binds" in n for n in result.notes)


def test_trainer_weight_decay_x10(monkeypatch):
    plant(monkeypatch, "weight_decay_x10")
    result = backward.run(FARSEG.with_(steps=1), get_fixture(FARSEG))
    _assert_fails(result)
    _optimiser_step_differs(result, 1)


@pytest.mark.parametrize("bug", ["poly_power_1", "scheduler_twice"])
def test_trainer_scheduler_bugs_show_at_step_2(monkeypatch, bug):
    plant(monkeypatch, bug)
    result = backward.run(FARSEG.with_(steps=2), get_fixture(FARSEG))
    _assert_fails(result)
    assert result.row("step1/lr").passed and not result.row("step2/lr").passed
    assert result.first_divergence.where == "step 2: lr"


def test_trainer_momentum_0_shows_at_step_2(monkeypatch):
    plant(monkeypatch, "momentum_0")
    result = backward.run(FARSEG.with_(steps=2), get_fixture(FARSEG))
    _assert_fails(result)
    assert all(r.passed for r in result.rows if r.name.startswith("step1/"))  # step 1 has no momentum yet
    _optimiser_step_differs(result, 2)
    # Caught with a wide margin: the measured clean step-2 parameters differ by ~3e-11.
    worst = max(r.rel for r in result.rows if r.name.startswith("step2/param/"))
    assert worst > 100 * result.row("step2/param/en.resnet.conv1.weight").tol.rtol


def test_trainer_gradients_not_cleared(monkeypatch):
    plant(monkeypatch, "gradients_not_cleared")
    result = backward.run(FARSEG.with_(steps=2), get_fixture(FARSEG))
    _assert_fails(result)
    assert all(r.passed for r in result.rows if r.name.startswith("step1/"))
    assert result.row("step2/loss").passed and not result.row("step2/grad_norm").passed
    assert result.localisation.step == 2  # named at the first gradient in backward order
    assert result.first_divergence.where == result.localisation.first


def test_cli_backward_fails_and_says_what_differs(monkeypatch, capsys, tmp_path):
    """As a user would alter the trainer from outside: ``python -m align.backward --model farseg``
    exits 1 and names the optimiser step as what differs."""
    plant(monkeypatch, "weight_decay_x10")
    code = main_for("backward", ["--model", "farseg", "--steps", "1", "--out", str(tmp_path)], backward.run)
    out = capsys.readouterr().out
    assert code == 1
    assert "farseg/backward: first divergence: step 1: parameter" in out
    assert "optimiser step differs (clipping, weight decay, momentum or learning rate)" in out

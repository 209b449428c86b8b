"""torch_ref and paddle_impl: official layouts, input checks, and the losses against
literal transcriptions of the official formulas (written here in probability space, as the
official code computes them)."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest
import torch
import torch.nn.functional as F

import paddle_impl
import torch_ref
from paddle_impl import losses as paddle_losses
from torch_ref import losses as torch_losses
from weights import MODEL_NAMES, load_layout


def paddle_key(torch_key: str) -> str:
    return torch_key.replace("running_mean", "_mean").replace("running_var", "_variance")


@pytest.fixture(scope="module", params=MODEL_NAMES)
def built(request):
    name = request.param
    return name, torch_ref.build_model(name), paddle_impl.build_model(name)


def test_torch_state_dict_is_the_official_layout(built):
    name, torch_model, _ = built
    layout = load_layout(name)
    state = torch_model.state_dict()
    assert list(state) == list(layout)
    assert {k: tuple(v.shape) for k, v in state.items()} == dict(layout)


def test_paddle_state_dict_differs_only_by_batchnorm_buffers(built):
    name, _, paddle_model = built
    expected = [(paddle_key(k), s) for k, s in load_layout(name).items() if not k.endswith("num_batches_tracked")]
    got = [(k, tuple(v.shape)) for k, v in paddle_model.state_dict().items()]
    assert got == expected


def test_official_checkpoint_loads_strict(built):
    name, torch_model, _ = built
    generator = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(shape, generator=generator) if shape else torch.zeros(())
        for k, shape in load_layout(name).items()
    }
    for k in state:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.zeros((), dtype=torch.int64)
    fresh = torch_ref.build_model(name)
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.state_dict()[next(iter(state))], state[next(iter(state))])


def test_paddle_batchnorm_momentum_is_torch_point_one(built):
    _, torch_model, paddle_model = built
    torch_bn = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    paddle_bn = [m for m in paddle_model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    assert len(torch_bn) == len(paddle_bn)
    assert all(m.momentum == 0.1 and m.eps == 1e-5 for m in torch_bn)
    assert all(abs(m._momentum - 0.9) < 1e-12 and m._epsilon == 1e-5 for m in paddle_bn)


@pytest.mark.parametrize("size", [(100, 128), (128, 90)])
def test_input_size_must_be_a_multiple_of_32(built, size):
    _, torch_model, paddle_model = built
    with pytest.raises(ValueError, match="multiples of 32"):
        torch_model.logits(torch.zeros(1, 3, *size))
    with pytest.raises(ValueError, match="multiples of 32"):
        paddle_model.logits(paddle.zeros([1, 3, *size]))


def test_farseg_buffer_step_counts_training_forwards():
    x = np.random.RandomState(0).randn(1, 3, 64, 64).astype("float32")
    y = np.zeros((1, 64, 64), dtype="int64")
    torch_model = torch_ref.build_model("farseg").train()
    paddle_model = paddle_impl.build_model("farseg")
    paddle_model.train()
    for _ in range(2):
        torch_model(torch.from_numpy(x), {"cls": torch.from_numpy(y)})
        paddle_model(paddle.to_tensor(x), {"cls": paddle.to_tensor(y)})
    assert torch_model.buffer_step.item() == 2.0 and torch_model.buffer_step.dtype == torch.float32
    assert paddle_model.buffer_step.item() == 2.0 and paddle_model.buffer_step.dtype == paddle.float32


# --- literal transcriptions of the official formulas (probability space, as published) ---


def official_annealing_loss(logits, target, t, t_max=10000, gamma=2.0):
    losses = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    with torch.no_grad():
        p = logits.softmax(dim=1)
        modulating = (1 - p).pow(gamma)
        valid = ~target.eq(255)
        masked = torch.where(valid, target, torch.zeros_like(target))
        modulating = torch.gather(modulating, 1, masked.unsqueeze(1)).squeeze(1)
        scales = modulating * (losses.sum() / (losses * modulating).sum())
    scale = scales if t > t_max else scales + 0.5 * (1 - scales) * (math.cos(math.pi * t / t_max) + 1)
    return (losses * scale).sum() / (valid.sum() + logits.shape[0])


def official_fused_probs_one_image(fg, bi):
    """The official eval fusion; its un-keepdim sum is right only for a batch of one (batch 16 runs, wrongly)."""
    binary = torch.sigmoid(bi)
    cls = torch.softmax(fg, dim=1)
    cls[:, 0] = cls[:, 0] * (1 - binary).squeeze(1)
    cls[:, 1:] = cls[:, 1:] * binary
    return cls / torch.sum(cls, dim=1)


def official_joint_loss(fg, bi, target, ratio=0.1):
    fgp = torch.sigmoid(bi)
    clsp = torch.softmax(fg, dim=1)
    joint = torch.clone(clsp)
    joint[:, 0] = (1 - fgp).squeeze(1) * clsp[:, 0]
    joint[:, 1:] = fgp * clsp[:, 1:]
    p = joint / joint.sum(dim=1, keepdim=True)
    losses = F.nll_loss(torch.log(p), target, ignore_index=255, reduction="none")
    top, _ = losses.reshape(-1).topk(int(ratio * losses.numel()))
    mask = top != 0
    return top[mask].sum() / (mask.sum() + 1e-6)


def random_case(seed=0, batch=2, classes=16, size=(24, 20), scale=3.0):
    rng = np.random.RandomState(seed)
    fg = rng.randn(batch, classes, *size) * scale
    bi = rng.randn(batch, 1, *size) * scale
    target = rng.randint(0, classes, (batch, *size)).astype("int64")
    target[0, :5] = 255
    return fg, bi, target


@pytest.mark.parametrize("step", [1, 5000, 10000, 10001, 30000])
def test_annealing_loss_and_gradient_equal_the_official_formula(step):
    fg, _, target = random_case()
    ref_logits = torch.tensor(fg, requires_grad=True)
    ref = official_annealing_loss(ref_logits, torch.from_numpy(target), step)
    ref.backward()
    for logits in (torch.tensor(fg, requires_grad=True),):
        ours = torch_losses.annealing_softmax_focal_loss(logits, torch.from_numpy(target), step)
        ours.backward()
        assert abs(ours.item() - ref.item()) <= 1e-12 * abs(ref.item())
        assert torch.allclose(logits.grad, ref_logits.grad, rtol=0, atol=1e-15)
    p_logits = paddle.to_tensor(fg, stop_gradient=False)
    p_loss = paddle_losses.annealing_softmax_focal_loss(p_logits, paddle.to_tensor(target), step)
    p_loss.backward()
    assert abs(p_loss.item() - ref.item()) <= 1e-12 * abs(ref.item())
    assert np.abs(p_logits.grad.numpy() - ref_logits.grad.numpy()).max() <= 1e-15


def test_annealing_loss_all_ignored_batch_is_zero_not_nan():
    fg, _, target = random_case()
    target[:] = 255
    t_logits = torch.tensor(fg, requires_grad=True)
    t_loss = torch_losses.annealing_softmax_focal_loss(t_logits, torch.from_numpy(target), 1)
    t_loss.backward()
    p_logits = paddle.to_tensor(fg, stop_gradient=False)
    p_loss = paddle_losses.annealing_softmax_focal_loss(p_logits, paddle.to_tensor(target), 1)
    p_loss.backward()
    assert t_loss.item() == 0.0 and p_loss.item() == 0.0
    assert torch.isfinite(t_logits.grad).all() and np.isfinite(p_logits.grad.numpy()).all()
    # The official formula gives NaN here: that is what the guard is for.
    assert math.isnan(official_annealing_loss(torch.tensor(fg), torch.from_numpy(target), 1).item())


def test_factseg_fusion_batch_of_two_equals_the_official_output_image_by_image():
    fg, bi, _ = random_case(batch=2)
    ours_t = torch_losses.joint_log_probs(torch.tensor(fg), torch.tensor(bi)).exp()
    ours_p = paddle_losses.joint_log_probs(paddle.to_tensor(fg), paddle.to_tensor(bi)).exp().numpy()
    for i in range(2):
        official = official_fused_probs_one_image(torch.tensor(fg[i : i + 1]), torch.tensor(bi[i : i + 1]))
        assert torch.allclose(ours_t[i : i + 1], official, rtol=0, atol=1e-14)
        assert np.abs(ours_p[i : i + 1] - official.numpy()).max() <= 1e-14
    with pytest.raises(RuntimeError):  # the official fusion itself cannot do a batch of two
        official_fused_probs_one_image(torch.tensor(fg), torch.tensor(bi))


def test_official_factseg_fusion_at_batch_16_runs_and_is_silently_wrong():
    """At B == 16 (the number of classes) the official [B,16,H,W] / [B,H,W] broadcasts: it divides
    image b, class c by the pixel sum of image c, so it runs and returns non-probabilities."""
    fg, bi, _ = random_case(batch=16, size=(4, 4))
    official = official_fused_probs_one_image(torch.tensor(fg), torch.tensor(bi))
    ours = torch_losses.joint_log_probs(torch.tensor(fg), torch.tensor(bi)).exp()
    assert official.shape == ours.shape == (16, 16, 4, 4)
    assert torch.allclose(ours.sum(dim=1), torch.ones(16, 4, 4, dtype=ours.dtype), atol=1e-12)
    assert (official.sum(dim=1) - 1).abs().max() > 0.1  # not a distribution over classes
    assert (official - ours).abs().max() > 0.1
    # Image by image, the ports still equal the official fusion.
    for i in (0, 15):
        single = official_fused_probs_one_image(torch.tensor(fg[i : i + 1]), torch.tensor(bi[i : i + 1]))
        assert torch.allclose(ours[i : i + 1], single, rtol=0, atol=1e-14)


def test_factseg_joint_loss_and_gradients_equal_the_official_formula():
    fg, bi, target = random_case(seed=1)
    ref_fg, ref_bi = torch.tensor(fg, requires_grad=True), torch.tensor(bi, requires_grad=True)
    ref = official_joint_loss(ref_fg, ref_bi, torch.from_numpy(target))
    ref.backward()
    t_fg, t_bi = torch.tensor(fg, requires_grad=True), torch.tensor(bi, requires_grad=True)
    ours = torch_losses.joint_loss(t_fg, t_bi, torch.from_numpy(target))
    ours.backward()
    p_fg, p_bi = paddle.to_tensor(fg, stop_gradient=False), paddle.to_tensor(bi, stop_gradient=False)
    p_loss = paddle_losses.joint_loss(p_fg, p_bi, paddle.to_tensor(target))
    p_loss.backward()
    for value in (ours.item(), p_loss.item()):
        assert abs(value - ref.item()) <= 1e-12 * abs(ref.item())
    for got_fg, got_bi in ((t_fg.grad.numpy(), t_bi.grad.numpy()), (p_fg.grad.numpy(), p_bi.grad.numpy())):
        assert np.abs(got_fg - ref_fg.grad.numpy()).max() <= 1e-14
        assert np.abs(got_bi - ref_bi.grad.numpy()).max() <= 1e-14


def test_factseg_som_counts_ignored_pixels_in_k():
    # k = int(0.1 * B*H*W) with ignored pixels included: with 90% of pixels ignored, k equals
    # the number of valid pixels, so every valid loss is averaged.
    losses = torch.zeros(1000, dtype=torch.float64)
    losses[:100] = torch.linspace(1, 2, 100, dtype=torch.float64)
    assert torch_losses.small_object_mining(losses).item() == pytest.approx(1.5, rel=1e-6)
    assert paddle_losses.small_object_mining(paddle.to_tensor(losses.numpy())).item() == pytest.approx(1.5, rel=1e-6)


def test_factseg_confident_model_stays_finite_where_the_official_code_gives_nan():
    fg, bi, target = random_case(seed=2, scale=1.0)
    fg[:, 0] += 200.0  # the multi-class branch is sure of background: softmax rounds to one-hot
    bi[:] = 60.0  # the binary branch is sure of foreground: sigmoid rounds to exactly 1
    target[:] = 0  # official: every joint term is 0, so P = 0 / 0
    fg32, bi32 = fg.astype("float32"), bi.astype("float32")
    official = official_fused_probs_one_image(torch.tensor(fg32[:1]), torch.tensor(bi32[:1]))
    assert torch.isnan(official).any()
    ours_t = torch_losses.joint_log_probs(torch.tensor(fg32), torch.tensor(bi32)).exp()
    ours_p = paddle_losses.joint_log_probs(paddle.to_tensor(fg32), paddle.to_tensor(bi32)).exp().numpy()
    assert torch.isfinite(ours_t).all() and np.isfinite(ours_p).all()
    assert torch.allclose(ours_t.sum(1), torch.ones(1, dtype=torch.float32), atol=1e-5)
    t_loss = torch_losses.joint_loss(torch.tensor(fg32), torch.tensor(bi32), torch.from_numpy(target))
    p_loss = paddle_losses.joint_loss(paddle.to_tensor(fg32), paddle.to_tensor(bi32), paddle.to_tensor(target))
    assert math.isfinite(t_loss.item()) and math.isfinite(p_loss.item())
    assert math.isnan(official_joint_loss(torch.tensor(fg32), torch.tensor(bi32), torch.from_numpy(target)).item())


def test_paddle_float64_bilinear_is_exact_and_float32_uses_paddles_kernel():
    from paddle_impl.layers import UpsamplingBilinear2D

    x = np.random.RandomState(0).randn(1, 4, 7, 9)
    for scale in (2, 4):
        ref = torch.nn.UpsamplingBilinear2d(scale_factor=scale)(torch.from_numpy(x)).numpy()
        ours64 = UpsamplingBilinear2D(scale)(paddle.to_tensor(x)).numpy()
        kernel = paddle.nn.functional.interpolate(
            paddle.to_tensor(x.astype("float32")), scale_factor=scale, mode="bilinear", align_corners=True
        ).numpy()
        ours32 = UpsamplingBilinear2D(scale)(paddle.to_tensor(x.astype("float32"))).numpy()
        assert np.abs(ours64 - ref).max() <= 1e-14
        assert np.array_equal(ours32, kernel)

"""Tests of the sliding-window engine (both frameworks), its band plan, and the evaluators.

Two kinds of model are used:

- a cheap stand-in (``StandIn``): a deterministic function of its input built from a 5x5
  local mean, the window's global mean and a ramp over the padded window's rows, mixed per
  class and softmax'ed. The local mean makes every output pixel depend on its neighbours
  (a crop or offset error shows), the global mean and the ramp make it depend on the PADDED
  window (padding before normalisation, or a wrong pad, shows), and overlapping windows give
  different values at the same pixel (the averaging matters). It refuses inputs that are not
  multiples of 32, like the real models. It costs microseconds, so the engine can be checked
  against a naive whole-image implementation on many image sizes;
- the real FarSeg with random weights (BatchNorm statistics randomised too, so a BatchNorm
  buffer mix-up in the conversion would show), converted torch -> Paddle with ``convert``,
  for the torch/Paddle evaluator parity and the command-line behaviour.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import paddle
import paddle.nn.functional as paddle_F
import pytest
import torch
import torch.nn.functional as torch_F
from model_helpers import randomise_batchnorm  # tests/model_helpers.py
from PIL import Image

import paddle_impl
import paddle_impl.evaluate as paddle_evaluate
import paddle_impl.sliding_window as paddle_inference
import torch_ref
import torch_ref.evaluate as torch_evaluate
import torch_ref.sliding_window as torch_inference
import weights
from app.evaluation import check_expectation
from app.val_scenes import find_scenes
from convert import convert_file, save_torch
from isaid import stitching
from isaid.imageio import write_png_atomic
from isaid.palette import NUM_CLASSES, colorize, normalize
from isaid.synth import make_scene
from isaid.windows import pad_to_multiple, sliding_windows

C = NUM_CLASSES


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # On the shared 2-core machine torch's two OpenMP threads contend with other work and run
    # the tiny forwards here 5-10x slower than one thread; results do not depend on it.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------ band planning


@pytest.mark.parametrize(
    "height,width,window,stride",
    [
        (40, 50, 64, 32),
        (64, 64, 64, 48),
        (65, 65, 64, 48),
        (97, 131, 64, 32),
        (97, 131, 64, 48),
        (1000, 13, 64, 64),
        (13000, 7, 896, 512),
        (4000, 4000, 896, 512),
        (897, 897, 896, 512),
    ],
)
def test_plan_bands_partition_rows_and_cover_every_pixel(height, width, window, stride):
    bands = stitching.plan_bands(height, width, window, stride)
    assert [w for band in bands for w in band.windows] == sliding_windows(height, width, window, stride)
    # Emitted row ranges partition [0, H) in order.
    ranges = stitching.emitted_ranges(bands)
    assert ranges[0][0] == 0 and ranges[-1][1] == height
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges, ranges[1:]))
    rows = stitching.accumulator_rows(bands)
    assert rows == min(window, height)
    for k, band in enumerate(bands):
        assert all(w[0] == band.top and w[2] == band.bottom for w in band.windows)
        assert band.emit_rows + band.carry == band.bottom - band.top == rows
        # Rows emitted after band k are touched by no later window (they are final) ...
        assert all(w[0] >= band.emit_until for later in bands[k + 1 :] for w in later.windows)
        # ... and the carried rows are exactly where the next band starts.
        if k + 1 < len(bands):
            assert bands[k + 1].top == band.emit_until
    # Every pixel covered; the separable count equals the brute-force window count.
    if height * width <= 2_000_000:
        count = np.zeros((height, width), dtype=np.int32)
        for y0, x0, y1, x1 in sliding_windows(height, width, window, stride):
            count[y0:y1, x0:x1] += 1
        assert count.min() >= 1
        separable = np.outer(
            stitching.coverage_counts(height, window, stride), stitching.coverage_counts(width, window, stride)
        )
        np.testing.assert_array_equal(separable, count)


def test_plan_bands_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stride 65 larger than window 64"):
        stitching.plan_bands(100, 100, 64, 65)
    with pytest.raises(ValueError, match="height must be a positive integer"):
        stitching.plan_bands(0, 100, 64, 32)


# ------------------------------------------------------------------------- stand-in models


def _stand_in_parameters(seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "mix": rng.normal(0, 2, (C, 3)).astype(np.float32),
        "glob": rng.normal(0, 4, (C, 3)).astype(np.float32),
        "ramp": rng.normal(0, 3, (C,)).astype(np.float32),
    }


class TorchStandIn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name, value in _stand_in_parameters().items():
            setattr(self, name, torch.nn.Parameter(torch.from_numpy(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input {list(x.shape)} is not a multiple of 32")
        local = torch_F.avg_pool2d(x, 5, stride=1, padding=2)
        whole = x.mean(dim=(2, 3), keepdim=True)
        ramp = torch.arange(x.shape[2], dtype=x.dtype).reshape(1, 1, -1, 1) / x.shape[2]
        logits = (
            (local.unsqueeze(1) * self.mix.reshape(1, C, 3, 1, 1)).sum(2)
            + (whole.unsqueeze(1) * self.glob.reshape(1, C, 3, 1, 1)).sum(2)
            + self.ramp.reshape(1, C, 1, 1) * ramp
        )
        return logits.softmax(dim=1)


class PaddleStandIn(paddle.nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        for name, value in _stand_in_parameters().items():
            setattr(
                self,
                name,
                paddle.create_parameter(
                    list(value.shape), "float32", default_initializer=paddle.nn.initializer.Assign(value)
                ),
            )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if x.shape[2] % 32 or x.shape[3] % 32:
            raise ValueError(f"input {list(x.shape)} is not a multiple of 32")
        local = paddle_F.avg_pool2d(x, 5, stride=1, padding=2, exclusive=False)
        whole = x.mean(axis=(2, 3), keepdim=True)
        ramp = paddle.arange(x.shape[2], dtype=x.dtype).reshape([1, 1, -1, 1]) / x.shape[2]
        logits = (
            (local.unsqueeze(1) * self.mix.reshape([1, C, 3, 1, 1])).sum(2)
            + (whole.unsqueeze(1) * self.glob.reshape([1, C, 3, 1, 1])).sum(2)
            + self.ramp.reshape([1, C, 1, 1]) * ramp
        )
        return paddle_F.softmax(logits, axis=1)


@dataclasses.dataclass
class Framework:
    name: str
    engine_class: type
    stand_in: Callable[[], object]
    forward_numpy: Callable[[object, np.ndarray], np.ndarray]  # model, [1,3,h,w] -> [1,C,h,w]
    to_numpy: Callable[[object], np.ndarray]


def _torch_forward(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _paddle_forward(model, x: np.ndarray) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(x)).numpy()


class TorchNCHWEngine(torch_inference.SlidingWindowInference):
    def __init__(self, *args, channels_last: bool = False, **kwargs) -> None:
        super().__init__(*args, channels_last=channels_last, **kwargs)


FRAMEWORKS = {
    # NCHW, as the naive reference runs the stand-in: these tests prove the merge bit for bit, and a
    # convolution's rounding depends on the memory layout (the channels-last default on the CPU is
    # tested on its own, below).
    "torch": Framework("torch", TorchNCHWEngine, TorchStandIn, _torch_forward, lambda t: t.cpu().numpy()),
    "paddle": Framework(
        "paddle", paddle_inference.SlidingWindowInference, PaddleStandIn, _paddle_forward, lambda t: t.numpy()
    ),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request) -> Framework:
    return FRAMEWORKS[request.param]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, height, width]).integers(0, 256, (height, width, 3), dtype=np.uint8)


def naive_probabilities(fw: Framework, model, image: np.ndarray, window: int, stride: int) -> np.ndarray:
    """The official merge, written plainly: a full [C,H,W] sum and an [H,W] count on the host.

    Windows normalised on the host by isaid.palette.normalize, zero-padded AFTER that, run one
    at a time, cropped, summed in window order, divided by the count.
    """
    height, width = image.shape[:2]
    total = np.zeros((C, height, width), dtype=np.float32)
    count = np.zeros((height, width), dtype=np.float32)
    for y0, x0, y1, x1 in sliding_windows(height, width, window, stride):
        x = normalize(image[y0:y1, x0:x1])
        pad_h, pad_w = pad_to_multiple(y1 - y0, x1 - x0)
        x = np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)))
        total[:, y0:y1, x0:x1] += fw.forward_numpy(model, x[None])[0, :, : y1 - y0, : x1 - x0]
        count[y0:y1, x0:x1] += 1
    return total / count


def streamed(fw: Framework, engine, image: np.ndarray) -> np.ndarray:
    """Run the engine; check rows come in order, each exactly once; return [C,H,W]."""
    height, width = image.shape[:2]
    parts, next_row = [], 0
    for row_start, row_end, probabilities in engine.run_probabilities(
        height, width, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], progress=False
    ):
        assert row_start == next_row and row_end > row_start, "rows out of order or repeated"
        part = fw.to_numpy(probabilities)
        assert part.shape == (C, row_end - row_start, width)
        parts.append(part)
        next_row = row_end
    assert next_row == height, "rows missing at the bottom"
    return np.concatenate(parts, axis=1)


SIZES = [(40, 50), (64, 64), (65, 65), (97, 131), (50, 131), (131, 33)]


@pytest.mark.parametrize("stride", [32, 48])
@pytest.mark.parametrize("height,width", SIZES)
def test_streaming_equals_naive_whole_image_bit_for_bit(fw, height, width, stride):
    model = fw.stand_in()
    image = _image(height, width)
    engine = fw.engine_class(model, window=64, stride=stride)
    expected = naive_probabilities(fw, model, image, 64, stride)
    got = streamed(fw, engine, image)
    # Same additions in the same order, and a separable count equal to the summed one:
    # identical bits, not merely close.
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(engine.predict_array(image), expected.argmax(axis=0))


def test_window_not_multiple_of_32_and_batches(fw):
    # window 40: every window is padded 40 -> 64; batches of 3 windows of a band.
    model = fw.stand_in()
    image = _image(97, 131, seed=1)
    expected = naive_probabilities(fw, model, image, 40, 24)
    np.testing.assert_array_equal(streamed(fw, fw.engine_class(model, 40, 24), image), expected)
    batched = streamed(fw, fw.engine_class(model, 40, 24, batch_size=3), image)
    np.testing.assert_allclose(batched, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batched.argmax(axis=0), expected.argmax(axis=0))


def _planted(bug: str) -> Callable:
    def plan(height, width, window=896, stride=512):
        bands = stitching.plan_bands(height, width, window, stride)
        if bug == "drop_carry":  # forget the rows the next band still covers
            return [dataclasses.replace(b, bottom=b.emit_until) if b.carry else b for b in bands]
        if bug == "emit_early":  # emit every row of a band before the next band adds to it
            return [dataclasses.replace(b, emit_until=b.bottom) for b in bands]
        raise AssertionError(bug)

    return plan


@pytest.mark.parametrize("bug", ["drop_carry", "emit_early"])
def test_streaming_check_catches_planted_band_bugs(fw, bug, monkeypatch):
    module = torch_inference if fw.name == "torch" else paddle_inference
    monkeypatch.setattr(module, "plan_bands", _planted(bug))
    model = fw.stand_in()
    image = _image(97, 131)
    engine = fw.engine_class(model, window=64, stride=32)
    expected = naive_probabilities(fw, model, image, 64, 32)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(streamed(fw, engine, image), expected)


def test_device_normalisation_equals_host_normalize(fw):
    image = _image(37, 45, seed=3)
    engine = fw.engine_class(fw.stand_in(), window=64, stride=32)
    prepared = fw.to_numpy(engine.prepare(image[None]))
    assert prepared.shape == (1, 3, 64, 64)
    np.testing.assert_array_equal(prepared[0, :, :37, :45], normalize(image))
    assert not prepared[0, :, 37:].any() and not prepared[0, :, :, 45:].any()


def _pad_before_normalising(fw: Framework):
    """A planted bug: pad the raw uint8 window with 0 (black), THEN normalise."""

    class PadFirst(fw.engine_class):
        def prepare(self, windows: np.ndarray):
            pad_h, pad_w = pad_to_multiple(*windows.shape[1:3])
            padded = np.pad(windows, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
            return super().prepare(padded)

    return PadFirst


def test_padding_after_normalisation_and_check_catches_padding_first(fw):
    # 40x50 is smaller than the window: its one window is padded to 64x64.
    model = fw.stand_in()
    image = _image(40, 50, seed=2)
    expected = naive_probabilities(fw, model, image, 64, 48)
    np.testing.assert_array_equal(streamed(fw, fw.engine_class(model, 64, 48), image), expected)
    wrong = streamed(fw, _pad_before_normalising(fw)(model, 64, 48), image)
    assert np.abs(wrong - expected).max() > 1e-3  # the border value matters, and is caught


def test_engine_argument_checks(fw):
    model = fw.stand_in()
    with pytest.raises(ValueError, match="stride"):
        fw.engine_class(model, window=64, stride=65)
    with pytest.raises(ValueError, match="amp"):
        fw.engine_class(model, amp="fp8")
    with pytest.raises(ValueError):
        fw.engine_class(model, device="tpu")
    engine = fw.engine_class(model, window=64, stride=32)
    with pytest.raises(ValueError, match="uint8"):
        engine.predict_array(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="read_window"):
        list(engine.run(8, 8, lambda y0, x0, y1, x1: np.zeros((1, 1, 3), np.uint8), progress=False))


def test_torch_cpu_engine_runs_channels_last_for_float32_and_bf16_close_to_float32():
    """The fix behind ``--amp bf16`` on a CPU: oneDNN's bf16 convolutions are fast only in NHWC
    (NCHW bf16 measured slower than float32), so float32 models run channels-last on the CPU by
    default; float64 (alignment) keeps the official NCHW. bf16 then changes few classes."""
    torch.manual_seed(0)
    model = torch_ref.build_model("farseg")
    randomise_batchnorm(model, seed=2)
    image = make_scene(np.random.default_rng(3), 96, 96)[0]
    fp32 = torch_inference.SlidingWindowInference(model, 64, 32)
    assert fp32.channels_last and fp32.prepare(image[None, :64, :64]).is_contiguous(memory_format=torch.channels_last)
    assert model.en.resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = torch_inference.SlidingWindowInference(model, 64, 32, channels_last=False)
    reference = nchw.predict_array(image)
    assert (fp32.predict_array(image) == reference).mean() >= 0.999  # layout changes rounding only
    bf16 = torch_inference.SlidingWindowInference(model, 64, 32, amp="bf16")
    agreement = (bf16.predict_array(image) == reference).mean()
    assert bf16.channels_last and 0.9 <= agreement  # random weights: 2.2% change (bf16_cost.json)
    assert not torch_inference.SlidingWindowInference(model.double(), 64, 32).channels_last


@pytest.mark.parametrize("name", ["farseg", "factseg"])
def test_batch_norm_folding_of_the_bf16_path_keeps_the_float32_function(name):
    torch.manual_seed(0)
    model = torch_ref.build_model(name)
    randomise_batchnorm(model, seed=4)
    model.eval()
    folded, count = torch_inference.fold_batch_norms(model)
    assert count == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        assert (folded(x) - expected).abs().max() <= 1e-4  # float32 rounding of the folded weights
        # Planted: a fold that drops the running means (as if folding only the scale) is caught.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
        careless, _ = torch_inference.fold_batch_norms(model)
        assert (careless(x) - expected).abs().max() > 1e-4


# ------------------------------------------------------------------- real model, evaluators


@pytest.fixture(scope="module")
def farseg_files(tmp_path_factory) -> Dict[str, Path]:
    """Random FarSeg weights as .pth and converted .pdparams, plus two small val scenes."""
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    model = torch_ref.build_model("farseg")
    randomise_batchnorm(model, seed=1)
    pth = save_torch(model.state_dict(), root / "farseg_random.pth")
    pdparams = convert_file(pth, root / "farseg_random.pdparams")
    images, labels, colours = root / "images", root / "labels", root / "colour_masks"
    for folder in (images, labels, colours):
        folder.mkdir()
    for number, (height, width) in enumerate([(72, 90), (100, 64)]):
        rgb, index = make_scene(np.random.default_rng(number), height, width)
        write_png_atomic(images / f"P000{number}.png", rgb)
        write_png_atomic(labels / f"P000{number}.png", index, index_palette=True)
        colour = colorize(index)
        colour[0, 0] = (10, 20, 30)  # outside the palette: background, as officially
        write_png_atomic(colours / f"P000{number}_instance_color_RGB.png", colour)
        if index[0, 0] != 0:  # keep the index mask equal to the official decoding
            index = index.copy()
            index[0, 0] = 0
            write_png_atomic(labels / f"P000{number}.png", index, index_palette=True)
    return {"root": root, "pth": pth, "pdparams": pdparams, "images": images, "labels": labels, "colours": colours}


def _cli(
    module,
    files: Dict[str, Path],
    *extra: str,
    weights: str = "pth",
    masks: str = "labels",
    json_name: str = "out.json",
) -> Tuple[int, Dict]:
    out = files["root"] / json_name
    if out.exists():
        out.unlink()
    argv = [
        "--model",
        "farseg",
        "--weights",
        str(files[weights]),
        "--images",
        str(files["images"]),
        "--masks",
        str(files[masks]),
        "--window",
        "64",
        "--stride",
        "48",
        "--device",
        "cpu",
        "--no-progress",
        "--json",
        str(out),
        *extra,
    ]
    code = module.main(argv)
    return code, (json.loads(out.read_text()) if out.exists() else {})


def test_torch_and_paddle_evaluators_agree(farseg_files, capsys):
    # float64: identical confusion matrices. Measured here: torch and Paddle probabilities
    # differ by at most ~2e-12 in float64 (~2e-6 in float32) while the smallest top-2 gap
    # on these scenes is ~7e-7, so float64 leaves no near-tie to flip.
    code_t, torch64 = _cli(torch_evaluate, farseg_files, "--dtype", "float64", json_name="t64.json")
    code_p, paddle64 = _cli(
        paddle_evaluate, farseg_files, "--dtype", "float64", weights="pdparams", json_name="p64.json"
    )
    assert code_t == code_p == 0
    confusion = np.array(torch64["confusion"])
    np.testing.assert_array_equal(np.array(paddle64["confusion"]), confusion)
    assert confusion.sum() == 72 * 90 + 100 * 64 and torch64["windows"] == paddle64["windows"] == 6
    assert np.count_nonzero(confusion.sum(axis=0)) >= 3, "random model predicts too few classes"
    # The Paddle evaluator converts a torch checkpoint on the fly: the same matrix.
    code_f, paddle_from_pth = _cli(paddle_evaluate, farseg_files, "--dtype", "float64", json_name="pf.json")
    assert code_f == 0 and paddle_from_pth["confusion"] == torch64["confusion"]
    assert "converted on the fly" in paddle_from_pth["weights"]["loaded_as"]
    report = capsys.readouterr().out
    assert "roundabout" in report and "storage_tank" in report and "mIoU (all classes)" in report


def test_float32_predictions_agree_and_planted_weight_bug_is_caught(farseg_files):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(farseg_files["images"].iterdir())]
    torch_model = torch_ref.build_model("farseg")
    torch_inference.load_weights(torch_model, "farseg", str(farseg_files["pth"]))
    paddle_model = paddle_impl.build_model("farseg")
    paddle_inference.load_weights(paddle_model, "farseg", str(farseg_files["pdparams"]))
    torch_engine = torch_inference.SlidingWindowInference(torch_model, 64, 48)
    paddle_engine = paddle_inference.SlidingWindowInference(paddle_model, 64, 48)
    torch_maps = [torch_engine.predict_array(image) for image in images]
    paddle_maps = [paddle_engine.predict_array(image) for image in images]
    same = sum(int((t == p).sum()) for t, p in zip(torch_maps, paddle_maps))
    total = sum(t.size for t in torch_maps)
    # float32 can flip an argmax on a near-tie (probabilities differ by ~1e-6 here).
    assert same >= 0.999 * total
    # Planted bug: one BatchNorm running variance off by 10% in the Paddle model. The
    # agreement check must see it.
    state = paddle_model.state_dict()
    key = "decoder.blocks.0.0.1._variance"
    state[key].set_value(state[key] * 1.1)
    bugged = [paddle_engine.predict_array(image) for image in images]
    assert sum(int((t == p).sum()) for t, p in zip(torch_maps, bugged)) < 0.999 * total


def test_colour_masks_and_index_masks_give_the_same_confusion(farseg_files, monkeypatch):
    engine = torch_inference.SlidingWindowInference(TorchStandIn(), 64, 48)
    by_index, totals_index = torch_evaluate.evaluate_scenes(
        engine, find_scenes(str(farseg_files["images"]), str(farseg_files["labels"])), progress=False
    )
    by_colour, totals_colour = torch_evaluate.evaluate_scenes(
        engine, find_scenes(str(farseg_files["images"]), str(farseg_files["colours"])), progress=False
    )
    np.testing.assert_array_equal(by_colour, by_index)
    assert (totals_colour.colour_masks, totals_colour.index_masks) == (2, 0)
    assert (totals_index.colour_masks, totals_index.index_masks) == (0, 2)
    assert totals_colour.unknown_pixels == 2 and totals_index.unknown_pixels == 0
    assert by_index.sum() == 72 * 90 + 100 * 64
    # Device-side counting equals a host count of the predicted maps.
    from isaid.metrics import confusion_from_labels

    host = np.zeros((C, C), dtype=np.int64)
    for scene in find_scenes(str(farseg_files["images"]), str(farseg_files["labels"])):
        image = np.asarray(Image.open(scene.image).convert("RGB"))
        label = np.asarray(Image.open(scene.mask))
        host += confusion_from_labels(engine.predict_array(image), label)
    np.testing.assert_array_equal(by_index, host)
    # Planted bug: decode colour masks in mmsegmentation's index order, which swaps classes 2
    # (roundabout) and 12 (storage tank) relative to the FarSeg weights. The check sees it.
    import app.val_scenes

    real_reader = app.val_scenes.read_mask_details

    def swapped_reader(path, name=None):
        details = real_reader(path, name)
        if not details.is_colour_mask:
            return details
        index = details.index.copy()
        index[details.index == 2], index[details.index == 12] = 12, 2
        return details._replace(index=index)

    monkeypatch.setattr(app.val_scenes, "read_mask_details", swapped_reader)
    bugged, _ = torch_evaluate.evaluate_scenes(
        engine, find_scenes(str(farseg_files["images"]), str(farseg_files["colours"])), progress=False
    )
    assert not np.array_equal(bugged, by_index)


def test_expect_official_exit_codes(farseg_files, monkeypatch, capsys):
    # Drive both outcomes from the measured value, whatever it is: an official figure just
    # above the measurement fails, one within the tolerance passes.
    monkeypatch.setitem(weights.OFFICIAL_MIOU, "farseg", 100.0)
    code, failed = _cli(torch_evaluate, farseg_files, "--expect", "official", json_name="e1.json")
    measured = failed["miou"]
    assert code == 1 and failed["expect"]["passed"] is False and measured < 100.0
    assert "FAIL" in capsys.readouterr().out
    monkeypatch.setitem(weights.OFFICIAL_MIOU, "farseg", measured + 0.2)
    code, passed = _cli(torch_evaluate, farseg_files, "--expect", "official", "--tolerance", "0.3", json_name="e2.json")
    assert code == 0 and passed["expect"]["passed"] is True and passed["miou"] == measured
    out = capsys.readouterr().out
    assert "PASS" in out and f"seed reproduction {weights.SEED_REPRODUCTION_MIOU['farseg']:.2f}" in out


def test_check_expectation_boundary_and_undefined():
    official = weights.OFFICIAL_MIOU["factseg"]
    assert check_expectation("factseg", official - 0.3, 0.3, 458).passed
    assert not check_expectation("factseg", official - 0.31, 0.3, 458).passed
    assert not check_expectation("factseg", None, 0.3, 458).passed  # a class absent: NaN mIoU
    assert any("indicative" in line for line in check_expectation("factseg", 70.0, 0.3, 3).lines)


def _one_error_line(capsys, *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def test_bad_inputs_one_line_exit_2_no_json(farseg_files, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rgb, index = make_scene(np.random.default_rng(5), 64, 64)
    write_png_atomic(images / "P0100.png", rgb)
    write_png_atomic(labels / "P0100.png", index, index_palette=True)
    files = dict(farseg_files, images=images, labels=labels, root=tmp_path)
    out = tmp_path / "out.json"

    # Missing mask.
    write_png_atomic(images / "P0101.png", rgb)
    assert _cli(torch_evaluate, files)[0] == 2 and not out.exists()
    _one_error_line(capsys, "P0101.png", "no mask")
    # Mask of the wrong size.
    write_png_atomic(labels / "P0101.png", index[:40], index_palette=True)
    assert _cli(paddle_evaluate, files, weights="pdparams")[0] == 2 and not out.exists()
    _one_error_line(capsys, str(labels / "P0101.png"), "40x64")
    # Corrupt image: a valid header, truncated pixel data (found when decoded, after the
    # model is built; still no JSON).
    write_png_atomic(labels / "P0101.png", index, index_palette=True)
    data = (images / "P0101.png").read_bytes()
    (images / "P0101.png").write_bytes(data[: len(data) // 2])
    assert _cli(torch_evaluate, files)[0] == 2 and not out.exists()
    _one_error_line(capsys, "P0101.png", "truncated")
    # Not a checkpoint.
    (images / "P0101.png").unlink()
    (labels / "P0101.png").unlink()
    (tmp_path / "bad.pth").write_text("not a checkpoint\n")
    files["bad"] = tmp_path / "bad.pth"
    assert _cli(torch_evaluate, files, weights="bad")[0] == 2 and not out.exists()
    _one_error_line(capsys, "bad.pth", "not a checkpoint")
    # Unknown model name: argparse, one line, exit 2.
    with pytest.raises(SystemExit) as exit_info:
        paddle_evaluate.main(
            ["--model", "unet", "--weights", "w", "--images", str(images), "--masks", str(labels), "--json", str(out)]
        )
    assert exit_info.value.code == 2 and not out.exists()
    _one_error_line(capsys, "unet", "--model")

"""The published Paddle reproductions' checkpoints load (issue 14): ``convert/foreign.py``.

Each port's layout is built here from the official state dict of a random torch_ref model,
renamed through a TEST-SIDE description of the port's names, written independently of the
converter's rule tables from the ports' source (ucsk/FarSeg PaddleSeg farseg.py and X2Paddle's
backbones/resnet.py; PaddleRS farseg.py; FactSeg_paddle model_rs_verify/ and its torch2paddle
scripts; paddle.vision's resnet50). The converter must give back the official tensors bit for
bit, and torch_ref / paddle_impl must compute the same eval outputs from the converted files
as from the official weights. Planted wrong rules (two X2Paddle bottlenecks swapped, the FPN
levels off by one) must be caught.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")

from conftest import ROOT as REPO  # noqa: E402

import convert  # noqa: E402
from convert import CheckpointError, foreign, read_checkpoint, run_conversion, save_paddle  # noqa: E402
from weights import ENCODER_PREFIX  # noqa: E402

SIZE = 64  # eval input: 1x3x64x64

# ----------------------------------------------------------------------------------------------
# Test-side description of the ports' names (from their source; not from convert/foreign.py)
# ----------------------------------------------------------------------------------------------

# X2Paddle's generated ResNet-50 (ucsk/FarSeg backbones/resnet.py): Layer1 holds bottleneck90,
# bottleneck50, bottleneck140 in that order, and so on: the generated class number per block.
X2PADDLE_CLASS_NUMBERS = {1: [9, 5, 14], 2: [11, 4, 6, 0], 3: [12, 1, 7, 3, 8, 2], 4: [10, 15, 13]}
PADDLE_BN = {"running_mean": "_mean", "running_var": "_variance"}


def paddle_bn(key: str) -> str:
    head, attr = key.rsplit(".", 1)
    return f"{head}.{PADDLE_BN.get(attr, attr)}"


def x2paddle_name(key: str) -> str:
    """torchvision ResNet-50 key -> the key in X2Paddle's generated ResNet50 (layers numbered from 0)."""
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):  # stem: conv0 / bn0
        return f"{parts[0][:-1]}0.{parts[1]}"
    stage, block = int(parts[0][len("layer") :]), int(parts[1])
    if parts[2] == "downsample":
        inner, attr = ("conv0", "bn0")[int(parts[3])], parts[4]
        inner = f"layer1_0_downsample0.{inner}"
    else:
        inner, attr = f"{parts[2][:-1]}{int(parts[2][-1]) - 1}", parts[3]
    return f"layer{stage}0.bottleneck{X2PADDLE_CLASS_NUMBERS[stage][block]}0.{inner}.{attr}"


def _fpn(key: str, prefix: str, wrapper: str = "") -> Optional[str]:
    m = re.fullmatch(r"(\w+)\.fpn_(inner|layer)(\d)\.(\w+)", key)
    if m is None:
        return None
    return f"{prefix}{m.group(1)}.{m.group(2)}_blocks.{int(m.group(3)) - 1}{wrapper}.{m.group(4)}"


def paddleseg_farseg_key(key: str) -> Optional[str]:
    """ucsk/FarSeg PaddleSeg FarSeg: X2Paddle backbone, neck (fpn + sr), _conv wrappers."""
    if key == "buffer_step" or key.endswith("num_batches_tracked"):
        return None
    key = paddle_bn(key)
    if key.startswith("en.resnet."):
        return "backbone.resnet." + x2paddle_name(key[len("en.resnet.") :])
    fpn = _fpn(key, "neck.", "._conv")
    if fpn:
        return fpn
    m = re.fullmatch(r"sr\.scene_encoder\.(\d)\.(\d)\.(\w+)", key)
    if m:
        return f"neck.sr.scene_encoder.{m.group(1)}.{m.group(2)}._conv.{m.group(3)}"
    m = re.fullmatch(r"sr\.(content_encoders|feature_reencoders)\.(\d)\.(\d)\.(\w+)", key)
    if m:
        conv = "._conv" if m.group(3) == "0" else ""
        return f"neck.sr.{m.group(1)}.{m.group(2)}.{m.group(3)}{conv}.{m.group(4)}"
    m = re.fullmatch(r"decoder\.blocks\.(\d)\.(\d)\.(\d)\.(\w+)", key)
    if m:
        conv = "._conv" if m.group(3) == "0" else ""
        return f"decoder.blocks.{m.group(1)}.{m.group(2)}.{m.group(3)}{conv}.{m.group(4)}"
    m = re.fullmatch(r"cls_pred_conv\.(\w+)", key)
    assert m, key
    return f"cls_head.0._conv.{m.group(1)}"


def paddlers_farseg_key(key: str) -> Optional[str]:
    """PaddleRS FarSeg: paddle.vision resnet50 under encoder.resnet, LayerList FPN, fsr."""
    if key == "buffer_step" or key.endswith("num_batches_tracked"):
        return None
    key = paddle_bn(key)
    if key.startswith("en.resnet."):
        return "encoder.resnet." + key[len("en.resnet.") :]
    fpn = _fpn(key, "")
    if fpn:
        return fpn
    if key.startswith("sr."):
        return "fsr." + key[len("sr.") :]
    if key.startswith("cls_pred_conv."):
        return "cls_head.0." + key[len("cls_pred_conv.") :]
    assert key.startswith("decoder."), key
    return key


def paddlers_named_factseg_key(key: str) -> Optional[str]:
    """FactSeg_paddle torch2paddleFactSeg_RS.py: BN renamed, FPN levels as LayerList indices,
    num_batches_tracked kept."""
    return _fpn(key, "") or paddle_bn(key)


def official_torch_names_key(key: str) -> Optional[str]:
    """FactSeg_paddle torch2paddleFactSeg.py: the official torch keys, saved with paddle.save."""
    return key


def classifier(prefix: str, shape=(2048, 1000), seed: int = 5) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}.weight": rng.standard_normal(shape, dtype=np.float32),
        f"{prefix}.bias": rng.standard_normal(1000, dtype=np.float32),
    }


# id -> (model, official key -> port key, extra tensors, label in the summary, dropped, filled)
MODEL_LAYOUTS = {
    "paddleseg-farseg": (
        "farseg",
        paddleseg_farseg_key,
        lambda: classifier("backbone.resnet.linear0"),
        "PaddleSeg FarSeg (ucsk/FarSeg)",
        "backbone.resnet.linear0.weight",
        "buffer_step",
    ),
    "paddlers-farseg": (
        "farseg",
        paddlers_farseg_key,
        lambda: classifier("encoder.resnet.fc"),
        "PaddleRS FarSeg",
        "encoder.resnet.fc.weight",
        "buffer_step",
    ),
    "paddlers-named-factseg": (
        "factseg",
        paddlers_named_factseg_key,
        dict,
        "PaddleRS-named FactSeg",
        "stray num_batches_tracked",
        None,
    ),
    "official-torch-names-factseg": (
        "factseg",
        official_torch_names_key,
        dict,
        "official FactSeg layout in a .pdparams",
        "stray num_batches_tracked",
        None,
    ),
    "official-torch-names-farseg": (
        "farseg",
        official_torch_names_key,
        dict,
        "official FarSeg layout in a .pdparams",
        "stray num_batches_tracked",
        None,
    ),
    # Paddle names, torch's counters kept (a rename that forgot to drop them).
    "official-paddle-names-counters-factseg": (
        "factseg",
        paddle_bn,
        dict,
        "official FactSeg layout in a .pdparams",
        "67 stray num_batches_tracked",
        None,
    ),
}


def port_state(
    official: "OrderedDict[str, np.ndarray]", rename: Callable[[str], Optional[str]], extra: Dict[str, np.ndarray]
) -> "OrderedDict[str, np.ndarray]":
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, value in official.items():
        name = rename(key)
        if name is not None:
            assert name not in out, name
            out[name] = value
    out.update(extra)
    return out


def encoder(official: "OrderedDict[str, np.ndarray]", model: str = "farseg") -> "OrderedDict[str, np.ndarray]":
    prefix = ENCODER_PREFIX[model]
    return OrderedDict((k[len(prefix) :], v) for k, v in official.items() if k.startswith(prefix))


# id -> (torchvision key -> port key, extra tensors, label, dropped)
IMAGENET_LAYOUTS = {
    "x2paddle": (
        lambda k: None if k.endswith("num_batches_tracked") else x2paddle_name(paddle_bn(k)),
        lambda: classifier("linear0"),
        "X2Paddle's ResNet-50",
        "linear0.weight",
    ),
    "paddle.vision": (
        lambda k: None if k.endswith("num_batches_tracked") else paddle_bn(k),
        lambda: classifier("fc"),
        "paddle.vision resnet50",
        "fc.weight",
    ),
    # A naive rename of torchvision's file: Paddle BN names, torch's fc and counters kept.
    "torchvision-paddle-bn": (
        paddle_bn,
        lambda: classifier("fc", (1000, 2048)),
        "torchvision names and Paddle BatchNorm names",
        "fc.weight",
    ),
}

# ----------------------------------------------------------------------------------------------
# Fixtures: official weights and eval outputs of both frameworks
# ----------------------------------------------------------------------------------------------


class Reference:
    """One model's random official weights, both frameworks' models and their eval outputs."""

    def __init__(self, name: str) -> None:
        import paddle_impl
        import torch_ref
        from align.fixtures import randomise_torch_model

        torch.manual_seed(3)
        self.name = name
        self.torch_model = torch_ref.build_model(name).eval()
        randomise_torch_model(self.torch_model, 3)
        with torch.no_grad():
            for key, buffer in self.torch_model.named_buffers():
                if key.endswith("num_batches_tracked") or key == "buffer_step":
                    buffer.fill_(1234)  # non-neutral: shows what the conversion fills
        self.official = OrderedDict((k, v.detach().numpy().copy()) for k, v in self.torch_model.state_dict().items())
        self.paddle_model = paddle_impl.build_model(name)
        self.paddle_model.eval()
        self.x = np.random.default_rng(4).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
        self.torch_probs = self.torch_eval()
        self.load_paddle(convert.torch_to_paddle(self.official, name))
        self.paddle_probs = self.paddle_eval()

    def load_torch(self, state) -> None:
        self.torch_model.load_state_dict(convert.as_torch(state), strict=True)

    def load_paddle(self, state) -> None:
        missing, unexpected = self.paddle_model.set_state_dict(state)
        assert not missing and not unexpected, (missing[:3], unexpected[:3])

    def torch_eval(self) -> np.ndarray:
        with torch.no_grad():
            return self.torch_model(torch.from_numpy(self.x)).numpy()

    def paddle_eval(self) -> np.ndarray:
        with paddle.no_grad():
            return self.paddle_model(paddle.to_tensor(self.x)).numpy()


@pytest.fixture(scope="module")
def reference():
    cache: Dict[str, Reference] = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cache[name] = Reference(name)
        return cache[name]

    return get


@pytest.fixture
def fresh_tables():
    """Rebuild the converter's cached plans before and after a test that changes the tables."""
    foreign.key_plan.cache_clear()
    foreign.known_names.cache_clear()
    yield
    foreign.key_plan.cache_clear()
    foreign.known_names.cache_clear()


def write_port_file(tmp_path: Path, ref: Reference, layout: str) -> Path:
    _, rename, extra, *_ = MODEL_LAYOUTS[layout]
    path = tmp_path / f"{layout}.pdparams"
    save_paddle(port_state(ref.official, rename, extra()), path)
    return path


def expected_official(ref: Reference, filled: Optional[str]) -> "OrderedDict[str, np.ndarray]":
    """What --to torch must give: the official tensors; counters the port lacks (and the
    .pdparams never keeps through Paddle names) are 0, as is a filled buffer_step."""
    out = OrderedDict(ref.official)
    for key in out:
        if key.endswith("num_batches_tracked") or key == filled:
            out[key] = np.zeros_like(out[key])
    return out


def differing_keys(got, want) -> list:
    assert list(got) == list(want)
    return [k for k in want if np.asarray(got[k]).dtype != want[k].dtype or not np.array_equal(got[k], want[k])]


# ----------------------------------------------------------------------------------------------
# Every model layout: both outputs, strict loads, identical eval outputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(MODEL_LAYOUTS))
def test_port_layout_converts_to_both_official_layouts_with_eval_outputs_unchanged(tmp_path, reference, layout):
    name, _, _, label, dropped, filled = MODEL_LAYOUTS[layout]
    ref = reference(name)
    path = write_port_file(tmp_path, ref, layout)

    to_torch = run_conversion(path, tmp_path / "out.pth", to="torch")
    summary = to_torch.summary()
    assert label in summary and dropped in summary and to_torch.model == name
    if filled:
        assert f"{filled} missing in the port, filled with 0" in summary
    back = torch.load(tmp_path / "out.pth", weights_only=True)
    assert differing_keys({k: v.numpy() for k, v in back.items()}, expected_official(ref, filled)) == []
    ref.load_torch(back)  # strict=True
    np.testing.assert_array_equal(ref.torch_eval(), ref.torch_probs)

    to_paddle = run_conversion(path, tmp_path / "out.pdparams", to="paddle")
    assert label in to_paddle.summary()
    ref.load_paddle(paddle.load(str(tmp_path / "out.pdparams")))  # every key, nothing extra
    np.testing.assert_array_equal(ref.paddle_eval(), ref.paddle_probs)
    # And across frameworks (float32 kernels): what align's float32 thresholds allow.
    np.testing.assert_allclose(ref.paddle_eval(), ref.torch_probs, atol=1e-4)


@pytest.mark.parametrize("layout", ["paddleseg-farseg", "paddlers-named-factseg"])
def test_entry_points_read_port_files_as_they_are(tmp_path, reference, layout):
    """evaluate / predict / export (load_weights), align --torch-ckpt: converted in memory."""
    import paddle_impl.sliding_window
    import torch_ref.sliding_window
    from align.fixtures import _checkpoint_state

    name, *_, label, _, filled = MODEL_LAYOUTS[layout]
    ref = reference(name)
    path = write_port_file(tmp_path, ref, layout)
    how = torch_ref.sliding_window.load_weights(ref.torch_model, name, str(path))
    assert label in how and (filled is None or f"{filled} missing in the port, filled with 0" in how)
    np.testing.assert_array_equal(ref.torch_eval(), ref.torch_probs)
    how = paddle_impl.sliding_window.load_weights(ref.paddle_model, name, str(path))
    assert label in how
    np.testing.assert_array_equal(ref.paddle_eval(), ref.paddle_probs)
    assert differing_keys(_checkpoint_state(str(path), name), expected_official(ref, filled)) == []
    assert convert.detect_architecture(path) == name


# ----------------------------------------------------------------------------------------------
# ImageNet ResNet-50 files for training
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout,target", [("x2paddle", "farseg"), ("paddle.vision", "factseg"), ("torchvision-paddle-bn", "farseg")]
)
def test_imagenet_layouts_give_the_encoder(tmp_path, reference, layout, target):
    ref = reference("farseg")
    rename, extra, label, dropped = IMAGENET_LAYOUTS[layout]
    torchvision = encoder(ref.official)
    path = tmp_path / f"{layout}.pdparams"
    save_paddle(port_state(torchvision, rename, extra()), path)

    prefix = ENCODER_PREFIX[target]
    result = run_conversion(path, tmp_path / "enc.pdparams", model="resnet50", target=target, to="paddle")
    assert label in result.summary() and dropped in result.summary()
    want = convert.imagenet_resnet50_to(torchvision, target, "paddle")
    got = convert.load_state_dict_file(tmp_path / "enc.pdparams")
    assert differing_keys(got, want) == [] and all(k.startswith(prefix) for k in got)
    # Torch output: the counters are 0 (a Paddle file never keeps them; torchvision's 2017 file has none).
    no_counters = OrderedDict((k, v) for k, v in torchvision.items() if not k.endswith("num_batches_tracked"))
    run_conversion(path, tmp_path / "enc.pth", model="resnet50", target=target, to="torch")
    back = {k: v.numpy() for k, v in torch.load(tmp_path / "enc.pth", weights_only=True).items()}
    assert differing_keys(back, convert.imagenet_resnet50_to(no_counters, target, "torch")) == []
    # The trainers' init (init.imagenet) reads the file as it is.
    for framework in ("paddle", "torch"):
        state = convert.imagenet_encoder_state(path, target, framework)
        assert differing_keys(state, convert.imagenet_resnet50_to(no_counters, target, framework)) == []


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_trainers_init_from_the_x2paddle_imagenet_file(tmp_path, reference, framework):
    """train's init.imagenet (load_imagenet) takes X2Paddle's file as it is."""
    import importlib

    ref = reference("factseg")
    rename, extra, *_ = IMAGENET_LAYOUTS["x2paddle"]
    # Values the model does not hold yet (the reference model carries the official ones).
    torchvision = OrderedDict(
        (k, v if k.endswith("num_batches_tracked") else v * np.float32(0.5) + 1)
        for k, v in encoder(ref.official, "factseg").items()
    )
    path = tmp_path / "resnet50_pth.pdparams"
    save_paddle(port_state(torchvision, rename, extra()), path)
    train = importlib.import_module(f"{'torch_ref' if framework == 'torch' else 'paddle_impl'}.train")
    net = ref.torch_model if framework == "torch" else ref.paddle_model
    assert train.load_imagenet(net, str(path), "factseg") > 0
    own = {
        k: np.asarray(v.detach().numpy() if framework == "torch" else v.numpy()) for k, v in net.state_dict().items()
    }
    want = convert.imagenet_resnet50_to(torchvision, "factseg", framework)
    assert [k for k, v in want.items() if not k.endswith("num_batches_tracked") and not np.array_equal(own[k], v)] == []


# ----------------------------------------------------------------------------------------------
# Planted wrong rules
# ----------------------------------------------------------------------------------------------


def test_planted_bug_two_x2paddle_bottlenecks_swapped_is_caught(tmp_path, reference, monkeypatch, fresh_tables):
    ref = reference("farseg")
    path = write_port_file(tmp_path, ref, "paddleseg-farseg")
    stage1 = foreign.X2PADDLE_BOTTLENECKS[1]
    monkeypatch.setitem(foreign.X2PADDLE_BOTTLENECKS, 1, (stage1[0], stage1[2], stage1[1]))
    foreign.key_plan.cache_clear()
    foreign.known_names.cache_clear()
    # First line: the file stores the blocks in trunk order, which the wrong table contradicts.
    with pytest.raises(CheckpointError) as info:
        run_conversion(path, tmp_path / "out.pth", to="torch")
    assert (
        "layer10: file order bottleneck90, bottleneck50, bottleneck140; "
        "table order bottleneck90, bottleneck140, bottleneck50" in str(info.value)
    )
    assert not (tmp_path / "out.pth").exists()

    # Second line: without the order check the shapes still agree (blocks 1 and 2 of a stage
    # are alike), so only the tensors and the eval outputs betray the wrong table.
    monkeypatch.setattr(foreign, "x2paddle_order_problems", lambda state: [])
    run_conversion(path, tmp_path / "out.pth", to="torch")
    back = {k: v.numpy() for k, v in torch.load(tmp_path / "out.pth", weights_only=True).items()}
    wrong = differing_keys(back, expected_official(ref, "buffer_step"))
    assert wrong and {k.split(".")[3] for k in wrong} == {"1", "2"}
    assert all(k.startswith("en.resnet.layer1.") for k in wrong)
    ref.load_torch(back)
    assert np.abs(ref.torch_eval() - ref.torch_probs).max() > 1e-3

    # The ImageNet X2Paddle file goes through the same table.
    rename, extra, *_ = IMAGENET_LAYOUTS["x2paddle"]
    imagenet = tmp_path / "resnet50_pth.pdparams"
    save_paddle(port_state(encoder(ref.official), rename, extra()), imagenet)
    got = convert.imagenet_encoder_state(imagenet, "farseg", "paddle")
    want = convert.imagenet_resnet50_to(encoder(ref.official), "farseg", "paddle")
    assert {k.split(".")[3] for k in differing_keys(got, want)} == {"1", "2"}


def test_x2paddle_file_from_another_conversion_is_refused(tmp_path, reference):
    """Same names, blocks 1 and 2 of layer1 stored the other way round (as another X2Paddle run
    could number them): refused, not renamed wrongly."""
    ref = reference("farseg")
    rename, extra, *_ = IMAGENET_LAYOUTS["x2paddle"]
    state = port_state(encoder(ref.official), rename, extra())
    block = lambda key: ("bottleneck50" in key, "bottleneck140" in key)  # noqa: E731
    moved = [k for k in state if block(k) == (True, False)]
    reordered = OrderedDict((k, v) for k, v in state.items() if k not in moved)
    after = max(i for i, k in enumerate(reordered) if "bottleneck140" in k)
    items = list(reordered.items())
    reordered = OrderedDict(items[: after + 1] + [(k, state[k]) for k in moved] + items[after + 1 :])
    path = tmp_path / "other_x2paddle.pdparams"
    save_paddle(reordered, path)
    with pytest.raises(CheckpointError) as info:
        convert.imagenet_encoder_state(path, "farseg", "paddle")
    assert "another order" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "wrong_levels", [{1: 1, 2: 2, 3: 3, 4: 4}, {1: 1, 2: 2, 3: 3, 4: 0}], ids=["index-not-shifted", "rotated"]
)
def test_planted_bug_fpn_level_off_by_one_is_caught(tmp_path, reference, monkeypatch, fresh_tables, wrong_levels):
    ref = reference("factseg")
    path = write_port_file(tmp_path, ref, "paddlers-named-factseg")
    monkeypatch.setattr(foreign, "FPN_LEVEL_INDEX", wrong_levels)
    foreign.key_plan.cache_clear()
    foreign.known_names.cache_clear()
    with pytest.raises(CheckpointError) as info:
        run_conversion(path, tmp_path / "out.pth", to="torch")
    report = str(info.value)
    # The FPN inputs have 256/512/1024/2048 channels: a level off by one never has the right shape.
    assert "looks like the PaddleRS-named FactSeg" in report and "wrong shape" in report
    assert "fgfpn.inner_blocks.1.weight  expected [256, 256, 1, 1], found [256, 512, 1, 1]" in report
    assert not (tmp_path / "out.pth").exists()


# ----------------------------------------------------------------------------------------------
# Detection and validation
# ----------------------------------------------------------------------------------------------


def test_official_paddle_files_and_encoder_files_are_left_alone(reference):
    ref = reference("farseg")
    paddle_state = convert.torch_to_paddle(ref.official, "farseg")
    assert foreign.detect_layout(paddle_state) is None
    assert foreign.detect_layout(convert.imagenet_resnet50_to(encoder(ref.official), "farseg", "paddle")) is None
    assert foreign.detect_layout({"a.weight": np.zeros(1), "b.bias": np.zeros(1)}) is None


def test_every_table_covers_its_official_layout_once():
    for name, _, _ in foreign.layout_table():
        plan = foreign.key_plan(name)
        names = [n for entry in plan for n in entry.names]
        assert len(names) == len(set(names)), name  # no port key serves two official keys


@pytest.mark.parametrize("damage", ["missing", "unexpected", "wrong-shape", "both-bn-names", "bad-counter"])
def test_damaged_port_file_one_line_error_exit_2_nothing_written(tmp_path, reference, damage):
    ref = reference("farseg")
    _, rename, extra, *_ = MODEL_LAYOUTS["paddlers-farseg"]
    state = port_state(ref.official, rename, extra())
    if damage == "missing":
        del state["fpn.layer_blocks.2.weight"]
    elif damage == "unexpected":
        state["fsr.extra.weight"] = np.zeros(3, np.float32)
    elif damage == "wrong-shape":
        state["cls_head.0.weight"] = np.zeros((15, 128, 1, 1), np.float32)
    elif damage == "both-bn-names":
        state["decoder.blocks.0.0.1.running_mean"] = state["decoder.blocks.0.0.1._mean"]
    else:
        state["decoder.blocks.0.0.1.num_batches_tracked"] = np.zeros(3, np.int64)
    path = tmp_path / "damaged.pdparams"
    save_paddle(state, path)
    out = tmp_path / "out.pth"
    proc = subprocess.run(
        [sys.executable, "-m", "convert", str(path), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and not out.exists()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "looks like the PaddleRS FarSeg" in errors[0] and str(path) in errors[0]
    detail = {
        "missing": "fpn.layer_blocks.2.weight  expected [256, 256, 3, 3] (official fpn.fpn_layer3.weight)",
        "unexpected": "fsr.extra.weight  [3]",
        "wrong-shape": "cls_head.0.weight  expected [16, 128, 1, 1], found [15, 128, 1, 1]",
        "both-bn-names": "decoder.blocks.0.0.1._mean and decoder.blocks.0.0.1.running_mean",
        "bad-counter": "decoder.blocks.0.0.1.num_batches_tracked  expected a single counter",
    }[damage]
    assert detail in proc.stderr
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_cli_summary_names_the_layout(tmp_path, reference):
    ref = reference("farseg")
    path = write_port_file(tmp_path, ref, "paddleseg-farseg")
    proc = subprocess.run(
        [sys.executable, "-m", "convert", str(path), "--to", "paddle"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "PaddleSeg FarSeg (ucsk/FarSeg) layout" in line and "linear0.weight and" in line
    assert "buffer_step missing in the port, filled with 0" in line
    assert (tmp_path / "paddleseg-farseg.converted.pdparams").exists()

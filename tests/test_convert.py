"""Tests of the checkpoint converter (``convert``, ``python -m convert``).

Checkpoints are built from the official JSON layouts (right keys, shapes and order) with
random values, so every test runs without downloads. Full-size files (FarSeg ~125 MB) are
made once per module; the error-path checkpoints use broadcast (stride-0) tensors, which
torch.save stores in a few bytes whatever their shape.
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convert  # noqa: E402
from convert import (CheckpointError, default_output_path, detect_model, imagenet_resnet50_to, load_state_dict_file,  # noqa: E402
                     model_rules, paddle_layout, paddle_to_torch, read_checkpoint, rules_from_module,
                     run_conversion, save_paddle, save_torch, torch_to_paddle, validate)
from convert import rules as rules_mod  # noqa: E402
from convert.writers import atomic_write  # noqa: E402
from weights import ENCODER_PREFIX, MODEL_NAMES, load_layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        return False


needs_paddle_impl = pytest.mark.skipif(not _importable("paddle_impl"),
                                       reason="paddle_impl is not importable yet (being written by the lead)")
needs_torch_ref = pytest.mark.skipif(not _importable("torch_ref"),
                                     reason="torch_ref is not importable yet (being written by the lead)")


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------

def nbt_keys(model: str) -> set:
    """BatchNorm step counters of ``model`` (by module type, via the converter's rules)."""
    return {r.torch_key for r in model_rules(model) if r.paddle_key is None}


def random_state(model: str, seed: int = 0) -> "OrderedDict[str, np.ndarray]":
    """Official-layout state dict with distinct random float32 values (full size)."""
    rng = np.random.default_rng(seed)
    counters = nbt_keys(model)
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for key, shape in load_layout(model).items():
        if key in counters:
            out[key] = np.array(1234, dtype=np.int64)  # non-zero: shows what the round trip restores
        elif key == "buffer_step":
            out[key] = np.array(60000.0, dtype=np.float32)
        else:
            out[key] = rng.standard_normal(shape, dtype=np.float32)
    return out


def broadcast_state(model: str) -> "OrderedDict[str, torch.Tensor]":
    """Official-layout state dict of stride-0 tensors: right shapes, a few bytes on disk."""
    counters = nbt_keys(model)
    return OrderedDict(
        (k, torch.zeros((), dtype=torch.int64) if k in counters else torch.ones(1).expand(*s) if s
         else torch.zeros(()))
        for k, s in load_layout(model).items())


def official_wrapper(state) -> dict:
    """The official checkpoint format: DDP prefix + training wrapper."""
    model = OrderedDict(("module." + k, torch.as_tensor(v)) for k, v in state.items())
    return {"model": model, "opt": {"lr": 0.007, "momentum": 0.9}, "global_step": 60000}


def torchvision_state(seed: int = 1) -> "OrderedDict[str, np.ndarray]":
    """torchvision resnet50-19c8e357 layout: FarSeg's encoder without prefix and without
    num_batches_tracked, plus the ImageNet classifier."""
    rng = np.random.default_rng(seed)
    prefix = ENCODER_PREFIX["farseg"]
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for rule in model_rules("farseg"):
        if rule.torch_key.startswith(prefix) and rule.paddle_key is not None:
            out[rule.torch_key[len(prefix):]] = rng.standard_normal(rule.shape, dtype=np.float32)
    out["fc.weight"] = rng.standard_normal((1000, 2048), dtype=np.float32)
    out["fc.bias"] = rng.standard_normal((1000,), dtype=np.float32)
    return out


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def stderr_lines(proc) -> list:
    # Paddle/torch import warnings never happen on the error paths, but be robust to them.
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error:") or ln.startswith("  ")]


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """name -> (state, path of the official-format torch checkpoint), full size, made once."""
    folder = tmp_path_factory.mktemp("official")
    files = {}
    for seed, name in enumerate(MODEL_NAMES):
        state = random_state(name, seed)
        path = folder / f"{name}50.pth"
        torch.save(official_wrapper(state), path)
        files[name] = (state, path)
    return files


@pytest.fixture(scope="module")
def converted(official_files):
    """name -> (pdparams path, back-converted .pth path): torch -> paddle -> torch."""
    out = {}
    for name, (_, path) in official_files.items():
        pd = run_conversion(path).out_path
        back = run_conversion(pd, path.with_name(f"{name}50_back.pth")).out_path
        out[name] = (pd, back)
    return out


# ----------------------------------------------------------------------------------------------
# Detection and reading
# ----------------------------------------------------------------------------------------------

@needs_torch_ref
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_detect_model_torch_and_paddle_names(name):
    assert detect_model(load_layout(name)) == name
    assert detect_model(paddle_layout(name)) == name
    assert detect_model(["module." + k for k in load_layout(name)]) == name


@needs_torch_ref
def test_detect_resnet50_and_foreign():
    required, optional = convert.rules.imagenet_layout("farseg")
    assert detect_model(list(required) + ["fc.weight", "fc.bias"]) == "resnet50"
    with pytest.raises(CheckpointError) as info:
        detect_model(["backbone.stem.conv.weight", "head.weight"])
    msg = str(info.value)
    assert "foreign" in msg and "en.resnet.conv1.weight" in msg and "conv1.weight" in msg
    assert "'backbone.stem.conv.weight'" in msg and "\n" not in msg


def test_official_wrapper_with_module_prefix(official_files):
    state, path = official_files["farseg"]
    loaded = read_checkpoint(path)
    assert (loaded.framework, loaded.container, loaded.prefix) == ("torch", "official wrapper", "module.")
    assert list(loaded.state) == list(load_layout("farseg"))
    assert all(np.array_equal(loaded.state[k], v) for k, v in state.items())


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_either_prefix(tmp_path, prefix):
    path = tmp_path / "bare.pth"
    torch.save(OrderedDict((prefix + k, v) for k, v in broadcast_state("factseg").items()), path)
    loaded = read_checkpoint(path)
    assert loaded.container == "bare state dict"
    assert loaded.prefix == (prefix or None)
    assert list(loaded.state) == list(load_layout("factseg"))
    validate(loaded.state, "factseg", "torch")


# ----------------------------------------------------------------------------------------------
# Round trip and loading into the real models
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip_torch_paddle_torch_identical(official_files, converted, name):
    state, _ = official_files[name]
    pd, back = converted[name]
    restored = torch.load(back, map_location="cpu", weights_only=True)
    assert list(restored) == list(load_layout(name))  # bare, no prefix, official order
    counters = nbt_keys(name)
    for key, value in state.items():
        if key in counters:
            # Paddle has no step counter: recreated as int64 0 (documented).
            assert restored[key].dtype == torch.int64 and restored[key].item() == 0
        else:
            assert torch.equal(restored[key], torch.from_numpy(value)), key
    # The Paddle side: official order minus the counters, BN buffers renamed.
    paddle_state = load_state_dict_file(pd)
    assert list(paddle_state) == list(paddle_layout(name))
    assert len(paddle_state) == len(state) - len(counters)


@needs_paddle_impl
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pdparams_loads_into_paddle_impl(converted, name):
    import paddle
    import paddle_impl

    pd, _ = converted[name]
    loaded = paddle.load(str(pd))
    model = paddle_impl.build_model(name)
    expected = model.state_dict()
    assert set(loaded) == set(expected)
    missing, unexpected = model.set_state_dict(loaded)
    assert not missing and not unexpected
    mine = load_state_dict_file(pd)  # the safe loader reads what paddle.load reads
    after = model.state_dict()
    for key, value in mine.items():
        assert np.array_equal(after[key].numpy(), value), key
        assert np.array_equal(loaded[key].numpy(), value), key


@needs_torch_ref
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_back_converted_pth_loads_into_torch_ref_strict(converted, name):
    import torch_ref

    _, back = converted[name]
    model = torch_ref.build_model(name)
    model.load_state_dict(torch.load(back, map_location="cpu", weights_only=True), strict=True)


def test_cli_summary_and_default_output(official_files, tmp_path):
    state, src = official_files["farseg"]
    path = tmp_path / "farseg50.pth"
    try:
        os.link(src, path)  # no second 125 MB copy
    except OSError:
        path.write_bytes(src.read_bytes())
    proc = run_cli(path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"converted {path} (farseg, official wrapper, module. prefix, 451 tensors)")
    counters = len(nbt_keys("farseg"))
    assert f"-> {tmp_path / 'farseg50.pdparams'} ({451 - counters} tensors, {counters} num_batches_tracked dropped)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["farseg50.pdparams", "farseg50.pth"]


# ----------------------------------------------------------------------------------------------
# ImageNet ResNet-50
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    state = torchvision_state()
    path = tmp_path_factory.mktemp("imagenet") / "resnet50-19c8e357.pth"
    # The 2017 torchvision file uses torch's legacy (non-zip) format: write that one too.
    torch.save(OrderedDict((k, torch.from_numpy(v)) for k, v in state.items()), path,
               _use_new_zipfile_serialization=False)
    return state, path


@pytest.mark.parametrize("target", MODEL_NAMES)
def test_imagenet_resnet50_onto_encoder(imagenet_file, target):
    state, path = imagenet_file
    prefix = ENCODER_PREFIX[target]
    result = run_conversion(path, target=target)
    assert result.model == "resnet50"
    assert result.out_path.name == f"resnet50-19c8e357_{target}_encoder.pdparams"
    assert "fc.weight and fc.bias dropped" in result.summary()
    out = load_state_dict_file(result.out_path)
    enc_paddle = [k for k in paddle_layout(target) if k.startswith(prefix)]
    assert list(out) == enc_paddle
    for rule in model_rules(target):
        if rule.torch_key.startswith(prefix) and rule.paddle_key:
            assert np.array_equal(out[rule.paddle_key], state[rule.torch_key[len(prefix):]])
    # Torch naming: official encoder keys, counters created as 0.
    torch_out = imagenet_resnet50_to(state, target, to="torch")
    assert list(torch_out) == [k for k in load_layout(target) if k.startswith(prefix)]
    assert all(torch_out[k] == 0 and torch_out[k].dtype == np.int64 for k in nbt_keys(target) if k in torch_out)
    if _importable("torch_ref"):
        import torch_ref

        net = torch_ref.build_model(target)
        res = net.load_state_dict(convert.as_torch(torch_out), strict=False)
        assert not res.unexpected_keys
        # (torch's BatchNorm does not report a missing num_batches_tracked: backward compatibility)
        assert set(res.missing_keys) == {k for k in load_layout(target)
                                         if not k.startswith(prefix) and k not in nbt_keys(target)}
    if _importable("paddle_impl"):
        import paddle_impl

        net = paddle_impl.build_model(target)
        missing, unexpected = net.set_state_dict(out)
        assert not unexpected
        assert set(missing) == {k for k in paddle_layout(target) if not k.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# Rules: by module type; Linear; dtypes; file formats
# ----------------------------------------------------------------------------------------------

class _Misnamed(torch.nn.Module):
    """Names chosen to mislead a name-based converter: a BatchNorm called ``fc``, a Linear
    called ``bn``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.BatchNorm2d(4)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.bn = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.bn(self.pool(self.fc(self.conv(x))).flatten(1))


def test_rules_by_module_type_and_linear_transpose():
    net = _Misnamed()
    rules = {r.torch_key: r for r in rules_from_module(net)}
    assert rules["fc.running_mean"].paddle_key == "fc._mean"
    assert rules["fc.running_var"].paddle_key == "fc._variance"
    assert rules["fc.num_batches_tracked"].paddle_key is None
    assert rules["bn.weight"].transpose and rules["bn.weight"].paddle_shape == (4, 5)
    assert not rules["bn.bias"].transpose and not rules["conv.weight"].transpose
    state = net.state_dict()
    out = torch_to_paddle(state, tuple(rules.values()))
    assert np.array_equal(out["bn.weight"], state["bn.weight"].numpy().T) and out["bn.weight"].flags.c_contiguous
    back = paddle_to_torch(out, tuple(rules.values()))
    assert all(np.array_equal(back[k], v.numpy()) for k, v in state.items() if k != "fc.num_batches_tracked")


def test_linear_transpose_gives_same_paddle_forward():
    paddle = pytest.importorskip("paddle")
    torch.manual_seed(0)
    net = _Misnamed().eval()
    with torch.no_grad():
        net.fc.running_mean.uniform_(-1, 1)
        net.fc.running_var.uniform_(0.5, 2)
    pnet = paddle.nn.Layer()
    pnet.conv = paddle.nn.Conv2D(3, 4, 3)
    pnet.fc = paddle.nn.BatchNorm2D(4, epsilon=1e-5)
    pnet.bn = paddle.nn.Linear(4, 5)
    missing, unexpected = pnet.set_state_dict(torch_to_paddle(net.state_dict(), rules_from_module(net)))
    assert not missing and not unexpected
    pnet.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    px = paddle.to_tensor(x)
    py = pnet.bn(paddle.flatten(paddle.nn.functional.adaptive_avg_pool2d(pnet.fc(pnet.conv(px)), 1), 1))
    np.testing.assert_allclose(py.numpy(), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_dtypes_and_0d_kept(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2)).double()
    net.register_buffer("step", torch.tensor(5.0, dtype=torch.float32))
    rules = rules_from_module(net)
    out = torch_to_paddle(net.state_dict(), rules)
    assert out["0.weight"].dtype == np.float64 and out["1._mean"].dtype == np.float64
    assert out["step"].shape == () and out["step"].dtype == np.float32
    path = save_paddle(out, tmp_path / "x.pdparams")
    again = load_state_dict_file(path)
    assert all(again[k].dtype == v.dtype and again[k].shape == v.shape for k, v in out.items())


def test_save_paddle_is_byte_identical_to_paddle_save(tmp_path):
    paddle = pytest.importorskip("paddle")
    # A plain dict, as paddle.save itself builds from a Layer's state dict.
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "buffer_step": np.array(3.0, dtype=np.float32),
             "c": np.arange(4, dtype=np.int64)}
    paddle.save(state, str(tmp_path / "ref.pdparams"))
    save_paddle(state, tmp_path / "mine.pdparams")
    assert (tmp_path / "ref.pdparams").read_bytes() == (tmp_path / "mine.pdparams").read_bytes()


@pytest.mark.parametrize("protocol", [2, 4])
def test_safe_loader_reads_paddle_save_of_layer_state_dict(tmp_path, protocol):
    paddle = pytest.importorskip("paddle")
    layer = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.BatchNorm2D(4), paddle.nn.Linear(4, 5))
    path = tmp_path / "layer.pdparams"
    paddle.save(layer.state_dict(), str(path), protocol=protocol)
    mine = load_state_dict_file(path)  # name table dropped, no Paddle import needed
    ref = layer.state_dict()
    assert list(mine) == list(ref)
    assert all(np.array_equal(mine[k], v.numpy()) for k, v in ref.items())


def test_safe_loader_reassembles_split_arrays_and_refuses_other_codecs(tmp_path):
    # paddle.save(protocol=2/3) splits arrays over 1 GiB into slices plus an info table.
    whole = np.arange(12, dtype=np.float32).reshape(3, 4)
    split = {"w@@.0": whole.ravel()[:8], "w@@.1": whole.ravel()[8:], "b": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (3, 4), "slices": ["w@@.0", "w@@.1"]}}}
    path = tmp_path / "split.pdparams"
    path.write_bytes(pickle.dumps(split, protocol=2))
    state = load_state_dict_file(path)
    assert set(state) == {"w", "b"} and np.array_equal(state["w"], whole)
    # _codecs.encode is allowed only for protocol-2 bytes (latin-1), not as a general codec call.
    class _Zlib:
        def __reduce__(self):
            import codecs

            return (codecs.encode, ("x" * 100, "zlib_codec"))

    crafted = pickle.dumps({"w": _Zlib()}, protocol=2)
    assert b"_codecs" in crafted
    path.write_bytes(crafted)
    with pytest.raises(CheckpointError, match="refused to unpickle _codecs.encode with codec 'zlib_codec'"):
        load_state_dict_file(path)


# ----------------------------------------------------------------------------------------------
# Bad inputs through the CLI: exit 2, one line naming the file, nothing written or executed
# ----------------------------------------------------------------------------------------------

class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _make_bad(kind: str, folder: Path, marker: Path) -> Path:
    if kind == "truncated_zip":
        path = folder / "trunc.pth"
        torch.save(broadcast_state("farseg"), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_pdparams":
        path = folder / "trunc.pdparams"
        save_paddle({"a": np.arange(1000, dtype=np.float32)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "malicious_pdparams":
        path = folder / "evil.pdparams"
        path.write_bytes(pickle.dumps({"conv.weight": _Evil(marker)}, protocol=4))
    elif kind == "malicious_pth_zip":
        path = folder / "evil.pth"
        torch.save({"conv.weight": torch.zeros(1), "x": _Evil(marker)}, path)
    elif kind == "malicious_plain_pickle_pth":
        path = folder / "evil_plain.pth"
        path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    elif kind == "text":
        path = folder / "notes.pth"
        path.write_text("this is not a checkpoint\n")
    elif kind == "zip_not_checkpoint":
        path = folder / "archive.pth"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "hello")
    elif kind == "empty":
        path = folder / "empty.pdparams"
        path.write_bytes(b"")
    elif kind == "foreign":
        path = folder / "foreign.pth"
        torch.save({"backbone.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}, path)
    elif kind == "missing_input":
        path = folder / "does_not_exist.pth"
    else:
        raise AssertionError(kind)
    return path


ONE_LINE_CASES = {
    "truncated_zip": "truncated or corrupt zip",
    "truncated_pdparams": "truncated or corrupt pickle",
    "malicious_pdparams": "refused to unpickle posix.system",
    "malicious_pth_zip": "refused to unpickle posix.system",
    "malicious_plain_pickle_pth": "refused to unpickle posix.system",
    "text": "a text file",
    "zip_not_checkpoint": "not a PyTorch checkpoint",
    "empty": "empty file",
    "foreign": "foreign state dict",
    "missing_input": "no such file",
}


@pytest.mark.parametrize("kind", sorted(ONE_LINE_CASES))
def test_cli_bad_input_one_line_error(tmp_path, kind):
    if os.name != "posix" and kind.startswith("malicious"):
        pytest.skip("marker command uses POSIX touch")
    marker = tmp_path / "MARKER_code_was_executed"
    path = _make_bad(kind, tmp_path, marker)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli(path)
    assert proc.returncode == 2, proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert ONE_LINE_CASES[kind] in lines[0]
    assert not marker.exists(), "the malicious pickle was executed"
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp left
    assert proc.stdout == ""


def test_cli_layout_mismatch_report(tmp_path):
    # One file with both defects (one subprocess): a missing key and a wrong shape.
    state = broadcast_state("farseg")
    state.pop("sr.scene_encoder.2.0.weight")
    state["cls_pred_conv.weight"] = torch.zeros(15, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(official_wrapper(state), path)
    proc = run_cli(path)
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"error: {path}: does not match the farseg layout (torch names): "
                            f"1 missing, 1 wrong shape"), proc.stderr
    for text in ["missing keys (1):", "sr.scene_encoder.2.0.weight  expected [256, 2048, 1, 1]",
                 "wrong shape (1):", "cls_pred_conv.weight  expected [16, 128, 1, 1], found [15, 128, 1, 1]"]:
        assert text in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


def test_cli_wrong_model_name(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"")
    proc = run_cli(path, "--model", "unet")
    assert proc.returncode == 2
    assert "invalid choice: 'unet'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pth"]


def test_explicit_model_mismatch_hints_detected(tmp_path):
    path = tmp_path / "farseg.pth"
    torch.save(broadcast_state("farseg"), path)
    with pytest.raises(CheckpointError) as info:
        run_conversion(path, model="factseg")
    assert "the keys look like farseg" in info.value.message
    assert "... and" in str(info.value)  # long lists are capped at ten per category
    assert sorted(p.name for p in tmp_path.iterdir()) == ["farseg.pth"]


def test_help_documents_options_and_skips_torch():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for option in ("-o OUT", "--model", "--to", "--target", "resnet50", "num_batches_tracked"):
        assert option in proc.stdout
    code = "import sys, convert, convert.__main__; print('torch' in sys.modules, 'paddle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "False False"


# ----------------------------------------------------------------------------------------------
# Writing safety
# ----------------------------------------------------------------------------------------------

def test_refuses_to_overwrite_input(tmp_path):
    path = tmp_path / "factseg.pth"
    torch.save(broadcast_state("factseg"), path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="refusing to overwrite the input"):
        run_conversion(path, path, to="torch")
    assert path.read_bytes() == before
    # Default names: swapped extension; same-format conversions never land on the input.
    assert default_output_path(path, "paddle", "factseg").name == "factseg.pdparams"
    assert default_output_path(path, "torch", "factseg").name == "factseg.converted.pth"
    assert default_output_path(tmp_path / "r.pth", "torch", "resnet50", "factseg").name == "r_factseg_encoder.pth"


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.pdparams"
    path.write_bytes(b"old")

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, explode)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pdparams"]


def test_save_torch_is_bare_state_dict(tmp_path):
    state = OrderedDict([("w", np.ones((2, 2), np.float32)), ("n", np.array(0, np.int64))])
    path = save_torch(state, tmp_path / "s.pth")
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == ["w", "n"] and loaded["n"].dtype == torch.int64 and loaded["n"].shape == ()


# ----------------------------------------------------------------------------------------------
# Planted bug: a converter that forgets the BatchNorm rename must be caught
# ----------------------------------------------------------------------------------------------

def test_planted_bug_bn_rename_skipped_is_caught(official_files, monkeypatch):
    state, _ = official_files["factseg"]
    monkeypatch.setitem(rules_mod.BN_TORCH_TO_PADDLE, "running_mean", "running_mean")
    monkeypatch.setitem(rules_mod.BN_TORCH_TO_PADDLE, "running_var", "running_var")
    rules_mod.model_rules.cache_clear()
    try:
        buggy = torch_to_paddle(state, "factseg")
    finally:
        monkeypatch.undo()
        rules_mod.model_rules.cache_clear()
    # The (correct) Paddle layout rejects it, naming the keys.
    with pytest.raises(CheckpointError) as info:
        validate(buggy, "factseg", "paddle")
    report = str(info.value)
    assert "missing keys (134)" in report and "resencoder.resnet.bn1._mean" in report
    assert "unexpected keys (134)" in report and "resencoder.resnet.bn1.running_mean" in report
    if _importable("paddle_impl"):
        import paddle_impl

        missing, unexpected = paddle_impl.build_model("factseg").set_state_dict(buggy)
        assert "resencoder.resnet.bn1._mean" in missing and "resencoder.resnet.bn1.running_mean" in unexpected

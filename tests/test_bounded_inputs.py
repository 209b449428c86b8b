"""Bounded readers and refusals (issue 17, items 5, 7-11, 13): hostile files made here, small.

Refusals go through the real command (a subprocess under a 3 GB address-space limit and a
timeout where memory is the point) and must end with exit 2 and one ``error:`` line (no
traceback, no MemoryError):

- YAML (training configs of both trainers, ``model.yml``): alias bomb, 20,000 nested
  brackets, oversized file; ``model.yml`` windows and strides outside what the models run;
- every numeric and device flag of every command (one argparse style, ``common.cli``), and an
  AST scan that no command keeps a bare ``int``/``float`` flag;
- exports: a ``read_file`` op in ``model.json`` (refused before Paddle loads it), deep JSON,
  NaN in ``.pdiparams`` and in an ONNX initializer, outputs [B,16,1,1] and 17 channels, a
  custom ONNX domain, a non-finite output on a later run;
- image bombs from their headers: 8000^2 PNG and sparse 30000^2 GeoTIFF for ``infer``,
  19000^2 PNGs for ``evaluate``; ``isaid.prepare`` zips declaring 1.5 GiB or inflating 1000x,
  and a 19000^2 mask beside a 64^2 image.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml
from raster_scenes import write_sparse_geotiff

from app.exported import deploy_config

REPO = Path(__file__).resolve().parents[1]
MEMORY_CAP = 3 * 2**30
TIMEOUT = 60
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str, cap: bool = True) -> subprocess.CompletedProcess:
    """``python *args`` under the memory cap and the timeout (a hang fails the test)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        preexec_fn=_cap_memory if cap else None,
    )


def assert_refused(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one non-empty stderr line, ``error:`` in it, no traceback; returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
    assert len(lines[0]) < 600, lines[0][:300]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def small_png(path: Path, side: int = 64) -> Path:
    """A real side x side RGB PNG (random pixels)."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def header_only_png(path: Path, height: int, width: int) -> Path:
    """A PNG that claims ``width`` x ``height`` and holds no pixel data: a decompression
    bomb's header (the readers must refuse it from the header, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------ hostile YAML


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes whose aliases expand to 9**levels scalars (billion laughs)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    lines.append(f"model: {{name: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


HOSTILE_YAML = {
    "alias-bomb": (alias_bomb, "aliases repeating anchors"),
    "nested-brackets": (lambda: "[" * 20000 + "]" * 20000 + "\n", "nested deeper than"),
    "oversized": (lambda: "# padding\n" * 200_000, "bytes, more than the"),
}


def test_alias_bomb_is_small() -> None:
    assert len(alias_bomb()) < 500


@pytest.mark.parametrize("kind", sorted(HOSTILE_YAML))
@pytest.mark.parametrize("trainer", ["torch_ref.train", "paddle_impl.train"])
def test_hostile_training_config_is_refused(tmp_path: Path, kind: str, trainer: str) -> None:
    make, expected = HOSTILE_YAML[kind]
    path = tmp_path / "recipe.yaml"
    path.write_text(make())
    proc = run_capped("-m", trainer, "--config", str(path), "--print-config")
    assert_refused(proc, str(path), expected)


def _export_folder(folder: Path, yml_text: str) -> Path:
    """A Paddle export folder with ``yml_text`` as model.yml (the program files are empty:
    every check below fires before the program is read)."""
    folder.mkdir()
    (folder / "model.yml").write_text(yml_text)
    (folder / "model.json").write_text("{}")
    (folder / "model.pdiparams").write_bytes(b"")
    return folder


@pytest.mark.parametrize("kind", sorted(HOSTILE_YAML))
@pytest.mark.parametrize("command", ["paddle_impl.infer", "torch_ref.predict"])
def test_hostile_model_yml_is_refused(tmp_path: Path, kind: str, command: str) -> None:
    make, expected = HOSTILE_YAML[kind]
    folder = _export_folder(tmp_path / "export", make())
    image = small_png(tmp_path / "scene.png")
    out = tmp_path / "classes.png"
    extra = ["--out", str(out), "--no-progress"] if command.endswith("predict") else []
    proc = run_capped("-m", command, "--model-dir", str(folder), "--image", str(image), *extra)
    assert_refused(proc, "model.yml", expected)
    assert not out.exists()


def test_override_value_is_read_by_the_bounded_reader() -> None:
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="unknown key"):
        load_config(str(REPO / "configs" / "farseg_isaid.yaml"), ["train.nonsense=" + "[" * 20000])
    config = load_config(str(REPO / "configs" / "farseg_isaid.yaml"), ["data.split=" + "[" * 5000])
    assert config["data"]["split"].startswith("[[[")  # kept as text, not parsed into a RecursionError


def test_bounded_reader_accepts_the_shipped_files_and_refuses_planted_bombs() -> None:
    from common.bounded_yaml import BoundedYamlError, parse_yaml

    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert parse_yaml(path.read_text(), str(path)) == yaml.safe_load(path.read_text())
    # Aliases within the bounds are fine; the node count includes their expansion.
    assert parse_yaml("a: &a [1, 2]\nb: *a\n", "f") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(BoundedYamlError, match="more than 10 nodes"):
        parse_yaml("a: &a [1, 2, 3, 4]\nb: [*a, *a]\n", "f", max_nodes=10)
    with pytest.raises(BoundedYamlError, match="more than 2 YAML aliases"):
        parse_yaml("a: &a 1\nb: [*a, *a, *a]\n", "f", max_aliases=2)
    with pytest.raises(BoundedYamlError, match="deeper than 3"):
        parse_yaml("a: {b: {c: {d: 1}}}\n", "f", max_depth=3)


# ------------------------------------------------------------------------------ model.yml windows


def _model_yml(window: object, stride: object, **changes: object) -> str:
    config = deploy_config("farseg", None, None, "random")
    config["sliding_window"]["window"] = window
    config["sliding_window"]["stride"] = stride
    config.update(changes)
    return yaml.safe_dump(config, sort_keys=False)


@pytest.mark.parametrize(
    "window,stride,expected",
    [
        (1, 1, "window must be a multiple of 32"),
        (32, 32, "window must be a multiple of 32 in 64.."),
        (100, 50, "window must be a multiple of 32"),
        (8192, 512, "window must be a multiple of 32 in 64..4096"),
        (896, 1, "stride must lie in 32..window"),
        (256, 512, "stride must lie in 32..window (256)"),
        ("896", 512, "window must be an integer"),
    ],
)
def test_model_yml_window_and_stride_are_bounded(tmp_path: Path, window, stride, expected: str) -> None:
    from app.exported import ExportError, read_deploy_config

    folder = _export_folder(tmp_path / "export", _model_yml(window, stride))
    with pytest.raises(ExportError) as caught:
        read_deploy_config(str(folder))
    message = str(caught.value)
    assert message.startswith(str(folder / "model.yml") + ": sliding_window: ") and expected in message, message


def test_model_yml_window_refusal_through_the_command(tmp_path: Path) -> None:
    folder = _export_folder(tmp_path / "export", _model_yml(1, 1))
    image = small_png(tmp_path / "scene.png")
    proc = run_capped("-m", "paddle_impl.infer", "--model-dir", str(folder), "--image", str(image))
    assert_refused(proc, "model.yml", "sliding_window", "window must be")


# ------------------------------------------------------------------------------ flags (item 13)

# Required arguments of each command, then the bad flag: argparse refuses before any work.
COMMANDS = {
    "torch_ref.evaluate": ["--model", "farseg", "--weights", "w.pth", "--images", "i", "--masks", "m"],
    "paddle_impl.evaluate": ["--model", "farseg", "--weights", "w.pdparams", "--images", "i", "--masks", "m"],
    "torch_ref.predict": ["--weights", "w.pth", "--image", "x.png", "--out", "o.png"],
    "paddle_impl.predict": ["--weights", "w.pdparams", "--image", "x.png", "--out", "o.png"],
    "torch_ref.export": ["--model", "farseg", "--out", "o"],
    "paddle_impl.export": ["--model", "farseg", "--out", "o"],
    "paddle_impl.infer": ["--model-dir", "d", "--image", "x.png"],
    "isaid.prepare": ["src", "out"],
    "isaid.synth": ["out"],
}
BAD_FLAGS = {
    "--window": ["0", "1", "100", "8192", "-896", "nan"],
    "--stride": ["0", "-3", "1", "100000"],
    "--batch-size": ["0", "-1", "100000"],
    "--threads": ["0", "-3", "100000", "x"],
    "--workers": ["0", "-3", "100000"],
    "--device": ["gpu:x", "gpu:-1", "tpu", "cuda:999", "gpu:1:2"],
    "--color-max-side": ["0", "10000000"],
    "--tolerance": ["-1", "nan", "inf"],
    "--rounding-tolerance": ["-1", "nan"],
    "--opset": ["0", "1000"],
    "--train": ["-1", "1000000"],
    "--val": ["-1"],
    "--size": ["0", "1000000"],
    "--seed": ["-1", "x"],
}


# Which of BAD_FLAGS each command has (test_flag_table_matches_the_commands keeps it true).
FLAGS_OF = {
    "torch_ref.evaluate": ("--window", "--stride", "--batch-size", "--tolerance", "--device"),
    "paddle_impl.evaluate": ("--window", "--stride", "--batch-size", "--tolerance", "--device"),
    "torch_ref.predict": ("--window", "--stride", "--batch-size", "--color-max-side", "--device"),
    "paddle_impl.predict": ("--window", "--stride", "--batch-size", "--color-max-side", "--device"),
    "torch_ref.export": ("--window", "--stride", "--tolerance", "--opset", "--size"),
    "paddle_impl.export": ("--window", "--stride", "--tolerance", "--rounding-tolerance", "--size"),
    "paddle_impl.infer": ("--threads", "--device"),
    "isaid.prepare": ("--window", "--stride", "--workers"),
    "isaid.synth": ("--train", "--val", "--size", "--seed"),
}


def _help_text(module: str, capsys) -> str:
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_flag_table_matches_the_commands(module: str, capsys) -> None:
    """FLAGS_OF lists exactly the BAD_FLAGS options each command's --help shows."""
    text = _help_text(module, capsys)
    present = {flag for flag in BAD_FLAGS if re.search(re.escape(flag) + r"\b(?!-)", text)}
    assert present == set(FLAGS_OF[module])


@pytest.mark.parametrize(
    "module,flag,value",
    [
        pytest.param(module, flag, value, id=f"{module}{flag}={value}")
        for module, flags in FLAGS_OF.items()
        for flag in flags
        for value in BAD_FLAGS[flag]
    ],
)
def test_every_numeric_and_device_flag_is_validated(module: str, flag: str, value: str, capsys) -> None:
    """Each command refuses each bad value of its flags in one line, exit 2, before any work."""
    import importlib

    main = importlib.import_module(module).main
    required = COMMANDS[module]
    pair = flag == "--size" and not module.startswith("isaid")  # the exports' --size H W
    with pytest.raises(SystemExit) as exited:
        main(required + [flag, value] + ([value] if pair else []))
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1 and "error:" in lines[0] and flag in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "text,expected",
    [("cpu", "cpu"), ("GPU", "gpu"), ("gpu:1", "gpu:1"), ("cuda", "cuda"), ("cuda:03", "cuda:3"), ("auto", "auto")],
)
def test_device_type_accepts_the_documented_spellings(text: str, expected: str) -> None:
    from common.cli import device_or_auto

    assert device_or_auto(text) == expected


def test_infer_device_and_threads_through_the_command(tmp_path: Path) -> None:
    """The issue's cases, end to end: a ValueError traceback and a SIGABRT before."""
    for flag, value in (("--device", "gpu:x"), ("--threads", "-3"), ("--threads", "100000")):
        proc = run_capped("-m", "paddle_impl.infer", "--model-dir", str(tmp_path), "--image", "x.png", flag, value)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"argument {flag}" in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------ exports (items 5, 7, 11)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """A real FarSeg export of each kind (random weights): Paddle PIR and torch ONNX, plus the
    torch checkpoint they came from."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import paddle
    import torch

    import paddle_impl
    import torch_ref
    from convert import save_torch
    from paddle_impl.export import export as paddle_export
    from torch_ref.export import export as torch_export

    paddle.set_device("cpu")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("exports")
    torch.manual_seed(0)
    torch_model = torch_ref.build_model("farseg").eval()
    save_torch(torch_model.state_dict(), folder / "farseg.pth")
    paddle_model = paddle_impl.build_model("farseg")
    paddle_model.eval()
    paddle_export("farseg", None, str(folder / "paddle"), model=paddle_model, check=False)
    torch_export("farseg", None, str(folder / "onnx"), model=torch_model, check=False)
    torch.set_num_threads(previous)
    return {"paddle": folder / "paddle", "onnx": folder / "onnx", "weights": folder / "farseg.pth"}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _infer_here(folder: Path, image: Path, capsys) -> subprocess.CompletedProcess:
    """``paddle_impl.infer.main`` in this process (no Paddle import per test: the edited
    exports below are refused before or at load, in bounded memory by construction)."""
    import paddle_impl.infer as infer

    backend = "onnxruntime" if (folder / "model.onnx").exists() else "native"
    capsys.readouterr()
    code = infer.main(["--model-dir", str(folder), "--image", str(image), "--backend", backend, "--threads", "1"])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def _infer(folder: Path, image: Path, *extra: str, cap: bool = True) -> subprocess.CompletedProcess:
    backend = "onnxruntime" if (folder / "model.onnx").exists() else "native"
    return run_capped(
        "-m",
        "paddle_impl.infer",
        "--model-dir",
        str(folder),
        "--image",
        str(image),
        "--backend",
        backend,
        "--threads",
        "1",
        *extra,
        cap=cap,
    )


def test_real_exports_pass_the_allow_list_and_the_probe(exports, tmp_path: Path) -> None:
    image = small_png(tmp_path / "scene.png")
    for kind in ("paddle", "onnx"):
        proc = _infer(exports[kind], image)
        assert proc.returncode == 0, proc.stderr[-2000:]


def _edit_program_json(folder: Path, edit) -> None:
    import json

    path = folder / "model.json"
    program = json.loads(path.read_text())
    edit(program)
    path.write_text(json.dumps(program))


def test_paddle_program_with_a_read_file_op_is_refused_before_loading(exports, tmp_path: Path) -> None:
    folder = _copy(exports["paddle"], tmp_path / "export")

    def inject(program: dict) -> None:
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
        planted = dict(next(op for op in ops if op.get("#") == "1.full"))
        planted["#"] = "1.read_file"
        ops.insert(1, planted)

    _edit_program_json(folder, inject)
    assert_refused(_infer(folder, small_png(tmp_path / "scene.png")), "model.json", "1.read_file", "never writes")


def test_deeply_nested_program_json_is_refused_in_one_line(exports, tmp_path: Path, capsys) -> None:
    folder = _copy(exports["paddle"], tmp_path / "export")

    import json

    path = folder / "model.json"
    text = path.read_text()
    path.write_text(text[:-1] + ', "extra": ' + "[" * 20000 + "]" * 20000 + "}")
    assert json.loads(text)  # the original parses
    assert_refused(_infer_here(folder, small_png(tmp_path / "scene.png"), capsys), "model.json", "JSON nested")


def test_paddle_params_with_nan_are_refused_at_load(exports, tmp_path: Path, capsys) -> None:
    folder = _copy(exports["paddle"], tmp_path / "export")
    params = folder / "model.pdiparams"
    data = bytearray(params.read_bytes())
    middle = len(data) // 2 // 4 * 4  # inside the largest weights (the headers are tiny)
    data[middle : middle + (1 << 16)] = b"\xff" * (1 << 16)  # 0xffffffff is a float32 NaN
    params.write_bytes(bytes(data))
    assert_refused(_infer_here(folder, small_png(tmp_path / "scene.png"), capsys), "NaN or Inf")


def _edit_onnx(folder: Path, edit) -> None:
    import onnx

    path = folder / "model.onnx"
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(path))


def _nan_initializer(model) -> None:
    from onnx import numpy_helper

    largest = max(model.graph.initializer, key=lambda init: int(np.prod(init.dims)))
    largest.CopyFrom(numpy_helper.from_array(np.full(tuple(largest.dims), np.nan, np.float32), largest.name))


def _pooled_output(model) -> None:
    from onnx import helper

    output = model.graph.output[0]
    model.graph.node.append(helper.make_node("GlobalAveragePool", [output.name], ["pooled"]))
    output.name = "pooled"
    output.type.tensor_type.ClearField("shape")


def _seventeen_channels(model) -> None:
    from onnx import helper, numpy_helper

    output = model.graph.output[0]
    for name, value in (("s0", [0]), ("s1", [1]), ("ax", [1])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    model.graph.node.append(helper.make_node("Slice", [output.name, "s0", "s1", "ax"], ["first"]))
    model.graph.node.append(helper.make_node("Concat", [output.name, "first"], ["seventeen"], axis=1))
    output.name = "seventeen"
    output.type.tensor_type.ClearField("shape")


def _custom_domain(model) -> None:
    from onnx import helper

    model.opset_import.append(helper.make_opsetid("com.example", 1))
    model.graph.node.append(helper.make_node("ReadFile", [], ["junk"], domain="com.example"))


@pytest.mark.parametrize(
    "edit,expected",
    [
        (_nan_initializer, "NaN or Inf"),
        (_pooled_output, "output is [1, 16, 1, 1]"),
        (_seventeen_channels, "output is [1, 17, 64, 64]"),
        (_custom_domain, "ONNX domains this project's export never uses: 'com.example'"),
    ],
    ids=["nan-initializer", "output-1x1", "17-channels", "custom-domain"],
)
def test_edited_onnx_export_is_refused_at_load(exports, tmp_path: Path, edit, expected: str, capsys) -> None:
    folder = _copy(exports["onnx"], tmp_path / "export")
    _edit_onnx(folder, edit)
    assert_refused(_infer_here(folder, small_png(tmp_path / "scene.png"), capsys), expected)


def test_every_run_is_checked_finite(exports, tmp_path: Path) -> None:
    """Past the probe, a run whose output is not finite is refused too (planted: a model
    that returns NaN for large inputs only)."""
    from app.exported import ExportError, OnnxModel

    model = OnnxModel(str(exports["onnx"]), threads=1)
    run = model.session.run
    model.session.run = lambda names, feed: [np.full_like(run(names, feed)[0], np.nan)]
    with pytest.raises(ExportError, match="NaN or Inf"):
        model(np.zeros((1, 3, 96, 64), np.float32))


def test_infer_refuses_an_image_too_large_for_one_forward_pass(exports, tmp_path: Path) -> None:
    png = header_only_png(tmp_path / "bomb.png", 8000, 8000)
    assert_refused(_infer(exports["paddle"], png), "8000x8000", "one forward pass", "paddle_impl.predict")


def test_infer_refuses_a_sparse_huge_geotiff(exports, tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    path = tmp_path / "huge.tif"
    write_sparse_geotiff(path, 30000)
    assert path.stat().st_size < 2**20
    assert_refused(_infer(exports["paddle"], path), "30000x30000", "one forward pass")


def test_evaluate_refuses_a_png_bomb_from_its_header(exports, tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    header_only_png(images / "P0001.png", 19000, 19000)
    header_only_png(masks / "P0001.png", 19000, 19000)
    proc = run_capped(
        "-m",
        "torch_ref.evaluate",
        "--model",
        "farseg",
        "--weights",
        str(exports["weights"]),
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--no-progress",
    )
    assert_refused(proc, "19000x19000", "address-space limit")


def test_image_reader_guard_is_planted_and_caught(tmp_path: Path) -> None:
    """The guard in the readers, in process: a limit just below the need is refused."""
    from isaid.imageio import ImageReadError, check_image_memory

    with pytest.raises(ImageReadError, match="19000x19000"):
        check_image_memory(19000, 19000, "x.png", bytes_per_pixel=2**20)
    check_image_memory(64, 64, "x.png")  # a small image passes


# ------------------------------------------------------------------------------ isaid.prepare (item 10)


def _colour_mask(path: Path, side: int = 64) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    return path


def _prepare_source(tmp_path: Path) -> Path:
    split = tmp_path / "src" / "train"
    (split / "images").mkdir(parents=True)
    (split / "Semantic_masks").mkdir()
    return split


def _prepare(tmp_path: Path) -> subprocess.CompletedProcess:
    return run_capped(
        "-m", "isaid.prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--splits", "train", "--no-progress"
    )


def _error_lines(proc: subprocess.CompletedProcess) -> List[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _zip_declaring(path: Path, member: str, data: bytes, declared: int) -> None:
    """A zip whose member holds ``data`` but whose central directory declares ``declared``
    bytes uncompressed (the size zipfile believes before reading)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", declared)
    path.write_bytes(bytes(raw))


def test_prepare_refuses_a_zip_member_declaring_1_5_gib_before_reading(tmp_path: Path) -> None:
    split = _prepare_source(tmp_path)
    image = small_png(tmp_path / "P0001.png").read_bytes()
    _zip_declaring(split / "images" / "part1.zip", "images/P0001.png", image, 3 * 2**29)
    _colour_mask(split / "Semantic_masks" / "P0001_instance_color_RGB.png")
    proc = _prepare(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = _error_lines(proc)
    assert len(errors) == 1 and "part1.zip:images/P0001.png" in errors[0], errors
    assert "declares 1610612736 bytes" in errors[0], errors


def test_prepare_refuses_a_deflate_bomb_member(tmp_path: Path) -> None:
    """A real 64^2 PNG followed by 64 MB of zeros: 64 KB on disk, refused by its ratio."""
    import zipfile

    split = _prepare_source(tmp_path)
    image = small_png(tmp_path / "P0001.png").read_bytes()
    with zipfile.ZipFile(split / "images" / "part1.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("P0001.png", image + bytes(64 << 20))
    assert (split / "images" / "part1.zip").stat().st_size < 2 << 20
    _colour_mask(split / "Semantic_masks" / "P0001_instance_color_RGB.png")
    errors = _error_lines(_prepare(tmp_path))
    assert len(errors) == 1 and "zip bomb" in errors[0], errors


def test_prepare_compares_mask_and_image_headers_before_decoding(tmp_path: Path) -> None:
    """A 19000^2 mask header beside a 64^2 image: the mismatch is named, nothing decoded
    (under the 3 GB cap, decoding the mask alone would need ~1 GB, and 4 GB at 12 B/px)."""
    split = _prepare_source(tmp_path)
    small_png(split / "images" / "P0001.png")
    header_only_png(split / "Semantic_masks" / "P0001_instance_color_RGB.png", 19000, 19000)
    proc = _prepare(tmp_path)
    errors = _error_lines(proc)
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "mask size 19000x19000 differs from image size 64x64" in errors[0], errors
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr


def test_prepare_still_reads_a_scene_from_a_zip(tmp_path: Path) -> None:
    """The streamed zip member (no longer read whole) is decoded and copied as before."""
    import zipfile

    split = _prepare_source(tmp_path)
    image = small_png(tmp_path / "P0001.png").read_bytes()
    with zipfile.ZipFile(split / "images" / "part1.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images/P0001.png", image)
    _colour_mask(split / "Semantic_masks" / "P0001_instance_color_RGB.png")
    proc = _prepare(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "train" / "images" / "P0001.png").read_bytes() == image


# Packages whose commands use the bounded types; align keeps its own checks (align/config.py).
TYPED_PACKAGES = ("app", "isaid", "convert", "torch_ref", "paddle_impl", "common")


def unbounded_flags(sources: dict) -> List[str]:
    """``file:line --flag`` for every ``add_argument`` whose ``type`` is a bare ``int`` or
    ``float`` without ``choices`` (no range), or a ``--device``/``--threads`` with neither a type nor choices."""
    import ast

    found = []
    for path, source in sorted(sources.items()):
        for node in ast.walk(ast.parse(source)):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
                continue
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            keywords = {k.arg: k.value for k in node.keywords}
            kind = keywords.get("type")
            bare = isinstance(kind, ast.Name) and kind.id in ("int", "float") and "choices" not in keywords
            untyped = any(n in ("--device", "--threads") for n in names) and not ({"type", "choices"} & set(keywords))
            if bare or untyped:
                found.append(f"{path}:{node.lineno} {' '.join(names)}")
    return found


def _package_sources() -> dict:
    return {
        str(path.relative_to(REPO)): path.read_text(encoding="utf-8")
        for package in TYPED_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def test_no_command_has_an_unbounded_numeric_or_device_flag() -> None:
    assert unbounded_flags(_package_sources()) == []


def test_unbounded_flag_scan_catches_a_planted_flag() -> None:
    sources = _package_sources()
    sources["paddle_impl/infer.py"] += '\n\ndef _planted(parser):\n    parser.add_argument("--threads", type=int)\n'
    sources["app/predict.py"] += '\n\ndef _planted(parser):\n    parser.add_argument("--device", default="cpu")\n'
    found = unbounded_flags(sources)
    assert any(f.startswith("paddle_impl/infer.py:") and "--threads" in f for f in found), found
    assert any(f.startswith("app/predict.py:") and "--device" in f for f in found), found


@pytest.mark.parametrize(
    "flag,value,expected",
    [("--size", "100000", "--size must be at most 4096"), ("--batch", "100000", "--batch must lie")],
)
def test_align_bounds_its_input_size_and_batch(tmp_path: Path, flag: str, value: str, expected: str) -> None:
    proc = run_capped("-m", "align.forward", "--model", "farseg", flag, value, "--out", str(tmp_path / "out"))
    assert_refused(proc, expected)
    assert not (tmp_path / "out").exists()

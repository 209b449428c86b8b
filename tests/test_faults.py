"""Faults: outputs never lost, data errors as errors, no hang, no silent wrong answer.

Every hostile input is made here (tiny files); disk-full runs under RLIMIT_FSIZE (SIGXFSZ
ignored, so a write past the limit fails with EFBIG as on a full disk) and memory cases under
RLIMIT_AS, each in a subprocess. What is checked, one class at a time:

- outputs: the one atomic writer keeps the earlier file and leaves no temporary file when the
  write or its verification fails; temporary files of dead writers are removed, those of live
  ones kept; predict's GeoTIFF/PNG writers on a full disk give one line, exit 2, and the
  earlier output untouched (with the read-back check planted out, the GeoTIFF case replaces
  the earlier file: the check is what catches it); an unwritable --out is one line up front;
- data: a label patch holding 100 is the same one-line error in both trainers with 0 and 2
  loader workers (Paddle used to hang with 0); a NaN loss stops both trainers naming the
  iteration, or is skipped, counted and undone with train.skip_nonfinite (planted in the
  trainers' step); palette PNG colour masks are decoded by colour; GeoTIFF nodata (value or
  mask) is written as nodata and left out of the class shares;
- limits: too-large scenes are refused from their header with the size and the limit;
- config: out-of-range values are one-line errors naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import numpy as np
import pytest
from conftest import ENV, ROOT
from PIL import Image
from raster_scenes import write_sparse_geotiff

from app import predict, raster
from app.config import ConfigError, load_config
from common import atomic
from isaid.imageio import ImageReadError, read_index_mask, read_mask_details, write_png_atomic
from isaid.palette import IGNORE_INDEX, colorize

CONFIG = str(ROOT / "configs" / "farseg_isaid.yaml")
WINDOW = 64


def run_python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


def temporaries(folder: Path) -> List[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


# ------------------------------------------------------------------------------ the atomic writer


def _fail_write(handle) -> None:
    handle.write(b"half")
    raise OSError(28, "No space left on device")


def _fail_verify(temporary: str) -> None:
    raise atomic.OutputError("reads back wrong")


@pytest.mark.parametrize("where", ["write", "verify"])
def test_atomic_writer_failure_keeps_the_earlier_file_and_no_temporary(tmp_path: Path, where: str) -> None:
    target = tmp_path / "out.json"
    target.write_bytes(b"earlier")
    with pytest.raises(OSError):
        if where == "write":
            atomic.atomic_write(target, _fail_write)
        else:
            atomic.atomic_write(target, lambda handle: handle.write(b"new"), _fail_verify)
    assert target.read_bytes() == b"earlier"
    assert temporaries(tmp_path) == []
    atomic.atomic_write(target, lambda handle: handle.write(b"new"))
    assert target.read_bytes() == b"new" and temporaries(tmp_path) == []


def test_convert_and_isaid_share_the_one_writer() -> None:
    """No second copy: convert's and isaid.imageio's writers are common.atomic's."""
    import convert.writers
    import isaid.imageio

    assert convert.writers._atomic_write is atomic.atomic_write
    assert isaid.imageio.atomic_output is atomic.atomic_output
    assert isaid.imageio.write_bytes_atomic is atomic.write_bytes_atomic
    # Only the writer renames files into place; whole folders are staged and renamed by the
    # exports (app.exported, both frameworks) and by X2Paddle's conversion.
    folder_renames = {"common/atomic.py", "app/exported.py", "align/x2paddle/conversion.py"}
    renaming = sorted(
        str(path.relative_to(ROOT))
        for folder in ("weights", "isaid", "app", "convert", "torch_ref", "paddle_impl", "align", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if "os.replace(" in path.read_text(encoding="utf-8") or "os.rename(" in path.read_text(encoding="utf-8")
    )
    assert set(renaming) <= folder_renames, renaming


def test_stale_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".P0001.png.{dead_pid}-0123456789ab.tmp"
    live = tmp_path / f".P0002.png.{os.getppid()}-0123456789ab.tmp"  # a live process (pytest's parent)
    mine = Path(atomic.temporary_path_beside(tmp_path / "P0003.png"))
    other = tmp_path / ".notes.tmp"  # not named by the writer: never touched
    for path in (stale, live, other):
        path.write_bytes(b"x")
    removed = atomic.remove_stale_temporaries(tmp_path)
    assert removed == [str(stale)]
    assert live.exists() and mine.exists() and other.exists()
    # Two temporary names for one target never collide (two prepares on one OUT).
    assert atomic.temporary_name(tmp_path / "a.png") != atomic.temporary_name(tmp_path / "a.png")


_FULL_DISK_WRITER = """
    import os, resource, signal, sys
    import numpy as np
    from app import raster
    out, limit, planted = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "planted"
    if planted:  # the bug: no read-back check before the rename
        raster.ClassMapWriter._verify = lambda self, temporary: None
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rows = np.random.default_rng(0).integers(0, 16, (512, 512), dtype=np.uint8)  # incompressible
    try:
        with raster.create_class_map_writer(out, 512, 512) as writer:
            for top in range(0, 512, 64):
                writer.write_rows(top, rows[top:top + 64])
            writer.commit()
    except raster.RasterError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print("written")
"""


@pytest.mark.parametrize("suffix", [".tif", ".png"])
@pytest.mark.parametrize("limit", [3000, 60000])
def test_class_map_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(
    tmp_path: Path, suffix: str, limit: int
) -> None:
    out = tmp_path / f"classes{suffix}"
    out.write_bytes(b"earlier output")
    result = run_python(_FULL_DISK_WRITER, str(out), str(limit), "real")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "untouched" in lines[0], lines
    assert out.read_bytes() == b"earlier output"
    assert temporaries(tmp_path) == []


def test_full_disk_without_the_read_back_check_loses_the_earlier_file(tmp_path: Path) -> None:
    """Planted bug: GDAL only logs its write errors, so without the read-back the broken file
    replaces the earlier one and the writer reports success (the issue's repro)."""
    out = tmp_path / "classes.tif"
    out.write_bytes(b"earlier output")
    result = run_python(_FULL_DISK_WRITER, str(out), "60000", "planted")
    assert result.returncode == 0 and "written" in result.stdout
    assert out.read_bytes() != b"earlier output"


def test_png_read_back_catches_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.png"
    rows = np.arange(64 * 80, dtype=np.int64).reshape(64, 80).astype(np.uint8) % 16
    with raster.create_class_map_writer(str(path), 64, 80) as writer:
        writer.write_rows(0, rows)
        writer.commit()
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rows)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(raster.RasterError, match="CRC"):
        raster.read_back_palette_png(str(path))


@pytest.fixture(scope="module")
def torch_weights(tmp_path_factory) -> Path:
    import torch

    import torch_ref
    from convert import save_torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "farseg.pth"
    save_torch(torch_ref.build_model("farseg").state_dict(), path)
    return path


def _scene(path: Path, height: int = 96, width: int = 128, nodata=None, mask_box=None) -> np.ndarray:
    import rasterio
    from rasterio.transform import Affine

    image = np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=Affine(0.5, 0, 500000, 0, -0.5, 4600000),
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(image.transpose(2, 0, 1))
        if mask_box is not None:
            mask = np.full((height, width), 255, dtype=np.uint8)
            y0, x0, y1, x1 = mask_box
            mask[y0:y1, x0:x1] = 0
            dataset.write_mask(mask)
    return image


def _predict_command(weights: Path, image: Path, out: Path, *extra: str) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch_ref.predict",
        "--weights",
        str(weights),
        "--image",
        str(image),
        "--out",
        str(out),
        "--window",
        str(WINDOW),
        "--stride",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_torch_predict_onto_a_full_disk_keeps_the_earlier_output(tmp_path: Path, torch_weights: Path) -> None:
    """The issue's repro: GDAL's write error, then success, exit 0 and a 0-byte x.tif."""
    scene = tmp_path / "scene.tif"
    _scene(scene)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.tif"
    out.write_bytes(b"earlier prediction")
    code = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        " resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500)); sys.argv = sys.argv[1:];"
        " runpy.run_module('torch_ref.predict', run_name='__main__')"
    )
    command = [sys.executable, "-c", code] + _predict_command(torch_weights, scene, out)[2:]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and str(out) in errors[0], result.stderr
    assert "in " not in result.stdout  # no success line
    assert out.read_bytes() == b"earlier prediction" and temporaries(out_dir) == []


def test_predict_removes_the_temporary_files_of_a_killed_run(tmp_path: Path, torch_weights: Path) -> None:
    scene = tmp_path / "scene.tif"
    _scene(scene, 64, 64)
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    killed = tmp_path / f".x.tif.{dead}-0123456789ab.tmp"  # what a SIGKILLed predict leaves
    other = tmp_path / f".y.tif.{dead}-0123456789ab.tmp"  # another output's: not this run's business
    killed.write_bytes(b"partial")
    other.write_bytes(b"partial")
    result = subprocess.run(
        _predict_command(torch_weights, scene, tmp_path / "x.tif"),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert not killed.exists() and other.exists() and (tmp_path / "x.tif").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_predict_into_a_read_only_folder_is_one_line(tmp_path: Path, torch_weights: Path) -> None:
    scene = tmp_path / "scene.tif"
    _scene(scene)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = subprocess.run(
            _predict_command(torch_weights, scene, folder / "x.tif"),
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot write there" in result.stderr


@pytest.mark.parametrize("target", ["file_as_folder", "proc"])
def test_unwritable_out_is_refused_before_the_model_is_built(tmp_path: Path, target: str) -> None:
    """Checked before any model work (root can write into chmod-555 folders, so the unwritable
    places here are a path under a regular file and a read-only kernel file system)."""
    scene = tmp_path / "scene.tif"
    _scene(scene)
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    out = blocker / "x.tif" if target == "file_as_folder" else Path("/proc/x.tif")
    from unittest import mock

    import app.predict
    import torch_ref.predict as torch_predict

    def no_model(*args):
        raise AssertionError("the model must not be built")

    with mock.patch.object(app.predict, "build_engine", no_model):
        code = torch_predict.main(["--weights", "w.pth", "--image", str(scene), "--out", str(out), "--device", "cpu"])
    assert code == 2


@pytest.mark.parametrize("reader", ["open_raster", "read_mask_details", "read_size"])
def test_a_fifo_as_input_is_refused_not_waited_on(tmp_path: Path, reader: str) -> None:
    fifo = tmp_path / "scene.tif"
    os.mkfifo(fifo)
    code = f"""
        import sys
        from app import raster
        from isaid import imageio
        try:
            {"raster.open_raster" if reader == "open_raster" else "imageio." + reader}(sys.argv[1])
        except (raster.RasterError, imageio.ImageReadError) as error:
            print(f"error: {{error}}", file=sys.stderr)
            sys.exit(2)
    """
    result = run_python(code, str(fifo), timeout=30)
    assert result.returncode == 2 and "is a FIFO" in result.stderr, result.stderr


# ------------------------------------------------------------------------------ nodata


def _toy_bands(height: int, width: int, read_window):
    """A stand-in engine: every pixel class 3."""
    yield 0, height, np.full((height, width), 3, dtype=np.uint8)


@pytest.mark.parametrize("kind", ["value", "mask", "none"])
def test_geotiff_nodata_is_written_as_nodata_and_left_out_of_the_shares(tmp_path: Path, kind: str) -> None:
    import rasterio

    scene = tmp_path / "scene.tif"
    image = _scene(scene, nodata=0 if kind == "value" else None, mask_box=(0, 0, 48, 128) if kind == "mask" else None)
    if kind == "value":  # the top half is nodata: 0 in all three bands
        import rasterio as rio

        with rio.open(scene, "r+") as dataset:
            image[:48] = 0
            dataset.write(image.transpose(2, 0, 1))
    with raster.open_raster(str(scene)) as reader:
        result = predict.predict_to_files(reader, str(tmp_path / "out.tif"), _toy_bands)
    with rasterio.open(tmp_path / "out.tif") as dataset:
        classes = dataset.read(1)
        nodata = dataset.nodata
    if kind == "none":
        assert (classes == 3).all() and nodata is None and result.nodata_pixels == 0
        return
    assert nodata == IGNORE_INDEX
    assert (classes[:48] == IGNORE_INDEX).all() and (classes[48:] == 3).all()
    assert result.nodata_pixels == 48 * 128
    assert result.class_fractions[3] == 1.0  # shares of the valid pixels only


# ------------------------------------------------------------------------------ palette masks


def test_palette_png_colour_mask_is_decoded_by_its_colours(tmp_path: Path) -> None:
    index = np.random.default_rng(2).integers(0, 16, (40, 50)).astype(np.uint8)
    path = tmp_path / "P0001_instance_color_RGB.png"
    Image.fromarray(colorize(index)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    assert Image.open(path).mode == "P"
    details = read_mask_details(str(path))
    np.testing.assert_array_equal(details.index, index)
    assert details.is_colour_mask and details.n_unknown == 0
    with pytest.raises(ImageReadError, match="colour mask"):
        read_index_mask(str(path))  # never taken as class indices
    own = tmp_path / "own.png"  # the project's own palette: the values are the classes
    write_png_atomic(own, index, index_palette=True)
    details = read_mask_details(str(own))
    np.testing.assert_array_equal(details.index, index)
    assert not details.is_colour_mask
    np.testing.assert_array_equal(read_index_mask(str(own)), index)


# ------------------------------------------------------------------------------ memory limits


def _header_only_png(path: Path, height: int, width: int) -> None:
    """A PNG that claims ``width`` x ``height`` and holds no pixel data (header checks only)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_prepare_refuses_a_scene_too_large_for_memory(tmp_path: Path) -> None:
    src = tmp_path / "src" / "train"
    (src / "images").mkdir(parents=True)
    (src / "Semantic_masks").mkdir()
    _header_only_png(src / "images" / "P0001.png", 19000, 19000)
    _header_only_png(src / "Semantic_masks" / "P0001_instance_color_RGB.png", 19000, 19000)
    code = """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
        from isaid.prepare import main
        sys.exit(main(sys.argv[1:]))
    """
    result = run_python(code, str(tmp_path / "src"), str(tmp_path / "out"), "--splits", "train", "--no-progress")
    assert result.returncode == 2, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "19000x19000" in errors[0] and "address-space limit" in errors[0], errors
    assert "MemoryError" not in result.stderr


def test_predict_refuses_a_scene_too_wide_for_memory_up_front(tmp_path: Path) -> None:
    """A 200000x200000 sparse GeoTIFF (a few KB) would need about 23 GB for one band on the CPU."""
    path = tmp_path / "huge.tif"
    write_sparse_geotiff(path, 200000)
    assert path.stat().st_size < 10 * 2**20
    code = """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))
        from app import predict, raster
        with raster.open_raster(sys.argv[1]) as reader:
            try:
                predict.check_band_memory(reader, 896, "cpu")
            except raster.RasterError as error:
                print(f"error: {error}", file=sys.stderr)
                sys.exit(2)
    """
    result = run_python(code, str(path))
    assert result.returncode == 2, result.stderr
    assert "200000x200000" in result.stderr and "narrower tiles" in result.stderr
    with raster.open_raster(str(path)) as reader:  # a scene that fits passes
        reader.width = 1000
        predict.check_band_memory(reader, 896, "cpu")


def test_whole_image_input_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "scene.png"
    _header_only_png(path, 19000, 19000)
    code = """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1024 * 2**20, 1024 * 2**20))
        from app import raster
        try:
            raster.open_raster(sys.argv[1])
        except raster.RasterError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    """
    result = run_python(code, str(path))
    assert result.returncode == 2 and "19000x19000" in result.stderr and "GeoTIFF" in result.stderr


# ------------------------------------------------------------------------------ config ranges


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.momentum=50", "train.momentum: must be < 1"),
        ("train.momentum=1.0", "train.momentum: must be < 1"),
        ("train.momentum=-0.1", "train.momentum: must be >= 0"),
        ("model.num_classes=2", "model.num_classes: must be 16"),
        ("data.window=100", "data.window: must be a multiple of 32"),
        ("train.weight_decay=1.5", "train.weight_decay: must be < 1"),
        ("augment.hflip=2", "augment.hflip: must be <= 1"),
        ("train.max_nonfinite=0", "train.max_nonfinite: must be >= 1"),
    ],
)
def test_config_values_out_of_range_are_one_line_errors(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, [override])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_config_in_range_values_pass() -> None:
    config = load_config(CONFIG, ["train.momentum=0", "data.window=128", "augment.hflip=1"])
    assert config["train"]["momentum"] == 0.0 and config["data"]["window"] == 128


# ------------------------------------------------------------------------------ training data and NaN


@pytest.fixture(scope="module")
def bad_label_data(prepared: Path, tmp_path_factory) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("bad_label") / "out"
    shutil.copytree(prepared, root)
    labels = sorted((root / "train" / "patches" / "labels").iterdir())
    label = np.array(Image.open(labels[0]))
    label[5, 5] = 100
    Image.fromarray(label, mode="L").save(labels[0])
    return root


def _train_sets(data: Path, out: Path, iterations: int = 3, **extra) -> List[str]:
    values = {
        "data.root": str(data),
        "data.window": WINDOW,
        "init.imagenet": "none",
        "train.iterations": iterations,
        "train.batch_size": 2,
        "train.amp": "none",
        "train.device": "cpu",
        "train.num_workers": 0,
        "train.log_every": 1,
        "train.checkpoint_every": 1,
        "train.log_backend": "none",
        "train.out_dir": str(out),
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.mark.parametrize("framework", ["torch_ref", "paddle_impl"])
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_label_is_the_same_one_line_error_with_0_and_n_workers(
    framework: str, workers: int, bad_label_data: Path, tmp_path: Path
) -> None:
    # Batch 4 = all four patches in the first iteration: the bad one is always drawn.
    command = [
        sys.executable,
        "-m",
        f"{framework}.train",
        "--config",
        CONFIG,
        "--no-progress",
        "--set",
        *_train_sets(
            bad_label_data, tmp_path / "run", iterations=2, **{"train.num_workers": workers, "train.batch_size": 4}
        ),
    ]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert "labels" in errors[0] and "[100]" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(tmp_path / "run" / "checkpoints")


def _plant_nan_step(module, bad_calls):
    """Planted in the trainer: the step at the given calls (1-based) returns a NaN loss after
    poisoning the weights, as a real divergence would."""
    original = module.TrainStep.__call__
    calls = {"n": 0}

    def nan_step(self, images, labels):
        calls["n"] += 1
        result = original(self, images, labels)
        if calls["n"] in bad_calls:
            for parameter in self.net.parameters():
                if hasattr(parameter, "set_value"):  # Paddle
                    parameter.set_value(parameter.numpy() * np.nan)
                else:
                    parameter.data.mul_(float("nan"))
            return dataclasses.replace(result, loss=result.loss * float("nan"))
        return result

    return nan_step


def _final_weights(out: Path) -> dict:
    from convert import load_state_dict_file

    name = "model_final.pth" if (out / "model_final.pth").exists() else "model_final.pdparams"
    return load_state_dict_file(str(out / name))


@pytest.mark.parametrize("framework", ["torch_ref", "paddle_impl"])
def test_nonfinite_loss_stops_or_is_skipped(
    framework: str, prepared: Path, tmp_path: Path, capsys, monkeypatch, request
) -> None:
    import importlib

    module = importlib.import_module(f"{framework}.train")
    if framework == "torch_ref":  # one thread in process (2 shared cores), restored afterwards
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        request.addfinalizer(lambda: torch.set_num_threads(threads))
    monkeypatch.setattr(module.TrainStep, "__call__", _plant_nan_step(module, {2}))
    code = module.main(["--config", CONFIG, "--no-progress", "--set", *_train_sets(prepared, tmp_path / "stop")])
    err = capsys.readouterr().err
    assert code == 2
    errors = error_lines(err)
    assert len(errors) == 1 and "iteration 2:" in errors[0] and "NaN/Inf" in errors[0], err
    checkpoints = [n for n in os.listdir(tmp_path / "stop" / "checkpoints") if not n.endswith(".sha256")]
    assert len(checkpoints) == 1 and "0000001" in checkpoints[0]  # nothing saved from the NaN model
    assert not list((tmp_path / "stop").glob("model_final.*"))

    monkeypatch.setattr(module.TrainStep, "__call__", _plant_nan_step(module, {2}))
    code = module.main(
        [
            "--config",
            CONFIG,
            "--no-progress",
            "--set",
            *_train_sets(prepared, tmp_path / "skip", **{"train.skip_nonfinite": "true"}),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "iteration 2: loss nan is not finite; batch skipped" in err
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [row["skipped_nonfinite"] for row in rows] == [0, 1, 1]
    assert all(np.isfinite(row["loss"]) for row in rows)
    weights = _final_weights(tmp_path / "skip")
    assert all(np.isfinite(np.asarray(v)).all() for v in weights.values())


# ------------------------------------------------------------------------------ other writers on a full disk

_UNDER_FSIZE = (
    "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
    " limit = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit));"
    " module = sys.argv[2]; sys.argv = sys.argv[2:]; runpy.run_module(module, run_name='__main__')"
)


def _run_under_fsize(limit: int, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _UNDER_FSIZE, str(limit), module, *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_prepare_keeps_a_live_writers_temporary_files(prepared: Path, tmp_path: Path) -> None:
    """Two prepares on one OUT: the second removes only the temporary files of dead writers."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(prepared, out)
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    images = out / "train" / "patches" / "images"
    live = images / f".P0000_0_0.png.{os.getpid()}-0123456789ab.tmp"  # this test: alive
    stale = images / f".P0000_0_64.png.{dead}-0123456789ab.tmp"
    live.write_bytes(b"being written")
    stale.write_bytes(b"left by a kill")
    src = tmp_path / "src"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "isaid.synth",
            str(src),
            "--train",
            "1",
            "--val",
            "0",
            "--size",
            "128",
            "--seed",
            "0",
            "--no-zip",
        ],
        check=True,
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "isaid.prepare",
            str(src),
            str(out),
            "--window",
            str(WINDOW),
            "--stride",
            "64",
            "--splits",
            "train",
            "--no-progress",
        ],
        check=True,
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    assert live.exists() and not stale.exists()


def test_prepare_on_a_full_disk_is_one_line_per_problem(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "isaid.synth",
            str(tmp_path / "src"),
            "--train",
            "1",
            "--val",
            "0",
            "--size",
            "128",
            "--seed",
            "0",
            "--no-zip",
        ],
        check=True,
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    result = _run_under_fsize(
        2000,
        "isaid.prepare",
        str(tmp_path / "src"),
        str(tmp_path / "out"),
        "--window",
        "64",
        "--stride",
        "64",
        "--splits",
        "train",
        "--no-progress",
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert errors and all("File too large" in line for line in errors), result.stderr
    for folder, _, names in os.walk(tmp_path / "out"):
        assert not [n for n in names if n.endswith(".tmp")], folder


@pytest.mark.parametrize("framework", ["torch_ref", "paddle_impl"])
def test_train_on_a_full_disk_is_one_line(framework: str, prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run_under_fsize(
        200_000,
        f"{framework}.train",
        "--config",
        CONFIG,
        "--no-progress",
        "--set",
        *_train_sets(prepared, out, iterations=1),
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and ".tmp" not in errors[0], result.stderr
    assert "File too large" in errors[0] or "write failed" in errors[0], errors
    for folder, _, names in os.walk(out):
        assert not [n for n in names if n.endswith(".tmp")], folder


def test_evaluate_json_into_an_unwritable_place_is_refused_up_front(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch_ref.evaluate",
            "--model",
            "farseg",
            "--weights",
            "w.pth",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--json",
            str(blocker / "r.json"),
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and "--json" in errors[0] and "cannot write there" in errors[0], result.stderr

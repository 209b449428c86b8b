"""Nothing a user owns is lost (issue 17, "data loss"): every command that writes refuses an
output that is one of its inputs, exports replace only an earlier export, killed exports'
staging folders are cleaned, convert's default names never replace a file, and a GeoTIFF
placed by ground-control points keeps them.

Every refusal is checked the way a user meets it: exit status 2, one ``error:`` line, no
traceback, and every file that was there before byte-identical afterwards (nothing added
either). The planted tests switch a guard off in the code users run and show the loss it
prevents. Inputs are tiny and generated here; the scene builders are the ones of
tests/test_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import test_faults
from PIL import Image
from test_faults import ENV, ROOT, _scene, _toy_bands  # tests/test_faults.py: scenes, a stand-in engine

from app import exported, predict, raster
from app.exported import CONFIG_FILE, ONNX_FORMAT, PADDLE_FORMAT, ExportError, deploy_config, write_deploy_config
from common import atomic

Snapshot = Dict[str, bytes]
torch_weights = test_faults.torch_weights  # the fixture: a random-initialised FarSeg .pth


def snapshot(folder: Path) -> Snapshot:
    """Every entry under ``folder``: a file's bytes, a link's target, a folder's mark."""
    found: Snapshot = {}
    for top, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(top, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[key] = b"-> " + os.readlink(path).encode()
            elif os.path.isdir(path):
                found[key] = b"<folder>"
            else:
                found[key] = Path(path).read_bytes()
    return found


def assert_one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], stderr
    assert "Traceback" not in stderr
    return lines[0]


def _png(path: Path, height: int = 40, width: int = 48, mode: str = "RGB") -> None:
    rng = np.random.default_rng(len(str(path)))
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    high = 256 if mode == "RGB" else 16
    Image.fromarray(rng.integers(0, high, shape, dtype=np.uint8), mode).save(path)


def _dummy_weights(folder: Path) -> Path:
    # The guards run before any weights are read: these bytes are never loaded.
    path = folder / "w.pth"
    path.write_bytes(b"user weights")
    return path


# ------------------------------------------------------------------------------ the one guard


def test_same_file_sees_symlinks_hard_links_and_outputs_not_written_yet(tmp_path: Path) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"scene")
    (tmp_path / "link.tif").symlink_to(scene)
    os.link(scene, tmp_path / "hard.tif")
    (tmp_path / "dir").symlink_to(tmp_path, target_is_directory=True)
    assert atomic.same_file(scene, tmp_path / "link.tif")
    assert atomic.same_file(tmp_path / "hard.tif", scene)
    assert atomic.same_file(tmp_path / "dir" / "scene.tif", scene)
    # not written yet, but resolving onto the input
    (tmp_path / "dangling.tif").symlink_to(tmp_path / "later.tif")
    assert atomic.same_file(tmp_path / "dangling.tif", tmp_path / "dir" / "later.tif")
    assert not atomic.same_file(tmp_path / "other.tif", scene)
    with pytest.raises(atomic.InputOverwriteError, match="hard link"):
        atomic.refuse_overwriting_inputs([("--out", tmp_path / "hard.tif")], [("--image", scene)])
    with pytest.raises(atomic.InputOverwriteError, match="symbolic link"):
        atomic.refuse_overwriting_inputs([("--out", tmp_path / "link.tif")], [("--image", scene)])
    with pytest.raises(atomic.InputOverwriteError, match="--color and --out"):
        atomic.refuse_overwriting_inputs([("--color", tmp_path / "a.png"), ("--out", tmp_path / "a.png")], [])
    atomic.refuse_overwriting_inputs([("--out", tmp_path / "x.tif"), ("--color", None)], [("--image", scene)])
    with pytest.raises(atomic.InputOverwriteError, match="holds --weights"):
        atomic.refuse_folder_holding_inputs(tmp_path, "--out", [("--weights", scene)])


def test_no_clobber_publish_keeps_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "w.pth"
    target.write_bytes(b"original")
    with pytest.raises(FileExistsError):
        atomic.atomic_write(target, lambda handle: handle.write(b"new"), replace=False)
    assert target.read_bytes() == b"original" and sorted(os.listdir(tmp_path)) == ["w.pth"]
    atomic.atomic_write(tmp_path / "new.pth", lambda handle: handle.write(b"new"), replace=False)
    assert (tmp_path / "new.pth").read_bytes() == b"new"


# ------------------------------------------------------------------------------ every command


def _predict_case(kind: str) -> Callable[[Path], Tuple[str, List[str]]]:
    def build(tmp: Path) -> Tuple[str, List[str]]:
        weights = _dummy_weights(tmp)
        scene = tmp / "scene.tif"
        _scene(scene, 40, 48)
        common = ["--weights", str(weights), "--device", "cpu", "--no-progress"]
        if kind == "out-is-image":
            return "", common + ["--image", str(scene), "--out", str(scene)]
        if kind == "color-is-image":
            png = tmp / "scene.png"
            _png(png)
            return "", common + ["--image", str(png), "--out", str(tmp / "x.tif"), "--color", str(png)]
        if kind == "image-symlink-to-out":
            (tmp / "view.tif").symlink_to(scene)
            return "", common + ["--image", str(tmp / "view.tif"), "--out", str(scene)]
        if kind == "out-hard-link":
            os.link(scene, tmp / "copy.tif")
            return "", common + ["--image", str(scene), "--out", str(tmp / "copy.tif")]
        if kind == "out-through-linked-folder":
            (tmp / "again").symlink_to(tmp, target_is_directory=True)
            return "", common + ["--image", str(scene), "--out", str(tmp / "again" / "scene.tif")]
        raise AssertionError(kind)

    return build


def _infer_case(kind: str) -> Callable[[Path], Tuple[str, List[str]]]:
    def build(tmp: Path) -> Tuple[str, List[str]]:
        png = tmp / "scene.png"
        _png(png)
        if kind == "out-is-image":
            return "", ["--model-dir", str(tmp / "deploy"), "--image", str(png), "--out", str(png)]
        (tmp / "view.png").symlink_to(png)
        return "", ["--model-dir", str(tmp / "deploy"), "--image", str(png), "--color", str(tmp / "view.png")]

    return build


def _evaluate_case(target: str) -> Callable[[Path], Tuple[str, List[str]]]:
    def build(tmp: Path) -> Tuple[str, List[str]]:
        weights = _dummy_weights(tmp)
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for name in ("P0000", "P0001"):
            _png(tmp / "images" / f"{name}.png")
            _png(tmp / "masks" / f"{name}.png", mode="L")
        json_path = tmp / "masks" / "P0001.png" if target == "mask" else tmp / "report.json"
        if target == "weights-hard-link":
            os.link(weights, json_path)
        common = ["--model", "farseg", "--weights", str(weights), "--device", "cpu", "--no-progress"]
        if target == "model-yml":
            _fake_export(tmp / "deploy", ONNX_FORMAT)
            common = ["--model", "farseg", "--model-dir", str(tmp / "deploy"), "--device", "cpu", "--no-progress"]
            json_path = tmp / "deploy" / CONFIG_FILE
        # --limit 1: the mask of a scene left out is still an input folder's file
        return "", common + ["--images", str(tmp / "images"), "--masks", str(tmp / "masks"), "--limit", "1"] + [
            "--json",
            str(json_path),
        ]

    return build


def _export_case(kind: str) -> Callable[[Path], Tuple[str, List[str]]]:
    def build(tmp: Path) -> Tuple[str, List[str]]:
        weights = _dummy_weights(tmp)
        out = tmp / "deploy"
        if kind == "weights-inside":
            out.mkdir()
            weights = out / "w.pth"
            weights.write_bytes(b"user weights")
            return "", ["--model", "farseg", "--weights", str(weights), "--out", str(out)]
        _fake_export(out, ONNX_FORMAT)
        if kind == "foreign-file":
            (out / "notes.txt").write_text("keep me")
            foreign = "notes.txt"
        else:
            (out / "runs" / "1").mkdir(parents=True)
            (out / "runs" / "1" / "log.txt").write_text("keep me")
            foreign = "runs/"
        return foreign, ["--model", "farseg", "--weights", str(weights), "--out", str(out), "--size", "64", "64"]

    return build


def _prepare_case(tmp: Path) -> Tuple[str, List[str]]:
    source = tmp / "isaid"
    for folder in ("train/images", "train/Semantic_masks"):
        (source / folder).mkdir(parents=True)
    _png(source / "train" / "images" / "P0000.png")
    _png(source / "train" / "Semantic_masks" / "P0000_instance_color_RGB.png")
    return "", [str(source), str(source), "--splits", "train", "--no-progress"]


CASES = {
    **{
        f"{framework}.predict:{kind}": (f"{framework}.predict", _predict_case(kind))
        for framework in ("torch_ref", "paddle_impl")
        for kind in (
            "out-is-image",
            "color-is-image",
            "image-symlink-to-out",
            "out-hard-link",
            "out-through-linked-folder",
        )
    },
    **{
        f"paddle_impl.infer:{kind}": ("paddle_impl.infer", _infer_case(kind)) for kind in ("out-is-image", "color-link")
    },
    **{
        f"{framework}.evaluate:{target}": (f"{framework}.evaluate", _evaluate_case(target))
        for framework in ("torch_ref", "paddle_impl")
        for target in ("mask", "weights-hard-link", "model-yml")
    },
    **{
        f"{framework}.export:{kind}": (f"{framework}.export", _export_case(kind))
        for framework in ("torch_ref", "paddle_impl")
        for kind in ("foreign-file", "foreign-folder", "weights-inside")
    },
    "isaid.prepare:out-is-src": ("isaid.prepare", _prepare_case),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_command_never_writes_over_its_inputs(case: str, tmp_path: Path, capsys) -> None:
    import importlib

    module_name, build = CASES[case]
    named, argv = build(tmp_path)
    named = named or "refusing to overwrite the input"  # the guard's words, not another error's
    module = importlib.import_module(module_name)
    before = snapshot(tmp_path)
    assert module.main(argv) == 2
    captured = capsys.readouterr()
    line = assert_one_error_line(captured.err)
    assert named in line
    assert snapshot(tmp_path) == before  # every user file byte-identical, nothing added


def test_predict_without_the_guard_loses_the_scene(tmp_path: Path, torch_weights: Path, monkeypatch) -> None:
    """Planted: the guard switched off in predict, the issue's repro writes over the scene."""
    from torch_ref.predict import main

    scene = tmp_path / "scene.tif"
    _scene(scene, 64, 64)
    (tmp_path / "view.tif").symlink_to(scene)
    argv = ["--weights", str(torch_weights), "--image", str(tmp_path / "view.tif"), "--out", str(scene)]
    argv += ["--window", "64", "--stride", "64", "--device", "cpu", "--no-progress"]
    original = scene.read_bytes()
    assert main(argv) == 2 and scene.read_bytes() == original
    monkeypatch.setattr(predict, "refuse_overwriting_inputs", lambda outputs, inputs: None)
    assert main(argv) == 0
    assert scene.read_bytes() != original  # the user's scene is gone: the guard is what kept it


# ------------------------------------------------------------------------------ exports


def _fake_export(folder: Path, fmt: str) -> None:
    """An earlier export's exact file set (the program files are placeholders: replacing a
    folder reads model.yml only)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_deploy_config(str(folder), deploy_config("farseg", (64, 64), None, "test", fmt=fmt), "test")
    for name in exported.FORMAT_FILES[fmt]:
        (folder / name).write_bytes(b"program " + name.encode())


@pytest.mark.parametrize("fmt", [ONNX_FORMAT, PADDLE_FORMAT])
def test_an_exact_earlier_export_is_replaced_and_nothing_is_left_beside(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "deploy"
    _fake_export(out, fmt)
    staging = exported.staging_folder(str(out))
    _fake_export(Path(staging), ONNX_FORMAT)
    (Path(staging) / "model.onnx").write_bytes(b"new program")
    exported.replace_folder(staging, str(out))
    assert (out / "model.onnx").read_bytes() == b"new program"
    assert sorted(os.listdir(tmp_path)) == ["deploy"]  # no staging, no set-aside folder


@pytest.mark.parametrize(
    "plant, foreign",
    [
        ("extra-file", "notes.txt"),
        ("extra-folder", "runs/"),
        ("symlinked-program", "model.onnx"),
        ("no-config", "no model.yml"),
        ("bad-config", "model.yml"),
        ("missing-program", "missing model.onnx"),
        ("a-file", "not a folder"),
        ("a-symlink", "symbolic link"),
    ],
)
def test_anything_but_an_exact_earlier_export_is_refused_naming_what_is_foreign(
    tmp_path: Path, plant: str, foreign: str
) -> None:
    out = tmp_path / "deploy"
    _fake_export(out, ONNX_FORMAT)
    if plant == "extra-file":
        (out / "notes.txt").write_text("keep me")
    elif plant == "extra-folder":
        (out / "runs").mkdir()
    elif plant == "symlinked-program":
        (tmp_path / "mine.onnx").write_bytes(b"mine")
        (out / "model.onnx").unlink()
        (out / "model.onnx").symlink_to(tmp_path / "mine.onnx")
    elif plant == "no-config":
        (out / CONFIG_FILE).unlink()
    elif plant == "bad-config":
        (out / CONFIG_FILE).write_text("[1, 2")
    elif plant == "missing-program":
        (out / "model.onnx").unlink()
    elif plant == "a-file":
        out = tmp_path / "deploy.txt"
        out.write_text("a file")
    elif plant == "a-symlink":
        out = tmp_path / "view"
        out.symlink_to(tmp_path / "deploy", target_is_directory=True)
    before = snapshot(tmp_path)
    with pytest.raises(ExportError) as caught:
        exported.check_replaceable(str(out))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(out)) and foreign in message
    staging = exported.staging_folder(str(out))
    with pytest.raises(ExportError):
        exported.replace_folder(staging, str(out))
    os.rmdir(staging)
    assert snapshot(tmp_path) == before


def test_replacing_without_the_foreign_check_deletes_the_users_files(tmp_path: Path, monkeypatch) -> None:
    """Planted: main's check (model.yml present is enough) loses the user's notes."""
    out = tmp_path / "deploy"
    _fake_export(out, ONNX_FORMAT)
    (out / "notes.txt").write_text("keep me")
    staging = exported.staging_folder(str(out))
    with pytest.raises(ExportError, match="notes.txt"):
        exported.replace_folder(staging, str(out))
    monkeypatch.setattr(exported, "check_replaceable", lambda out_dir, inputs=(): None)
    exported.replace_folder(staging, str(out))
    assert not (out / "notes.txt").exists()


# ------------------------------------------------------------------------------ killed exports


STAGING_WRITER = """
    import sys, time
    from app.exported import staging_folder
    staging = staging_folder(sys.argv[1])
    open(staging + "/model.onnx", "wb").write(b"half an export")
    print(staging, flush=True)
    time.sleep(120)
"""


def test_a_sigkilled_exports_staging_folder_is_removed_a_live_ones_kept(tmp_path: Path) -> None:
    out = str(tmp_path / "deploy")
    killed = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STAGING_WRITER), out],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    live = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(STAGING_WRITER), out],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        killed_staging = killed.stdout.readline().strip()
        live_staging = live.stdout.readline().strip()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(30)
        assert os.path.isdir(killed_staging) and os.path.isdir(live_staging)
        other = tmp_path / f".other.{killed.pid}-0123456789ab.tmp"  # another output's: not ours
        other.mkdir()
        ours = exported.staging_folder(out)  # what the next export does first
        assert not os.path.exists(killed_staging)
        assert os.path.isdir(live_staging) and other.is_dir()
        os.rmdir(ours)
    finally:
        live.kill()
        live.wait(30)


def test_a_swap_killed_half_way_puts_the_earlier_export_back(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    out = tmp_path / "deploy"
    aside = tmp_path / f".deploy.{dead}-0123456789ab.old"  # the earlier export, set aside
    _fake_export(aside, ONNX_FORMAT)
    half = tmp_path / f".deploy.{dead}-0123456789ac.tmp"  # the new one, never renamed
    _fake_export(half, ONNX_FORMAT)
    earlier = snapshot(aside)
    removed = atomic.remove_stale_staging(out)
    assert removed == [str(half)] and snapshot(out) == earlier
    assert sorted(os.listdir(tmp_path)) == ["deploy"]
    # once the folder exists again, a dead writer's set-aside copy is only removed
    _fake_export(aside, ONNX_FORMAT)
    assert atomic.remove_stale_staging(out) == [str(aside)] and snapshot(out) == earlier


# ------------------------------------------------------------------------------ convert


@pytest.fixture(scope="module")
def official_wrapper(tmp_path_factory) -> Path:
    """An official training wrapper {"model", "opt", "global_step"} of FarSeg (one shared
    storage: a small file)."""
    import torch
    from test_convert import shared_state

    path = tmp_path_factory.mktemp("convert") / "w.pth"
    torch.save({"model": shared_state("farseg"), "opt": {"lr": 0.007, "momentum": 0.9}, "global_step": 60000}, path)
    return path


def _convert(argv: List[str], capsys) -> Tuple[int, str, str]:
    from convert.__main__ import main

    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_convert_round_trip_keeps_the_original_wrapper(official_wrapper: Path, tmp_path: Path, capsys) -> None:
    original = tmp_path / "w.pth"
    original.write_bytes(official_wrapper.read_bytes())
    kept = original.read_bytes()
    status, out, _ = _convert([str(original)], capsys)
    assert status == 0 and (tmp_path / "w.pdparams").exists() and "replaced" not in out
    before = snapshot(tmp_path)
    status, out, err = _convert([str(tmp_path / "w.pdparams")], capsys)  # default output: w.pth
    line = assert_one_error_line(err)
    assert status == 2 and f"-o {original}" in line and out == ""
    assert snapshot(tmp_path) == before and original.read_bytes() == kept
    # -o may replace, atomically, and says so
    status, out, err = _convert([str(tmp_path / "w.pdparams"), "-o", str(original)], capsys)
    assert status == 0 and f"{original} (replaced; " in out and original.read_bytes() != kept


def test_a_default_name_never_replaces_even_without_the_early_check(
    official_wrapper: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Planted: the existence check switched off (a file created after it), the no-clobber
    rename still refuses."""
    import convert.api

    source = tmp_path / "w.pth"
    source.write_bytes(official_wrapper.read_bytes())
    (tmp_path / "w.pdparams").write_bytes(b"the user's Paddle weights")
    monkeypatch.setattr(convert.api, "_check_output", lambda in_path, out, chosen: False)
    before = snapshot(tmp_path)
    status, _, err = _convert([str(source)], capsys)
    assert status == 2 and "exists already" in assert_one_error_line(err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_convert_refuses_an_output_linked_to_its_input(
    official_wrapper: Path, tmp_path: Path, capsys, link: str
) -> None:
    source = tmp_path / "w.pth"
    source.write_bytes(official_wrapper.read_bytes())
    out = tmp_path / "w.converted.pth"
    if link == "symlink":  # IN is a link to -o: writing -o would change what IN shows
        real = tmp_path / "real.pth"
        source.rename(real)
        source.symlink_to(real)
        out = real
    else:
        os.link(source, out)
    before = snapshot(tmp_path)
    status, _, err = _convert([str(source), "--to", "torch", "-o", str(out)], capsys)
    assert status == 2 and "refusing to overwrite the input" in assert_one_error_line(err)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------ GCP GeoTIFFs


def _gcp_scene(path: Path, height: int = 48, width: int = 64) -> list:
    import rasterio
    from rasterio.control import GroundControlPoint

    points = [
        GroundControlPoint(row=0, col=0, x=10.0, y=50.0, z=0.0),
        GroundControlPoint(row=0, col=width, x=10.01, y=50.0, z=0.0),
        GroundControlPoint(row=height, col=0, x=10.0, y=49.99, z=0.0),
        GroundControlPoint(row=height, col=width, x=10.01, y=49.99, z=0.0),
    ]
    pixels = np.random.default_rng(3).integers(0, 256, (3, height, width), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8", gcps=points, crs="EPSG:4326"
    ) as dataset:
        dataset.write(pixels)
    return points


def test_a_gcp_georeferenced_scene_keeps_its_gcps_and_their_crs(tmp_path: Path) -> None:
    import rasterio

    scene = tmp_path / "gcp.tif"
    points = _gcp_scene(scene)
    with raster.open_raster(str(scene)) as reader:
        assert reader.georeferenced and reader.transform is None and reader.crs is None
        assert "4 GCPs (EPSG:4326)" in reader.describe()
        result = predict.predict_to_files(reader, str(tmp_path / "out.tif"), _toy_bands)
    assert "4 GCPs (EPSG:4326) kept" in result.summary()
    with rasterio.open(tmp_path / "out.tif") as dataset:
        written, crs = dataset.gcps
        assert crs.to_string() == "EPSG:4326"
        assert [(p.row, p.col, p.x, p.y) for p in written] == [(p.row, p.col, p.x, p.y) for p in points]
        assert (dataset.read(1) == 3).all()


def test_gcps_lost_on_the_way_are_caught_by_the_read_back(tmp_path: Path) -> None:
    """Planted: a writer that drops the points fails its read-back; no file appears."""
    scene = tmp_path / "gcp.tif"
    _gcp_scene(scene)
    with raster.open_raster(str(scene)) as reader:
        writer = raster.GeoTiffClassMapWriter(
            str(tmp_path / "out.tif"), reader.height, reader.width, gcps=None, rpcs=None
        )
        writer._gcps = reader.gcps  # what the read-back expects; the file holds none
        writer.write_rows(0, np.zeros((reader.height, reader.width), dtype=np.uint8))
        with pytest.raises(raster.RasterError, match="ground-control points"):
            writer.commit()
    assert sorted(os.listdir(tmp_path)) == ["gcp.tif"]


class _StubExport:
    """Stands in for an opened export in paddle_impl.infer: every pixel class 3."""

    fallbacks: list = []
    config = {"model": "farseg"}
    device, backend = "cpu", "stub"

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        return np.full(image.shape[:2], 3, dtype=np.uint8)


@pytest.mark.parametrize("georeferenced", [True, False])
def test_infer_says_in_one_line_that_its_png_drops_the_gcps(
    tmp_path: Path, georeferenced: bool, capsys, monkeypatch
) -> None:
    import paddle_impl.infer as infer

    scene = tmp_path / "scene.tif"
    if georeferenced:
        _gcp_scene(scene)
    else:
        _png(scene.with_suffix(".png"))
        scene = scene.with_suffix(".png")
    monkeypatch.setattr(infer, "create_predictor", lambda *args, **kwargs: _StubExport())
    argv = ["--model-dir", str(tmp_path / "deploy"), "--image", str(scene), "--out", str(tmp_path / "classes.png")]
    assert infer.main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    if georeferenced:
        assert len(notes) == 1 and "4 GCPs (EPSG:4326)" in notes[0] and "cannot keep" in notes[0]
    else:
        assert notes == []


@pytest.mark.parametrize("extension", [".tif", ".png"])
def test_predict_keeps_the_gcps_or_says_they_are_dropped(
    tmp_path: Path, torch_weights: Path, extension: str, capsys
) -> None:
    import rasterio

    from torch_ref.predict import main

    scene = tmp_path / "gcp.tif"
    _gcp_scene(scene, 64, 64)
    out = tmp_path / f"classes{extension}"
    argv = ["--weights", str(torch_weights), "--image", str(scene), "--out", str(out)]
    assert main(argv + ["--window", "64", "--stride", "64", "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    if extension == ".tif":
        assert notes == [] and "4 GCPs (EPSG:4326) kept" in captured.out
        with rasterio.open(out) as dataset:
            assert len(dataset.gcps[0]) == 4 and dataset.gcps[1].to_string() == "EPSG:4326"
    else:
        assert len(notes) == 1 and "4 GCPs (EPSG:4326)" in notes[0] and "no georeferencing" in captured.out


def test_a_real_export_replaces_its_earlier_export_and_a_dead_writers_staging(tmp_path: Path) -> None:
    """The issue's path end to end (Paddle, 64x64, no check): a real export's file set is what
    the next export accepts to replace, and a killed writer's staging folder goes away."""
    import paddle_impl
    from paddle_impl.export import export

    model = paddle_impl.build_model("farseg")
    out = tmp_path / "deploy"
    export("farseg", None, str(out), size=(64, 64), model=model, check=False)
    first = snapshot(out)
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    stale = tmp_path / f".deploy.{dead}-0123456789ab.tmp"  # what a SIGKILLed export leaves
    _fake_export(stale, PADDLE_FORMAT)
    export("farseg", None, str(out), size=(96, 96), model=model, check=False)
    assert sorted(os.listdir(tmp_path)) == ["deploy"]
    assert sorted(snapshot(out)) == sorted(first) and snapshot(out) != first  # replaced, same file set

"""The whole project end to end on synthetic data, every step through its command line.

synthetic scenes (``isaid.synth``) -> ``isaid.prepare`` (64 px windows) -> 3 training
iterations in EACH framework (``paddle_impl.train``, ``torch_ref.train``) ->
``paddle_impl.export`` (with its built-in check against the dynamic graph) ->
``paddle_impl.infer`` on an image -> ``paddle_impl.predict`` (from the export and from the
weights) and ``torch_ref.predict`` on a georeferenced GeoTIFF (EPSG:32633, rotated affine
transform) -> ``paddle_impl.evaluate``.

Besides "every step exits 0", the steps are tied together by checks that would catch a
broken link: the GeoTIFF outputs keep the input's CRS, transform and size; torch predicting
with the Paddle-trained weights (converted on the fly) agrees with Paddle Inference on the
export; and the evaluator's confusion matrix equals the one computed here from
``paddle_impl.predict``'s output on the same scene (same windows), so predict and evaluate
cannot drift apart. A few minutes on 2 CPU cores (one thread per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import rasterio
from conftest import ENV, ROOT
from PIL import Image
from raster_scenes import read_georeference, write_geotiff_by_windows  # tests/raster_scenes.py
from rasterio.transform import Affine

from isaid.imageio import read_index_mask, read_rgb
from isaid.metrics import confusion_from_labels

WINDOW, STRIDE = 64, 48
TIMEOUT = 600
CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.05, 398765.0, 0.04, -0.5, 5123456.0)


def run(args: List[str]) -> subprocess.CompletedProcess:
    """``python -m ...`` from the repository root; fails the test with its stderr on error."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{' '.join(args[:1])} failed:\n{result.stderr[-3000:]}"
    print(f"{time.perf_counter() - start:6.1f}s  python -m {' '.join(args[:3])}")  # shown with -s
    return result


def train(framework: str, data: Path, out: Path) -> None:
    module = {"paddle": "paddle_impl.train", "torch": "torch_ref.train"}[framework]
    sets = {
        "init.imagenet": "none",
        "train.iterations": 3,
        "train.batch_size": 2,
        "data.root": data,
        "data.window": WINDOW,
        "train.out_dir": out,
        "train.amp": "none",
        "train.device": "cpu",
        "train.num_workers": 0,
        "train.log_backend": "none",
        "train.checkpoint_every": 3,
        "train.log_every": 1,
    }
    run(
        [
            module,
            "--config",
            "configs/farseg_isaid.yaml",
            "--no-progress",
            "--set",
            *[f"{key}={value}" for key, value in sets.items()],
        ]
    )


@pytest.mark.slow
def test_lite_chain(tmp_path: Path) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    run(["isaid.synth", str(src), "--train", "2", "--val", "1", "--size", "128", "--seed", "0", "--no-zip"])
    run(["isaid.prepare", str(src), str(data), "--window", str(WINDOW), "--stride", str(STRIDE), "--no-progress"])
    val_image = sorted((data / "val" / "images").glob("*.png"))[0]
    val_label = data / "val" / "labels" / val_image.name

    # Training, a few iterations in each framework.
    train("paddle", data, tmp_path / "run_paddle")
    train("torch", data, tmp_path / "run_torch")
    paddle_weights = tmp_path / "run_paddle" / "model_final.pdparams"
    torch_weights = tmp_path / "run_torch" / "model_final.pth"
    assert paddle_weights.is_file() and torch_weights.is_file()

    # Export (the CLI checks the program against the dynamic graph itself) and infer.
    deploy = tmp_path / "deploy"
    exported = run(
        [
            "paddle_impl.export",
            "--model",
            "farseg",
            "--weights",
            str(paddle_weights),
            "--out",
            str(deploy),
            "--window",
            str(WINDOW),
            "--stride",
            str(STRIDE),
        ]
    )
    assert exported.stdout.count("check: Paddle Inference") == 2
    run(
        [
            "paddle_impl.infer",
            "--model-dir",
            str(deploy),
            "--image",
            str(val_image),
            "--out",
            str(tmp_path / "infer.png"),
            "--threads",
            "1",
        ]
    )
    image = read_rgb(val_image)
    infer_classes = np.asarray(Image.open(tmp_path / "infer.png"))
    assert infer_classes.shape == image.shape[:2] and infer_classes.max() < 16

    # A georeferenced GeoTIFF of the val scene, written by windows.
    scene = tmp_path / "scene.tif"
    write_geotiff_by_windows(
        str(scene), image.shape[0], image.shape[1], lambda a, b: image[a:b], crs=CRS, transform=TRANSFORM, block_rows=32
    )
    outputs = {
        "export": ["paddle_impl.predict", "--model-dir", str(deploy)],
        "paddle": ["paddle_impl.predict", "--weights", str(paddle_weights)],
        "torch_own": ["torch_ref.predict", "--weights", str(torch_weights)],
        "torch_from_paddle": ["torch_ref.predict", "--weights", str(paddle_weights)],
    }
    classes = {}
    for name, command in outputs.items():
        out = tmp_path / f"pred_{name}.tif"
        run(
            command
            + [
                "--image",
                str(scene),
                "--out",
                str(out),
                "--window",
                str(WINDOW),
                "--stride",
                str(STRIDE),
                "--device",
                "cpu",
                "--no-progress",
            ]
            + (["--color", str(tmp_path / "colour.png")] if name == "export" else [])
        )
        written = read_georeference(str(out))
        assert written["crs"].to_epsg() == 32633 and written["transform"] == TRANSFORM
        assert (written["height"], written["width"], written["count"]) == (*image.shape[:2], 1)
        with rasterio.open(out) as dataset:
            classes[name] = dataset.read(1)
        assert classes[name].max() < 16
    assert Image.open(tmp_path / "colour.png").mode == "RGB"
    # Same weights, three runtimes: nearly every pixel agrees (float32 argmax ties aside).
    for name in ("paddle", "torch_from_paddle"):
        assert float((classes[name] == classes["export"]).mean()) >= 0.999, name

    # Evaluate, and tie it to predict: same windows, same weights -> the same confusion matrix.
    result_path = tmp_path / "eval.json"
    run(
        [
            "paddle_impl.evaluate",
            "--model",
            "farseg",
            "--weights",
            str(paddle_weights),
            "--images",
            str(data / "val" / "images"),
            "--masks",
            str(data / "val" / "labels"),
            "--window",
            str(WINDOW),
            "--stride",
            str(STRIDE),
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            str(result_path),
        ]
    )
    result = json.loads(result_path.read_text())
    assert result["data"]["images"] == 1 and 0.0 <= result["miou"] <= 100.0
    label = read_index_mask(val_label)
    expected = confusion_from_labels(classes["paddle"], label)
    np.testing.assert_array_equal(np.asarray(result["confusion"]), expected)

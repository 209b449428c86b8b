"""Tests of the framework-free isaid package: palette, windows, metrics, IO, prepare, synth."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT as REPO_ROOT
from conftest import run_module as run_project_module
from PIL import Image

from isaid import imageio, metrics, palette, synth, windows
from isaid.imageio import ImageReadError
from isaid.palette import CLASS_NAMES, NUM_CLASSES, PALETTE


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` with the repository importable (conftest's runner)."""
    return run_project_module(*args, cwd=cwd, timeout=120)


# ------------------------------------------------------------------------------ palette


def test_palette_order_and_names():
    assert PALETTE.shape == (NUM_CLASSES, 3) and PALETTE.dtype == np.uint8
    assert len(CLASS_NAMES) == NUM_CLASSES
    # The colours FarSeg mislabels: (0,191,127) is roundabout, (0,63,63) storage tank.
    assert tuple(PALETTE[2]) == (0, 191, 127) and CLASS_NAMES[2] == "roundabout"
    assert tuple(PALETTE[12]) == (0, 63, 63) and CLASS_NAMES[12] == "storage_tank"
    assert tuple(PALETTE[15]) == (0, 100, 155) and CLASS_NAMES[15] == "harbor"
    assert len({tuple(c) for c in PALETTE.tolist()}) == NUM_CLASSES
    items = palette.legend_items()
    assert items[9] == (9, "small_vehicle", (0, 0, 127))


def test_decode_every_class_colour_and_unknown():
    rgb = np.zeros((2, NUM_CLASSES + 2, 3), dtype=np.uint8)
    rgb[0, :NUM_CLASSES] = PALETTE
    rgb[1, :NUM_CLASSES] = PALETTE
    rgb[0, NUM_CLASSES] = (3, 0, 62)  # unknown; its weighted sum equals ship's (189)
    rgb[1, NUM_CLASSES] = (3, 0, 62)
    rgb[0, NUM_CLASSES + 1] = (10, 20, 30)  # unknown, no collision
    rgb[1, NUM_CLASSES + 1] = (0, 0, 0)
    index, n_unknown = palette.decode_color_mask(rgb)
    assert index.dtype == np.uint8
    np.testing.assert_array_equal(index[0, :NUM_CLASSES], np.arange(NUM_CLASSES))
    # Off-palette colours decode as the official weighted-sum rule does: the collision with
    # ship's sum becomes ship, the other colour background.
    np.testing.assert_array_equal(index[:, NUM_CLASSES], 1)
    np.testing.assert_array_equal(index[:, NUM_CLASSES + 1], 0)
    assert n_unknown == 3
    details = palette.decode_color_mask_details(rgb)
    assert details.unknown_colours == {(3, 0, 62): 2, (10, 20, 30): 1}
    np.testing.assert_array_equal(palette.decode_color_mask_official(rgb), index)


def test_official_decoder_matches_weighted_sum_definition():
    # Independent statement of FarSeg's RemoveColorMap: label = the class whose R+2G+3B equals
    # the pixel's R+2G+3B, else 0.
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(40, 50, 3)).astype(np.uint8)
    rgb[::3] = PALETTE[rng.integers(0, NUM_CLASSES, size=(14, 50))]
    sums = rgb.astype(np.int64) @ np.array([1, 2, 3])
    palette_sums = PALETTE.astype(np.int64) @ np.array([1, 2, 3])
    expected = np.zeros(sums.shape, dtype=np.uint8)
    for label, key in enumerate(palette_sums):
        expected[sums == key] = label
    np.testing.assert_array_equal(palette.decode_color_mask_official(rgb), expected)
    np.testing.assert_array_equal(palette.decode_color_mask(rgb)[0], expected)


def test_colorize_decode_round_trip_and_ignore_colour():
    rng = np.random.default_rng(1)
    index = rng.integers(0, NUM_CLASSES, size=(33, 47)).astype(np.uint8)
    decoded, n_unknown = palette.decode_color_mask(palette.colorize(index))
    np.testing.assert_array_equal(decoded, index)
    assert n_unknown == 0
    rendered = palette.colorize(np.array([[255, 3]], dtype=np.uint8))
    assert tuple(rendered[0, 0]) == (255, 255, 255) and tuple(rendered[0, 1]) == (0, 63, 0)


def test_decode_large_blocks_consistent():
    # More rows than one decoding block, with unknown colours in several blocks.
    index = (np.arange(4200 * 3).reshape(4200, 3) % NUM_CLASSES).astype(np.uint8)
    rgb = palette.colorize(index)
    rgb[5, 0] = rgb[3000, 1] = rgb[4199, 2] = (7, 7, 7)
    expected = index.copy()
    expected[5, 0] = expected[3000, 1] = expected[4199, 2] = 0
    decoded, n_unknown = palette.decode_color_mask(rgb)
    np.testing.assert_array_equal(decoded, expected)
    assert n_unknown == 3


def test_normalize():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = 255
    out = palette.normalize(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], (255 - 123.675) / 58.395, rtol=1e-6)
    np.testing.assert_allclose(out[2], (0 - 103.53) / 57.375, rtol=1e-6)


# ------------------------------------------------------------------------------ windows


def test_windows_reference_sizes():
    assert windows.sliding_windows(800, 800) == [(0, 0, 800, 800)]
    assert windows.sliding_windows(896, 896) == [(0, 0, 896, 896)]
    assert windows.sliding_windows(897, 897) == [(0, 0, 896, 896), (0, 1, 896, 897), (1, 0, 897, 896), (1, 1, 897, 897)]
    # 1000 rows: starts 0 and 1000-896=104; 1500 columns: ceil(604/512)+1 = 3 starts
    # 0, 512 and 604 (shifted back from 1024 to touch the border). Row-major order.
    assert windows.sliding_windows(1000, 1500) == [
        (0, 0, 896, 896),
        (0, 512, 896, 1408),
        (0, 604, 896, 1500),
        (104, 0, 1000, 896),
        (104, 512, 1000, 1408),
        (104, 604, 1000, 1500),
    ]
    # Smaller than the window in one dimension only: one shorter row of windows.
    assert windows.sliding_windows(500, 2000) == [
        (0, 0, 500, 896),
        (0, 512, 500, 1408),
        (0, 1024, 500, 1920),
        (0, 1104, 500, 2000),
    ]
    # Exactly window + k*stride: no shifted window needed.
    assert windows.window_starts(896 + 2 * 512, 896, 512) == [0, 512, 1024]


@pytest.mark.parametrize(
    "height,width,window,stride",
    [
        (1, 1, 896, 512),
        (895, 897, 896, 512),
        (1000, 1500, 896, 512),
        (4000, 2731, 896, 512),
        (257, 300, 128, 96),
        (128, 129, 128, 128),
        (13000, 1, 896, 512),
    ],
)
def test_windows_cover_every_pixel_and_stay_inside(height, width, window, stride):
    wins = windows.sliding_windows(height, width, window, stride)
    assert len(wins) == windows.num_windows(height, width, window, stride)
    assert len(set(wins)) == len(wins)
    coverage = np.zeros((height, width), dtype=np.int32)
    for y0, x0, y1, x1 in wins:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
        assert (y1 - y0, x1 - x0) == (min(window, height), min(window, width))
        coverage[y0:y1, x0:x1] += 1
    assert coverage.min() >= 1
    assert wins == sorted(wins)  # row-major


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="stride 80 larger than window 64"):
        windows.sliding_windows(100, 100, 64, 80)  # stride > window leaves gaps
    with pytest.raises(ValueError, match="height must be a positive integer"):
        windows.sliding_windows(0, 100)


def test_pad_to_multiple_and_pad_bottom_right():
    assert windows.pad_to_multiple(896, 896) == (0, 0)
    assert windows.pad_to_multiple(800, 801) == (0, 31)
    assert windows.pad_to_multiple(1, 33) == (31, 31)
    assert windows.pad_to_multiple(10, 10, multiple=4) == (2, 2)
    label = np.ones((2, 3), dtype=np.uint8)
    padded = windows.pad_bottom_right(label, 4, 4, 255)
    assert padded.shape == (4, 4) and (padded[:2, :3] == 1).all()
    assert (padded[2:] == 255).all() and (padded[:, 3] == 255).all()
    image = windows.pad_bottom_right(np.full((2, 3, 3), 9, np.uint8), 4, 5, 0)
    assert image.shape == (4, 5, 3) and image[:2, :3].min() == 9 and image[2:].max() == 0


# ------------------------------------------------------------------------------ metrics

# Hand-worked confusion matrix (rows = ground truth, columns = prediction), 4 classes,
# class 3 absent from truth and prediction:
#   class 0: TP 50, row 55, column 54 -> union 55+54-50 = 59 -> IoU 50/59 = 0.847458
#   class 1: TP 10, row 15, column 17 -> union 22            -> IoU 10/22 = 0.454545
#   class 2: TP 0,  row 5,  column 4  -> union 9             -> IoU 0
#   class 3: 0/0 -> NaN; the official plain means become NaN.
#   mean over present classes: (0.847458 + 0.454545 + 0)/3 = 0.434001
#   foreground mean over present classes: (10/22 + 0)/2 = 0.227273
#   pixel accuracy: 60/75 = 0.8
HAND_CM = np.array([[50, 2, 3, 0], [4, 10, 1, 0], [0, 5, 0, 0], [0, 0, 0, 0]], dtype=np.int64)


def test_iou_and_miou_hand_computed():
    iou = metrics.iou_from_confusion(HAND_CM)
    np.testing.assert_allclose(iou[:3], [50 / 59, 10 / 22, 0.0])
    assert math.isnan(iou[3])
    summary = metrics.miou(HAND_CM)
    assert math.isnan(summary["miou"]) and math.isnan(summary["miou_fg"])
    assert summary["miou_present"] == pytest.approx((50 / 59 + 10 / 22) / 3)
    assert summary["miou_fg_present"] == pytest.approx(10 / 44)
    assert summary["absent"] == [3]
    assert summary["pixel_accuracy"] == pytest.approx(0.8)
    # Without the absent class all means are finite and equal the hand values.
    full = metrics.miou(HAND_CM[:3, :3])
    assert full["miou"] == pytest.approx(0.434001, abs=1e-6)
    assert full["miou_fg"] == pytest.approx(0.227273, abs=1e-6)
    table = metrics.format_iou_table(HAND_CM, ["bg", "a", "b", "c"])
    assert "84.75" in table and "45.45" in table and "n/a" in table


def test_confusion_from_labels_rows_truth_and_ignore():
    true = np.array([[0, 0, 255, 2], [1, 1, 1, 255]])
    pred = np.array([[0, 1, 1, 2], [1, 0, 1, 2]])
    cm = metrics.confusion_from_labels(pred, true, num_classes=3)
    expected = np.zeros((3, 3), dtype=np.int64)
    expected[0, 0] = 1  # truth 0 predicted 0
    expected[0, 1] = 1  # truth 0 predicted 1
    expected[2, 2] = 1
    expected[1, 1] = 2
    expected[1, 0] = 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.sum() == 6  # the two 255 pixels are left out
    with pytest.raises(ValueError, match="prediction value 3 outside 0..2"):
        metrics.confusion_from_labels(np.array([3]), np.array([0]), num_classes=3)
    with pytest.raises(ValueError, match="ground truth value 7 outside 0..2"):
        metrics.confusion_from_labels(np.array([0]), np.array([7]), num_classes=3)


# ------------------------------------------------------------------------------ imageio


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_imageio_errors_name_the_file(tmp_path):
    good = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png(good)[:400])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    deep = tmp_path / "sixteen.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint16) + 1000).save(deep)
    for path in (truncated, text, deep, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError) as caught:
            imageio.read_rgb(path)
        message = str(caught.value)
        assert message.startswith(str(path) + ":") and "\n" not in message
    grey = tmp_path / "grey.png"
    grey.write_bytes(_png(good[..., 0]))
    rgb = imageio.read_rgb(grey)
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()


def test_masks_and_atomic_write(tmp_path):
    index = np.arange(NUM_CLASSES, dtype=np.uint8).repeat(3).reshape(6, 8)
    colour_path = tmp_path / "P0_instance_color_RGB.png"
    colour_path.write_bytes(_png(palette.colorize(index)))
    decoded, n_unknown = imageio.read_mask(colour_path)
    np.testing.assert_array_equal(decoded, index)
    assert n_unknown == 0
    label_path = tmp_path / "sub" / "label.png"
    imageio.write_png_atomic(label_path, index, index_palette=True)
    assert Image.open(label_path).mode == "P"
    np.testing.assert_array_equal(imageio.read_index_mask(label_path), index)
    np.testing.assert_array_equal(imageio.read_mask(label_path)[0], index)
    assert sorted(p.name for p in label_path.parent.iterdir()) == ["label.png"]  # no temp left
    bad = tmp_path / "bad_index.png"
    Image.fromarray(np.full((3, 3), 40, np.uint8)).save(bad)
    with pytest.raises(ImageReadError):
        imageio.read_index_mask(bad)


# ------------------------------------------------------------------------------ synth


def test_make_scene_deterministic_with_all_classes():
    a_rgb, a_index = synth.make_scene(np.random.default_rng(5), 150, 170)
    b_rgb, b_index = synth.make_scene(np.random.default_rng(5), 150, 170)
    np.testing.assert_array_equal(a_rgb, b_rgb)
    np.testing.assert_array_equal(a_index, b_index)
    assert a_rgb.shape == (150, 170, 3) and a_index.dtype == np.uint8
    assert set(np.unique(a_index).tolist()) == set(range(NUM_CLASSES))


# ------------------------------------------------------------------------------ prepare


def _bincount(path: Path) -> list:
    return np.bincount(np.asarray(Image.open(path)).ravel(), minlength=NUM_CLASSES).tolist()


def test_prepare_synthetic_zips_and_resume(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    assert synth.main([str(src), "--train", "3", "--val", "2", "--size", "160", "--seed", "3"]) == 0
    assert (src / "train/images/part1.zip").is_file()
    assert (src / "train/images/part2.zip").is_file()
    assert (src / "val/Semantic_masks/images.zip").is_file()

    args = ("isaid.prepare", str(src), str(out), "--window", "128", "--stride", "96", "--no-progress")
    first = run_module(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "scenes written 5, skipped 0, failed 0" in first.stdout

    for split, names in (("train", ["P0000", "P0001", "P0002"]), ("val", ["P0003", "P0004"])):
        index = json.loads((out / split / "index.json").read_text())
        assert [s["name"] for s in index["scenes"]] == names
        assert index["failed"] == []
        total_patches = 0
        for scene in index["scenes"]:
            image = np.asarray(Image.open(out / split / scene["image"]))
            label = np.asarray(Image.open(out / split / scene["label"]))
            assert image.shape == (scene["height"], scene["width"], 3)
            assert label.shape == image.shape[:2] and label.max() < NUM_CLASSES
            assert scene["class_pixels"] == _bincount(out / split / scene["label"])
            assert scene["unknown_pixels"] == 0
            assert scene["patches"] == [
                list(w) for w in windows.sliding_windows(scene["height"], scene["width"], 128, 96)
            ]
            for y0, x0, y1, x1 in scene["patches"]:
                name = f"{scene['name']}_{y0}_{x0}.png"
                patch_image = np.asarray(Image.open(out / split / "patches/images" / name))
                patch_label = np.asarray(Image.open(out / split / "patches/labels" / name))
                assert patch_image.shape == (128, 128, 3) and patch_label.shape == (128, 128)
                h, w = y1 - y0, x1 - x0
                np.testing.assert_array_equal(patch_image[:h, :w], image[y0:y1, x0:x1])
                np.testing.assert_array_equal(patch_label[:h, :w], label[y0:y1, x0:x1])
                assert (patch_label[h:] == 255).all() and (patch_label[:, w:] == 255).all()
                assert patch_image[h:].max(initial=0) == 0 and patch_image[:, w:].max(initial=0) == 0
            total_patches += len(scene["patches"])
        assert index["totals"]["patches"] == total_patches
        assert len(list((out / split / "patches/images").iterdir())) == total_patches

    second = run_module(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "scenes written 0, skipped 5, failed 0" in second.stdout

    kept = out / "train/labels/P0000.png"
    kept_mtime = kept.stat().st_mtime_ns
    (out / "train/labels/P0001.png").unlink()
    third = run_module(*args, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "scenes written 1, skipped 4, failed 0" in third.stdout
    assert (out / "train/labels/P0001.png").is_file()
    assert kept.stat().st_mtime_ns == kept_mtime


def test_prepare_reports_bad_inputs_by_file(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    assert synth.main([str(src), "--train", "5", "--val", "0", "--size", "140", "--seed", "4", "--no-zip"]) == 0
    images, masks = src / "train/images", src / "train/Semantic_masks"
    # P0001: truncated image file.
    (images / "P0001.png").write_bytes((images / "P0001.png").read_bytes()[:300])
    # P0002: mask one column narrower than its image.
    mask2 = masks / "P0002_instance_color_RGB.png"
    rgb2 = np.asarray(Image.open(mask2))
    Image.fromarray(np.ascontiguousarray(rgb2[:, :-1])).save(mask2)
    # P0003: 7 pixels of colours outside the palette (5 of them collide with ship officially).
    mask3 = masks / "P0003_instance_color_RGB.png"
    rgb3 = np.array(Image.open(mask3))
    rgb3[0, :5] = (3, 0, 62)
    rgb3[1, :2] = (200, 1, 1)
    Image.fromarray(rgb3).save(mask3)
    # P0004: no mask.
    (masks / "P0004_instance_color_RGB.png").unlink()
    # P0099: a scene smaller than the window, one folder deeper (as the zips extract).
    small_rgb, small_index = synth.make_scene(np.random.default_rng(9), 100, 90)
    (images / "images").mkdir()
    (masks / "images").mkdir()
    Image.fromarray(small_rgb).save(images / "images/P0099.png")
    Image.fromarray(palette.colorize(small_index)).save(masks / "images/P0099_instance_color_RGB.png")

    result = run_module(
        "isaid.prepare",
        str(src),
        str(out),
        "--window",
        "128",
        "--stride",
        "96",
        "--splits",
        "train",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(errors) == 3 and len(warnings) == 1, result.stderr
    assert any("P0001.png" in line and "truncated" in line for line in errors)
    assert any("P0002_instance_color_RGB.png" in line and "differs from" in line for line in errors)
    assert any("P0004.png" in line and "without a mask" in line for line in errors)
    assert "P0003_instance_color_RGB.png" in warnings[0] and " 7 pixels" in warnings[0]
    assert "scenes written 3, skipped 0, failed 3" in result.stdout

    index = json.loads((out / "train/index.json").read_text())
    assert index["failed"] == ["P0001", "P0002", "P0004"]
    scenes = {s["name"]: s for s in index["scenes"]}
    assert sorted(scenes) == ["P0000", "P0003", "P0099"]
    assert scenes["P0003"]["unknown_pixels"] == 7
    assert scenes["P0003"]["unknown_colours"] == {"3,0,62": 5, "200,1,1": 2}
    assert scenes["P0003"]["unknown_pixels_decoded_as_class"] == 5
    assert index["totals"]["unknown_pixels"] == 7
    label3 = np.asarray(Image.open(out / "train/labels/P0003.png"))
    assert (label3[0, :5] == 1).all() and label3[1, :2].max() == 0  # (3,0,62) sums like ship
    assert scenes["P0003"]["class_pixels"] == _bincount(out / "train/labels/P0003.png")
    # The small scene: one window, padded (image 0, label 255) to 128x128.
    assert scenes["P0099"]["patches"] == [[0, 0, 100, 90]]
    patch_label = np.asarray(Image.open(out / "train/patches/labels/P0099_0_0.png"))
    np.testing.assert_array_equal(patch_label[:100, :90], small_index)
    assert (patch_label[100:] == 255).all() and (patch_label[:, 90:] == 255).all()
    assert not (out / "train/images/P0001.png").exists()


def test_cli_help_and_no_framework_import(tmp_path):
    for module in ("isaid.prepare", "isaid.synth"):
        result = run_module(module, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "usage: python -m " + module in result.stdout
    prepare_help = run_module("isaid.prepare", "--help", cwd=tmp_path).stdout
    for option in (
        "--window",
        "--stride",
        "--splits",
        "--workers",
        "--no-patches",
        "--compress-level",
        "--no-progress",
    ):
        assert option in prepare_help
    check = (
        "import sys, isaid, isaid.prepare, isaid.synth; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'paddle')]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = run_module("isaid.prepare", str(tmp_path / "nowhere"), str(tmp_path / "o"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")

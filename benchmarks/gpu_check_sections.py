"""The GPU check's measuring sections (train, eval, predict, lite) and the parity section's
launcher, each a function of the running :class:`gpu_check.Check`; the figures come from the
benchmark scripts' own workers (``train_bench``, ``eval_bench``, ``predict_bench``)."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

import _common
import numpy as np

ROOT = _common.ROOT
MODELS = ("farseg", "factseg")
# images/s at 896x896, batch 8, bf16 on one H100-class GPU (issue 12); seconds for 4000x4000.
GOALS = {"train_images_per_s": {"farseg": 200.0, "factseg": 130.0}, "eval_4000_seconds": 2.0}
SIZES = {
    "full": {
        "parity_size": 256,
        "parity_batch": 2,
        "steps": 3,
        "train_size": 896,
        "train_batch": 8,
        "train_warmup": 10,
        "train_iters": 30,
        "compile_warmup": 5,
        "eval_size": 4000,
        "window": 896,
        "stride": 512,
        "predict_size": 8000,
        "lite_scene": 256,
        "lite_window": 128,
        "lite_stride": 96,
        "lite_iters": 3,
    },
    "smoke": {
        "parity_size": 32,
        "parity_batch": 2,
        "steps": 1,
        "train_size": 32,
        "train_batch": 2,
        "train_warmup": 1,
        "train_iters": 1,
        "compile_warmup": 1,
        "eval_size": 96,
        "window": 64,
        "stride": 32,
        "predict_size": 96,
        "lite_scene": 96,
        "lite_window": 64,
        "lite_stride": 32,
        "lite_iters": 1,
    },
}
# Seconds a section needs at least to be worth starting (full mode).
MIN_SECONDS = {"parity": 40, "train": 40, "train_compile": 150, "eval": 40, "predict": 60, "lite": 60}


def run_module(module: str, argv: List[str], in_process: bool, timeout: float) -> Tuple[int, str, str]:
    """``python -m module argv`` in a subprocess, or its ``main(argv)`` in this process;
    returns (exit status, stdout, stderr)."""
    if in_process:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = importlib.import_module(module).main(argv)
            except SystemExit as exit_:  # argparse
                status = exit_.code if isinstance(exit_.code, int) else 1
        return int(status or 0), out.getvalue(), err.getvalue()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        PYTHONWARNINGS="ignore",
    )
    result = subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=max(1.0, timeout),
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def lite_chain(
    framework: str, device: str, data: str, folder: str, sizes: Dict[str, Any], in_process: bool, deadline: float
) -> Dict[str, Any]:
    """train -> predict -> evaluate (Paddle: and export -> infer) on ``device``, every step
    through its command line; predict's classes must give evaluate's confusion matrix."""
    from PIL import Image

    from isaid.imageio import read_index_mask
    from isaid.metrics import confusion_from_labels

    package = "torch_ref" if framework == "torch" else "paddle_impl"
    on_gpu = device != "cpu"
    amp = "bf16" if on_gpu else "none"
    run_dir = os.path.join(folder, f"run_{framework}")
    window, stride = str(sizes["lite_window"]), str(sizes["lite_stride"])
    steps: List[Dict[str, Any]] = []

    def step(module: str, argv: List[str]) -> str:
        started = time.perf_counter()
        status, out, err = run_module(module, argv, in_process, deadline - time.perf_counter())
        steps.append(
            {"command": f"python -m {module}", "seconds": round(time.perf_counter() - started, 2), "status": status}
        )
        if status != 0:
            tail = [line for line in err.strip().splitlines() if line.strip()][-1:] or [f"exit {status}"]
            raise RuntimeError(f"python -m {module} failed: {tail[0][:300]}")
        return out

    sets = {
        "init.imagenet": "none",
        "train.iterations": sizes["lite_iters"],
        "train.batch_size": 2,
        "data.root": data,
        "data.window": window,
        "train.out_dir": run_dir,
        "train.amp": amp,
        "train.device": "cuda" if on_gpu else "cpu",
        "train.num_workers": 0,
        "train.log_backend": "none",
        "train.checkpoint_every": sizes["lite_iters"],
        "train.log_every": 1,
    }
    if framework == "torch" and on_gpu:
        sets["train.channels_last"] = "true"
    step(
        f"{package}.train",
        [
            "--config",
            os.path.join(ROOT, "configs", "farseg_isaid.yaml"),
            "--no-progress",
            "--set",
            *[f"{key}={value}" for key, value in sets.items()],
        ],
    )
    weights = os.path.join(run_dir, "model_final.pth" if framework == "torch" else "model_final.pdparams")
    val_images = os.path.join(data, "val", "images")
    image = min(os.listdir(val_images))
    prediction = os.path.join(folder, f"pred_{framework}.png")
    common = ["--window", window, "--stride", stride, "--device", device, "--no-progress"]
    step(
        f"{package}.predict",
        ["--weights", weights, "--image", os.path.join(val_images, image), "--out", prediction, *common],
    )
    result_json = os.path.join(folder, f"eval_{framework}.json")
    step(
        f"{package}.evaluate",
        [
            "--model",
            "farseg",
            "--weights",
            weights,
            "--images",
            val_images,
            "--masks",
            os.path.join(data, "val", "labels"),
            "--json",
            result_json,
            *common,
        ],
    )
    with open(result_json, encoding="utf-8") as handle:
        evaluated = np.asarray(json.load(handle)["confusion"])
    classes = np.asarray(Image.open(prediction))
    label = read_index_mask(os.path.join(data, "val", "labels", image))
    tied = bool(np.array_equal(confusion_from_labels(classes, label), evaluated))
    record: Dict[str, Any] = {
        "framework": framework,
        "device": device,
        "amp": amp,
        "steps": steps,
        "predict_equals_evaluate": tied,
    }
    if framework == "paddle":
        export_dir = os.path.join(folder, "export")
        step(
            "paddle_impl.export",
            ["--model", "farseg", "--weights", weights, "--out", export_dir, "--window", window, "--stride", stride],
        )
        out = step(
            "paddle_impl.infer",
            ["--model-dir", export_dir, "--image", os.path.join(val_images, image), "--device", device],
        )
        record["infer"] = out.strip().splitlines()[-1][:300] if out.strip() else ""
    record["passed"] = tied
    return record


def parity(check: Any, framework: str, device: str) -> None:
    spec = {
        "framework": framework,
        "device": device,
        "models": list(check.args.models),
        "size": check.sizes["parity_size"],
        "batch": check.sizes["parity_batch"],
        "steps": check.sizes["steps"],
    }
    # float32 means float32: no TF32 in cuBLAS / cuDNN, whatever the framework's defaults.
    check.record(
        f"parity {framework} {device}",
        lambda: check.worker("gpu_check_parity", "parity_worker", spec, {"NVIDIA_TF32_OVERRIDE": "0"}),
        MIN_SECONDS["parity"],
    )


def train(check: Any, framework: str, device: str, compiled: bool) -> None:
    on_gpu = device != "cpu"
    for model in check.args.models:
        spec = {
            "kind": "step",
            "framework": framework,
            "model": model,
            "device": "cuda" if on_gpu else "cpu",
            "size": check.sizes["train_size"],
            "batch": check.sizes["train_batch"],
            "amp": "bf16" if on_gpu else "none",
            "channels_last": framework == "torch" and on_gpu,
            "compile": compiled,
            "warmup": check.sizes["compile_warmup" if compiled else "train_warmup"],
            "iters": check.sizes["train_iters"],
            "workers": None,
            "threads": None,
        }
        goal = GOALS["train_images_per_s"][model]

        def run(spec=spec, goal=goal) -> Dict[str, Any]:
            result = check.worker("train_bench", "step_worker", spec)
            result.update(
                {
                    k: spec[k]
                    for k in ("framework", "model", "device", "size", "batch", "amp", "channels_last", "compile")
                }
            )
            if not result.get("finite", True):
                result["passed"] = False
            if on_gpu and check.sizes["train_size"] == 896 and check.sizes["train_batch"] == 8:
                result["goal_images_per_s"] = goal
                result["meets_goal"] = result["images_per_s"] >= goal
            return result

        label = "compiled" if compiled else "eager"
        check.record(f"train {framework} {model} {label}", run, MIN_SECONDS["train_compile" if compiled else "train"])


def scene_files(check: Any) -> Tuple[str, str]:
    """The synthetic evaluation scene as .npy files (made once)."""
    image_path = os.path.join(check.folder, "eval_image.npy")
    if not os.path.exists(image_path):
        from isaid.synth import make_scene

        image, label = make_scene(np.random.default_rng(0), check.sizes["eval_size"], check.sizes["eval_size"])
        np.save(image_path, image)
        np.save(os.path.join(check.folder, "eval_label.npy"), label)
    return image_path, os.path.join(check.folder, "eval_label.npy")


def eval_weights(check: Any) -> str:
    """FarSeg weights for the evaluation workers (torch's default initialisation, seed 0;
    Paddle reads the same file converted), written once."""
    path = os.path.join(check.folder, "eval_farseg.pth")
    if not os.path.exists(path):
        import torch

        from torch_ref import build_model

        torch.manual_seed(0)
        torch.save(build_model("farseg").state_dict(), path)
    return path


def evaluate(check: Any, framework: str, device: str) -> None:
    on_gpu = device != "cpu"
    runs = [("none", 1)] + ([("bf16", 8)] if on_gpu else [])
    for amp, batch in runs:

        def run(amp=amp, batch=batch) -> Dict[str, Any]:
            image, label = scene_files(check)
            spec = {
                "framework": framework,
                "device": device,
                "amp": amp,
                "batch_size": batch,
                "model": "farseg",
                "window": check.sizes["window"],
                "stride": check.sizes["stride"],
                "threads": None,
                "image": image,
                "label": label,
                "weights": eval_weights(check),
                "classes": os.path.join(check.folder, f"eval_classes_{framework}_{amp}.npy"),
            }
            result = check.worker("eval_bench", "child", spec)
            if on_gpu and check.sizes["eval_size"] == 4000:
                result["goal_seconds"] = GOALS["eval_4000_seconds"]
                result["meets_goal"] = result["seconds"] < GOALS["eval_4000_seconds"]
            expected = check.sizes["eval_size"] ** 2
            if result.get("pixels_counted") != expected:
                result.update(passed=False, error=f"{result.get('pixels_counted')} pixels counted, expected {expected}")
            return result

        check.record(f"eval {framework} {device} amp={amp} batch={batch}", run, MIN_SECONDS["eval"])


def predict(check: Any, framework: str, device: str) -> None:
    try:
        import rasterio  # noqa: F401
    except ImportError as error:
        check.skip(f"predict {framework} {device}", f"rasterio does not import ({error})")
        return
    size = check.sizes["predict_size"]
    scene = os.path.join(check.folder, f"scene_{size}.tif")

    def run() -> Dict[str, Any]:
        bench = importlib.import_module("predict_bench")
        if not os.path.exists(scene):
            bench.write_scene(scene, size, size)
        spec = {
            "run": {"framework": framework, "mode": "dygraph", "device": device},
            "scene": scene,
            "out": os.path.join(check.folder, f"pred_{framework}.tif"),
            "model": "farseg",
            "window": check.sizes["window"],
            "stride": check.sizes["stride"],
            "export_dir": None,
        }
        return check.worker("gpu_check_sections", "child_spec", spec)

    check.record(f"predict {framework} {device} {size}x{size} GeoTIFF", run, MIN_SECONDS["predict"])


def lite(check: Any, framework: str, device: str) -> None:
    data = os.path.join(check.folder, "lite_data")

    def run() -> Dict[str, Any]:
        if not os.path.isdir(data):
            source = os.path.join(check.folder, "lite_src")
            for module, argv in (
                (
                    "isaid.synth",
                    [
                        source,
                        "--train",
                        "2",
                        "--val",
                        "1",
                        "--size",
                        str(check.sizes["lite_scene"]),
                        "--seed",
                        "0",
                        "--no-zip",
                    ],
                ),
                (
                    "isaid.prepare",
                    [
                        source,
                        data,
                        "--window",
                        str(check.sizes["lite_window"]),
                        "--stride",
                        str(check.sizes["lite_stride"]),
                        "--no-progress",
                    ],
                ),
            ):
                status, _, err = run_module(module, argv, True, check.remaining())
                if status != 0:
                    raise RuntimeError(f"{module} failed: {err.strip()[-300:]}")
        return lite_chain(
            framework,
            device,
            data,
            os.path.join(check.folder, f"lite_{framework}"),
            check.sizes,
            check.args.smoke,
            check.deadline,
        )

    check.record(f"lite chain {framework} {device}", run, MIN_SECONDS["lite"])


def child_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """predict_bench's ``child`` called with one dict (the worker protocol's shape)."""
    return importlib.import_module("predict_bench").child(**spec)

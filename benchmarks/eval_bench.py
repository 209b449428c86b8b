"""Benchmark of whole-scene evaluation with the official protocol (sliding windows 896/512).

Usage::

    python benchmarks/eval_bench.py [--size 4000] [--model farseg] [--device cpu|cuda]
                                    [--runs torch:cpu:none:1 paddle:cpu:none:1 ...]
                                    [--threads N] [--out benchmarks/results/eval_bench.json]

One synthetic ``size`` x ``size`` scene (``isaid.synth.make_scene``: textured background and
objects of every class, with its label) is evaluated exactly as ``python -m
<framework>.evaluate`` does it, minus the PNG decoding: the sliding-window engine
(``SlidingWindowInference.run``) and the 16x16 confusion matrix counted on the device per
emitted band, ended by one copy of the matrix to the host. The model has its official
random initialisation (the speed does not depend on the weights' values).

Each run ``FRAMEWORK:DEVICE:AMP:BATCH`` (e.g. ``torch:cuda:bf16:8``) is measured in its own
process, so its peak host memory (``ru_maxrss``: the process's high-water mark, framework and
model included) is its own. Per run: one warm-up pass over the first band of windows (kernel
selection, allocator), then the timed pass over the whole scene. Reported: seconds, windows/s,
megapixels/s, peak host RSS, and on a GPU the peak device memory allocated by the framework.
The JSON (written atomically) holds the command, the machine and every run.

Frameworks: ``torch`` and ``paddle`` (dynamic graphs), ``paddle-inference`` (the same weights
exported and run by Paddle Inference's oneDNN backend; AMP ``bf16``: its oneDNN bf16 passes) and
``onnxruntime`` (the same weights exported by ``torch_ref.export``). Every run loads one set of
weights (torch's default initialisation, seed 0; Paddle converts the ``.pth``), so the class
maps are compared pixel for pixel with the first torch float32 run (``pixels_changed_vs_torch_float32``);
the mIoU against the synthetic labels is recorded too. Exports are made inside the run and timed
apart (``prepare_seconds``). The JSON is rewritten after each run.

Defaults: on ``--device cpu`` torch float32 and bf16, Paddle Inference float32 and bf16,
onnxruntime and Paddle's dynamic graph; on
``--device cuda`` the official-precision run ``torch:cuda:none:1``, the fast run
``torch:cuda:bf16:8`` (batched windows, channels-last, bf16 autocast) and ``paddle:gpu:none:1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from align.env import read_cpu  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "eval_bench.json")


# torch / paddle: the dynamic graphs; paddle-inference: an export of the same weights run by
# Paddle Inference's oneDNN backend (amp bf16: its oneDNN bf16 passes); onnxruntime: the
# torch_ref.export ONNX file of the same weights.
FRAMEWORKS = ("torch", "paddle", "paddle-inference", "onnxruntime")


def parse_run(text: str) -> Dict[str, Any]:
    """``framework:device:amp:batch`` -> dict; raises argparse.ArgumentTypeError."""
    parts = text.split(":")
    if len(parts) != 4 or parts[0] not in FRAMEWORKS or parts[2] not in ("none", "fp16", "bf16"):
        raise argparse.ArgumentTypeError(f"expected FRAMEWORK:DEVICE:AMP:BATCH like torch:cuda:bf16:8, got {text!r}")
    try:
        batch = int(parts[3])
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch must be an integer in {text!r}") from None
    return {"framework": parts[0], "device": parts[1], "amp": parts[2], "batch_size": batch}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/eval_bench.py",
        description="Time the official sliding-window evaluation of one synthetic scene in torch"
        " and Paddle (seconds, windows/s, megapixels/s, peak memory).",
    )
    parser.add_argument(
        "--size", type=int, default=4000, metavar="PX", help="scene side in pixels (default 4000; use less on a CPU)"
    )
    parser.add_argument("--model", choices=("farseg", "factseg"), default="farseg", help="model (default farseg)")
    parser.add_argument("--window", type=int, default=896, help="window (default 896)")
    parser.add_argument("--stride", type=int, default=512, help="stride (default 512)")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="picks the default --runs (default cpu)"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        type=parse_run,
        metavar="FW:DEV:AMP:BATCH",
        help="runs to measure, e.g. torch:cuda:bf16:8 paddle:gpu:none:1",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the frameworks (default: their own default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="JSON",
        help=f"results file (default {os.path.relpath(DEFAULT_OUT, ROOT)})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="measure the list of runs N times, alternating (run 1, run 2, ..., run 1, ...): a load"
        " change on a shared machine then hits every engine alike (default 1)",
    )
    parser.add_argument(
        "--whole-process",
        type=int,
        default=0,
        metavar="N",
        help="instead of the engine runs: time the plain commands python -m torch_ref.evaluate"
        " --weights W.pth and python -m paddle_impl.evaluate --weights W.pdparams (default engines,"
        " float32; the scene written as PNG), alternating, N times each (the first Paddle run fills"
        " its engine cache, the later ones hit it)",
    )
    parser.add_argument(
        "--cold-cache",
        action="store_true",
        help="with --whole-process: each repeat runs torch, then Paddle on an empty engine cache"
        " (cold: the entry is exported, verified and probed), then Paddle again on that cache"
        " (warm: the entry is read back, verified and probed), so both are timed beside torch",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    return parser


def default_runs(device: str) -> List[Dict[str, Any]]:
    if device == "cuda":
        names = ["torch:cuda:none:1", "torch:cuda:bf16:8", "paddle:gpu:none:1"]
    else:
        # torch float32 first: the reference of "pixels changed"; the slowest (Paddle dygraph) last.
        names = [
            "torch:cpu:none:1",
            "torch:cpu:bf16:1",
            "paddle-inference:cpu:none:1",
            "paddle-inference:cpu:bf16:1",
            "onnxruntime:cpu:none:1",
            "paddle:cpu:none:1",
        ]
    return [parse_run(name) for name in names]


# ------------------------------------------------------------------------ one run (child)


def onnxruntime_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Measure one run in this process (called with --child)."""
    image = np.load(spec["image"], mmap_mode="r")
    label = np.load(spec["label"], mmap_mode="r")
    height, width = label.shape
    framework, device, amp = spec["framework"], spec["device"], spec["amp"]
    amp = None if amp == "none" else amp
    extra: Dict[str, Any] = {}
    if framework in ("torch", "onnxruntime"):
        import torch

        from torch_ref import build_model
        from torch_ref.metrics import confusion_matrix
        from torch_ref.sliding_window import SlidingWindowInference

        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
        extra["threads"] = torch.get_num_threads()
        from torch_ref.sliding_window import DeployedModule, load_weights

        model = build_model(spec["model"])
        load_weights(model, spec["model"], spec["weights"])
        on_gpu = device.startswith(("cuda", "gpu"))
        channels_last = None
        prepare_start = time.perf_counter()
        if framework == "onnxruntime":
            from app.exported import OnnxModel
            from torch_ref.export import export

            export_dir = os.path.join(os.path.dirname(spec["weights"]), f"onnx_{os.getpid()}")
            export(spec["model"], None, export_dir, model=model, check=False)
            model, channels_last = DeployedModule(OnnxModel(export_dir, spec["threads"])), False
            version = onnxruntime_version()
        extra["prepare_seconds"] = round(time.perf_counter() - prepare_start, 2)
        if on_gpu:
            # All windows have one size: let cuDNN pick the fastest kernels once (warm-up).
            torch.backends.cudnn.benchmark = True
            if amp is None:  # float32 means float32, as in torch_ref.evaluate
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
            extra["gpu"] = torch.cuda.get_device_name()
        engine = SlidingWindowInference(
            model, spec["window"], spec["stride"], device, spec["batch_size"], amp, channels_last
        )
        extra["channels_last"] = engine.channels_last

        def to_host(classes):
            return classes.to(torch.uint8).cpu().numpy()

        def zeros():
            return torch.zeros([16, 16], dtype=torch.int64, device=engine.device)

        def finish(confusion):
            return confusion.cpu().numpy()

        def reset_peak():
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def device_peak():
            return torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None

        if framework == "torch":
            version = torch.__version__
    else:
        import paddle

        from paddle_impl import build_model
        from paddle_impl.metrics import confusion_matrix
        from paddle_impl.sliding_window import SlidingWindowInference

        # Paddle's CPU kernels take their thread count from OMP_NUM_THREADS at start-up (the
        # parent sets it for this process when --threads is given).
        extra["threads"] = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else None
        from paddle_impl.sliding_window import load_weights

        model = build_model(spec["model"])
        load_weights(model, spec["model"], spec["weights"])
        on_gpu = device.startswith(("cuda", "gpu"))
        prepare_start = time.perf_counter()
        if framework == "paddle-inference":
            from paddle_impl.backend import DeployedLayer
            from paddle_impl.export import export
            from paddle_impl.infer import create_predictor

            export_dir = os.path.join(os.path.dirname(spec["weights"]), f"paddle_{os.getpid()}")
            export(spec["model"], None, export_dir, model=model, check=False)
            backend = "onednn-bf16" if amp == "bf16" else "onednn"
            model, amp = DeployedLayer(create_predictor(export_dir, "cpu", backend, spec["threads"])), None
            extra["backend"] = backend
        extra["prepare_seconds"] = round(time.perf_counter() - prepare_start, 2)
        engine = SlidingWindowInference(model, spec["window"], spec["stride"], device, spec["batch_size"], amp)

        def to_host(classes):
            return classes.astype("uint8").numpy()

        if on_gpu:
            extra["gpu"] = paddle.device.cuda.get_device_name()

        def zeros():
            return paddle.zeros([16, 16], dtype="int64")

        def finish(confusion):
            return confusion.numpy()

        def reset_peak():
            if on_gpu:
                paddle.device.cuda.synchronize()
                paddle.device.cuda.reset_max_memory_allocated()

        def device_peak():
            return paddle.device.cuda.max_memory_allocated() / 2**20 if on_gpu else None

        version = paddle.__version__ + (" (Paddle Inference)" if framework == "paddle-inference" else "")

    predicted = np.zeros((height, width), dtype=np.uint8)

    def evaluate(rows: int) -> np.ndarray:
        confusion = zeros()
        for row_start, row_end, classes in engine.run(
            rows, width, lambda y0, x0, y1, x1: np.asarray(image[y0:y1, x0:x1]), progress=False
        ):
            target = engine.to_device(np.asarray(label[row_start:row_end]))
            confusion += confusion_matrix(classes, target, 16)
            predicted[row_start:row_end] = to_host(classes)  # for the comparison across runs (untimed cost: small)
        return finish(confusion)  # the copy to the host waits for all device work

    # Warm-up: the first band of windows (every batch shape the timed pass will use).
    warm_start = time.perf_counter()
    evaluate(min(spec["window"], height))
    warm_seconds = time.perf_counter() - warm_start
    reset_peak()
    load = os.getloadavg()[0]
    cpu_start, start = time.process_time(), time.perf_counter()
    confusion = evaluate(height)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    from isaid.windows import num_windows

    windows = num_windows(height, width, spec["window"], spec["stride"])
    np.save(spec["classes"], predicted)
    from isaid.metrics import miou

    return {
        "miou_percent": round(100 * float(miou(confusion)["miou"]), 3),
        **{k: spec[k] for k in ("framework", "device", "amp", "batch_size", "model")},
        "framework_version": version,
        "size": [height, width],
        "windows": windows,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),  # process CPU time: shows contention on a shared host
        "load_average_1min": round(load, 2),
        "warmup_seconds": round(warm_seconds, 3),
        "windows_per_s": round(windows / seconds, 3),
        "megapixels_per_s": round(height * width / 1e6 / seconds, 3),
        "peak_host_rss_mb": round(_peak_rss_mb(), 1),
        "peak_device_mb": None if device_peak() is None else round(device_peak(), 1),
        "pixels_counted": int(confusion.sum()),
        **extra,
    }


# ---------------------------------------------------------------------------- parent


def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": read_cpu(),  # model, bf16/AVX-512/AMX features (align.env)
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as handle:
            info["memory_total"] = handle.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.child:
        with open(args.child, encoding="utf-8") as handle:
            spec = json.load(handle)
        print("RESULT " + json.dumps(child(spec)), flush=True)
        return 0
    if args.size < 32 or args.stride > args.window:
        print("error: --size must be >= 32 and --stride <= --window", file=sys.stderr)
        return 2
    if args.whole_process:
        return whole_process(args, argv)
    runs = (args.runs or default_runs(args.device)) * max(1, args.repeats)
    from isaid.synth import make_scene

    results: List[Dict[str, Any]] = []
    reference: Optional[np.ndarray] = None  # the class map of the first torch float32 run
    with tempfile.TemporaryDirectory(prefix="eval_bench_") as folder:
        started = time.perf_counter()
        image, label = make_scene(np.random.default_rng(args.seed), args.size, args.size)
        scene_seconds = time.perf_counter() - started
        np.save(os.path.join(folder, "image.npy"), image)
        np.save(os.path.join(folder, "label.npy"), label)
        del image, label
        # One set of weights for every run (torch's default initialisation, seed 0), so that
        # the class maps can be compared pixel for pixel; Paddle loads the .pth converted.
        import torch

        from torch_ref import build_model as build_torch_model

        torch.manual_seed(0)
        weights = os.path.join(folder, f"{args.model}.pth")
        torch.save(build_torch_model(args.model).state_dict(), weights)
        info = machine_info()
        for number, run in enumerate(runs):
            spec = dict(
                run,
                model=args.model,
                window=args.window,
                stride=args.stride,
                threads=args.threads,
                image=os.path.join(folder, "image.npy"),
                label=os.path.join(folder, "label.npy"),
                weights=weights,
                classes=os.path.join(folder, f"classes{number}.npy"),
            )
            spec_path = os.path.join(folder, f"run{number}.json")
            with open(spec_path, "w", encoding="utf-8") as handle:
                json.dump(spec, handle)
            name = f"{run['framework']}:{run['device']}:{run['amp']}:{run['batch_size']}"
            print(f"run {name} ({args.size}x{args.size}, {args.model}) ...", file=sys.stderr, flush=True)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", spec_path],
                capture_output=True,
                text=True,
                env=env,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"error: run {name} failed: {tail}", file=sys.stderr)
                results.append({**run, "error": tail})
                continue
            result = json.loads(lines[-1][len("RESULT ") :])
            classes = np.load(spec["classes"])
            if reference is None and run["framework"] == "torch" and run["amp"] == "none":
                reference = classes
            if reference is not None:
                changed = int((classes != reference).sum())
                result["pixels_changed_vs_torch_float32"] = changed
                result["share_changed_vs_torch_float32"] = changed / classes.size
            print(
                f"  {result['seconds']:.2f} s, {result['windows_per_s']:.2f} windows/s,"
                f" {result['megapixels_per_s']:.3f} Mpx/s, peak RSS {result['peak_host_rss_mb']:.0f} MB"
                + ("" if result["peak_device_mb"] is None else f", peak device {result['peak_device_mb']:.0f} MB"),
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
            write_document(args, argv, scene_seconds, info, results)  # partial results survive a stop
    write_document(args, argv, scene_seconds, info, results)
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def whole_process(args: argparse.Namespace, argv: List[str]) -> int:
    """Time the two plain evaluate commands on one PNG scene, alternating; see ``--whole-process``.

    The class maps are not written by evaluate, so the pixels moved against torch are bounded
    from the two confusion matrices: at least half their summed absolute difference (exact when
    no moved pixel is compensated by another moving the opposite way in the same cell pair).
    """
    import paddle
    import torch
    from PIL import Image

    from convert import torch_to_paddle
    from isaid.synth import make_scene
    from torch_ref import build_model as build_torch_model

    info = machine_info()
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="eval_bench_") as folder:
        image, label = make_scene(np.random.default_rng(args.seed), args.size, args.size)
        for name, array in (("images", image), ("labels", label)):
            os.makedirs(os.path.join(folder, name))
            Image.fromarray(array).save(os.path.join(folder, name, "S.png"))
        del image, label
        torch.manual_seed(0)
        state = build_torch_model(args.model).state_dict()
        pth = os.path.join(folder, f"{args.model}.pth")
        torch.save(state, pth)
        pdparams = os.path.join(folder, f"{args.model}.pdparams")
        converted = torch_to_paddle({k: v.numpy() for k, v in state.items()}, args.model)
        paddle.save({k: paddle.to_tensor(v) for k, v in converted.items()}, pdparams)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        env["RSSEG_ENGINE_CACHE"] = os.path.join(folder, "engine-cache")
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        common = ["--model", args.model, "--images", os.path.join(folder, "images")]
        common += ["--masks", os.path.join(folder, "labels"), "--device", "cpu", "--no-progress"]
        commands = {
            "torch_ref.evaluate --weights W.pth": ["torch_ref.evaluate", "--weights", pth],
            "paddle_impl.evaluate --weights W.pdparams": ["paddle_impl.evaluate", "--weights", pdparams],
        }
        if args.cold_cache:
            paddle_command = commands.pop("paddle_impl.evaluate --weights W.pdparams")
            commands["paddle_impl.evaluate --weights W.pdparams (cold cache)"] = paddle_command
            commands["paddle_impl.evaluate --weights W.pdparams (warm cache)"] = paddle_command
        reference: Optional[np.ndarray] = None
        for repeat in range(args.whole_process):
            if args.cold_cache:  # a fresh cache per repeat: its first Paddle run is cold, the next warm
                env["RSSEG_ENGINE_CACHE"] = os.path.join(folder, f"engine-cache-{repeat}")
            for label_, command in commands.items():
                out = os.path.join(folder, "result.json")
                started = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", *command, *common, "--json", out], capture_output=True, text=True, env=env
                )
                seconds = time.perf_counter() - started
                if proc.returncode != 0:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"error: {label_} failed: {tail}", file=sys.stderr)
                    results.append({"command": label_, "repeat": repeat, "error": tail})
                    continue
                with open(out, encoding="utf-8") as handle:
                    result = json.load(handle)
                confusion = np.array(result["confusion"], dtype=np.int64)
                if reference is None:
                    reference = confusion
                moved = int(np.abs(confusion - reference).sum()) // 2
                record = {
                    "command": label_,
                    "repeat": repeat,
                    "seconds": round(seconds, 2),
                    "seconds_inside": result["run"]["seconds"],
                    "loaded_as": result["weights"]["loaded_as"],
                    "pixels_moved_vs_torch_at_least": moved,
                    "share_moved_vs_torch_at_least": moved / int(reference.sum()),
                    "load_average_1min": round(os.getloadavg()[0], 2),
                }
                print(f"{label_} #{repeat}: {seconds:.2f} s, moved >= {moved} px", file=sys.stderr, flush=True)
                results.append(record)
    torch_times = [r["seconds"] for r in results if r["command"].startswith("torch") and "seconds" in r]
    paddle_times = [r["seconds"] for r in results if r["command"].startswith("paddle") and "seconds" in r]
    summary = {}
    if args.cold_cache:
        cold = [r["seconds"] for r in results if r["command"].endswith("(cold cache)") and "seconds" in r]
        warm = [r["seconds"] for r in results if r["command"].endswith("(warm cache)") and "seconds" in r]
        if torch_times and cold and warm:
            summary = {
                "paddle_over_torch_cache_miss": round(min(cold) / min(torch_times), 3),
                "paddle_over_torch_cache_hit": round(min(warm) / min(torch_times), 3),
                "paddle_over_torch_cache_miss_per_repeat": [round(c / t, 3) for t, c in zip(torch_times, cold)],
                "paddle_over_torch_cache_hit_per_repeat": [round(w / t, 3) for t, w in zip(torch_times, warm)],
            }
    elif torch_times and len(paddle_times) > 1:
        # The first Paddle run builds the engine cache entry; the later ones are what a user sees.
        summary = {
            "paddle_over_torch_cache_hit": round(min(paddle_times[1:]) / min(torch_times), 3),
            "paddle_over_torch_cache_miss": round(paddle_times[0] / min(torch_times), 3),
        }
    from isaid.imageio import write_bytes_atomic

    document = {
        "benchmark": "whole-process evaluate commands, official protocol, default engines, float32",
        "command": "python benchmarks/eval_bench.py " + " ".join(argv),
        "scene": {"size": [args.size, args.size], "generator": "isaid.synth.make_scene", "seed": args.seed},
        "machine": dict(info, threads=args.threads, load_average_at_end=[round(v, 2) for v in os.getloadavg()]),
        "summary": summary,
        "runs": results,
    }
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    print(f"{summary}; wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def write_document(
    args: argparse.Namespace, argv: List[str], scene_seconds: float, info: Dict[str, Any], results: List[Dict[str, Any]]
) -> None:
    """The results JSON (atomically), with every run measured so far."""
    from isaid.imageio import write_bytes_atomic

    document = {
        "benchmark": "whole-scene evaluation, official sliding-window protocol",
        "command": "python benchmarks/eval_bench.py " + " ".join(argv),
        "scene": {
            "size": [args.size, args.size],
            "generator": "isaid.synth.make_scene",
            "seed": args.seed,
            "seconds_to_generate": round(scene_seconds, 2),
        },
        "protocol": {"window": args.window, "stride": args.stride},
        "machine": dict(info, load_average_at_end=[round(v, 2) for v in os.getloadavg()]),
        "runs": results,
    }
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())

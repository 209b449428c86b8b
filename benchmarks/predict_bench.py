"""Benchmark of large-scene prediction (``python -m <framework>.predict``): speed and memory.

Usage::

    python benchmarks/predict_bench.py [--sizes 2000x2000 4000x4000 8000x2000]
        [--runs torch:dygraph:cpu paddle:dygraph:cpu paddle:onednn:cpu paddle:native:cpu@2000x2000]
        [--model farseg] [--threads N] [--window 896 --stride 512]
        [--out benchmarks/results/predict_bench.json]

For each scene size ``HxW`` a synthetic georeferenced GeoTIFF (3 bands uint8, EPSG:32633,
deflate, 256x256 tiles) is written to a temporary folder BY WINDOWS (tiles of
``isaid.synth.make_scene``; the scene never exists in memory). Each run
``FRAMEWORK:MODE:DEVICE`` (``@HxW,...`` limits it to those sizes) then predicts it exactly as
the CLI does (the same functions:
``build_engine`` -> ``app.predict.predict_to_files`` -> a deflate GeoTIFF with the input's CRS
and transform), in its own process so that its peak RSS is its own. MODE is ``dygraph`` (the
framework's own model, random official initialisation: speed does not depend on the weights'
values), or, for Paddle, ``onednn`` / ``native``: an export of the same model run by Paddle
Inference with that backend (``python -m paddle_impl.infer --help``). DEVICE is ``cpu`` or
``cuda`` / ``gpu``.

Reported per run and size: seconds for the model (build/load, predictor creation) and for the
prediction, windows, seconds per window, megapixels per second, and peak RSS after the model
was loaded and at the end (``ru_maxrss``: the process's high-water mark). The difference is
what prediction adds: the band accumulator (16 x window x width float32), one input strip
(window x width x 3 bytes), the output band and GDAL's block cache. It depends on the scene's
WIDTH: compare sizes of equal width (2000x2000 and 8000x2000) to see it not grow with height.
The JSON (written atomically) holds the command, the machine and every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = _common.ROOT

import numpy as np  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "predict_bench.json")
DEFAULT_SIZES = ("2000x2000", "4000x4000", "8000x2000")
DEFAULT_RUNS = (
    "torch:dygraph:cpu",
    "torch:bf16:cpu",
    "torch:onnxruntime:cpu",
    "paddle:dygraph:cpu",
    "paddle:onednn:cpu",
    "paddle:onednn-bf16:cpu",
    "paddle:native:cpu",
)
# torch: dygraph (float32), bf16 (autocast, channels-last), onnxruntime (torch_ref.export of the
# seed-0 model); paddle: dygraph, or the seed-0 export run by Paddle Inference (onednn,
# onednn-bf16, native).
FRAMEWORK_MODES = {
    "torch": ("dygraph", "bf16", "onnxruntime"),
    "paddle": ("dygraph", "onednn", "onednn-bf16", "native"),
}
MODES = tuple(sorted({mode for modes in FRAMEWORK_MODES.values() for mode in modes}))
TILE = 512  # side of the synthetic tiles the big scenes are made of


def parse_size(text: str) -> Tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 4000x4000, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def parse_run(text: str) -> Dict[str, Any]:
    """``FRAMEWORK:MODE:DEVICE[@HxW,HxW...]``; the optional sizes restrict the run to those scenes."""
    spec, _, sizes = text.partition("@")
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ("torch", "paddle") or parts[1] not in MODES:
        raise argparse.ArgumentTypeError(
            f"expected FRAMEWORK:MODE:DEVICE[@HxW,...] like paddle:onednn:cpu, got {text!r}"
        )
    if parts[1] not in FRAMEWORK_MODES[parts[0]]:
        raise argparse.ArgumentTypeError(f"{text}: {parts[0]} modes are {', '.join(FRAMEWORK_MODES[parts[0]])}")
    only = [parse_size(size) for size in sizes.split(",")] if sizes else None
    return {"framework": parts[0], "mode": parts[1], "device": parts[2], "only": only}


def write_scene(path: str, height: int, width: int, seed: int = 0) -> None:
    """A georeferenced synthetic scene made of 512x512 synthetic tiles, written by windows."""
    from isaid.synth import make_scene
    from tests.raster_scenes import write_geotiff_by_windows

    rng = np.random.default_rng(seed)
    tiles = [make_scene(rng, TILE, TILE)[0] for _ in range(4)]

    def fill(row_start: int, row_end: int) -> np.ndarray:
        rows = np.empty((row_end - row_start, width, 3), dtype=np.uint8)
        for y in range(row_start, row_end):
            ty, oy = divmod(y, TILE)
            for tx in range(0, width, TILE):
                tile = tiles[(ty + tx // TILE) % len(tiles)]
                rows[y - row_start, tx : tx + TILE] = tile[oy, : min(TILE, width - tx)]
        return rows

    write_geotiff_by_windows(path, height, width, fill, block_rows=TILE)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(
    run: Dict[str, str], scene: str, out: str, model: str, window: int, stride: int, export_dir: Optional[str]
) -> Dict[str, Any]:
    """One measurement, in this (fresh) process; returns the record."""
    from app.predict import class_bands, predict_to_files
    from app.raster import open_raster
    from isaid.windows import num_windows

    start = time.perf_counter()
    if run["framework"] == "torch":
        import torch

        from torch_ref import build_model
        from torch_ref.backend import BACKEND
        from torch_ref.sliding_window import SlidingWindowInference

        torch.manual_seed(0)
        if run["mode"] == "onnxruntime":
            from app.exported import OnnxModel
            from torch_ref.export import export
            from torch_ref.sliding_window import DeployedModule

            onnx_dir = os.path.join(os.path.dirname(out), "torch_onnx")
            export(model, None, onnx_dir, model=build_model(model), check=False)
            engine = SlidingWindowInference(
                DeployedModule(OnnxModel(onnx_dir)), window, stride, "cpu", channels_last=False
            )
        else:
            engine = SlidingWindowInference(
                build_model(model), window, stride, run["device"], amp="bf16" if run["mode"] == "bf16" else None
            )
        threads = torch.get_num_threads()
        version = torch.__version__
    else:
        import paddle

        from paddle_impl import build_model
        from paddle_impl.backend import BACKEND, DeployedLayer
        from paddle_impl.sliding_window import SlidingWindowInference

        paddle.seed(0)
        if run["mode"] == "dygraph":
            layer = build_model(model)
        else:
            from paddle_impl.infer import create_predictor

            layer = DeployedLayer(create_predictor(export_dir, run["device"], run["mode"]))
        engine = SlidingWindowInference(layer, window, stride, run["device"])
        threads = None
        version = paddle.__version__
    loaded = time.perf_counter()
    rss_loaded = peak_rss_mb()
    with open_raster(scene) as reader:
        height, width = reader.height, reader.width
        predict_to_files(reader, out, class_bands(BACKEND, engine, progress=False))
    done = time.perf_counter()
    windows = num_windows(height, width, window, stride)
    seconds = done - loaded
    return {
        **run,
        "framework_version": version,
        "torch_threads": threads,
        "model": model,
        "size": f"{height}x{width}",
        "height": height,
        "width": width,
        "window": window,
        "stride": stride,
        "windows": windows,
        "model_seconds": round(loaded - start, 2),
        "predict_seconds": round(seconds, 2),
        "seconds_per_window": round(seconds / windows, 3),
        "megapixels_per_second": round(height * width / 1e6 / seconds, 4),
        "peak_rss_mb_after_model": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "prediction_adds_mb": round(peak_rss_mb() - rss_loaded, 1),
        "band_accumulator_mb": round(16 * min(window, height) * width * 4 / 1e6, 1),
        "whole_scene_probabilities_mb": round(16 * height * width * 4 / 1e6, 1),
    }


def export_model(model: str, folder: str) -> None:
    """Export the randomly initialised Paddle model (seed 0, as the dygraph runs) for Paddle Inference."""
    import paddle

    from paddle_impl import build_model
    from paddle_impl.export import export

    paddle.seed(0)
    export(model, None, folder, model=build_model(model), check=False)


def interleaved_forwards(model: str, window: int, rounds: int, export_dir: str) -> Dict[str, Any]:
    """Seconds per forward pass of one window, the four CPU configurations taken in turns.

    On a shared machine the load drifts over minutes; alternating the configurations round by
    round (one forward each per round, after one warm-up each) exposes them to the same load,
    so their ratios are meaningful even when the absolute times are not. Median over rounds.
    """
    import paddle
    import torch

    import paddle_impl
    import torch_ref
    from paddle_impl.infer import create_predictor

    x = np.random.default_rng(0).standard_normal((1, 3, window, window)).astype(np.float32)
    torch.manual_seed(0)
    torch_model = torch_ref.build_model(model).eval()
    paddle.seed(0)
    paddle_model = paddle_impl.build_model(model)
    paddle_model.eval()
    onednn = create_predictor(export_dir, "cpu", "onednn")
    native = create_predictor(export_dir, "cpu", "native")

    def run_torch() -> None:
        with torch.no_grad():
            torch_model(torch.from_numpy(x))

    def run_paddle() -> None:
        with paddle.no_grad():
            paddle_model(paddle.to_tensor(x))

    configs = {
        "torch:dygraph": run_torch,
        "paddle:dygraph": run_paddle,
        "paddle:onednn": lambda: onednn(x),
        "paddle:native": lambda: native(x),
    }
    times: Dict[str, List[float]] = {name: [] for name in configs}
    for function in configs.values():
        function()  # warm-up: allocator, oneDNN primitive creation
    for _ in range(rounds):
        for name, function in configs.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {
        "window": window,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "median_seconds": {name: round(float(np.median(t)), 3) for name, t in times.items()},
        "all_seconds": {name: [round(v, 3) for v in t] for name, t in times.items()},
    }


def machine() -> Dict[str, Any]:
    """Where the figures were measured (``_common.machine_record``: CPU, ISA flags, load)."""
    return _common.machine_record()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/predict_bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[parse_size(s) for s in DEFAULT_SIZES],
        metavar="HxW",
        help=f"scene sizes (default {' '.join(DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        type=parse_run,
        default=[parse_run(r) for r in DEFAULT_RUNS],
        metavar="FRAMEWORK:MODE:DEVICE",
        help=f"what to measure (default {' '.join(DEFAULT_RUNS)})",
    )
    parser.add_argument(
        "--model", choices=("farseg", "factseg"), default="farseg", help="architecture (default farseg)"
    )
    parser.add_argument("--window", type=int, default=896, help="window side (default 896)")
    parser.add_argument("--stride", type=int, default=512, help="stride (default 512)")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads for every run (default: the frameworks' defaults)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="results JSON (default benchmarks/results/predict_bench.json)"
    )
    parser.add_argument(
        "--interleaved-rounds",
        type=int,
        default=0,
        metavar="N",
        help="also time single-window forward passes of torch, Paddle dygraph and"
        " the two Paddle Inference CPU backends in N alternating rounds (the"
        " fair speed comparison on a shared machine; default 0: skip)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON spec of one measurement
    args = parser.parse_args(argv)
    if args.child:
        _common.print_result(child(**json.loads(args.child)))
        return 0

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))  # this process too
    records: List[Dict[str, Any]] = []
    command = "python benchmarks/predict_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    interleaved = None
    with tempfile.TemporaryDirectory(prefix="predict_bench_") as folder:
        export_dir = None
        if args.interleaved_rounds or any(
            run["framework"] == "paddle" and run["mode"] != "dygraph" for run in args.runs
        ):
            export_dir = os.path.join(folder, "export")
            export_model(args.model, export_dir)
        if args.interleaved_rounds:
            interleaved = interleaved_forwards(args.model, args.window, args.interleaved_rounds, export_dir)
            print(
                f"interleaved single-window forwards ({args.window}px, median of"
                f" {args.interleaved_rounds}): {interleaved['median_seconds']}",
                file=sys.stderr,
                flush=True,
            )
        for height, width in args.sizes:
            scene = os.path.join(folder, f"scene_{height}x{width}.tif")
            started = time.perf_counter()
            write_scene(scene, height, width)
            print(
                f"scene {height}x{width}: written by windows in {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
            for run in args.runs:
                if run["only"] is not None and (height, width) not in run["only"]:
                    continue
                run = {key: value for key, value in run.items() if key != "only"}
                spec = {
                    "run": run,
                    "scene": scene,
                    "out": os.path.join(folder, "out.tif"),
                    "model": args.model,
                    "window": args.window,
                    "stride": args.stride,
                    "export_dir": export_dir,
                }
                try:
                    record = _common.run_child(os.path.abspath(__file__), ["--child", json.dumps(spec)], env=env)
                except _common.ChildError as error:
                    print(f"predict_bench.py: error: {error}", file=sys.stderr)
                    return 1
                records.append(record)
                print(
                    f"{record['framework']}:{record['mode']}:{record['device']} {record['size']}:"
                    f" {record['windows']} windows, {record['predict_seconds']}s"
                    f" ({record['seconds_per_window']} s/window, {record['megapixels_per_second']} Mpx/s),"
                    f" peak RSS {record['peak_rss_mb']} MB ({record['prediction_adds_mb']} MB added by"
                    f" prediction)",
                    file=sys.stderr,
                    flush=True,
                )
            os.remove(scene)
    document = {
        "command": command,
        "machine": machine(),
        "threads": args.threads,
        "note": "CPU timings on a shared 2-core machine; the load average is recorded. GPU runs"
        " need --runs torch:dygraph:cuda (and paddle:dygraph:gpu) on a GPU machine.",
        "forward_interleaved": interleaved,
        "runs": records,
    }
    from common.atomic import write_bytes_atomic

    write_bytes_atomic(args.out, json.dumps(document, indent=1).encode("utf-8"))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the time of an official-protocol evaluation goes (torch_ref engine, CPU, bf16 by default).

Usage::

    python benchmarks/eval_profile.py [--size 4000] [--threads 2] [--amp bf16|none]
        [--batch-sizes 1 2] [--out benchmarks/results/eval_profile.json]

One synthetic scene (``isaid.synth.make_scene``, seed 7) is written as PNG image + index mask
and evaluated as ``python -m torch_ref.evaluate`` does (``app.evaluation``: decode, sliding
windows 896 / 512, probabilities averaged, argmax, confusion matrix), with each part timed:

- ``png_decode``: reading the image and the mask (``app.val_scenes.load_scene``);
- ``prepare``: windows to normalised, padded, channels-last tensors (``engine.prepare``);
- ``engine``: the model's forward pass, probabilities cast to float32 (``engine.forward``);
- ``stitching``: the rest of the band loop: slicing the windows out of the image, adding
  the probabilities into the band accumulator, dividing by the coverage counts;
- ``argmax`` and ``confusion``: per band.

Each ``--batch-sizes`` value (windows per forward pass) is run before and after the fix this
profile led to (bf16: the convolution weights stored in bf16 once instead of cast by autocast
on every forward, ``torch_ref.sliding_window.precast_convolutions``); the runs alternate in one
process, ``--repeats`` times each, so that load changes on a shared machine hit them alike; the JSON keeps
every repeat, the CPU flags and the load. Random weights (seed 0): the time does not depend on
the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from align.env import read_cpu  # noqa: E402
from app.val_scenes import Scene, load_scene  # noqa: E402
from common.atomic import write_bytes_atomic  # noqa: E402
from isaid.palette import NUM_CLASSES  # noqa: E402
from isaid.synth import make_scene  # noqa: E402
from torch_ref import build_model  # noqa: E402
from torch_ref.metrics import confusion_matrix  # noqa: E402
from torch_ref.sliding_window import SlidingWindowInference  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "eval_profile.json")
PARTS = ("png_decode", "prepare", "engine", "stitching", "argmax", "confusion")


def profile_once(engine: SlidingWindowInference, scene: Scene) -> Dict[str, float]:
    """One timed evaluation of ``scene``; seconds per part and in total."""
    times: Dict[str, float] = defaultdict(float)
    original_prepare, original_forward = engine.prepare, engine.forward

    def timed(name, function):
        def wrapper(*args):
            start = time.perf_counter()
            result = function(*args)
            times[name] += time.perf_counter() - start
            return result

        return wrapper

    engine.prepare, engine.forward = timed("prepare", original_prepare), timed("engine", original_forward)
    try:
        began = start = time.perf_counter()
        loaded = load_scene(scene)
        times["png_decode"] = time.perf_counter() - start
        image, label = loaded.image, loaded.label
        height, width = label.shape
        confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
        bands = engine.run_probabilities(height, width, lambda y0, x0, y1, x1: image[y0:y1, x0:x1], progress=False)
        band_time = 0.0
        while True:
            start = time.perf_counter()
            item = next(bands, None)
            band_time += time.perf_counter() - start
            if item is None:
                break
            row_start, row_end, probabilities = item
            start = time.perf_counter()
            classes = probabilities.argmax(dim=0)
            times["argmax"] += time.perf_counter() - start
            start = time.perf_counter()
            confusion += confusion_matrix(classes, engine.to_device(label[row_start:row_end]), NUM_CLASSES)
            times["confusion"] += time.perf_counter() - start
        times["stitching"] = band_time - times["prepare"] - times["engine"]
        times["total"] = time.perf_counter() - began
    finally:
        engine.prepare, engine.forward = original_prepare, original_forward
    return {name: round(value, 3) for name, value in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/eval_profile.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("farseg", "factseg"), default="farseg", help="model (default farseg)")
    parser.add_argument("--size", type=int, default=4000, help="scene side in pixels (default 4000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="precision (default bf16)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="windows per forward (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each batch size (default 2)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="JSON written (default benchmarks/results/eval_profile.json)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    rgb, index = make_scene(np.random.default_rng(7), args.size, args.size)
    folder = tempfile.mkdtemp(prefix="eval_profile.")
    Image.fromarray(rgb).save(os.path.join(folder, "S.png"))
    Image.fromarray(index).save(os.path.join(folder, "S_mask.png"))
    scene = Scene("S", os.path.join(folder, "S.png"), os.path.join(folder, "S_mask.png"), args.size, args.size)
    torch.manual_seed(0)
    model = build_model(args.model)
    amp = None if args.amp == "none" else args.amp
    # Before / after the fix: bf16 weights cast by autocast on every forward, or once.
    engines = {
        f"batch {b}, {'weights cast once (after)' if precast else 'weights cast per forward (before)'}": (
            SlidingWindowInference(model, 896, 512, "cpu", b, amp, precast=precast)
        )
        for b in args.batch_sizes
        for precast in ((False, True) if amp else (False,))
    }
    for engine in engines.values():
        engine.predict_array(rgb[:896, :1408])  # warm-up: oneDNN primitives for both window shapes
    runs: Dict[str, Any] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            runs[name].append(profile_once(engine, scene))
    document = {
        "benchmark": "official-protocol evaluation profile (torch_ref engine, CPU)",
        "command": "python benchmarks/eval_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scene": {"size": args.size, "generator": "isaid.synth.make_scene", "seed": 7},
        "model": args.model,
        "amp": args.amp,
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu": read_cpu(),
            "load_average_1min_at_start": load_at_start,
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "runs": runs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    for batch, repeats in runs.items():
        for times in repeats:
            shares = ", ".join(f"{p} {times[p]:.2f}s ({100 * times[p] / times['total']:.0f}%)" for p in PARTS)
            print(f"{batch}: total {times['total']:.2f}s: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

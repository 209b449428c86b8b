"""What bf16 costs: pixels whose class changes against float32, and the mIoU difference.

Usage::

    python benchmarks/bf16_cost.py [--trained RUN/model_final.pth] [--scenes 2] [--size 1024]
                                   [--threads 2] [--out benchmarks/results/bf16_cost.json]

Synthetic scenes (``isaid.synth.make_scene``, seeds 100..99+N, with their labels) are predicted
with the official protocol (windows 896 / stride 512, probabilities averaged, argmax) by
torch_ref's engine in five ways: float32 NCHW (the official layout), float32 channels-last
(the CPU default: same arithmetic, other summation order, so its changes are float32's own
noise floor) and bf16 autocast channels-last (``--amp bf16``) with BatchNorm unfolded, folded
as torch's ``fuse_conv_bn_eval`` does (float32 arithmetic) and folded exactly (float64, rounded
once; ``torch_ref.sliding_window.fold_conv_bn``). Reported per model: the share of pixels whose class
differs from float32 NCHW, the mIoU (16 classes, against the scenes' labels) of each, and the
seconds (variants alternate scene by scene, after a warm-up) with the speed-up over the faster
float32 variant. Models: random weights (torch's default initialisation, seed 0) and, with
``--trained``, a briefly trained checkpoint (the JSON records the file and its hash). The one in
``benchmarks/results/bf16_cost.json`` came from (200 iterations from random initialisation)::

    python -m isaid.synth W/src --train 6 --val 2 --size 1024 --seed 0 --no-zip
    python -m isaid.prepare W/src W/data --window 128 --stride 96 --no-progress
    python -m torch_ref.train --config configs/farseg_isaid.yaml --set init.imagenet=none \
        train.iterations=200 train.batch_size=4 data.root=W/data data.window=128 train.out_dir=W/run \
        train.amp=none train.device=cpu train.num_workers=0 train.log_backend=none
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = _common.ROOT

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.atomic import write_bytes_atomic  # noqa: E402
from common.digest import sha256_file  # noqa: E402
from isaid.metrics import confusion_from_labels, miou  # noqa: E402
from isaid.synth import make_scene  # noqa: E402
from torch_ref import build_model  # noqa: E402
from torch_ref.sliding_window import SlidingWindowInference, load_weights  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "bf16_cost.json")
# (label, amp, channels_last, BatchNorm folding): float32 NCHW is the official reference.
VARIANTS = (
    ("float32 NCHW", None, False, "none"),
    ("float32 channels_last", None, True, "none"),
    ("bf16 channels_last unfolded", "bf16", True, "none"),
    ("bf16 channels_last folded float32", "bf16", True, "float32"),
    ("bf16 channels_last folded exact", "bf16", True, "exact"),
)


def measure(model_name: str, weights: Optional[str], scenes: Sequence[Any], window: int, stride: int) -> Dict[str, Any]:
    """Predict every scene in every variant; changed-pixel shares against float32 NCHW, mIoU."""
    torch.manual_seed(0)
    model = build_model(model_name)
    how = "random (torch default initialisation, seed 0)"
    if weights:
        how = load_weights(model, model_name, weights)
    maps: Dict[str, List[np.ndarray]] = {label: [] for label, _, _, _ in VARIANTS}
    seconds: Dict[str, float] = {label: 0.0 for label, _, _, _ in VARIANTS}
    engines = {
        label: SlidingWindowInference(copy.deepcopy(model), window, stride, "cpu", 1, amp, channels_last, fold)
        for label, amp, channels_last, fold in VARIANTS
    }
    for image, _ in scenes:  # variants alternate scene by scene: a load change hits them all alike
        for label, engine in engines.items():
            engine.predict_array(image[:64, :64])  # warm-up (oneDNN primitive creation)
            start = time.perf_counter()
            maps[label].append(engine.predict_array(image))
            seconds[label] += time.perf_counter() - start
    reference = maps[VARIANTS[0][0]]
    total = sum(m.size for m in reference)
    result: Dict[str, Any] = {
        "model": model_name,
        "weights": how,
        "weights_sha256": sha256_file(weights) if weights else None,
        "variants": {},
    }
    fastest_float32 = min(seconds[label] for label, amp, _, _ in VARIANTS if amp is None)
    for label, _, _, _ in VARIANTS:
        changed = sum(int((a != b).sum()) for a, b in zip(maps[label], reference))
        confusion = sum(confusion_from_labels(m, truth) for m, (_, truth) in zip(maps[label], scenes))
        result["variants"][label] = {
            "pixels_changed_vs_float32_nchw": changed,
            "share_changed": changed / total,
            "miou_percent": round(100 * float(miou(confusion)["miou"]), 4),
            "seconds": round(seconds[label], 2),
            "speedup_vs_fastest_float32": round(fastest_float32 / seconds[label], 3),
        }
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/bf16_cost.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("farseg", "factseg"), default="farseg", help="model (default farseg)")
    parser.add_argument("--trained", metavar="CKPT", help="a briefly trained checkpoint to measure too")
    parser.add_argument("--scenes", type=int, default=2, help="synthetic scenes (default 2)")
    parser.add_argument("--size", type=int, default=1024, help="scene side (default 1024)")
    parser.add_argument("--window", type=int, default=896, help="window (default 896)")
    parser.add_argument("--stride", type=int, default=512, help="stride (default 512)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON written (default benchmarks/results/bf16_cost.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(100, 100 + args.scenes))  # not the seeds isaid.synth trains on by default
    scenes = [make_scene(np.random.default_rng(seed), args.size, args.size) for seed in seeds]
    results = [measure(args.model, None, scenes, args.window, args.stride)]
    if args.trained:
        results.append(measure(args.model, args.trained, scenes, args.window, args.stride))
    document = {
        "benchmark": "bf16 cost: class changes and mIoU vs float32 (torch_ref engine, CPU)",
        "command": "python benchmarks/bf16_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "scenes": {"count": args.scenes, "size": args.size, "generator": "isaid.synth.make_scene", "seeds": seeds},
        "protocol": {"window": args.window, "stride": args.stride},
        "machine": {
            **_common.machine_record(),  # CPU model, bf16/AVX-512/AMX flags, load
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    for result in results:
        for label, values in result["variants"].items():
            print(
                f"{result['model']} {result['weights'][:40]:40s} {label:34s} changed"
                f" {100 * values['share_changed']:.4f}%  mIoU {values['miou_percent']:.2f}  {values['seconds']} s"
                f" (x{values['speedup_vs_fastest_float32']} vs float32)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

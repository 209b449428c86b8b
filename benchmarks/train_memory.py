"""Memory of one training step per input pixel: the measurement under ``app.train_loop.ACTIVATION_BYTES_PER_PIXEL``.

Usage::

    python benchmarks/train_memory.py [--out benchmarks/results/train_memory.json]

Each (framework, window, batch) runs in a fresh child process: FarSeg float32 on the CPU, one
thread, the trainer's own ``build_training`` + ``TrainStep``, one step on random data; the
child reports its peak RSS (``ru_maxrss``). The growth of the peak between two sizes divided
by the pixels added is what one more pixel of batch costs; the trainers refuse a batch before
its first step when ``batch x window^2 x ACTIVATION_BYTES_PER_PIXEL`` exceeds the memory
available, so that constant must stay BELOW every slope measured here (a lower bound: a
refused batch surely does not fit). The script exits 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "train_memory.json")
SIZES = ((256, 2), (256, 4), (512, 2))  # (window, batch)


def child(framework: str, window: int, batch: int) -> None:
    """One step in this process; prints {"peak_rss": bytes}."""
    import numpy as np

    from app.config import load_config

    config = load_config(
        os.path.join(ROOT, "configs", "farseg_isaid.yaml"), ["init.imagenet=none", "train.amp=none", "train.device=cpu"]
    )
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 3, window, window), dtype=np.float32)
    labels = rng.integers(0, 16, (batch, window, window))
    if framework == "torch":
        import torch

        from torch_ref import train as trainer

        torch.set_num_threads(1)
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    else:
        import paddle

        from paddle_impl import train as trainer

        images, labels = paddle.to_tensor(images), paddle.to_tensor(labels)
    runtime = trainer.setup_runtime(config)
    step = trainer.TrainStep(*trainer.build_training(config, runtime, None), config["train"], runtime.device)
    step(images, labels)
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def peak(framework: str, window: int, batch: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, __file__, "--child", framework, str(window), str(batch)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=1200,
    )
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="result JSON (default benchmarks/results/train_memory.json)")
    parser.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "WINDOW", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0
    from align.env import read_cpu
    from app.train_loop import ACTIVATION_BYTES_PER_PIXEL
    from common.atomic import write_bytes_atomic

    rows: List[Dict[str, Any]] = []
    slopes: List[float] = []
    for framework in ("torch", "paddle"):
        peaks = {size: peak(framework, *size) for size in SIZES}
        for (w0, b0), (w1, b1) in ((SIZES[0], SIZES[1]), (SIZES[1], SIZES[2]), (SIZES[0], SIZES[2])):
            added = b1 * w1 * w1 - b0 * w0 * w0
            slope = (peaks[(w1, b1)] - peaks[(w0, b0)]) / added
            slopes.append(slope)
            rows.append({"framework": framework, "from": [w0, b0], "to": [w1, b1], "bytes_per_pixel": round(slope)})
        rows.append({"framework": framework, "peak_rss": {f"{w}x{w} x{b}": peaks[(w, b)] for w, b in SIZES}})
    document = {
        "what": "peak RSS growth of one FarSeg float32 CPU training step per pixel added to the batch",
        "command": "python benchmarks/train_memory.py",
        "activation_bytes_per_pixel": ACTIVATION_BYTES_PER_PIXEL,
        "lowest_slope": round(min(slopes)),
        "holds": ACTIVATION_BYTES_PER_PIXEL <= min(slopes),
        "rows": rows,
        "cpu": read_cpu(),
        "load": os.getloadavg(),
    }
    write_bytes_atomic(args.out, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    print(json.dumps({k: document[k] for k in ("activation_bytes_per_pixel", "lowest_slope", "holds")}))
    return 0 if document["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())

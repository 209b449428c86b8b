"""Training-step speed and memory of FarSeg / FactSeg in torch and Paddle.

Usage::

    python benchmarks/train_bench.py                      # CPU: both frameworks, 128x128, batch 2
    python benchmarks/train_bench.py --device cuda        # GPU: torch, 896x896, batch 8,
                                                          # bf16 + channels_last, and fp32
    python benchmarks/train_bench.py --device cuda --framework torch paddle --amp bf16 fp16 none

Each configuration runs in a fresh process (clean peak memory; one failure does not stop the
others) through the trainers' own code: ``build_training`` + ``TrainStep`` of
``torch_ref.train`` / ``paddle_impl.train`` (forward with loss, backward, clipping by global
norm, SGD step, poly lr step) on a synthetic uint8 batch normalised on the device by
``to_device``, i.e. exactly the loop body of a training run minus PNG decoding. After
``--warmup`` untimed steps (cuDNN autotuning, allocator warm-up), ``--iters`` steps are timed
between two device synchronisations. ``--data ROOT`` additionally measures the DataLoader
alone (PNG decoding + augmentation, ``--workers`` processes), to check that it outruns the
GPU. Peak memory: ``torch.cuda.max_memory_allocated`` /
``paddle.device.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU.

Results are merged into ``benchmarks/results/train_bench.json`` (``--out``): an entry with the
same configuration is replaced, others are kept, so CPU and GPU runs accumulate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import _common  # the project root on sys.path (run as python benchmarks/<name>.py)

ROOT = _common.ROOT

DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results", "train_bench.json")
# Fields that identify a configuration (an entry with the same values is replaced).
KEY_FIELDS = (
    "kind",
    "framework",
    "model",
    "device",
    "size",
    "batch",
    "amp",
    "channels_last",
    "compile",
    "workers",
    "threads",
)


# ------------------------------------------------------------------------------ workers


def _config(spec: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    from app.config import load_config

    sets = [
        f"model.name={spec['model']}",
        "init.imagenet=none",
        f"train.amp={spec['amp']}",
        f"train.channels_last={str(spec['channels_last']).lower()}",
        f"train.compile={str(spec['compile']).lower()}",
        f"train.device={spec['device']}",
        f"train.batch_size={spec['batch']}",
        f"data.window={spec['size']}",
    ]
    return load_config(os.path.join(ROOT, "configs", f"{spec['model']}_isaid.yaml"), sets)


def step_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time ``spec['iters']`` training steps of one configuration in this process."""
    import numpy as np

    framework = spec["framework"]
    config = _config(spec)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (spec["batch"], spec["size"], spec["size"], 3), dtype=np.uint8)
    labels = rng.integers(0, 16, (spec["batch"], spec["size"], spec["size"]), dtype=np.uint8)
    labels[:, : spec["size"] // 8] = 255  # some ignored pixels, as padding gives
    if framework == "torch":
        import torch

        from torch_ref import train as trainer
        from torch_ref.data import to_device

        runtime = trainer.setup_runtime(config)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        torch.manual_seed(0)
        batch = [torch.from_numpy(images), torch.from_numpy(labels)]
        if runtime.on_gpu:
            batch = [t.pin_memory() for t in batch]

        def synchronize() -> None:
            if runtime.on_gpu:
                torch.cuda.synchronize()

        def prepare():
            return to_device(batch, runtime.device, config["train"]["channels_last"])

        def peak_gpu() -> float:
            return torch.cuda.max_memory_allocated() / 2**20

        versions = {"torch": torch.__version__}
        cpu_threads = torch.get_num_threads()
    else:
        import paddle

        from paddle_impl import train as trainer
        from paddle_impl.data import to_device

        runtime = trainer.setup_runtime(config)
        paddle.seed(0)
        batch = [paddle.to_tensor(images, place=paddle.CPUPlace()), paddle.to_tensor(labels, place=paddle.CPUPlace())]

        def synchronize() -> None:
            if runtime.on_gpu:
                paddle.device.synchronize()

        def prepare():
            return to_device(batch, runtime.device)

        def peak_gpu() -> float:
            return paddle.device.cuda.max_memory_allocated() / 2**20

        versions = {"paddle": paddle.__version__}
        cpu_threads = paddle.get_flags(["FLAGS_paddle_num_threads"])["FLAGS_paddle_num_threads"]
    net, model, optimizer, scheduler, scaler = trainer.build_training(config, runtime, None)
    step = trainer.TrainStep(model, net, optimizer, scheduler, scaler, config["train"], runtime.device)
    losses: List[float] = []
    for _ in range(spec["warmup"]):
        losses.append(float(step(*prepare()).loss.item()))
    synchronize()
    start = time.perf_counter()
    last = None
    for _ in range(spec["iters"]):
        last = step(*prepare()).loss
    synchronize()
    seconds = time.perf_counter() - start
    losses.append(float(last.item()))
    result = {
        "ms_per_iter": 1000.0 * seconds / spec["iters"],
        "images_per_s": spec["batch"] * spec["iters"] / seconds,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "finite": bool(np.isfinite(losses).all()),
        "cpu_threads": cpu_threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": versions,
    }
    if runtime.on_gpu:
        result.update(peak_memory_mb=peak_gpu(), peak_memory_kind="device max_memory_allocated")
    else:
        result.update(
            peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            peak_memory_kind="process peak RSS",
        )
    return result


def loader_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Images per second of the torch DataLoader alone over prepared patches."""
    from isaid.augment import SamplePlan, load_patch_index
    from torch_ref.data import build_loader

    patches = load_patch_index(spec["data"], "train", spec["size"])
    plan = SamplePlan(len(patches), spec["batch"], seed=2333)
    iterations = spec["warmup"] + spec["iters"]
    loader = build_loader(patches, plan, spec["size"], 0, iterations, spec["workers"], pin_memory=False)
    iterator = iter(loader)
    for _ in range(spec["warmup"]):
        next(iterator)
    start = time.perf_counter()
    for _ in range(spec["iters"]):
        next(iterator)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": spec["batch"] * spec["iters"] / seconds,
        "ms_per_iter": 1000.0 * seconds / spec["iters"],
        "patches": len(patches),
    }


# ------------------------------------------------------------------------------ driver


def machine_info() -> Dict[str, Any]:
    """The machine record (CPU, ISA flags, load: ``_common.machine_record``) and the GPUs."""
    info: Dict[str, Any] = _common.machine_record()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if out.returncode == 0 and out.stdout.strip():
            info["gpus"] = [line.strip() for line in out.stdout.strip().splitlines()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def run_in_subprocess(spec: Dict[str, Any], timeout: int) -> Dict[str, Any]:
    # Both frameworks' CPU kernels use OpenMP; torch also gets set_num_threads in the worker.
    env = {"OMP_NUM_THREADS": str(spec["threads"])} if spec.get("threads") else {}
    try:
        return _common.run_child(os.path.abspath(__file__), ["--worker", json.dumps(spec)], timeout, env)
    except _common.ChildError as error:
        return {"error": str(error)[:300]}


def merge_results(path: str, entries: List[Dict[str, Any]], header: Dict[str, Any]) -> Dict[str, Any]:
    """Replace entries of the same configuration in ``path``; keep the others."""
    document: Dict[str, Any] = {"results": []}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except (OSError, ValueError):
            document = {"results": []}
    keys = {tuple(e.get(f) for f in KEY_FIELDS) for e in entries}
    kept = [e for e in document.get("results", []) if tuple(e.get(f) for f in KEY_FIELDS) not in keys]
    document["results"] = kept + entries
    document["last_run"] = header
    from isaid.imageio import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
    return document


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/train_bench.py",
        description="Time training steps (images/s, ms per iteration, peak memory) of the"
        " torch and Paddle trainers; results merged into benchmarks/results/"
        "train_bench.json.",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default) or cuda; cuda changes the defaults of --size,"
        " --batch, --framework and --amp to the full-size GPU setting",
    )
    parser.add_argument(
        "--framework",
        nargs="+",
        choices=("torch", "paddle"),
        default=None,
        help="frameworks to time (default: both on cpu, torch on cuda)",
    )
    parser.add_argument(
        "--model", nargs="+", choices=("farseg", "factseg"), default=["farseg"], help="models to time (default farseg)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="square input side, a multiple of 32 (default 128 cpu, 896 cuda)"
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 2 cpu, 8 cuda)")
    parser.add_argument(
        "--amp",
        nargs="+",
        choices=("none", "fp16", "bf16"),
        default=None,
        help="precisions (default none on cpu; bf16 and none on cuda)",
    )
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch memory format: auto = channels_last with amp on cuda, contiguous otherwise",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd variants (torch only)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 cpu, 10 cuda)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 3 cpu, 30 cuda)")
    parser.add_argument(
        "--data",
        metavar="ROOT",
        default=None,
        help="also time the DataLoader alone over ROOT (isaid.prepare output cut with window --size)",
    )
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers for --data (default 8)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (OMP_NUM_THREADS, torch.set_num_threads);"
        " default: each framework's own (torch: all cores; Paddle:"
        " FLAGS_paddle_num_threads, 1)",
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per configuration (default 1800)")
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="results JSON (merged; default benchmarks/results/train_bench.json)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        _common.print_result(loader_worker(spec) if spec["kind"] == "loader" else step_worker(spec))
        return 0
    gpu = args.device == "cuda"
    frameworks = args.framework or (["torch"] if gpu else ["torch", "paddle"])
    size = args.size or (896 if gpu else 128)
    batch = args.batch or (8 if gpu else 2)
    amps = args.amp or (["bf16", "none"] if gpu else ["none"])
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    iters = args.iters or (30 if gpu else 3)
    if size % 32:
        print(f"error: --size {size}: must be a multiple of 32", file=sys.stderr)
        return 2
    specs: List[Dict[str, Any]] = []
    for framework in frameworks:
        for model in args.model:
            for amp in amps:
                if framework == "paddle" and amp != "none" and not gpu:
                    continue  # Paddle has no CPU mixed precision (auto_cast is a no-op there)
                channels_last = framework == "torch" and (
                    args.channels_last == "on" or (args.channels_last == "auto" and gpu and amp != "none")
                )
                for compiled in [False, True] if args.compile and framework == "torch" else [False]:
                    specs.append(
                        dict(
                            kind="step",
                            framework=framework,
                            model=model,
                            device=args.device,
                            size=size,
                            batch=batch,
                            amp=amp,
                            channels_last=channels_last,
                            compile=compiled,
                            warmup=warmup,
                            iters=iters,
                            workers=None,
                            threads=args.threads,
                        )
                    )
    if args.data:
        specs.append(
            dict(
                kind="loader",
                framework="torch",
                model=None,
                device="cpu",
                size=size,
                batch=batch,
                amp=None,
                channels_last=None,
                compile=None,
                warmup=2,
                iters=max(iters, 10),
                workers=args.workers,
                data=args.data,
                threads=None,
            )
        )
    command = "python benchmarks/train_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = {
        "command": command.strip(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    entries = []
    for spec in specs:
        label = " ".join(f"{k}={spec[k]}" for k in KEY_FIELDS if spec.get(k) is not None)
        print(f"running {label} ...", flush=True)
        result = run_in_subprocess(spec, args.timeout)
        entry = {k: v for k, v in spec.items() if k != "data"}
        entry.update(
            result,
            command=header["command"],
            date=header["date"],
            load_average_1min=header["machine"]["load_average_1_5_15min"][0],
        )
        entries.append(entry)
        if "error" in result:
            print(f"  failed: {result['error']}", flush=True)
        else:
            memory = f", peak {result['peak_memory_mb']:.0f} MiB" if "peak_memory_mb" in result else ""
            print(f"  {result['images_per_s']:.2f} images/s, {result['ms_per_iter']:.1f} ms/iter{memory}", flush=True)
    merge_results(args.out, entries, header)
    print(f"wrote {os.path.relpath(args.out)}")
    return 1 if any("error" in e for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())

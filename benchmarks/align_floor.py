"""The float32 (and float64) floor of a torch/Paddle comparison on models other than FarSeg.

What rounding alone does, per layer, on correct ports (``tests/align_pairs``: a small ResNet, an
MLP with Paddle and compat Linear layers, a CNN that reuses a block, an encoder-decoder with
bilinear upsampling, ResNet-18-like at 64x64), so that ``align``'s default thresholds for user
models have a measured margin. Reference: torch in float64. Measured against it:

- ``torch_float32``: the same torch model in float32 (what float32 does to ONE framework);
- ``paddle_float32``: the Paddle port in float32 (what a float32 comparison will see);
- ``paddle_float64``: the Paddle port in float64 (the float64 floor: framework differences).

Per comparison: the worst relative error over every layer output (``max|a - b| / max|a|``, the
align stage's measure, call by call in execution order) in eval and in training mode, the model
output, the loss, every gradient (with align's gradient floor: a fraction of the largest
gradient), every parameter after one optimiser step, the BatchNorm running means after it, and
the loss, gradients and parameters of steps 2 and 3 (each pair's own optimiser and schedule).
The weights are copied from torch by name (the pairs here share names; a Linear weight is
transposed when Paddle's parameter has the transposed shape), BN statistics renamed.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/align_floor.py [--out benchmarks/results/align_floor.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAIRS_DIR = ROOT / "tests" / "align_pairs"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "align_floor.json"
GRAD_FLOOR_FRACTION = {"float64": 1e-6, "float32": 1e-3}  # align.compare's, kept equal by hand
DRIFT_STEPS = 3  # steps of the backward comparison measured (the first one in detail)

# (label, file, torch factory, paddle factory, inputs, targets)
CASES: List[Tuple[str, str, str, str, Tuple[int, ...], Tuple[Tuple[int, ...], int]]] = [
    ("resnet_small", "resnet_pair.py", "torch_model", "paddle_model", (2, 3, 16, 16), ((2,), 10)),
    ("mlp_linear", "mlp_pair.py", "torch_model", "paddle_model", (4, 12), ((4,), 5)),
    ("mlp_compat_linear", "mlp_pair.py", "torch_model", "paddle_model_compat", (4, 12), ((4,), 5)),
    ("reuse", "reuse_pair.py", "torch_model", "paddle_model", (2, 3, 12, 12), ((2,), 4)),
    ("encdec", "encdec_pair.py", "torch_model", "paddle_model", (2, 3, 16, 16), ((2, 16, 16), 16)),
    ("resnet18_half_64px", "resnet_zoo.py", "torch_resnet18", "paddle_resnet18", (2, 3, 64, 64), ((2,), 10)),
]


def load_module(file_name: str) -> Any:
    """Import a pair file by path (as a file SPEC would)."""
    path = PAIRS_DIR / file_name
    spec = importlib.util.spec_from_file_location(f"align_pairs_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative(reference: np.ndarray, other: np.ndarray, floor: float = 0.0) -> float:
    """align's relative error: max|a - b| / max(max|a|, floor)."""
    if reference.shape != other.shape:
        return float("inf")
    diff = float(np.max(np.abs(reference - other))) if reference.size else 0.0
    if diff == 0.0:
        return 0.0
    return diff / max(float(np.max(np.abs(reference))), floor, 1e-300)


def copy_weights(torch_model: Any, paddle_model: Any) -> None:
    """Torch weights into the same-named Paddle model (benchmark-only helper, strict)."""
    import paddle

    state = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("running_mean", "_mean").replace("running_var", "_variance")
        renamed[key] = value
    target = paddle_model.state_dict()
    if set(target) != set(renamed):
        raise SystemExit(f"error: names differ: {sorted(set(target) ^ set(renamed))[:6]}")
    for key, tensor in target.items():
        value = renamed[key]
        if list(tensor.shape) != list(value.shape) and value.ndim == 2:
            value = value.T  # paddle.nn.Linear keeps [in, out]
        tensor.set_value(paddle.to_tensor(np.ascontiguousarray(value).astype(str(tensor.numpy().dtype))))


def record_layers(model: Any, framework: str) -> Tuple[List[Tuple[str, Any]], Callable[[], None]]:
    """Hook every sub-module; returns the (name#call, output array) list and a remover."""
    records: List[Tuple[str, Any]] = []
    counts: Dict[str, int] = {}
    handles = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            if hasattr(output, "detach") or hasattr(output, "numpy"):
                value = output.detach().cpu().numpy() if framework == "torch" else output.numpy()
                records.append((f"{name}#{counts[name]}", value.astype(np.float64)))

        return hook

    if framework == "torch":
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook_for(name)))
    else:
        for name, layer in model.named_sublayers():
            handles.append(layer.register_forward_post_hook(hook_for(name)))
    return records, lambda: [h.remove() for h in handles]


def run_side(module: Any, case: Tuple, framework: str, dtype: str, x64: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    """Eval forward, train forward, loss, gradients, one optimiser step of one side."""
    import paddle
    import torch

    _, _, torch_factory, paddle_factory, _, _ = case
    torch_ref = getattr(module, torch_factory)()
    if framework == "torch":
        model = torch_ref if dtype == "float32" else torch_ref.double()
        model = model.float() if dtype == "float32" else model
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        loss_fn, opt_fn = module.torch_loss, module.torch_optimizer
    else:
        model = getattr(module, paddle_factory)()
        copy_weights(torch_ref.double(), model)
        model.to(dtype=dtype)
        to_tensor = paddle.to_tensor
        loss_fn, opt_fn = module.paddle_loss, module.paddle_optimizer
    x = to_tensor(x64.astype(dtype))
    out: Dict[str, Any] = {}
    for mode in ("eval", "train"):
        model.train() if mode == "train" else model.eval()
        records, remove = record_layers(model, framework)
        if framework == "torch":
            with torch.no_grad():
                model(x)
        else:
            with paddle.no_grad():
                model(x)
        remove()
        out[mode] = dict(records)
    # Training-mode forward above moved BN statistics: rebuild for the step.
    if framework == "torch":
        model = getattr(module, torch_factory)()
        model = model.float() if dtype == "float32" else model.double()
    else:
        model = getattr(module, paddle_factory)()
        copy_weights(getattr(module, torch_factory)().double(), model)
        model.to(dtype=dtype)
    model.train()
    optimizer = opt_fn(model)
    output = model(x)
    loss = loss_fn(output, to_tensor(y))
    loss.backward()
    if framework == "torch":
        # .copy(): a float64 tensor's numpy() shares its memory, and later steps update it in place
        grads = {n: p.grad.detach().double().numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        params = {n: p.detach().double().numpy().copy() for n, p in model.named_parameters()}
        means = {n: b.detach().double().numpy().copy() for n, b in model.named_buffers() if n.endswith("running_mean")}
    else:
        grads = {n: p.grad.numpy().astype(np.float64) for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        params = {n: p.numpy().astype(np.float64) for n, p in model.named_parameters()}
        # Paddle's BN statistics are non-trainable parameters, not buffers.
        state = model.state_dict()
        means = {
            n[: -len("_mean")] + "running_mean": t.numpy().astype(np.float64)
            for n, t in state.items()
            if n.endswith("._mean")
        }

    def torch_layout(values: Dict[str, np.ndarray], ref: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {n: (v.T if n in ref and v.ndim == 2 and v.shape != ref[n].shape else v) for n, v in values.items()}

    # Steps 2..DRIFT_STEPS: the same cycle (clear, forward, loss, backward, step); what the later
    # steps of a backward comparison see (drift: differences carried over from earlier steps).
    out["drift"] = []
    for _ in range(2, DRIFT_STEPS + 1):
        optimizer.clear_grad() if framework == "paddle" else optimizer.zero_grad()
        step_loss = loss_fn(model(x), to_tensor(y))
        step_loss.backward()
        if framework == "torch":
            step_grads = {n: q.grad.detach().double().numpy().copy() for n, q in model.named_parameters()}
            optimizer.step()
            step_params = {n: q.detach().double().numpy().copy() for n, q in model.named_parameters()}
        else:
            step_grads = {
                n: q.grad.numpy().astype(np.float64) for n, q in model.named_parameters() if q.grad is not None
            }
            optimizer.step()
            step_params = {n: q.numpy().astype(np.float64) for n, q in model.named_parameters()}
        out["drift"].append({"loss": float(step_loss.item()), "grads": step_grads, "params": step_params})

    out["output"] = output.detach().double().numpy() if framework == "torch" else output.numpy().astype(np.float64)
    out["loss"] = float(loss.item())
    out["grads"], out["params"], out["means"] = grads, params, means
    out["_fix_layout"] = torch_layout
    return out


def compare(ref: Dict[str, Any], other: Dict[str, Any], dtype: str) -> Dict[str, Any]:
    """Worst relative errors of ``other`` against the float64 torch reference."""
    result: Dict[str, Any] = {}
    for mode in ("eval", "train"):
        per_layer = {k: relative(v, other[mode][k]) for k, v in ref[mode].items() if k in other[mode]}
        worst = max(per_layer, key=per_layer.get)
        result[f"layers_{mode}"] = {
            "worst": per_layer[worst],
            "worst_layer": worst,
            "median": float(np.median(list(per_layer.values()))),
            "layers": len(per_layer),
            "unpaired": sorted(set(ref[mode]) ^ set(other[mode])),
        }
    result["output_train"] = relative(ref["output"], other["output"])
    result["loss"] = abs(ref["loss"] - other["loss"]) / abs(ref["loss"])
    fix = other["_fix_layout"]
    grads, params = fix(other["grads"], ref["grads"]), fix(other["params"], ref["params"])
    floor = GRAD_FLOOR_FRACTION[dtype] * max(float(np.max(np.abs(g))) for g in ref["grads"].values())
    for key, values, fl in (("grad", grads, floor), ("param_after_step", params, 0.0)):
        per = {n: relative(v, values[n], fl) for n, v in ref[key.split("_")[0] + "s"].items()}
        worst = max(per, key=per.get)
        result[key] = {"worst": per[worst], "worst_parameter": worst}
    for index, (ref_step, other_step) in enumerate(zip(ref["drift"], other["drift"])):
        step_floor = GRAD_FLOOR_FRACTION[dtype] * max(float(np.max(np.abs(g))) for g in ref_step["grads"].values())
        step_grads, step_params = (
            fix(other_step["grads"], ref_step["grads"]),
            fix(other_step["params"], ref_step["params"]),
        )
        result[f"step{index + 2}"] = {
            "loss": abs(ref_step["loss"] - other_step["loss"]) / abs(ref_step["loss"]),
            "grad": max(relative(v, step_grads[n], step_floor) for n, v in ref_step["grads"].items()),
            "param": max(relative(v, step_params[n]) for n, v in ref_step["params"].items()),
        }
    if ref["means"]:
        per = {n: relative(v, other["means"][n]) for n, v in ref["means"].items()}
        result["bn_running_mean_after_step"] = max(per.values())
    return result


def measure(case: Tuple) -> Dict[str, Any]:
    """All three comparisons of one pair."""
    module = load_module(case[1])
    rng = np.random.default_rng(2333)
    x64 = rng.standard_normal(case[4])
    y = rng.integers(0, case[5][1], case[5][0]).astype(np.int64)
    ref = run_side(module, case, "torch", "float64", x64, y)
    return {
        "torch_float32": compare(ref, run_side(module, case, "torch", "float32", x64, y), "float32"),
        "paddle_float32": compare(ref, run_side(module, case, "paddle", "float32", x64, y), "float32"),
        "paddle_float64": compare(ref, run_side(module, case, "paddle", "float64", x64, y), "float64"),
    }


def summary(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """The worst value of each measure over all pairs, per comparison."""
    table: Dict[str, Dict[str, float]] = {}
    for versus in ("torch_float32", "paddle_float32", "paddle_float64"):
        rows = [r[versus] for r in results.values()]
        table[versus] = {
            "forward_eval_layer": max(r["layers_eval"]["worst"] for r in rows),
            "forward_train_layer": max(r["layers_train"]["worst"] for r in rows),
            "output_train": max(r["output_train"] for r in rows),
            "loss": max(r["loss"] for r in rows),
            "grad": max(r["grad"]["worst"] for r in rows),
            "param_after_step": max(r["param_after_step"]["worst"] for r in rows),
            "bn_running_mean_after_step": max(r.get("bn_running_mean_after_step", 0.0) for r in rows),
        }
        for step in range(2, DRIFT_STEPS + 1):
            for key in ("loss", "grad", "param"):
                table[versus][f"step{step}_{key}"] = max(r[f"step{step}"][key] for r in rows)
    return table


def _command_output(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure every case, write the JSON atomically."""
    parser = argparse.ArgumentParser(prog="python benchmarks/align_floor.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs="+", choices=[c[0] for c in CASES], help="cases to run (default all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = {}
    for case in CASES:
        if args.case and case[0] not in args.case:
            continue
        results[case[0]] = measure(case)
        print(case[0], json.dumps({k: v["layers_eval"]["worst"] for k, v in results[case[0]].items()}), flush=True)
    flags = [line for line in _command_output(["lscpu"]).splitlines() if line.startswith("Flags")]
    document = {
        "command": "python benchmarks/align_floor.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "worst relative error per layer / loss / gradient / parameter of correct torch-Paddle ports, "
        "against torch float64 (tests/align_pairs; inputs seeded 2333)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_flags": flags[:1]},
        "uptime": _command_output(["uptime"]),
        "seconds": round(time.perf_counter() - started, 1),
        "worst_over_pairs": summary(results),
        "pairs": results,
    }
    from common.atomic import write_bytes_atomic

    write_bytes_atomic(args.out, (json.dumps(document, indent=1) + "\n").encode("utf-8"))
    print(json.dumps(document["worst_over_pairs"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

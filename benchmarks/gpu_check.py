"""The one-shot GPU check: correctness on the GPU against the CPU, then the GPU figures.

Usage::

    python benchmarks/gpu_check.py                 # on a GPU machine; < 8 minutes on one H100/H200
    python benchmarks/gpu_check.py --smoke         # everything on the CPU with tiny sizes (< 1 min)
    python benchmarks/gpu_check.py --sections parity,train --frameworks torch --budget 300

No network, nothing installed. Sections, each for torch and for Paddle wherever that
framework sees a GPU (``--smoke``: wherever it imports, on the CPU):

- ``parity``: the model on the GPU against the same weights on the CPU, float64: eval
  probabilities, training loss, every gradient, then ``--steps`` steps of the trainer's own
  ``TrainStep`` (losses and every parameter and buffer afterwards); then the GPU in float32
  (TF32 off) and under bf16 autocast against the float64 CPU reference. Limits in
  :data:`PARITY_LIMITS`; a value above its limit fails the check.
- ``train``: training throughput through ``benchmarks/train_bench.py``'s worker (the trainers'
  ``build_training`` + ``TrainStep``): 896x896, batch 8, bf16, channels_last, torch eager and
  ``torch.compile``, FarSeg and FactSeg; Paddle bf16. Goals: :data:`GOALS`.
- ``eval``: one synthetic 4000x4000 scene with the official protocol through
  ``benchmarks/eval_bench.py``'s worker: float32 batch 1 (the protocol as published) and bf16
  batch 8. Goal: under 2 s.
- ``predict``: a synthetic 8000x8000 GeoTIFF through ``benchmarks/predict_bench.py``'s worker
  (skipped when rasterio does not import).
- ``lite``: the lite chain's framework half on the device, command by command (``python -m``
  train -> predict -> evaluate, Paddle also export -> infer), with predict's classes tied to
  evaluate's confusion matrix, as ``tests/test_lite_chain.py`` does on the CPU.

Each measurement runs in its own process (``--smoke``: in this process, to stay fast) under
what is left of ``--budget`` seconds; sections that no longer fit are skipped and say so.
Writes ``benchmarks/results/gpu_check.json`` (``--smoke``: ``gpu_check_smoke.json``; atomic):
GPU, driver, versions (``align.env``), every figure and verdict; prints a summary. Exit status
0 all ran and passed, 1 a check failed or errored, 2 no GPU (without ``--smoke``) or bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
SECTIONS = ("parity", "train", "eval", "predict", "lite")
FRAMEWORKS = ("torch", "paddle")
MODELS = ("farseg", "factseg")
# images/s at 896x896, batch 8, bf16 on one H100-class GPU (issue 12); seconds for 4000x4000.
GOALS = {"train_images_per_s": {"farseg": 200.0, "factseg": 130.0}, "eval_4000_seconds": 2.0}
# Relative error limits, max|a - b| / max(max|b|, 1e-6), GPU against the CPU reference.
PARITY_LIMITS = {
    "float64": {
        "probabilities": 1e-9,
        "loss": 1e-9,
        "gradients": 1e-7,
        "step_losses": 1e-8,
        "step_grad_norms": 1e-7,
        "step_lrs": 1e-12,
        "parameters_after_steps": 1e-6,
    },
    # float32 (TF32 off) and bf16 autocast on the GPU against the float64 CPU reference: gross
    # errors only. float32 rounding alone moved the training-mode loss by 2e-4 (FarSeg) and 5e-3
    # (FactSeg, whose top-k mining is discontinuous) in torch, 7e-4 / 4e-3 in Paddle, CPU against
    # CPU (--smoke, 32x32); float64 is the precision check.
    "float32": {"probabilities": 1e-3, "loss": 2e-2},
    "bf16": {"probabilities": 0.1, "loss": 0.1},
}
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


# ------------------------------------------------------------------------------ helpers


def rel_error(value: np.ndarray, reference: np.ndarray) -> float:
    """max|value - reference| / max(max|reference|, 1e-6) in float64 (inf for NaN)."""
    value = np.asarray(value, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if value.shape != reference.shape:
        raise ValueError(f"shapes differ: {value.shape} vs {reference.shape}")
    difference = np.abs(value - reference)
    if not np.isfinite(difference).all():
        return float("inf")
    return float(difference.max(initial=0.0) / max(float(np.abs(reference).max(initial=0.0)), 1e-6))


def worst(values: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """The largest :func:`rel_error` over matching entries, and which entry it is."""
    missing = sorted(set(reference) ^ set(values))
    if missing:
        raise ValueError(f"entries differ: {missing[:3]}")
    errors = {key: rel_error(values[key], reference[key]) for key in reference}
    name = max(errors, key=lambda key: errors[key]) if errors else None
    return {"rel": errors[name] if name else 0.0, "worst": name, "count": len(errors)}


def judge(measured: Dict[str, Any], limits: Dict[str, float]) -> List[str]:
    """The names whose relative error exceeds its limit (or is not finite)."""
    failures = []
    for key, limit in limits.items():
        value = measured.get(key)
        rel = value["rel"] if isinstance(value, dict) else value
        if rel is None or not np.isfinite(rel) or rel > limit:
            failures.append(f"{key} rel {rel:.3g} > {limit:g}" if rel is not None else f"{key} missing")
    return failures


def load_script(name: str):
    """A benchmark script of this folder as a module (they are scripts, not a package)."""
    path = os.path.join(ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_gpu_check_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(model: str, sets: Sequence[str]):
    from app.config import load_config as load

    return load(os.path.join(ROOT, "configs", f"{model}_isaid.yaml"), list(sets))


# ------------------------------------------------------------------------------ trainer adapter


def make_train_step(framework: str, config, runtime):
    """(net, step): the model and ONE training iteration exactly as the trainer runs it.

    The only place that knows the trainers' construction API (``build_training`` ->
    ``TrainStep(..., recipe, device)``); ``step(images, labels)`` returns the trainer's
    ``StepResult`` (``loss``, ``lr``, ``grad_norm``: unscaled, before clipping).
    """
    trainer = importlib.import_module("torch_ref.train" if framework == "torch" else "paddle_impl.train")
    net, train_model, optimizer, scheduler, scaler = trainer.build_training(config, runtime, None)
    step = trainer.TrainStep(train_model, net, optimizer, scheduler, scaler, config["train"], runtime.device)
    return net, step


# ------------------------------------------------------------------------------ parity


class _Torch:
    """The framework calls the parity check needs, torch flavour."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.trainer = importlib.import_module("torch_ref.train")
        self.data = importlib.import_module("torch_ref.data")

    def set_dtype(self, dtype: str) -> None:
        self.torch.set_default_dtype(getattr(self.torch, dtype))

    def seed(self) -> None:
        self.torch.manual_seed(0)

    def tf32(self, enabled: bool) -> None:
        self.torch.backends.cudnn.allow_tf32 = enabled
        self.torch.backends.cuda.matmul.allow_tf32 = enabled

    def batch(self, images: np.ndarray, labels: np.ndarray, device, dtype: str):
        x, y = self.data.to_device([self.torch.from_numpy(images), self.torch.from_numpy(labels)], device)
        return x.to(getattr(self.torch, dtype)), y

    def copy_state(self, snapshot: Dict[str, np.ndarray], target) -> None:
        # load_state_dict copies into the target's tensors: device and dtype are the target's.
        target.load_state_dict({k: self.torch.from_numpy(v) for k, v in snapshot.items()})

    def state(self, net) -> Dict[str, np.ndarray]:
        # Copies: on a float64 CPU model .cpu().double() would alias the live tensors.
        return {k: v.detach().cpu().double().numpy().copy() for k, v in net.state_dict().items()}

    def grads(self, net) -> Dict[str, np.ndarray]:
        return {
            k: p.grad.detach().cpu().double().numpy().copy() for k, p in net.named_parameters() if p.grad is not None
        }

    def zero_grads(self, net) -> None:
        for p in net.parameters():
            p.grad = None

    def numpy(self, tensor) -> np.ndarray:
        return tensor.detach().cpu().double().numpy().copy()

    def no_grad(self):
        return self.torch.no_grad()

    def autocast(self, device, amp: Optional[str]):
        dtype = self.torch.bfloat16 if amp == "bf16" else self.torch.float16
        return self.torch.autocast(self.torch.device(device).type, dtype=dtype, enabled=amp is not None)

    def train_mode(self, net, training: bool) -> None:
        net.train(training)


class _Paddle:
    """The framework calls the parity check needs, Paddle flavour."""

    name = "paddle"

    def __init__(self) -> None:
        import paddle

        self.paddle = paddle
        self.trainer = importlib.import_module("paddle_impl.train")
        self.data = importlib.import_module("paddle_impl.data")

    def set_dtype(self, dtype: str) -> None:
        self.paddle.set_default_dtype(dtype)

    def seed(self) -> None:
        self.paddle.seed(0)

    def tf32(self, enabled: bool) -> None:
        # The parity worker also runs with NVIDIA_TF32_OVERRIDE=0 (honoured by cuBLAS and cuDNN
        # themselves); these flags are Paddle's own switches where the build has them.
        if self.paddle.device.is_compiled_with_cuda():
            for flag in ("FLAGS_allow_tf32_cublas", "FLAGS_allow_tf32_cudnn"):
                with contextlib.suppress(Exception):
                    self.paddle.set_flags({flag: enabled})

    def batch(self, images: np.ndarray, labels: np.ndarray, device, dtype: str):
        cpu = self.paddle.CPUPlace()
        x, y = self.data.to_device(
            [self.paddle.to_tensor(images, place=cpu), self.paddle.to_tensor(labels, place=cpu)], device
        )
        return x.astype(dtype), y

    def copy_state(self, snapshot: Dict[str, np.ndarray], target) -> None:
        own = target.state_dict()
        target.set_state_dict({k: v.astype(own[k].numpy().dtype) for k, v in snapshot.items()})

    def state(self, net) -> Dict[str, np.ndarray]:
        return {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}

    def grads(self, net) -> Dict[str, np.ndarray]:
        return {k: p.grad.numpy().astype(np.float64) for k, p in net.named_parameters() if p.grad is not None}

    def zero_grads(self, net) -> None:
        for p in net.parameters():
            p.clear_gradient(set_to_zero=False)

    def numpy(self, tensor) -> np.ndarray:
        return (
            tensor.astype("float32").numpy().astype(np.float64)
            if tensor.dtype == self.paddle.bfloat16
            else tensor.numpy().astype(np.float64)
        )

    def no_grad(self):
        return self.paddle.no_grad()

    def autocast(self, device, amp: Optional[str]):
        return self.paddle.amp.auto_cast(
            enable=amp is not None, dtype="bfloat16" if amp == "bf16" else "float16", level="O1"
        )

    def train_mode(self, net, training: bool) -> None:
        net.train() if training else net.eval()


def _parity_run(
    fw,
    model: str,
    device: str,
    dtype: str,
    images,
    labels,
    steps: int,
    template: Optional[Dict[str, np.ndarray]] = None,
    amp: Optional[str] = None,
) -> Dict[str, Any]:
    """Build ``model`` for ``device`` in ``dtype`` (weights from the snapshot ``template``, else
    the seeded initialisation), run the eval forward, one training loss and its gradients,
    then ``steps`` trainer steps. ``out["initial"]`` is the snapshot it started from."""
    fw.set_dtype("float64" if dtype == "float64" else "float32")
    try:
        config = load_config(
            model,
            [
                "init.imagenet=none",
                "train.amp=none",
                f"train.device={device}",
                f"train.batch_size={len(images)}",
                "train.compile=false",
                "train.channels_last=false",
            ],
        )
        runtime = fw.trainer.setup_runtime(config)
        fw.seed()
        net, step = make_train_step(fw.name, config, runtime)
        if template is not None:  # the CPU model's weights, whatever RNG the device has
            fw.copy_state(template, net)
        out: Dict[str, Any] = {"initial": fw.state(net)}
        x, y = fw.batch(images, labels, runtime.device, "float64" if dtype == "float64" else "float32")
        fw.train_mode(net, False)
        with fw.no_grad(), fw.autocast(runtime.device, amp):
            out["probabilities"] = fw.numpy(net(x))
        fw.train_mode(net, True)
        with fw.autocast(runtime.device, amp):
            losses = net(x, {"cls": y})
        loss = sum(losses.values())
        out["loss"] = fw.numpy(loss)
        if steps:
            loss.backward()
            out["gradients"] = fw.grads(net)
            fw.zero_grads(net)
            results = [step(x, y) for _ in range(steps)]
            out["step_losses"] = np.array([float(fw.numpy(r.loss)) for r in results])
            out["step_grad_norms"] = np.array([float(fw.numpy(r.grad_norm)) for r in results])
            out["step_lrs"] = np.array([r.lr for r in results])
            out["parameters_after_steps"] = fw.state(net)
        return out
    finally:
        fw.set_dtype("float32")


def parity_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """float64 GPU vs CPU (forward, loss, gradients, trainer steps), then float32 / bf16 on the
    GPU against the float64 CPU reference, for each model; in this process."""
    fw = _Torch() if spec["framework"] == "torch" else _Paddle()
    rng = np.random.default_rng(0)
    size, batch = spec["size"], spec["batch"]
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 16, (batch, size, size), dtype=np.uint8)
    labels[:, : max(1, size // 8)] = 255  # ignored rows, as padding gives
    results: Dict[str, Any] = {
        "framework": spec["framework"],
        "device": spec["device"],
        "size": size,
        "batch": batch,
        "steps": spec["steps"],
        "limits": PARITY_LIMITS,
        "models": {},
    }
    fw.tf32(False)
    for model in spec["models"]:
        started = time.perf_counter()
        reference = _parity_run(fw, model, "cpu", "float64", images, labels, spec["steps"])
        cpu_seconds = time.perf_counter() - started
        started = time.perf_counter()
        gpu = _parity_run(fw, model, spec["device"], "float64", images, labels, spec["steps"], reference["initial"])
        device_seconds = time.perf_counter() - started
        measured: Dict[str, Any] = {}
        for key in ("probabilities", "loss", "step_losses", "step_grad_norms", "step_lrs"):
            measured[key] = {"rel": rel_error(gpu[key], reference[key])}
        for key in ("gradients", "parameters_after_steps"):
            measured[key] = worst(gpu[key], reference[key])
        entry: Dict[str, Any] = {
            "float64": measured,
            "cpu_seconds": round(cpu_seconds, 2),
            "device_seconds": round(device_seconds, 2),
            "loss": float(reference["loss"]),
            "step_losses": [float(v) for v in reference["step_losses"]],
            "step_grad_norms": [float(v) for v in reference["step_grad_norms"]],
        }
        failures = [f"float64 {f}" for f in judge(measured, PARITY_LIMITS["float64"])]
        # float32 and bf16 on the device, from the float64 CPU model's initial weights (rounded).
        for label, amp in (("float32", None), ("bf16", "bf16")):
            low = _parity_run(fw, model, spec["device"], "float32", images, labels, 0, reference["initial"], amp)
            measured_low = {
                key: {"rel": rel_error(low[key], reference_fresh)}
                for key, reference_fresh in (("probabilities", reference["probabilities"]), ("loss", reference["loss"]))
            }
            argmax = (low["probabilities"].argmax(1) == reference["probabilities"].argmax(1)).mean()
            measured_low["argmax_agreement"] = float(argmax)
            entry[label] = measured_low
            failures += [f"{label} {f}" for f in judge(measured_low, PARITY_LIMITS[label])]
        entry["failures"] = failures
        entry["passed"] = not failures
        results["models"][model] = entry
    results["passed"] = all(entry["passed"] for entry in results["models"].values())
    return results


# ------------------------------------------------------------------------------ lite chain


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


# ------------------------------------------------------------------------------ the check


class Check:
    """Runs the sections in order within a time budget and collects the document."""

    def __init__(self, args: argparse.Namespace, devices: Dict[str, Optional[str]]) -> None:
        self.args = args
        self.mode = "smoke" if args.smoke else "full"
        self.sizes = SIZES[self.mode]
        self.devices = devices
        self.started = time.perf_counter()
        self.deadline = self.started + args.budget
        self.sections: List[Dict[str, Any]] = []
        self.folder = tempfile.mkdtemp(prefix="gpu_check_")

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def record(self, name: str, run: Callable[[], Dict[str, Any]], minimum: float) -> None:
        """Run one measurement (or skip it when the budget is spent) and keep its record."""
        entry: Dict[str, Any] = {"name": name}
        if not self.args.smoke and self.remaining() < minimum:
            entry.update(status="skipped", reason=f"time budget: {self.remaining():.0f}s left, needs ~{minimum}s")
        else:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {name} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                result = run()
            except Exception as error:  # noqa: BLE001 - one failure must not stop the check
                lines = str(error).strip().splitlines() or [type(error).__name__]
                entry.update(
                    status="error",
                    error=f"{type(error).__name__}: {lines[0][:400]}",
                    traceback=traceback.format_exc()[-2000:],
                )
            else:
                failed = result.get("passed") is False or "error" in result
                entry.update(status="failed" if failed else "ok", result=result)
            entry["seconds"] = round(time.perf_counter() - started, 2)
            print(
                f"    {entry['status']} in {entry['seconds']}s"
                + (f": {entry.get('error')}" if "error" in entry else ""),
                file=sys.stderr,
                flush=True,
            )
        self.sections.append(entry)

    def skip(self, name: str, reason: str) -> None:
        self.sections.append({"name": name, "status": "skipped", "reason": reason})

    # -- workers run in a subprocess (full) or in this process (smoke)

    def worker(
        self, script: str, function: str, spec: Dict[str, Any], environment: Optional[Dict[str, str]] = None
    ) -> Dict[str, Any]:
        if self.args.smoke:
            return getattr(load_script(script), function)(spec) if script != "gpu_check" else globals()[function](spec)
        path = os.path.join(self.folder, f"spec_{len(self.sections)}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(spec, handle)
        command = [sys.executable, os.path.abspath(__file__), "--worker", f"{script}:{function}", path]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            **(environment or {}),
        )
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(1.0, self.remaining()), check=False
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            tail = [line for line in result.stderr.strip().splitlines() if line.strip()][-1:]
            raise RuntimeError(tail[0][:400] if tail else f"worker exit status {result.returncode}")
        return json.loads(lines[-1][len("RESULT ") :])

    # -- sections

    def parity(self, framework: str, device: str) -> None:
        spec = {
            "framework": framework,
            "device": device,
            "models": list(self.args.models),
            "size": self.sizes["parity_size"],
            "batch": self.sizes["parity_batch"],
            "steps": self.sizes["steps"],
        }
        # float32 means float32: no TF32 in cuBLAS / cuDNN, whatever the framework's defaults.
        self.record(
            f"parity {framework} {device}",
            lambda: self.worker("gpu_check", "parity_worker", spec, {"NVIDIA_TF32_OVERRIDE": "0"}),
            MIN_SECONDS["parity"],
        )

    def train(self, framework: str, device: str, compiled: bool) -> None:
        on_gpu = device != "cpu"
        for model in self.args.models:
            spec = {
                "kind": "step",
                "framework": framework,
                "model": model,
                "device": "cuda" if on_gpu else "cpu",
                "size": self.sizes["train_size"],
                "batch": self.sizes["train_batch"],
                "amp": "bf16" if on_gpu else "none",
                "channels_last": framework == "torch" and on_gpu,
                "compile": compiled,
                "warmup": self.sizes["compile_warmup" if compiled else "train_warmup"],
                "iters": self.sizes["train_iters"],
                "workers": None,
                "threads": None,
            }
            goal = GOALS["train_images_per_s"][model]

            def run(spec=spec, goal=goal) -> Dict[str, Any]:
                result = self.worker("train_bench", "step_worker", spec)
                result.update(
                    {
                        k: spec[k]
                        for k in ("framework", "model", "device", "size", "batch", "amp", "channels_last", "compile")
                    }
                )
                if not result.get("finite", True):
                    result["passed"] = False
                if on_gpu and self.sizes["train_size"] == 896 and self.sizes["train_batch"] == 8:
                    result["goal_images_per_s"] = goal
                    result["meets_goal"] = result["images_per_s"] >= goal
                return result

            label = "compiled" if compiled else "eager"
            self.record(
                f"train {framework} {model} {label}", run, MIN_SECONDS["train_compile" if compiled else "train"]
            )

    def scene_files(self) -> Tuple[str, str]:
        """The synthetic evaluation scene as .npy files (made once)."""
        image_path = os.path.join(self.folder, "eval_image.npy")
        if not os.path.exists(image_path):
            from isaid.synth import make_scene

            image, label = make_scene(np.random.default_rng(0), self.sizes["eval_size"], self.sizes["eval_size"])
            np.save(image_path, image)
            np.save(os.path.join(self.folder, "eval_label.npy"), label)
        return image_path, os.path.join(self.folder, "eval_label.npy")

    def eval_weights(self) -> str:
        """FarSeg weights for the evaluation workers (torch's default initialisation, seed 0;
        Paddle reads the same file converted), written once."""
        path = os.path.join(self.folder, "eval_farseg.pth")
        if not os.path.exists(path):
            import torch

            from torch_ref import build_model

            torch.manual_seed(0)
            torch.save(build_model("farseg").state_dict(), path)
        return path

    def evaluate(self, framework: str, device: str) -> None:
        on_gpu = device != "cpu"
        runs = [("none", 1)] + ([("bf16", 8)] if on_gpu else [])
        for amp, batch in runs:

            def run(amp=amp, batch=batch) -> Dict[str, Any]:
                image, label = self.scene_files()
                spec = {
                    "framework": framework,
                    "device": device,
                    "amp": amp,
                    "batch_size": batch,
                    "model": "farseg",
                    "window": self.sizes["window"],
                    "stride": self.sizes["stride"],
                    "threads": None,
                    "image": image,
                    "label": label,
                    "weights": self.eval_weights(),
                    "classes": os.path.join(self.folder, f"eval_classes_{framework}_{amp}.npy"),
                }
                result = self.worker("eval_bench", "child", spec)
                if on_gpu and self.sizes["eval_size"] == 4000:
                    result["goal_seconds"] = GOALS["eval_4000_seconds"]
                    result["meets_goal"] = result["seconds"] < GOALS["eval_4000_seconds"]
                expected = self.sizes["eval_size"] ** 2
                if result.get("pixels_counted") != expected:
                    result.update(
                        passed=False, error=f"{result.get('pixels_counted')} pixels counted, expected {expected}"
                    )
                return result

            self.record(f"eval {framework} {device} amp={amp} batch={batch}", run, MIN_SECONDS["eval"])

    def predict(self, framework: str, device: str) -> None:
        try:
            import rasterio  # noqa: F401
        except ImportError as error:
            self.skip(f"predict {framework} {device}", f"rasterio does not import ({error})")
            return
        size = self.sizes["predict_size"]
        scene = os.path.join(self.folder, f"scene_{size}.tif")

        def run() -> Dict[str, Any]:
            bench = load_script("predict_bench")
            if not os.path.exists(scene):
                bench.write_scene(scene, size, size)
            spec = {
                "run": {"framework": framework, "mode": "dygraph", "device": device},
                "scene": scene,
                "out": os.path.join(self.folder, f"pred_{framework}.tif"),
                "model": "farseg",
                "window": self.sizes["window"],
                "stride": self.sizes["stride"],
                "export_dir": None,
            }
            return self.worker("gpu_check", "child_spec", spec)

        self.record(f"predict {framework} {device} {size}x{size} GeoTIFF", run, MIN_SECONDS["predict"])

    def lite(self, framework: str, device: str) -> None:
        data = os.path.join(self.folder, "lite_data")

        def run() -> Dict[str, Any]:
            if not os.path.isdir(data):
                source = os.path.join(self.folder, "lite_src")
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
                            str(self.sizes["lite_scene"]),
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
                            str(self.sizes["lite_window"]),
                            "--stride",
                            str(self.sizes["lite_stride"]),
                            "--no-progress",
                        ],
                    ),
                ):
                    status, _, err = run_module(module, argv, True, self.remaining())
                    if status != 0:
                        raise RuntimeError(f"{module} failed: {err.strip()[-300:]}")
            return lite_chain(
                framework,
                device,
                data,
                os.path.join(self.folder, f"lite_{framework}"),
                self.sizes,
                self.args.smoke,
                self.deadline,
            )

        self.record(f"lite chain {framework} {device}", run, MIN_SECONDS["lite"])

    def run(self) -> None:
        active = [(fw, self.devices[fw]) for fw in self.args.frameworks if self.devices.get(fw)]
        for framework in self.args.frameworks:
            if not self.devices.get(framework):
                self.skip(f"{framework} (all sections)", self.devices.get(f"{framework}_reason", "unavailable"))
        chosen = set(self.args.sections)
        for framework, device in active:
            if "parity" in chosen:
                self.parity(framework, device)
        if "train" in chosen:
            for framework, device in active:
                self.train(framework, device, compiled=False)
        for framework, device in active:
            if "eval" in chosen:
                self.evaluate(framework, device)
        for framework, device in active:
            if "predict" in chosen:
                self.predict(framework, device)
        for framework, device in active:
            if "lite" in chosen:
                self.lite(framework, device)
        # torch.compile last: its compilation is the slowest part and the first to go when time is short.
        if "train" in chosen and any(fw == "torch" for fw, _ in active):
            if self.args.smoke:
                self.skip("train torch compiled", "--smoke: torch.compile takes minutes of CPU compilation")
            else:
                self.train("torch", self.devices["torch"], compiled=True)


def child_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """predict_bench's ``child`` called with one dict (the worker protocol's shape)."""
    return load_script("predict_bench").child(**spec)


def summary_lines(sections: List[Dict[str, Any]]) -> List[str]:
    """One line per section: status, the figure that matters, the goal when there is one."""
    lines = []
    for entry in sections:
        name, status = entry["name"], entry["status"]
        result = entry.get("result") or {}
        if status == "skipped":
            lines.append(f"SKIP  {name}: {entry['reason']}")
            continue
        if status == "error":
            lines.append(f"ERROR {name}: {entry['error']}")
            continue
        detail = ""
        if name.startswith("parity"):
            parts = []
            for model, values in result.get("models", {}).items():
                f64 = values["float64"]
                parts.append(
                    f"{model}: f64 probs {f64['probabilities']['rel']:.1e}, grads"
                    f" {f64['gradients']['rel']:.1e}, params after steps"
                    f" {f64['parameters_after_steps']['rel']:.1e}; f32 probs"
                    f" {values['float32']['probabilities']['rel']:.1e}; bf16 probs"
                    f" {values['bf16']['probabilities']['rel']:.1e}"
                    + (f" [{'; '.join(values['failures'])}]" if values["failures"] else "")
                )
            detail = " | ".join(parts)
        elif name.startswith("train"):
            detail = f"{result.get('images_per_s', float('nan')):.1f} images/s"
            if "goal_images_per_s" in result:
                detail += f" (goal {result['goal_images_per_s']:.0f}: {'met' if result['meets_goal'] else 'NOT met'})"
            if result.get("peak_memory_mb"):
                detail += f", peak {result['peak_memory_mb']:.0f} MiB"
        elif name.startswith("eval"):
            detail = f"{result.get('seconds')} s, {result.get('windows_per_s')} windows/s"
            if "goal_seconds" in result:
                detail += f" (goal < {result['goal_seconds']} s: {'met' if result['meets_goal'] else 'NOT met'})"
        elif name.startswith("predict"):
            detail = (
                f"{result.get('predict_seconds')} s, {result.get('megapixels_per_second')} Mpx/s,"
                f" peak RSS {result.get('peak_rss_mb')} MB"
            )
        elif name.startswith("lite"):
            detail = (
                f"{len(result.get('steps', []))} commands, predict == evaluate: {result.get('predict_equals_evaluate')}"
            )
        lines.append(f"{'OK   ' if status == 'ok' else 'FAIL '} {name}: {detail}")
    return lines


def detect_devices(smoke: bool, facts: Dict[str, Any]) -> Dict[str, Optional[str]]:
    """The device each framework's half runs on (None with a reason when it cannot run)."""
    devices: Dict[str, Optional[str]] = {}
    for framework, gpu_name in (("torch", "cuda"), ("paddle", "gpu")):
        info = facts.get(framework) or {}
        if not info.get("installed") or info.get("error"):
            devices[framework] = None
            devices[f"{framework}_reason"] = info.get("error") or f"{framework} is not installed"
        elif smoke:
            devices[framework] = "cpu"
        elif info.get("cuda_available") or (info.get("gpu_count") or 0) > 0:
            devices[framework] = gpu_name
        else:
            devices[framework] = None
            build = f"a CUDA {info['cuda_build']} build" if info.get("cuda_build") else "a CPU build"
            devices[f"{framework}_reason"] = f"{framework} {info.get('version')} ({build}) sees no GPU"
    return devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/gpu_check.py",
        description="One-shot GPU check: GPU-vs-CPU parity (float64, float32, bf16), training throughput,"
        " 4000x4000 evaluation, 8000x8000 GeoTIFF prediction and the lite chain, for torch"
        " and (where it sees a GPU) Paddle; writes benchmarks/results/gpu_check.json.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run everything on the CPU with tiny sizes, in this process (the CI test of"
        " this script; writes gpu_check_smoke.json)",
    )
    parser.add_argument(
        "--sections",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(SECTIONS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)",
    )
    parser.add_argument(
        "--frameworks",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(FRAMEWORKS),
        metavar="LIST",
        help="comma-separated subset of torch,paddle (default both; Paddle's half runs only"
        " where paddle sees a GPU, or with --smoke)",
    )
    parser.add_argument(
        "--models",
        type=lambda text: [s for s in text.split(",") if s],
        default=list(MODELS),
        metavar="LIST",
        help="comma-separated subset of farseg,factseg for parity and training (default both)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop starting sections after this many seconds (default 470 on a GPU, i.e."
        " under 8 minutes; 600 with --smoke); skipped sections are listed",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE.json",
        help="results (default benchmarks/results/gpu_check.json, or gpu_check_smoke.json"
        " with --smoke); written atomically",
    )
    parser.add_argument("--worker", nargs=2, metavar=("SCRIPT:FUNCTION", "SPEC.json"), help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        script, function = args.worker[0].split(":")
        with open(args.worker[1], encoding="utf-8") as handle:
            spec = json.load(handle)
        target = globals()[function] if script == "gpu_check" else getattr(load_script(script), function)
        print("RESULT " + json.dumps(target(spec), default=float), flush=True)
        return 0
    for option, values, allowed in (
        ("--sections", args.sections, SECTIONS),
        ("--frameworks", args.frameworks, FRAMEWORKS),
        ("--models", args.models, MODELS),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            print(
                f"{parser.prog}: error: {option}: expected a subset of {','.join(allowed)}, got"
                f" {','.join(values) or '(empty)'}",
                file=sys.stderr,
            )
            return 2
    args.budget = args.budget if args.budget is not None else (600.0 if args.smoke else 470.0)
    out = args.out or os.path.join(RESULTS, "gpu_check_smoke.json" if args.smoke else "gpu_check.json")

    from align.env import diagnose, gather_facts

    facts = gather_facts()
    devices = detect_devices(args.smoke, facts)
    if not any(devices.get(fw) for fw in args.frameworks):
        reasons = "; ".join(devices.get(f"{fw}_reason", "") for fw in args.frameworks)
        print(
            f"{parser.prog}: error: no framework sees a GPU ({reasons}); python -m align.env says why,"
            " --smoke runs the check on the CPU",
            file=sys.stderr,
        )
        return 2
    check = Check(args, devices)
    try:
        check.run()
    finally:
        import shutil

        shutil.rmtree(check.folder, ignore_errors=True)
    lines = summary_lines(check.sections)
    document = {
        "command": "python benchmarks/gpu_check.py " + " ".join(argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": check.mode,
        "sizes": check.sizes,
        "goals": GOALS,
        "devices": {fw: devices.get(fw) for fw in FRAMEWORKS},
        "gpu": (facts["torch"].get("devices") or facts["paddle"].get("devices") or None),
        "driver": facts["driver"],
        "versions": {k: v for k, v in facts["distributions"].items() if v},
        "environment": facts,
        "environment_findings": [f.line() for f in diagnose(facts)],
        "seconds": round(time.perf_counter() - check.started, 1),
        "sections": check.sections,
        "summary": lines,
    }
    from isaid.imageio import write_bytes_atomic

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_bytes_atomic(out, (json.dumps(document, indent=1, default=float) + "\n").encode("utf-8"))
    print("\n".join(lines))
    print(f"{document['seconds']} s in all; wrote {os.path.relpath(out)}")
    return 1 if any(s["status"] in ("failed", "error") for s in check.sections) else 0


if __name__ == "__main__":
    sys.exit(main())

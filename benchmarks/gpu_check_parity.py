"""The GPU check's parity section: the model on the device against the same weights on the
CPU (float64: eval probabilities, the training loss, every gradient, then the trainer's own
``TrainStep`` for a few steps), then float32 (TF32 off) and bf16 autocast on the device
against the float64 CPU reference. Limits: :data:`PARITY_LIMITS`.

The framework calls it needs are :class:`TorchParity` and :class:`PaddleParity` (one small
adapter per framework, the rest written once).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import _common
import numpy as np
from _common import rel_error

ROOT = _common.ROOT

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


def load_config(model: str, sets: Sequence[str]):
    from app.config import load_config as load

    return load(os.path.join(ROOT, "configs", f"{model}_isaid.yaml"), list(sets))


def make_train_step(fw: Any, config: Any, runtime: Any) -> Any:
    """(net, step): the model and ONE training iteration exactly as the trainer runs it.

    The only place that knows the trainers' construction API (``build_training`` ->
    ``TrainStep(..., recipe, device)``); ``step(images, labels)`` returns the trainer's
    ``StepResult`` (``loss``, ``lr``, ``grad_norm``: unscaled, before clipping).
    """
    trainer = fw.trainer
    net, train_model, optimizer, scheduler, scaler = trainer.build_training(config, runtime, None)
    step = trainer.TrainStep(train_model, net, optimizer, scheduler, scaler, config["train"], runtime.device)
    return net, step


class TorchParity:
    """The framework calls the parity check needs, torch flavour."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        from torch_ref import data, train

        self.torch = torch
        self.trainer = train
        self.data = data

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


class PaddleParity:
    """The framework calls the parity check needs, Paddle flavour."""

    name = "paddle"

    def __init__(self) -> None:
        import paddle

        from paddle_impl import data, train

        self.paddle = paddle
        self.trainer = train
        self.data = data

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
        net, step = make_train_step(fw, config, runtime)
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
    fw = PARITY_SIDES[spec["framework"]]()
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


# framework name -> its parity adapter
PARITY_SIDES = {"torch": TorchParity, "paddle": PaddleParity}

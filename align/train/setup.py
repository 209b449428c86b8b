"""The train stage's set-up: the recipe overrides, the synthetic data, the shared initial
weights (:class:`Setup`), and what one trainer run gives (:class:`TrainRun`)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import CONFIGS, AlignConfig, AlignInputError

STAGE = "train"
TRAIN_KINDS = (
    "train_lr",
    "train_first_loss",
    "train_first_grad",
    "train_early",
    "train_curve",
    "train_mean",
    "train_param",
    "train_miou",
)
DTYPE = "float32"  # the trainers train in float32 (or mixed precision, with --set train.amp=...)
# Synthetic data of the default run: scenes of SYNTH_SCALE x the window, cut at stride = window.
SYNTH_TRAIN_SCENES = 4
SYNTH_VAL_SCENES = 2
SYNTH_SCALE = 3
# Iterations whose batches both frameworks' loaders must give bit for bit (decoding real 896 px
# patches for every iteration of a long run would cost minutes; the sampler is a pure function
# of (seed, position), tested for whole epochs in tests/test_train.py).
BATCH_CHECK_ITERATIONS = 4
# Windows per evaluator forward (the result does not depend on it beyond float rounding).
EVAL_BATCH = 4


def default_config_path(model: str) -> str:
    """``configs/<model>_isaid.yaml`` of this repository."""
    return str(CONFIGS / f"{model}_isaid.yaml")


@dataclass
class TrainRun:
    """One trainer's run: per-iteration curves, final weights (torch names), evaluation."""

    label: str  # "torch", "paddle", or a perturbed torch run ("torch threads=2")
    loss: np.ndarray  # [N] float64, from metrics.jsonl
    lr: np.ndarray
    grad_norm: np.ndarray
    state: "OrderedDict[str, np.ndarray]"  # final weights and buffers, torch_ref key names
    confusion: np.ndarray  # int64 [C,C] of the evaluator on the val scenes
    miou: float  # 16-class mIoU, fraction
    miou_fg: float
    out_dir: str
    seconds: float = 0.0
    eval_seconds: float = 0.0

    def curves(self) -> Dict[str, List[float]]:
        return {"loss": self.loss.tolist(), "lr": self.lr.tolist(), "grad_norm": self.grad_norm.tolist()}


@dataclass
class Setup:
    """Everything both runs share: recipe overrides, data, initial state, evaluation windows."""

    model: str
    config_path: str
    data_root: str
    overrides: List[str]
    iterations: int
    device: str
    window: int  # training patch side (from the config or --size)
    batch: int
    eval_window: int
    eval_stride: int
    val_scenes: Optional[int]
    initial_state: "OrderedDict[str, np.ndarray]" = field(repr=False, default_factory=OrderedDict)
    init_description: str = ""
    synthetic: bool = True

    def describe(self) -> Dict[str, Any]:
        return {
            "config": os.path.relpath(self.config_path) if os.path.isabs(self.config_path) else self.config_path,
            "data": "synthetic (isaid.synth -> isaid.prepare)" if self.synthetic else self.data_root,
            "iterations": self.iterations,
            "window": self.window,
            "batch": self.batch,
            "device": self.device,
            "initial weights": self.init_description,
            "evaluation": f"window {self.eval_window} stride {self.eval_stride}, {self.val_scenes or 'all'} val scenes",
            "overrides": " ".join(self.overrides),
        }


def make_synthetic_data(root: str, window: int, seed: int) -> str:
    """Synthetic iSAID scenes in the download layout, prepared into ``root/prepared``; returns it.

    Runs ``isaid.synth`` and ``isaid.prepare`` (their ``main``, in this process: the same code
    as the commands); their output is kept out of the report.
    """
    from isaid import prepare, synth

    src, out = os.path.join(root, "src"), os.path.join(root, "prepared")
    shutil.rmtree(root, ignore_errors=True)  # only the stage's own data folder
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = synth.main(
            [
                src,
                "--train",
                str(SYNTH_TRAIN_SCENES),
                "--val",
                str(SYNTH_VAL_SCENES),
                "--size",
                str(SYNTH_SCALE * window),
                "--seed",
                str(seed),
                "--no-zip",
            ]
        )
        if code == 0:
            code = prepare.main([src, out, "--window", str(window), "--stride", str(window), "--no-progress"])
    if code != 0:
        raise RuntimeError(f"synthetic data for the train stage failed: {log.getvalue().strip()[-500:]}")
    return out


def eval_stride_for(window: int) -> int:
    """The official 512/896 stride ratio, rounded to a multiple of 32 (896 -> 512, 64 -> 32)."""
    return max(32, int(round(window * 512 / 896 / 32)) * 32)


def build_setup(config: AlignConfig, work_dir: str) -> Setup:
    """Resolve the recipe, make or check the data and build the shared initial weights."""
    from app.config import ConfigError, load_config, resolve_imagenet_path

    config_path = config.train_config or default_config_path(config.model)
    synthetic = config.data is None
    device = config.device
    if device == "auto":  # one decision for both trainers and both evaluators
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    forced = {
        "model.name": config.model,
        "train.iterations": config.train_iterations,
        "train.amp": "none",
        "train.device": device,
        "train.log_every": 1,
        "train.log_backend": "none",
        "train.checkpoint_every": config.train_iterations,
        "train.keep_checkpoints": 1,
    }
    if synthetic:
        forced.update(
            {
                "data.window": config.size,
                "train.batch_size": config.batch,
                "train.num_workers": 0,
                "init.imagenet": "none",
                "train.seed": config.seed,
            }
        )
    else:
        forced["data.root"] = config.data
    # The user's --set come last: they may change anything, e.g. train.amp=fp16 on a GPU.
    overrides = [f"{k}={v}" for k, v in forced.items()] + list(config.sets)
    try:
        recipe = load_config(config_path, overrides)
    except ConfigError as exc:
        raise AlignInputError(str(exc)) from None
    if recipe["model"]["name"] != config.model:
        raise AlignInputError(f"{config_path}: model.name is {recipe['model']['name']}, not --model {config.model}")
    window = int(recipe["data"]["window"])
    if synthetic:
        data_root = make_synthetic_data(os.path.join(work_dir, "data"), window, config.seed)
        overrides.insert(0, f"data.root={data_root}")
        recipe = load_config(config_path, overrides)
    data_root = recipe["data"]["root"]
    for split in (recipe["data"]["split"], "val"):
        if not os.path.isfile(os.path.join(data_root, split, "index.json")):
            raise AlignInputError(
                f"{os.path.join(data_root, split, 'index.json')}: not found; prepare the "
                f"data with `python -m isaid.prepare SRC {data_root} --window {window}`"
            )
    imagenet = None if synthetic else resolve_imagenet_path(recipe)
    if imagenet is not None and not os.path.isfile(imagenet):
        raise AlignInputError(
            f"init.imagenet: {imagenet}: file not found (convert torchvision's "
            f"resnet50-19c8e357.pth with `python -m convert ... --model resnet50 --target "
            f"{config.model}`, or pass --set init.imagenet=none)"
        )
    state, how = initial_state(config.model, recipe["model"]["num_classes"], recipe["train"]["seed"], imagenet)
    return Setup(
        config.model,
        config_path,
        data_root,
        overrides,
        config.train_iterations,
        device,
        window,
        int(recipe["train"]["batch_size"]),
        window,
        eval_stride_for(window),
        config.val_scenes,
        state,
        how,
        synthetic,
    )


def initial_state(
    model: str, num_classes: int, seed: int, imagenet: Optional[str]
) -> Tuple["OrderedDict[str, np.ndarray]", str]:
    """(torch_ref state as numpy, description): the torch trainer's own initialisation."""
    import torch

    import torch_ref
    from torch_ref.train import load_imagenet

    torch.manual_seed(seed)  # what torch_ref.train's seed_everything does before build_model
    net = torch_ref.build_model(model, num_classes=num_classes)
    how = f"torch_ref init, torch.manual_seed({seed})"
    if imagenet is not None:
        load_imagenet(net, imagenet, model)
        how += f", encoder from {imagenet}"
    state = OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in net.state_dict().items())
    return state, how + "; Paddle: the same, converted by convert.torch_to_paddle"


def recipe_for(setup: Setup, framework: str, out_dir: str, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """The trainer config of one run (``extra``: more overrides, e.g. a perturbation)."""
    from app.config import load_config

    return load_config(setup.config_path, [*setup.overrides, f"train.out_dir={out_dir}", *extra])

"""The settings of an alignment run, shared by every stage and by the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from common.cli import MAX_BATCH, MAX_WINDOW
from weights import check_model_name

from .compare import DEFAULT_LR_SCALE, DEFAULT_TOLERANCES, Tolerance, tolerances
from .inputs import SIZE_MULTIPLE, AlignInputError, load_input

# The stages in their order; ``align.<name>`` is each one's module (``run`` and ``main``).
STAGES = ("forward", "loss", "backward", "metric", "train")
# What `python -m align` runs without --stages: the train stage takes minutes, the others seconds.
DEFAULT_STAGES = ("forward", "loss", "backward", "metric")
# train stage: iterations of the default (synthetic, CPU) comparison.
DEFAULT_TRAIN_ITERATIONS = 60
DTYPES = tuple(DEFAULT_TOLERANCES)  # ("float64", "float32")
AGAINST = ("paddle_impl", "x2paddle")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# FarSeg's annealing loss is checked at these steps (docs/official_models.md, "FarSeg"): inside
# the cosine ramp (1, 5000) and after it (30000, pure focal weighting).
FARSEG_LOSS_STEPS = (1, 5000, 30000)
# Names of each model's logits in reports, in the order of its package's LOGIT_MODULES.
LOGIT_NAMES = {"farseg": ("logits",), "factseg": ("fg_logits", "bi_logits")}

__all__ = ["AGAINST", "AlignConfig", "AlignInputError", "DTYPES", "FARSEG_LOSS_STEPS", "LOGIT_NAMES", "STAGES"]


@dataclass
class AlignConfig:
    """One alignment run. Every stage takes one; the CLI builds one from its options. It is
    validated when made (``AlignInputError``, one line), so every holder has a valid one.

    float64 is the default dtype: it separates porting bugs (which change results by far more
    than 1e-9) from float32 rounding (1e-5..1e-2 on a deep random network, benchmarks/float32_floor.py).
    """

    model: str = "farseg"
    dtype: str = "float64"
    batch: int = 2
    size: int = 64  # height = width; a multiple of 32
    seed: int = 2333  # the official training seed
    torch_ckpt: Optional[str] = None  # official-layout checkpoint; default: seeded random weights
    input: Optional[str] = None  # .npy [B,3,H,W] or [3,H,W] overriding batch/size
    out: Optional[str] = "out/align"  # root; files go to <out>/<model>/<stage>/; None: write nothing
    rtol: Optional[float] = None  # overrides the relative bound of every non-exact kind
    atol: Optional[float] = None  # overrides the mean-abs bound of every non-exact kind
    tol: Dict[str, Tolerance] = field(default_factory=dict)  # per-kind overrides
    against: str = "paddle_impl"  # forward: "x2paddle" adds the X2Paddle third opinion
    # backward stage: the trainers' recipe from configs/<model>_isaid.yaml, run for a few steps,
    # with these overrides (None: the recipe's value).
    steps: int = 3
    lr_scale: Optional[float] = None  # None: DEFAULT_LR_SCALE of the dtype (align/compare.py)
    iterations: Optional[int] = None  # the poly schedule's length
    clip_norm: Optional[float] = None
    loss_scale: Optional[float] = None  # None: the per-model default that makes clipping bind
    loss_steps: Tuple[int, ...] = FARSEG_LOSS_STEPS
    localise: bool = True  # on a failure, find the first divergent layer / parameter
    full_logs: bool = False  # backward: log every final parameter (hundreds of MB in float64)
    # train stage: both trainers for `iterations` iterations (window --size, batch --batch on
    # synthetic data; with `data`, the recipe's window and batch on that isaid.prepare output).
    train_iterations: int = DEFAULT_TRAIN_ITERATIONS
    train_config: Optional[str] = None  # recipe YAML; None: configs/<model>_isaid.yaml
    data: Optional[str] = None  # isaid.prepare output; None: synthetic scenes
    device: str = "cpu"  # cpu, cuda / gpu, auto
    val_scenes: Optional[int] = None  # evaluate on the first N val scenes (None: all)
    sets: Tuple[str, ...] = ()  # further recipe overrides KEY=VALUE

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "AlignConfig":
        """Raise AlignInputError (one line) for any bad setting; return self."""
        check_model_name(self.model, error=AlignInputError)
        if self.dtype not in DTYPES:
            raise AlignInputError(f"unknown dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.against not in AGAINST:
            raise AlignInputError(f"unknown --against {self.against!r}: expected one of {', '.join(AGAINST)}")
        if self.against == "x2paddle":
            from .x2paddle import INSTALL_MESSAGE, x2paddle_available

            if not x2paddle_available():
                raise AlignInputError(f"--against x2paddle: {INSTALL_MESSAGE}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise AlignInputError(f"--batch must lie in 1..{MAX_BATCH}, got {self.batch}")
        if self.size > MAX_WINDOW:
            raise AlignInputError(f"--size must be at most {MAX_WINDOW}, got {self.size}")
        if self.size < SIZE_MULTIPLE or self.size % SIZE_MULTIPLE:
            raise AlignInputError(
                f"--size {self.size} is not a positive multiple of {SIZE_MULTIPLE} "
                f"(the encoder's output stride); try {max(1, round(self.size / 32)) * 32}"
            )
        if self.steps < 1:
            raise AlignInputError(f"--steps must be at least 1, got {self.steps}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise AlignInputError(f"--{name} must be a non-negative number, got {value}")
        if self.train_iterations < 1:
            raise AlignInputError(f"--iterations must be at least 1, got {self.train_iterations}")
        if self.val_scenes is not None and self.val_scenes < 1:
            raise AlignInputError(f"--val-scenes must be at least 1, got {self.val_scenes}")
        if self.train_config is not None and not Path(self.train_config).is_file():
            raise AlignInputError(f"{self.train_config}: no such file (--config)")
        if self.data is not None and not Path(self.data).is_dir():
            raise AlignInputError(f"{self.data}: no such folder (--data: an isaid.prepare output)")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise AlignInputError(f"--clip must be positive, got {self.clip_norm}")
        if self.lr_scale is not None and not self.lr_scale > 0:
            raise AlignInputError(f"--lr-scale must be positive, got {self.lr_scale}")
        if self.iterations is not None and self.iterations <= self.steps:
            raise AlignInputError(f"--iterations must exceed --steps ({self.steps}), got {self.iterations}")
        if self.torch_ckpt is not None and not Path(self.torch_ckpt).is_file():
            what = "is a directory" if Path(self.torch_ckpt).is_dir() else "no such file"
            raise AlignInputError(f"{self.torch_ckpt}: {what} (--torch-ckpt)")
        if self.input is not None:
            if not Path(self.input).is_file():
                raise AlignInputError(f"{self.input}: no such file (--input)")
            load_input(self.input)
        return self

    def tolerances(self) -> Dict[str, Tolerance]:
        """The tolerance of every kind of compared value for this run."""
        return tolerances(self.dtype, self.rtol, self.atol, self.tol)

    def recipe(self) -> Dict[str, Any]:
        """The training recipe the backward stage hands to both trainers: the ``train`` section
        of configs/<model>_isaid.yaml, with mixed precision off (the run's dtype rules), the
        learning rate times ``lr_scale`` and ``iterations`` / ``clip_norm`` when set."""
        from app.config import load_config

        recipe = dict(load_config(str(CONFIGS / f"{self.model}_isaid.yaml"))["train"])
        recipe.update(amp="none", lr=recipe["lr"] * self.effective_lr_scale)
        if self.iterations is not None:
            recipe["iterations"] = self.iterations
        if self.clip_norm is not None:
            recipe["clip_norm"] = self.clip_norm
        return recipe

    @property
    def effective_lr_scale(self) -> float:
        """``lr_scale``, or the measured default of the dtype (``DEFAULT_LR_SCALE``)."""
        return DEFAULT_LR_SCALE[self.dtype] if self.lr_scale is None else self.lr_scale

    def out_dir(self, stage: str) -> Optional[Path]:
        """Where ``stage`` writes its logs and reports (None: nowhere)."""
        return None if self.out is None else Path(self.out) / self.model / stage

    def with_(self, **changes: Any) -> "AlignConfig":
        """A validated copy with ``changes`` applied."""
        changes.setdefault("tol", dict(self.tol))
        return replace(self, **changes)

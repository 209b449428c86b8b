"""Stage 5, train: torch_ref.train and paddle_impl.train (the real trainers) from the same converted
initial weights on bit-identical batches for N iterations, then each framework's own evaluator;
lr, loss and gradient norm per iteration, final weights and mIoU against a band measured torch
against torch (float32); writes curves.json and curves.png. --size/--batch/--seed set the
synthetic default run; --dtype, --torch-ckpt and --input do not apply.

What runs is the training code users run, not a copy: ``torch_ref.train.train`` and
``paddle_impl.train.train`` (their config, loader, sampler, augmentation, ``build_optimizer``,
``TrainStep``, loop and final weights), one after the other in this process, then each
framework's own evaluator (``torch_ref.evaluate`` / ``paddle_impl.evaluate``: sliding windows,
on-device confusion matrix). align only prepares what both get:

- the recipe: ``configs/<model>_isaid.yaml`` (or ``--config``) with the comparison's settings
  as overrides: ``train.iterations`` (the poly schedule spans the compared run), float32
  (``train.amp=none``), the device, one log row per iteration, no ImageNet file (see below);
  ``--set KEY=VALUE`` adds the user's own;
- the data: by default synthetic iSAID scenes (``isaid.synth``) cut by ``isaid.prepare`` into
  ``--size`` patches (batch ``--batch``); with ``--data DIR`` a real ``isaid.prepare`` output
  at the config's window and batch. Both trainers sample it with the shared framework-free
  ``isaid.augment``; the stage checks that both frameworks' loaders give bit-identical batches
  for the first iterations before training;
- the initial weights: ``torch_ref.build_model`` under ``torch.manual_seed(train.seed)`` (the
  torch trainer's own initialisation; with the config's ImageNet file loaded by the torch
  trainer's ``load_imagenet`` when ``init.imagenet`` names an existing file), converted for
  Paddle by ``convert.torch_to_paddle``, given to both trainers as ``initial_state``.

Compared (torch_ref is the reference): per iteration the learning rate, the loss and the
global gradient norm (before clipping) from each trainer's ``metrics.jsonl``; at the end the
final weights (``||theta_torch - theta_paddle|| / ||theta_torch - theta_0||``: the difference
of the two trajectories relative to the distance travelled), FarSeg's ``buffer_step`` and the
two mIoUs on held-out val scenes. The pass band is MEASURED: torch against torch under harmless
perturbations (``benchmarks/train_align_floor.py``; thresholds and numbers in
``align/compare.py``, kinds ``train_*``). float32 training from random weights is chaotic:
after a few iterations the two runs differ by float32 rounding amplified step after step, so
loss, gradient norm and weights are held to the measured envelope, not to 1e-6. The learning
rate is a Python float on both sides and must agree to 1e-9 at every iteration: a schedule or
recipe bug (lr x2, another power, a scheduler stepped twice) shows at iteration 1 or 2.

Writes, beside the usual ``torch.npy`` / ``paddle.npy`` / ``diff.txt`` / ``diff.json`` in
``<out>/<model>/train/``: ``curves.json`` (every per-iteration value of both sides and their
relative differences, the mIoUs, the thresholds) and ``curves.png`` (loss curves, relative
differences against the thresholds, mIoUs). The trainers' own outputs are in ``runs/torch``
and ``runs/paddle``, the synthetic data in ``data/``.

``python -m align.train --model farseg``; ``python -m align --stages train``; at full scale on a
GPU: ``python -m align.train --model farseg --config configs/farseg_isaid.yaml --data
data/isaid --device cuda --iterations 2000``. See ``--help``.
"""

from .compare import compare_runs, first_divergence, global_relative, relative_curve, trainable_keys
from .plot import curves_document, plot_curves, write_curves
from .run import batch_digests, evaluate, read_curves, run, run_trainer, stage_tolerances
from .setup import (
    DTYPE,
    STAGE,
    TRAIN_KINDS,
    Setup,
    TrainRun,
    build_setup,
    default_config_path,
    eval_stride_for,
    initial_state,
    make_synthetic_data,
    recipe_for,
)

__all__ = [
    "DTYPE",
    "STAGE",
    "TRAIN_KINDS",
    "Setup",
    "TrainRun",
    "batch_digests",
    "build_setup",
    "compare_runs",
    "curves_document",
    "default_config_path",
    "eval_stride_for",
    "evaluate",
    "first_divergence",
    "global_relative",
    "initial_state",
    "main",
    "make_synthetic_data",
    "plot_curves",
    "read_curves",
    "recipe_for",
    "relative_curve",
    "run",
    "run_trainer",
    "stage_tolerances",
    "trainable_keys",
    "write_curves",
]


def main(argv=None) -> int:
    """``python -m align.train``."""
    from ..cli import stage_main

    return stage_main(STAGE, argv, run)

"""The end-to-end chain on CPU, as a user runs it (every step a ``python -m`` command):

    python -m isaid.synth SRC            synthetic scenes in the official download layout
    python -m isaid.prepare SRC DATA     index labels and 64x64 training patches
    python -m paddle_impl.train ...      a short training from random initialisation
    python -m paddle_impl.evaluate ...   the official protocol (at window 64) on the val scenes,
                                         with the trained weights and with untrained ones
    python -m torch_ref.evaluate ...     the Paddle-trained weights evaluated in torch
                                         (converted on the fly): the same confusion matrix

Budget: about 1.5 minutes on 2 free CPU cores (30 training iterations take ~15 s of CPU;
most of the rest is starting Python with torch/Paddle six times).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
from conftest import ROOT as REPO_ROOT
from conftest import run_command, run_module

# Measured with exactly these settings (synth --train 6 --val 2 --size 160 --seed 0; prepare
# --window 64 --stride 48; init.imagenet=none, seed 2333, OMP_NUM_THREADS=1), evaluated with
#   python -m paddle_impl.evaluate --model farseg --weights W --images DATA/val/images \
#       --masks DATA/val/labels --window 64 --stride 48
#
#   untrained (official init, paddle.seed(2333))   mIoU 0.33   fg 0.36   pixel accuracy  1.22 %
#   30 iterations, batch 2 (this test)             mIoU 4.83   fg 0.00   pixel accuracy 77.29 %
#   20 iterations, batch 2 / batch 4               mIoU 4.83   fg 0.00   pixel accuracy 77.29 %
#   100 iterations, batch 4, lr 0.007              mIoU 4.84   fg 0.00   pixel accuracy 77.29 %
#   100 iterations, batch 4, lr 0.02               mIoU 5.46   fg 0.36   pixel accuracy 77.47 %
#
# At a CI budget the network learns the class prior (background is 77 % of the val pixels):
# +4.5 mIoU points and +76 points of pixel accuracy over the untrained model. Learning the
# foreground classes from scratch needs far more CPU than a CI run has (100 iterations at
# lr 0.02 reach 0.36 foreground mIoU). The margins below are under half the measured gains.
MIOU_MARGIN = 2.0
PIXEL_ACCURACY_MARGIN = 30.0
ITERATIONS = 30
BATCH_SIZE = 2


def run(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # conftest's ENV: one thread per process (on a shared 2-core machine two spinning OpenMP
    # threads per process ran these small CPU jobs several times slower: 5 Paddle training
    # iterations 171 s with 1 thread vs 234 s with the default, under load).
    return run_module(*args, cwd=cwd, timeout=timeout)


def subprocess_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-c", code, *args], cwd=cwd, timeout=600)


def check(proc: subprocess.CompletedProcess, expected: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == expected, (proc.args, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def evaluate(module: str, weights: Path, data: Path, out: Path, cwd: Path) -> Dict:
    check(
        run(
            module,
            "--model",
            "farseg",
            "--weights",
            str(weights),
            "--images",
            str(data / "val" / "images"),
            "--masks",
            str(data / "val" / "labels"),
            "--window",
            "64",
            "--stride",
            "48",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            str(out),
            cwd=cwd,
        )
    )
    return json.loads(out.read_text())


def test_synth_prepare_train_evaluate(tmp_path):
    src, data, run_dir = tmp_path / "src", tmp_path / "data", tmp_path / "run"
    check(run("isaid.synth", str(src), "--train", "6", "--val", "2", "--size", "160", "--seed", "0", cwd=tmp_path))
    check(run("isaid.prepare", str(src), str(data), "--window", "64", "--stride", "48", "--no-progress", cwd=tmp_path))
    check(
        run(
            "paddle_impl.train",
            "--config",
            str(REPO_ROOT / "configs" / "farseg_isaid.yaml"),
            "--set",
            "init.imagenet=none",
            f"train.iterations={ITERATIONS}",
            f"train.batch_size={BATCH_SIZE}",
            f"data.root={data}",
            "data.window=64",
            f"train.out_dir={run_dir}",
            "train.amp=none",
            "train.device=cpu",
            "train.num_workers=0",
            "train.log_every=10",
            "--no-progress",
            cwd=tmp_path,
        )
    )
    trained_weights = run_dir / "model_final.pdparams"
    assert trained_weights.is_file()

    # Untrained baseline: the official initialisation with the training seed, saved the way
    # a user would (a bare state dict through convert's atomic writer).
    untrained_weights = tmp_path / "untrained.pdparams"
    snippet = (
        "import paddle, sys; from paddle_impl import build_model; from convert import save_paddle;"
        " paddle.seed(2333); save_paddle(build_model('farseg').state_dict(), sys.argv[1])"
    )
    check(subprocess_python(snippet, str(untrained_weights), cwd=tmp_path))

    trained = evaluate("paddle_impl.evaluate", trained_weights, data, tmp_path / "trained.json", tmp_path)
    untrained = evaluate("paddle_impl.evaluate", untrained_weights, data, tmp_path / "untrained.json", tmp_path)
    scenes = json.loads((data / "val" / "index.json").read_text())["scenes"]
    for result in (trained, untrained):
        confusion = np.array(result["confusion"])
        assert confusion.shape == (16, 16) and result["data"]["images"] == len(scenes) == 2
        assert confusion.sum() == sum(scene["height"] * scene["width"] for scene in scenes)
        assert result["windows"] == sum(len(scene["patches"]) for scene in scenes)
    print(
        f"mIoU trained {trained['miou']:.2f} vs untrained {untrained['miou']:.2f}; pixel accuracy"
        f" {trained['pixel_accuracy']:.2f} vs {untrained['pixel_accuracy']:.2f}"
    )
    # The plain 16-class mean can be undefined (a class absent from truth and prediction);
    # synth puts every class in every scene, so it is defined here.
    assert trained["miou"] is not None and untrained["miou"] is not None
    assert trained["miou"] >= untrained["miou"] + MIOU_MARGIN
    assert trained["pixel_accuracy"] >= untrained["pixel_accuracy"] + PIXEL_ACCURACY_MARGIN

    # The Paddle-trained checkpoint in the torch evaluator (converted in memory): the same
    # matrix up to float32 argmax flips on near-ties (at most 0.1 % of the pixels).
    in_torch = evaluate("torch_ref.evaluate", trained_weights, data, tmp_path / "torch.json", tmp_path)
    difference = np.abs(np.array(in_torch["confusion"]) - np.array(trained["confusion"])).sum() // 2
    assert difference <= 0.001 * np.array(trained["confusion"]).sum()
    assert "converted on the fly" in in_torch["weights"]["loaded_as"]

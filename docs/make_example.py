"""Make ``docs/prediction_example.png``: a prediction on a synthetic scene next to its ground truth.

Usage::

    python docs/make_example.py [--iterations 300] [--batch-size 4] [--window 128]
                                [--out docs/prediction_example.png] [--work DIR]

Every step is the project's own command line, as a user would run it:
``isaid.synth`` (synthetic iSAID-like scenes) -> ``isaid.prepare`` (``--window`` patches) ->
``paddle_impl.train`` (FarSeg from RANDOM initialisation, no ImageNet weights, ``--iterations``
on the CPU) -> ``paddle_impl.predict`` on a held-out validation scene with ``--color`` ->
the picture: the scene, its ground truth and the prediction in the iSAID palette, with the
class legend and the scene's mIoU in the caption. The figure says how the model was trained;
it illustrates the pipeline, not the accuracy of the official weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app.preview import compose_panels  # noqa: E402
from isaid.imageio import read_index_mask, read_rgb, write_png_atomic  # noqa: E402
from isaid.metrics import confusion_from_labels, miou  # noqa: E402
from isaid.palette import colorize  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "docs", "prediction_example.png")


def run(args: List[str]) -> None:
    print("$ python -m " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python docs/make_example.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="training iterations (default 300)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (default 4)")
    parser.add_argument("--window", type=int, default=128, help="patch / prediction window (default 128)")
    parser.add_argument("--size", type=int, default=384, help="synthetic scene side (default 384)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the picture (default docs/prediction_example.png)")
    parser.add_argument("--work", help="working folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="make_example_") as temporary:
        work = args.work or temporary
        src, data, run_dir = (os.path.join(work, name) for name in ("src", "data", "run"))
        stride = args.window * 3 // 4
        run(["isaid.synth", src, "--train", "6", "--val", "1", "--size", str(args.size), "--seed", "0", "--no-zip"])
        run(["isaid.prepare", src, data, "--window", str(args.window), "--stride", str(stride), "--no-progress"])
        run(
            [
                "paddle_impl.train",
                "--config",
                "configs/farseg_isaid.yaml",
                "--no-progress",
                "--set",
                "init.imagenet=none",
                f"train.iterations={args.iterations}",
                f"train.batch_size={args.batch_size}",
                f"data.root={data}",
                f"data.window={args.window}",
                f"train.out_dir={run_dir}",
                "train.amp=none",
                "train.device=cpu",
                "train.num_workers=0",
                "train.log_backend=none",
                f"train.checkpoint_every={args.iterations}",
                f"train.log_every={max(1, args.iterations // 10)}",
            ]
        )
        scene_name = sorted(os.listdir(os.path.join(data, "val", "images")))[0]
        scene = os.path.join(data, "val", "images", scene_name)
        prediction = os.path.join(work, "prediction.png")
        run(
            [
                "paddle_impl.predict",
                "--weights",
                os.path.join(run_dir, "model_final.pdparams"),
                "--image",
                scene,
                "--out",
                prediction,
                "--window",
                str(args.window),
                "--stride",
                str(stride),
                "--device",
                "cpu",
                "--color",
                os.path.join(work, "colour.png"),
            ]
        )
        image = read_rgb(scene)
        truth = read_index_mask(os.path.join(data, "val", "labels", scene_name))
        predicted = np.asarray(Image.open(prediction))
        scores = miou(confusion_from_labels(predicted, truth))
        fractions = np.bincount(predicted.ravel(), minlength=16)[:16] / predicted.size
        caption = (
            f"FarSeg (Paddle) trained from random initialisation for {args.iterations} iterations"
            f" x {args.batch_size} patches of {args.window} px on the CPU (synthetic data);"
            f" mIoU on this held-out scene {100 * scores['miou']:.1f}%"
        )
        picture = compose_panels(
            [
                ("synthetic scene (validation)", image),
                ("ground truth", colorize(truth)),
                ("prediction (paddle_impl.predict)", colorize(predicted)),
            ],
            fractions=fractions,
            caption=caption,
        )
        write_png_atomic(args.out, picture)
        print(f"wrote {args.out}: {caption}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line shared by ``python -m align`` and ``python -m align.<stage>``.

Exit status: 0 every compared value passed; 1 some value failed (the report says which, and
where torch_ref and paddle_impl first diverge); 2 bad input (one ``error:`` line on stderr).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from app.cli import OneLineArgumentParser
from weights import MODEL_NAMES

from .compare import DEFAULT_TOLERANCES, StageResult, Tolerance, format_report, summary_line
from .config import AGAINST, DEFAULT_STAGES, DEFAULT_TRAIN_ITERATIONS, DTYPES, STAGES, AlignConfig, AlignInputError

EPILOG = """\
relative error: max|torch - paddle| / max|torch| per compared value (gradients: with a floor at
a fraction of the model's largest gradient, so mathematically-zero gradients made of rounding
noise do not count). Default thresholds per kind and dtype are listed in each diff.txt.
files: <out>/<model>/<stage>/{torch.npy, paddle.npy (reprod_log ReprodLogger dicts),
diff.txt (report), diff.json (every compared value: max/mean abs, rel, threshold, pass)}.
exit status: 0 all values pass, 1 some value fails, 2 bad input.
"""


TOLERANCE_KINDS = tuple(DEFAULT_TOLERANCES["float64"])


def _tolerance_override(text: str) -> Tuple[str, Tolerance]:
    try:
        kind, value = text.split("=", 1)
        rtol, _, atol = value.partition(":")
        tol = Tolerance(float(rtol), float(atol) if atol else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KIND=RTOL[:MEAN_ATOL], got {text!r}") from None
    if kind not in TOLERANCE_KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {kind!r}: expected one of {', '.join(TOLERANCE_KINDS)}")
    return kind, tol


def build_parser(stage: Optional[str], module_doc: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of ``python -m align`` (stage None) or ``python -m align.<stage>``;
    ``module_doc``: the stage module's docstring (its first paragraph describes the stage)."""
    prog = "python -m align" + (f".{stage}" if stage else "")
    # A stage's description is the first paragraph of its module's docstring (stage modules
    # import torch and Paddle only when they run: --help stays instant).
    what = (
        f"Run the alignment stages ({', '.join(STAGES)}) of torch_ref against paddle_impl."
        if stage is None
        else (module_doc or "").split("\n\n")[0]
    )
    epilog = EPILOG
    if stage in ("forward", "backward"):
        from .anycli import build_parser as build_pair_parser  # no framework import: --help stays instant

        # The pair command is a second parser (chosen by --torch / --paddle): its whole help here,
        # so that one --help documents every option.
        epilog += (
            f"\nYOUR OWN MODEL PAIR (any torch model and its Paddle port; docs/align_your_model.md): "
            f"with --torch / --paddle, {prog} takes these options instead.\n\n" + build_pair_parser(stage).format_help()
        )
    p = OneLineArgumentParser(
        prog=prog, description=what, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        choices=MODEL_NAMES + ("all",),
        default="all",
        help="which model (default: all = farseg then factseg)",
    )
    if stage is None:
        p.add_argument(
            "--stages",
            default=",".join(DEFAULT_STAGES),
            help=f"comma-separated stages to run, in this order, from {','.join(STAGES)} "
            f"(default: {','.join(DEFAULT_STAGES)}; train takes minutes)",
        )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float64",
        help="precision of both models and inputs (default float64: porting bugs show "
        "up far above the 1e-12..1e-9 rounding floor; float32 noise is 1e-6..1e-2)",
    )
    p.add_argument("--batch", type=int, default=2, help="batch size of the synthetic input (default 2)")
    p.add_argument(
        "--size", type=int, default=64, help="height = width of the synthetic input, a multiple of 32 (default 64)"
    )
    p.add_argument(
        "--seed", type=int, default=2333, help="seed of the random weights, inputs, labels and logits (default 2333)"
    )
    p.add_argument(
        "--torch-ckpt",
        metavar="PATH",
        help="official-layout checkpoint (.pth, or .pdparams) instead of random weights; "
        "loaded without executing code; needs a single --model",
    )
    p.add_argument(
        "--input",
        metavar="X.npy",
        help="input batch (float [B,3,H,W] or [3,H,W], H and W multiples of 32) instead "
        "of synthetic scenes; overrides --batch/--size",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="out/align",
        help="root of the output files: DIR/<model>/<stage>/ (default out/align)",
    )
    p.add_argument("--rtol", type=float, help="relative-error bound for every non-exact kind (overrides the defaults)")
    p.add_argument(
        "--atol", type=float, help="mean-absolute-difference bound for every non-exact kind (overrides the defaults)"
    )
    p.add_argument(
        "--tol",
        action="append",
        type=_tolerance_override,
        default=[],
        metavar="KIND=RTOL[:MEAN_ATOL]",
        help=f"bound for one kind of value, repeatable; kinds: {', '.join(TOLERANCE_KINDS)}",
    )
    if stage in (None, "backward"):
        p.add_argument(
            "--steps", type=int, default=3, help="backward: iterations of the trainers' TrainStep (default 3)"
        )
        p.add_argument(
            "--lr-scale",
            type=float,
            help="backward: multiply the recipe's learning rate (configs/<model>_isaid.yaml) by this "
            "(default: 0.01 in float64, where the later steps then stay sharp, 1 in float32; "
            "measured in align/compare.py)",
        )
        p.add_argument(
            "--iterations", type=int, help="backward: length of the poly lr schedule (default: the recipe's 60000)"
        )
        p.add_argument(
            "--clip",
            type=float,
            dest="clip_norm",
            help="backward: global gradient-norm clip (default: the recipe's 35, the official value)",
        )
        p.add_argument(
            "--loss-scale",
            type=float,
            help="backward: multiply the loss by this (default 1: clipping already binds "
            "on the default fixture; the report says whether it did)",
        )
        p.add_argument(
            "--full-logs",
            action="store_true",
            help="backward: also log every final parameter in the reprod_log files (~0.25 GB per side in float64)",
        )
    if stage in (None, "train"):
        # In `python -m align.train` this is --iterations; `python -m align` has the backward
        # stage's --iterations (its schedule length) too, so there it is --train-iterations.
        p.add_argument(
            "--iterations" if stage == "train" else "--train-iterations",
            type=int,
            dest="train_iterations",
            default=DEFAULT_TRAIN_ITERATIONS,
            metavar="N",
            help=f"train: iterations of both runs; the poly schedule spans them "
            f"(default {DEFAULT_TRAIN_ITERATIONS}: a few minutes on 2 CPU cores)",
        )
        p.add_argument(
            "--config",
            dest="train_config",
            metavar="YAML",
            help="train: recipe file (default configs/<model>_isaid.yaml); the stage forces "
            "train.iterations, train.amp=none, train.device and one log row per iteration",
        )
        p.add_argument(
            "--data",
            metavar="DIR",
            help="train: an isaid.prepare output (DIR/train, DIR/val) trained at the recipe's "
            "window and batch; default: synthetic scenes (isaid.synth -> isaid.prepare) cut "
            "into --size patches, batch --batch, random initial weights",
        )
        p.add_argument(
            "--device",
            choices=("cpu", "cuda", "gpu", "auto"),
            default="cpu",
            help="train: where both trainers and evaluators run (default cpu)",
        )
        p.add_argument(
            "--val-scenes", type=int, metavar="N", help="train: evaluate on the first N val scenes (default: all)"
        )
        p.add_argument(
            "--set",
            dest="sets",
            nargs="+",
            action="extend",
            default=[],
            metavar="KEY=VALUE",
            help="train: further recipe overrides, applied last (e.g. train.amp=fp16 on a GPU)",
        )
    if stage == "forward":
        p.add_argument(
            "--against",
            choices=AGAINST,
            default="paddle_impl",
            help="paddle_impl (default); x2paddle: also the X2Paddle third opinion "
            "(align.x2paddle; needs pip install -e .[x2paddle])",
        )
    p.add_argument(
        "--no-localise",
        dest="localise",
        action="store_false",
        help="on a failure, do not re-run with hooks to find the first divergent layer",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print the full report of every stage")
    return p


def config_from_args(args: argparse.Namespace, model: str) -> AlignConfig:
    """The AlignConfig of one model from parsed options (validated when made)."""
    # Every option named like an AlignConfig field sets it (stage parsers lack some options).
    values = {f.name: getattr(args, f.name) for f in fields(AlignConfig) if hasattr(args, f.name)}
    values.update(model=model, tol=dict(args.tol), sets=tuple(getattr(args, "sets", ())))
    return AlignConfig(**values)


def run_stages(
    stages: Sequence[str],
    models: Sequence[str],
    args: argparse.Namespace,
    runners: Dict[str, Callable[..., StageResult]],
    progress: bool = True,
) -> List[StageResult]:
    """Run every (model, stage), printing a summary line per stage (the full report too when a
    stage fails, with --verbose, or with --against x2paddle). ``runners`` maps every stage name
    to its ``run`` (``align.stages.RUNNERS``; this module imports no stage: they import it)."""
    from tqdm import tqdm

    from .fixtures import get_fixture

    configs = {m: config_from_args(args, m) for m in models}  # validate everything first
    results: List[StageResult] = []
    bar = tqdm(total=len(stages) * len(models), desc="align", unit="stage", disable=not progress, file=sys.stderr)
    try:
        for model in models:
            config = configs[model]
            fixture = None
            for stage in stages:
                if fixture is None and stage != "train":  # the train stage builds its own models
                    bar.set_postfix_str(f"{model}: building models")
                    fixture = get_fixture(config)
                bar.set_postfix_str(f"{model}: {stage}")
                runner = runners[stage]
                result = runner(config, fixture, progress=progress)
                results.append(result)
                tqdm.write(summary_line(result), file=sys.stdout)
                if not result.passed or args.verbose or config.against == "x2paddle":
                    tqdm.write(format_report(result) + "\n", file=sys.stdout)
                bar.update(1)
    finally:
        bar.close()
    return results


def main_for(
    stage: Optional[str],
    argv: Optional[Sequence[str]] = None,
    runner: Optional[Callable[..., StageResult]] = None,
    runners: Optional[Dict[str, Callable[..., StageResult]]] = None,
) -> int:
    """Entry point of ``python -m align`` (stage None, ``runners``: every stage's ``run``) and
    ``python -m align.<stage>`` (which passes its own ``run`` as ``runner``: the module running
    as ``__main__`` is not imported a second time)."""
    # A stage run as ``python -m align.<stage>`` is ``__main__``: its docstring comes from there.
    parser = build_parser(stage, sys.modules[runner.__module__].__doc__ if runner is not None else None)
    args = parser.parse_args(argv)
    if stage is None:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            parser.error(
                f"--stages: unknown stage {', '.join(unknown) or '(none)'}; expected some of {', '.join(STAGES)}"
            )
    else:
        stages = [stage]
    models = list(MODEL_NAMES) if args.model == "all" else [args.model]
    start = time.perf_counter()
    try:
        if args.torch_ckpt and len(models) > 1:
            raise AlignInputError("--torch-ckpt needs a single --model (farseg or factseg)")
        results = run_stages(stages, models, args, {stage: runner} if stage and runner else dict(runners or {}))
    except AlignInputError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    failed = [r for r in results if not r.passed]
    elapsed = time.perf_counter() - start
    if failed:
        names = ", ".join(f"{r.model}/{r.stage}" for r in failed)
        print(f"align: {len(failed)} of {len(results)} stage runs FAILED ({names}) in {elapsed:.1f} s")
        for r in failed:
            if r.first_divergence:
                print(f"  {r.model}/{r.stage}: first divergence: {r.first_divergence.summary}")
        return 1
    print(f"align: all {len(results)} stage runs passed in {elapsed:.1f} s")
    return 0


def stage_main(stage: str, argv: Optional[Sequence[str]], runner: Callable[..., StageResult]) -> int:
    """``python -m align.<stage>``, whose module passes its own ``run``."""
    return main_for(stage, argv, runner)

"""``python -m align.forward --torch SPEC --paddle SPEC ...`` and ``python -m align.backward ...``:
any torch model against its Paddle port (``align.engine``). ``python -m align.forward`` without
``--torch``/``--paddle`` is the FarSeg/FactSeg stage (``align.cli``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from app.cli import OneLineArgumentParser

from .compare import DEFAULT_TOLERANCES, StageResult, format_report, summary_line
from .inputs import AlignInputError
from .pairing import PAIRING_MODES

EPILOG = """\
SPEC runs YOUR code, by design: path/to/file.py:name or pkg.module:name, a zero-argument
callable returning the model (--torch: a torch nn.Module, --paddle: a Paddle nn.Layer);
--torch-loss / --paddle-loss: callable(output, target) -> scalar loss; --torch-optimizer /
--paddle-optimizer: callable(model) -> optimizer. Weight files (--torch-weights,
--paddle-weights), .npy inputs and targets and MAP.json are untrusted: read without executing
anything (no pickles), sizes capped.
relative error: max|torch - paddle| / max|torch| per compared value.
files: DIR/diff.json (passed, first_divergence, pairing, every value), DIR/diff.txt (report),
DIR/divergence.png (per-layer error along execution order; needs matplotlib).
exit status: 0 aligned, 1 diverged, 2 usage or bad input (one error: line).
"""


def is_pair_command(argv: Sequence[str]) -> bool:
    """Does ``argv`` ask for a user's pair (``--torch`` / ``--paddle``)?"""
    return any(a in ("--torch", "--paddle") or a.startswith(("--torch=", "--paddle=")) for a in argv)


def build_parser(stage: str) -> argparse.ArgumentParser:
    """The parser of ``python -m align.<stage> --torch SPEC --paddle SPEC`` (stage: forward, backward)."""
    p = OneLineArgumentParser(
        prog=f"python -m align.{stage}",
        description=f"Compare YOUR torch model with its Paddle port, {stage} "
        + ("(eval and training-mode outputs, layer by layer)." if stage == "forward" else "(K training steps)."),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--torch", required=True, metavar="SPEC", help="zero-argument factory of the torch model (runs your code)"
    )
    p.add_argument(
        "--paddle", required=True, metavar="SPEC", help="zero-argument factory of the Paddle model (runs your code)"
    )
    p.add_argument(
        "--inputs",
        required=True,
        metavar="INPUTS",
        help="a shape such as 2x3x64x64 (seeded standard normal) or a float .npy file",
    )
    p.add_argument(
        "--pairing",
        default="auto",
        metavar="auto|name|order|MAP.json",
        help="how layers pair: auto (same names, then execution order + type + shapes; default), name, "
        "order, or a JSON file {torch name: paddle name} that overrides pairs",
    )
    p.add_argument("--dtype", choices=tuple(DEFAULT_TOLERANCES), default="float64", help="precision (default float64)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of generated inputs / targets and of both frameworks (default 0)"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=f"out/align/pair/{stage}",
        help="where diff.json, diff.txt and divergence.png go",
    )
    p.add_argument(
        "--torch-weights",
        metavar="F",
        help="load the torch model's weights from F (.pth/.pt/.bin/.pdparams, read safely) instead of keeping its own",
    )
    p.add_argument(
        "--paddle-weights",
        metavar="F",
        help="load the Paddle model's weights from F instead of copying the torch weights through the pairing",
    )
    p.add_argument("--rtol", type=float, help="relative-error bound for every compared kind (overrides the defaults)")
    if stage == "backward":
        p.add_argument(
            "--targets",
            required=True,
            metavar="TARGETS",
            help="SHAPE:LOW:HIGH such as 2x64x64:0:10 (seeded int64) or a .npy file",
        )
        p.add_argument(
            "--torch-loss", required=True, metavar="SPEC", help="callable(output, target) -> scalar (runs your code)"
        )
        p.add_argument(
            "--paddle-loss", required=True, metavar="SPEC", help="callable(output, target) -> scalar (runs your code)"
        )
        p.add_argument(
            "--torch-optimizer",
            required=True,
            metavar="SPEC",
            help="callable(model) -> torch optimizer (runs your code)",
        )
        p.add_argument(
            "--paddle-optimizer",
            required=True,
            metavar="SPEC",
            help="callable(model) -> Paddle optimizer (runs your code)",
        )
        p.add_argument("--steps", type=int, default=2, metavar="K", help="training steps compared (default 2)")
        p.add_argument(
            "--step-start",
            choices=("paddle", "none"),
            default="paddle",
            help="before steps 2..K: paddle (default) copies Paddle's parameters into torch, so every step is "
            "held to the sharp step-1 thresholds; none lets both run free (loose drift thresholds: a deep "
            "model amplifies rounding chaotically)",
        )
    p.add_argument("-v", "--verbose", action="store_true", help="print the full report even when it passes")
    return p


def _load_weights(side: Any, model: Any, path: str, option: str) -> None:
    """Load a state dict file into ``model`` strictly (every tensor, same shapes)."""
    from .pairing import named_tensors
    from .spec import read_weights

    state = read_weights(path, option, side.name)
    live = named_tensors(side, model)
    missing = [n for n in live if n not in state]
    unexpected = [n for n in state if n not in live and not n.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise AlignInputError(
            f"{path}: does not match the model ({len(missing)} missing: {', '.join(missing[:3])}; "
            f"{len(unexpected)} unexpected: {', '.join(unexpected[:3])}) ({option})"
        )
    for name, tensor in live.items():
        value = state[name]
        if tuple(value.shape) != tuple(int(d) for d in tensor.shape):
            raise AlignInputError(
                f"{path}: {name} has shape {list(value.shape)}, the model {list(tensor.shape)} ({option})"
            )
        side.assign(tensor, value)


def run(stage: str, args: argparse.Namespace) -> StageResult:
    """Build, pair and compare the two models of ``args``; AlignInputError on bad input."""
    from .compare import pair_tolerances
    from .engine import backward, forward, prepare
    from .sides import PADDLE, TORCH
    from .spec import call_spec, read_inputs, read_pair_map, read_targets

    # Files first: a bad input fails before any user code or framework loads.
    mapping = None
    pairing = args.pairing
    if pairing not in PAIRING_MODES:
        if not pairing.endswith(".json"):
            raise AlignInputError(f"--pairing {pairing!r}: expected auto, name, order or a MAP.json file")
        mapping, pairing = read_pair_map(pairing), "auto"
    x = read_inputs(args.inputs, args.dtype, args.seed)
    y = read_targets(args.targets, args.dtype, args.seed) if stage == "backward" else None
    if stage == "backward" and args.steps < 1:
        raise AlignInputError(f"--steps must be at least 1, got {args.steps}")
    if args.rtol is not None and not args.rtol >= 0:
        raise AlignInputError(f"--rtol must be a non-negative number, got {args.rtol}")
    TORCH.seed(args.seed)
    PADDLE.seed(args.seed)
    torch_model = call_spec(args.torch, "--torch")
    paddle_model = call_spec(args.paddle, "--paddle")
    if args.torch_weights:
        _check_model(torch_model, TORCH, "--torch")
        _load_weights(TORCH, torch_model, args.torch_weights, "--torch-weights")
    copy = not args.paddle_weights
    if args.paddle_weights:
        _check_model(paddle_model, PADDLE, "--paddle")
        _load_weights(PADDLE, paddle_model, args.paddle_weights, "--paddle-weights")
    pair = prepare(torch_model, paddle_model, x, args.dtype, pairing, mapping, copy)
    tols = pair_tolerances(args.dtype, args.rtol)
    settings = {"torch_spec": args.torch, "paddle_spec": args.paddle, "inputs": args.inputs, "seed": args.seed}
    out = Path(args.out)
    if stage == "forward":
        return forward(pair, x, args.dtype, tols, out, settings=settings)
    t_opt = call_spec(args.torch_optimizer, "--torch-optimizer", torch_model)
    p_opt = call_spec(args.paddle_optimizer, "--paddle-optimizer", paddle_model)
    t_loss = _loaded(args.torch_loss, "--torch-loss")
    p_loss = _loaded(args.paddle_loss, "--paddle-loss")
    settings.update(targets=args.targets, torch_loss=args.torch_loss, paddle_loss=args.paddle_loss)
    settings.update(torch_optimizer=args.torch_optimizer, paddle_optimizer=args.paddle_optimizer)
    return backward(
        pair,
        x,
        y,
        t_loss,
        p_loss,
        t_opt,
        p_opt,
        args.steps,
        args.dtype,
        tols,
        out,
        settings=settings,
        step_start=args.step_start,
    )


def _loaded(spec: str, option: str) -> Any:
    from .spec import load_spec

    return load_spec(spec, option)


def _check_model(model: Any, side: Any, option: str) -> None:
    if not side.owns(model):
        raise AlignInputError(
            f"{option}: expected a {side.name} model, got {type(model).__module__}.{type(model).__name__}"
        )


def main(stage: str, argv: Optional[Sequence[str]] = None) -> int:
    """``python -m align.<stage> --torch SPEC --paddle SPEC ...``: 0 aligned, 1 diverged, 2 bad input."""
    parser = build_parser(stage)
    args = parser.parse_args(argv)
    try:
        result = run(stage, args)
    except AlignInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary_line(result))
    if not result.passed or args.verbose:
        print(format_report(result))
    if result.first_divergence is not None:
        print(f"first divergence: {result.first_divergence.summary}")
    return 0 if result.passed else 1


def pair_main(stage: str, argv: Optional[Sequence[str]]) -> Optional[int]:
    """``main(stage, argv)`` when ``argv`` names a user's pair, else None (the FarSeg/FactSeg stage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(stage, argv) if is_pair_command(argv) else None


__all__: List[str] = ["build_parser", "is_pair_command", "main", "pair_main", "run"]

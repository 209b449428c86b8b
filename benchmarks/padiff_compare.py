"""The planted cases of tests/align_pairs through PaDiff 0.2.0 (defaults and tuned) and through align.

Forward: every clean pair (a failure is a false positive) and every planted forward bug (named
at its layer?). Backward (3 steps of loss, backward and optimiser step): clean pairs and the
planted loss / optimiser / BatchNorm bugs (named at their step and kind?). Tools: PaDiff's
``auto_diff`` in float32 at its defaults (tensor means, rtol 1e-7) and tuned
(``compare_mode="strict"``, rtol 1e-4, atol 1e-6), each call in a child process (importing
PaDiff patches torch and Paddle for the whole process); ``python -m align.forward`` /
``align.backward`` in float32 and in float64 (align's recommended dtype). PaDiff marks a
forward divergence in a printed tree (``*** HERE ***``) by type and position only: the child
maps the position to the Paddle layer's qualified name (the n-th ``(net)`` line is the n-th call
of a layer that owns parameters; an API called inside it counts as that layer) or keeps the API
name (``api:...``, counted as correct when it is the planted layer's function). Lines of user
code: one forward comparison (imports, models, inputs, the call), counted from the snippets
below. Seconds: wall time of each child process, framework imports included.

Usage (PaDiff optional: ``pip install -e ".[padiff]"``)::

    OMP_NUM_THREADS=1 python benchmarks/padiff_compare.py [--out benchmarks/results/padiff_compare.json]

Writes the JSON and ``benchmarks/results/padiff_compare.md`` (the README table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "padiff_compare.json"
PAIRS = "tests/align_pairs"

# Forward cases: (case, file, paddle factory, planted layer or None, PaDiff API names that count).
CASES = [
    ("resnet clean", "resnet_pair.py", "paddle_model", None, ()),
    ("resnet renamed clean", "resnet_pair.py", "paddle_model_renamed", None, ()),
    ("mlp clean", "mlp_pair.py", "paddle_model", None, ()),
    ("reuse clean", "reuse_pair.py", "paddle_model", None, ()),
    ("encdec clean", "encdec_pair.py", "paddle_model", None, ()),
    ("resnet18 clean", "resnet_zoo.py", "paddle_model", None, ()),
    ("resnet padding_mode", "resnet_pair.py", "paddle_model_padding_mode", "layer2.0.conv1", ()),
    ("resnet activation", "resnet_pair.py", "paddle_model_activation", "layer2.0.relu1", ("leaky_relu",)),
    ("resnet bn_eps", "resnet_pair.py", "paddle_model_bn_eps", "layer1.0.bn2", ()),
    ("mlp activation", "mlp_pair.py", "paddle_model_activation", "act2", ("leaky_relu",)),
    ("encdec align_corners", "encdec_pair.py", "paddle_model_align_corners", "up1", ("interpolate", "upsample")),
]

# Backward cases (3 steps, float32): (case, file, factories that differ from the clean ones,
# expected (step, kind) or None for a clean pair). Kinds: align's; PaDiff's messages mapped.
BACKWARD_CASES = [
    ("resnet backward clean", "resnet_pair.py", {}, None),
    ("mlp backward clean", "mlp_pair.py", {}, None),
    ("encdec backward clean", "encdec_pair.py", {}, None),
    ("resnet18 backward clean", "resnet_zoo.py", {}, None),
    ("resnet group lr", "resnet_pair.py", {"paddle_optimizer": "paddle_optimizer_group_lr"}, (1, "param")),
    ("resnet poly end_lr", "resnet_pair.py", {"paddle_optimizer": "paddle_optimizer_poly_end_lr"}, (2, "param")),
    ("resnet weight decay", "resnet_pair.py", {"paddle_optimizer": "paddle_optimizer_no_weight_decay"}, (1, "param")),
    ("resnet bn momentum", "resnet_pair.py", {"paddle": "paddle_model_bn_momentum"}, (1, "buffer")),
    (
        "mlp label smoothing",
        "mlp_pair.py",
        {"torch_loss": "torch_loss_smoothing", "paddle_loss": "paddle_loss_smoothing"},
        (1, "loss"),
    ),
    ("encdec loss no axis", "encdec_pair.py", {"paddle_loss": "paddle_loss_no_axis"}, (1, "loss")),
]
STEPS = 3
CLEAN_FACTORIES = {
    "torch": "torch_model",
    "paddle": "paddle_model",
    "torch_loss": "torch_loss",
    "paddle_loss": "paddle_loss",
    "torch_optimizer": "torch_optimizer",
    "paddle_optimizer": "paddle_optimizer",
}
# PaDiff's "Diff found in ..." messages -> align's kinds.
PADIFF_KINDS = {"Forward": "output", "loss": "loss", "grad": "grad", "weights": "param"}

# align at the dtype of the PaDiff runs and at its recommended one (float64).
ALIGN_TOOLS = {"align_float32": "float32", "align_float64": "float64"}
MODES = {
    "padiff_default": {},
    "padiff_tuned": {"compare_mode": "strict", "rtol": 1e-4, "atol": 1e-6},
}

# What a user writes for one PaDiff comparison (the child runs exactly this, plus the mapping).
PADIFF_SNIPPET = """\
import numpy as np, paddle, torch
from padiff import auto_diff
from my_models import torch_model, paddle_model
module, layer = torch_model(), paddle_model()
x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
inputs = ({"x": paddle.to_tensor(x)}, {"x": torch.from_numpy(x)})
ok = auto_diff(layer, module, inputs, auto_weights=True, options=OPTIONS)
"""
ALIGN_SNIPPET = """\
python -m align.forward --torch my_models.py:torch_model --paddle my_models.py:paddle_model \\
  --inputs SHAPE --dtype float32
"""

CHILD = r"""
import glob, importlib.util, json, re, sys
import numpy as np, paddle, torch
from padiff import auto_diff
job = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location("pair", job["path"])
pair = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pair)
f = job["factories"]
module, layer = getattr(pair, f["torch"])(), getattr(pair, f["paddle"])()
calls = []
for name, sub in layer.named_sublayers():
    if list(sub.parameters(include_sublayers=False)):
        sub.register_forward_pre_hook(lambda l, i, name=name: calls.append(name))
x = np.random.default_rng(0).standard_normal(job["shape"]).astype("float32")
kwargs = {}
if job["targets"]:
    shape, high = job["targets"]
    y = np.random.default_rng(1).integers(0, high, shape).astype("int64")
    ploss, tloss = getattr(pair, f["paddle_loss"]), getattr(pair, f["torch_loss"])
    kwargs["loss_fn"] = (lambda out: ploss(out, paddle.to_tensor(y)), lambda out: tloss(out, torch.from_numpy(y)))
    kwargs["optimizer"] = (getattr(pair, f["paddle_optimizer"])(layer), getattr(pair, f["torch_optimizer"])(module))
    kwargs["steps"] = job["steps"]
inputs = ({"x": paddle.to_tensor(x)}, {"x": torch.from_numpy(x)})
ok = auto_diff(layer, module, inputs, auto_weights=True, options=job["options"], **kwargs)
print("PADIFF_CALLS " + json.dumps(calls))
# PaDiff writes what it blames in a gradient or weight check to diff_log/*.log (working directory).
for log in sorted(glob.glob("diff_log/*.log")):
    found = re.search(r"paddle path:\s*\n\s*(\S+)", open(log).read())
    if found:
        print("PADIFF_LOG " + json.dumps([log, found.group(1).split(".", 1)[1]]))
        break
print("PADIFF_OK " + json.dumps(bool(ok)))
"""


def blamed(stdout: str) -> Optional[str]:
    """The Paddle layer (qualified name), API or parameter PaDiff blames, None if none."""
    calls_line = [line for line in stdout.splitlines() if line.startswith("PADIFF_CALLS ")]
    calls = json.loads(calls_line[-1].split(" ", 1)[1]) if calls_line else []
    tree = stdout.split("Paddle Model", 1)[1].split("Torch Model", 1)[0] if "Paddle Model" in stdout else ""
    lines = [line for line in tree.splitlines() if "(net)" in line or "(api)" in line][1:]  # [0]: the root
    net_index, net_depth = -1, -1
    for line in lines:
        depth = line.index("(")
        if "(net)" in line:
            net_index, net_depth = net_index + 1, depth
        if "*** HERE ***" in line:
            if "(api)" in line and depth <= net_depth or net_index < 0:  # a call outside any layer
                return "api:" + re.sub(r".*\(api\)\s*(\S+).*", r"\1", line)
            # a (net) line, or an API called inside the last layer (e.g. a padding conv's F.pad)
            return calls[net_index] if 0 <= net_index < len(calls) else f"net#{net_index}"
    logged = [line for line in stdout.splitlines() if line.startswith("PADIFF_LOG ")]
    if logged:  # a gradient or weight difference: PaDiff names the parameter in its log
        return json.loads(logged[-1].split(" ", 1)[1])[1]
    return None


def padiff_where(stdout: str) -> Tuple[Optional[int], Optional[str]]:
    """(1-based step, kind) of PaDiff's failure: the last "Train Step N" and its "Diff found in" line."""
    steps = re.findall(r"Train Step (\d+)", stdout)
    found = re.search(r"Diff found in (.*)", stdout)
    if not found:
        return None, None
    kind = next((k for word, k in PADIFF_KINDS.items() if word in found.group(1)), found.group(1)[:40])
    return (int(steps[-1]) + 1 if steps else None), kind


def run_padiff(job: Dict[str, Any], workdir: Path) -> Tuple[Dict[str, Any], str]:
    """One auto_diff call in a child process (PaDiff patches the frameworks it is imported into)."""
    started = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        cwd=workdir,  # PaDiff writes diff_log/ and padiff_dump/ into its working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    row: Dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1)}
    ok_line = [line for line in done.stdout.splitlines() if line.startswith("PADIFF_OK ")]
    if not ok_line:
        row["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return row, done.stdout
    row["passed"] = json.loads(ok_line[-1].split(" ", 1)[1])
    if not row["passed"]:
        row["blamed"] = blamed(done.stdout)
        row["step"], row["kind"] = padiff_where(done.stdout)
    return row, done.stdout


def run_align(stage: str, args: List[str], out: Path) -> Dict[str, Any]:
    """``python -m align.<stage> ARGS --out OUT``; its diff.json's verdict and first divergence."""
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run(
        [sys.executable, "-m", f"align.{stage}", *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    row: Dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1)}
    found = sorted(out.rglob("diff.json"))
    if done.returncode == 2 or not found:
        row["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return row
    diff = json.loads(found[0].read_text())
    row["passed"] = bool(diff.get("passed"))
    first = diff.get("first_divergence") or {}
    if not row["passed"]:
        name = first.get("parameter") or first.get("paddle")
        row["blamed"] = re.split(r"[#\s\[(@]", str(name or ""), maxsplit=1)[0] or None
        row["step"], row["kind"] = first.get("step"), first.get("kind")
    return row


def forward_correct(row: Dict[str, Any], layer: Optional[str], apis: Sequence[str]) -> bool:
    """Clean: passed. Planted: failed, naming the planted layer (or, PaDiff only, its API)."""
    if "error" in row:
        return False
    if layer is None:
        return row["passed"]
    name = row.get("blamed") or ""
    if row["passed"] or not name:
        return False
    return any(api in name for api in apis) if name.startswith("api:") else name == layer


def backward_correct(row: Dict[str, Any], expected: Optional[Tuple[int, str]]) -> bool:
    """Clean: passed. Planted: failed at the expected step with the expected kind."""
    if "error" in row:
        return False
    if expected is None:
        return row["passed"]
    return not row["passed"] and (row.get("step"), row.get("kind")) == expected


def pair_shape(file_name: str) -> List[int]:
    """The pair file's INPUTS shape (read from its text: this process imports no framework)."""
    text = (ROOT / PAIRS / file_name).read_text()
    return [int(v) for v in re.search(r'^INPUTS = "([\dx]+)"', text, re.M).group(1).split("x")]


def pair_targets(file_name: str) -> Tuple[List[int], int]:
    """The pair file's TARGETS ("2x16x16:0:16") as (shape, number of classes)."""
    text = (ROOT / PAIRS / file_name).read_text()
    shape, _, high = re.search(r'^TARGETS = "([\dx]+):(\d+):(\d+)"', text, re.M).groups()
    return [int(v) for v in shape.split("x")], int(high)


def forward_args(file_name: str, factory: str, shape: Sequence[int], dtype: str) -> List[str]:
    """align.forward's arguments for a pair."""
    where = f"{PAIRS}/{file_name}"
    inputs = "x".join(map(str, shape))
    return [
        "--torch",
        f"{where}:torch_model",
        "--paddle",
        f"{where}:{factory}",
        "--inputs",
        inputs,
        "--dtype",
        "float32",
    ]


def backward_args(
    file_name: str, factories: Dict[str, str], shape: Sequence[int], targets: Tuple, dtype: str
) -> List[str]:
    """align.backward's arguments for a pair, STEPS steps."""
    where = f"{PAIRS}/{file_name}"
    args = ["--inputs", "x".join(map(str, shape)), "--targets", f"{'x'.join(map(str, targets[0]))}:0:{targets[1]}"]
    args += ["--dtype", dtype, "--steps", str(STEPS)]
    for option, factory in factories.items():
        args += [f"--{option.replace('_', '-')}", f"{where}:{factory}"]
    return args


def table(results: Dict[str, Any]) -> str:
    """The README table: planted cases named, false positives, user lines, seconds per tool."""
    rows = [
        "| tool | forward bugs named at their layer | backward bugs named at their step and kind "
        "| false positives (clean pairs) | lines of user code (one forward check) | seconds (all cases) |",
        "|---|---|---|---|---|---|",
    ]
    for tool, per_case in results["tools"].items():
        fwd_bugs = [c[0] for c in CASES if c[3] is not None]
        bwd_bugs = [c[0] for c in BACKWARD_CASES if c[3] is not None]
        clean = [c[0] for c in CASES if c[3] is None] + [c[0] for c in BACKWARD_CASES if c[3] is None]
        named_f = sum(1 for c in fwd_bugs if per_case[c]["correct"])
        named_b = sum(1 for c in bwd_bugs if per_case[c]["correct"])
        false_pos = sum(1 for c in clean if per_case[c].get("passed") is False)
        errors = sum(1 for row in per_case.values() if "error" in row)
        seconds = sum(row.get("seconds", 0.0) for row in per_case.values())
        note = f" ({errors} runs failed to start)" if errors else ""
        rows.append(
            f"| {tool}{note} | {named_f}/{len(fwd_bugs)} | {named_b}/{len(bwd_bugs)} | {false_pos}/{len(clean)} "
            f"| {results['user_lines'][tool]} | {seconds:.0f} |"
        )
    return "\n".join(rows) + "\n"


def _command_output(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every case through every tool; write the JSON and the markdown table."""
    parser = argparse.ArgumentParser(prog="python benchmarks/padiff_compare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    tools = [*MODES, *ALIGN_TOOLS]
    parser.add_argument("--tools", nargs="+", default=tools, choices=tools, help="tools to run (default all)")
    args = parser.parse_args(argv)
    import tempfile

    results: Dict[str, Any] = {"tools": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for tool in args.tools:
            per_case: Dict[str, Any] = {}
            results["tools"][tool] = per_case
            for name, file_name, factory, layer, apis in CASES:
                shape = pair_shape(file_name)
                workdir = Path(tmp) / tool / name.replace(" ", "_")
                workdir.mkdir(parents=True)
                if tool in ALIGN_TOOLS:
                    row = run_align("forward", forward_args(file_name, factory, shape, ALIGN_TOOLS[tool]), workdir)
                else:
                    factories = dict(CLEAN_FACTORIES, paddle=factory)
                    job = {"path": str(ROOT / PAIRS / file_name), "factories": factories, "shape": shape}
                    row, _ = run_padiff(dict(job, options=MODES[tool], targets=None, steps=1), workdir)
                row["correct"] = forward_correct(row, layer, apis)
                per_case[name] = row
                print(tool, name, json.dumps(row), flush=True)
            for name, file_name, changed, expected in BACKWARD_CASES:
                shape, targets = pair_shape(file_name), pair_targets(file_name)
                factories = dict(CLEAN_FACTORIES, **changed)
                workdir = Path(tmp) / tool / name.replace(" ", "_")
                workdir.mkdir(parents=True)
                if tool in ALIGN_TOOLS:
                    args_ = backward_args(file_name, factories, shape, targets, ALIGN_TOOLS[tool])
                    row = run_align("backward", args_, workdir)
                else:
                    job = {"path": str(ROOT / PAIRS / file_name), "factories": factories, "shape": shape}
                    row, _ = run_padiff(dict(job, options=MODES[tool], targets=targets, steps=STEPS), workdir)
                row["correct"] = backward_correct(row, expected)
                per_case[name] = row
                print(tool, name, json.dumps(row), flush=True)
    results["user_lines"] = {
        # logical lines: a shell line continued with a backslash counts once
        tool: len((ALIGN_SNIPPET if tool in ALIGN_TOOLS else PADIFF_SNIPPET).replace("\\\n", "").strip().splitlines())
        for tool in args.tools
    }
    results["modes"] = MODES
    results["cases"] = [{"case": c[0], "file": c[1], "paddle": c[2], "planted_layer": c[3]} for c in CASES]
    flags = [line for line in _command_output(["lscpu"]).splitlines() if line.startswith("Flags")]
    results.update(
        {
            "command": "python benchmarks/padiff_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_flags": flags[:1]},
            "uptime": _command_output(["uptime"]),
            "dtype": {**{m: "float32" for m in MODES}, **ALIGN_TOOLS},
        }
    )
    from common.atomic import write_bytes_atomic

    markdown = table(results)
    write_bytes_atomic(args.out, (json.dumps(results, indent=1) + "\n").encode("utf-8"))
    write_bytes_atomic(args.out.with_suffix(".md"), markdown.encode("utf-8"))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

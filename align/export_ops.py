"""Write ``weights/export_ops.json``: the op types this project's exports contain.

Usage::

    python -m align.export_ops            # rewrites weights/export_ops.json (a few minutes on a CPU)

Exports FarSeg and FactSeg (random weights: the op set does not depend on them) with every
exporter the project has: ``paddle_impl.export`` (Paddle PIR ``model.json``, dynamic and
fixed size, and ``--format onnx`` through paddle2onnx) and ``torch_ref.export`` (torch's ONNX
exporter, dynamic and fixed size), and records the union of the op types per format. The
loaders (:func:`app.export_inspect.check_program_ops`) accept a program only if every op it holds is
in that list, before Paddle Inference or onnxruntime sees it; ``tests/test_bounded_inputs.py``
checks that a fresh export passes and a planted op does not.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Set

from app.export_inspect import EXPORT_OPS_FILE, onnx_program_ops, paddle_program_ops
from weights import MODEL_NAMES

FIXED_SIZE = (64, 64)


def collect(folder: Path) -> Dict[str, Set[str]]:
    """Export every model every way into ``folder``; {format: op types}."""
    import paddle
    import torch

    import app.exported
    import paddle_impl
    import torch_ref
    from paddle_impl.export import export as paddle_export
    from torch_ref.export import export as torch_export

    # Collecting the list: the exporters' own loads must not be judged by the list being made.
    app.exported.check_program_ops = lambda path, found, kind: None
    app.exported.check_onnx_ops = lambda path, model: None
    paddle.set_device("cpu")
    torch.set_num_threads(1)
    found: Dict[str, Set[str]] = {"paddle": set(), "onnx": set(), "onnx_domains": set()}
    for name in MODEL_NAMES:
        paddle_model = paddle_impl.build_model(name)
        paddle_model.eval()
        torch_model = torch_ref.build_model(name).eval()
        for size in (None, FIXED_SIZE):
            tag = f"{name}_{'fixed' if size else 'dynamic'}"
            out = folder / f"paddle_{tag}"
            paddle_export(name, None, str(out), size=size, model=paddle_model, check=False)
            found["paddle"] |= paddle_program_ops(str(out / "model.json"))
            for how, out in (("paddle2onnx", folder / f"p2o_{tag}"), ("torch", folder / f"torch_{tag}")):
                if how == "paddle2onnx":
                    paddle_export(name, None, str(out), size=size, model=paddle_model, check=False, fmt="onnx")
                else:
                    torch_export(name, None, str(out), size=size, model=torch_model, check=False)
                ops, domains = onnx_program_ops(str(out / "model.onnx"))
                found["onnx"] |= ops
                found["onnx_domains"] |= domains
            print(f"{tag}: {len(found['paddle'])} Paddle op types, {len(found['onnx'])} ONNX so far", flush=True)
    return found


def main(argv: List[str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        found = collect(Path(folder))
    content = {
        "made_by": "python -m align.export_ops",
        "paddle_ops": sorted(found["paddle"]),
        "onnx_ops": sorted(found["onnx"]),
        "onnx_domains": sorted(found["onnx_domains"]),
    }
    EXPORT_OPS_FILE.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {EXPORT_OPS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Why ``align.engine`` starts every backward step from the same parameters: a measurement.

The clean ResNet-50 pair (``tests/align_pairs/resnet_zoo.py``), 2x3x224x224 float64, SGD
momentum 0.9 (the zoo's loss and optimisers), as ``python -m align.backward`` runs it with
``--step-start none``. After step 1 the parameters differ by a rounding; the step-2 gradients
are then computed four ways:

- ``A``: torch from its own step-1 parameters; ``P``: Paddle from its own;
- ``B``: torch AT Paddle's step-1 parameters (copied in);
- ``C``: torch at its own parameters plus seeded noise of the same size as the torch/Paddle
  difference (each tensor: 1.65e-8 x its largest magnitude, standard normal).

``B`` vs ``P`` isolates the port (same parameters, two frameworks); ``A`` vs ``B`` and ``A`` vs
``C`` show how much the model alone amplifies a parameter difference of that size (chaos).
Relative error as align's: max|d| / max(max|reference|, 1e-6 x the largest gradient).

Usage (from the repository root)::

    python benchmarks/backward_chaos.py [--size 224] [--out benchmarks/results/backward_chaos.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "backward_chaos.json"
SEED = 0  # align's default --seed
PERTURBATION = 1.65e-8  # the torch/Paddle parameter difference after step 1, measured below too


def _worst(reference: Dict[str, np.ndarray], other: Dict[str, np.ndarray]) -> Tuple[str, float]:
    """The parameter whose gradient differs most (align's relative error with its gradient floor)."""
    floor = 1e-6 * max(float(np.abs(v).max()) for v in reference.values())
    rel = {}
    for name, a in reference.items():
        b = other[name].T if other[name].shape != a.shape else other[name]  # Paddle's [in, out] Linear
        rel[name] = float(np.abs(a - b).max() / max(float(np.abs(a).max()), floor))
    name = max(rel, key=rel.get)
    return name, rel[name]


def measure(size: int) -> Dict[str, Any]:
    """The four step-2 gradient sets of the module docstring, compared."""
    import paddle
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "align_pairs"))
    import resnet_zoo as zoo

    from align.engine import prepare
    from align.sides import PADDLE, TORCH
    from align.spec import read_inputs, read_targets

    x = read_inputs(f"2x3x{size}x{size}", "float64", SEED)
    y = read_targets("2:0:10", "float64", SEED)
    TORCH.seed(SEED)
    PADDLE.seed(SEED)
    torch_a, paddle_p = zoo.torch_resnet50(), zoo.paddle_resnet50()
    prepare(torch_a, paddle_p, x, "float64")  # pairs the layers and copies the weights, as align does
    torch_b = copy.deepcopy(torch_a)
    for model in (torch_a, paddle_p, torch_b):
        model.train()
    opt_a, opt_p = zoo.torch_optimizer(torch_a), zoo.paddle_optimizer(paddle_p)
    tx, ty, px, py = torch.from_numpy(x), torch.from_numpy(y), paddle.to_tensor(x), paddle.to_tensor(y)

    def torch_step(model: Any, optimizer: Optional[Any] = None) -> Dict[str, np.ndarray]:
        model.zero_grad(set_to_none=True)
        zoo.torch_loss(model(tx), ty).backward()
        grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return grads

    def paddle_step() -> Dict[str, np.ndarray]:
        zoo.paddle_loss(paddle_p(px), py).backward()
        grads = {n: p.grad.numpy().copy() for n, p in paddle_p.named_parameters() if not p.stop_gradient}
        opt_p.step()
        opt_p.clear_grad()
        return grads

    out: Dict[str, Any] = {}
    out["step1_grads_torch_vs_paddle"] = _worst(torch_step(torch_a, opt_a), paddle_step())
    p_params = {n: p.numpy() for n, p in paddle_p.named_parameters() if not p.stop_gradient}
    a_params = {n: p.detach().numpy().copy() for n, p in torch_a.named_parameters()}
    out["step1_params_torch_vs_paddle"] = _worst(a_params, p_params)
    torch_c = copy.deepcopy(torch_b)
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for name, param in torch_b.named_parameters():
            value = p_params[name]
            param.copy_(torch.from_numpy(value.T if value.shape != tuple(param.shape) else value))
        for name, param in torch_c.named_parameters():
            a = a_params[name]
            noise = PERTURBATION * float(np.abs(a).max()) * rng.standard_normal(a.shape)
            param.copy_(torch.from_numpy(a + noise))
    grads_a, grads_p = torch_step(torch_a, opt_a), paddle_step()
    grads_b, grads_c = torch_step(torch_b), torch_step(torch_c)
    out["step2_grads_A_torch_vs_P_paddle"] = _worst(grads_a, grads_p)
    out["step2_grads_B_torch_at_paddle_params_vs_P_paddle"] = _worst(grads_b, grads_p)
    out["step2_grads_A_vs_B_torch_at_paddle_params"] = _worst(grads_a, grads_b)
    out["step2_grads_A_vs_C_torch_perturbed"] = _worst(grads_a, grads_c)
    return {k: {"parameter": v[0], "rel": v[1]} for k, v in out.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure and write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/backward_chaos.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    document = {
        "command": "python benchmarks/backward_chaos.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": f"ResNet-50 pair, 2x3x{args.size}x{args.size} float64, zoo SGD momentum: step-2 gradients, "
        "torch vs Paddle vs torch at Paddle's parameters vs torch perturbed",
        "perturbation": PERTURBATION,
        "results": measure(args.size),
    }
    print(json.dumps(document, indent=1))
    from common.atomic import write_bytes_atomic

    data = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    write_bytes_atomic(args.out, data)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

"""The module-type table ``weights/module_types.json``, derived from this package's module tree.

Usage::

    python -m torch_ref.module_types [--check] [--out PATH]

``convert`` maps torch keys to Paddle keys by the TYPE of the module that owns each key
(BatchNorm buffers renamed, Linear weights transposed), and reads those types from
``weights/module_types.json`` so that converting never imports torch. The table is written
here, where the modules are, so that the arrow goes torch_ref -> convert only: run this
after changing a module of ``torch_ref`` (``tests/test_convert.py`` fails until then).
Paddle-only helpers have no counterpart: the table is a fact of the torch module tree.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from convert import KeyRule, atomic_write, rules_from_module
from weights import MODEL_NAMES, MODULE_TYPES_FILE, check_model_name, load_layout

from . import build_model

PROG = "python -m torch_ref.module_types"


@contextlib.contextmanager
def skip_initialisation() -> Iterator[None]:
    """Make ``torch.nn.init.*_`` no-ops while a model is built only for its structure.

    On the meta device ``normal_`` goes through torch's Python reference kernels, whose first
    use imports torch._dynamo (~2 s); the values are irrelevant here, so skip the calls.
    """
    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for n in names:
            setattr(init, n, keep)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def torch_ref_rules(model: str) -> Tuple[KeyRule, ...]:
    """The key rules of ``model`` derived from ``build_model(model)``'s module types.

    Built on the meta device (no memory, no initialisation); the module tree must give exactly
    the keys of the official layout (checked: the converter and torch_ref must agree).
    ``convert.model_rules`` is the torch-free equivalent read from the table.
    """
    check_model_name(model)
    layout = load_layout(model)
    with skip_initialisation(), torch.device("meta"):
        net = build_model(model)
    rules = rules_from_module(net, shapes=layout)
    if [r.torch_key for r in rules] != list(layout):
        missing = [k for k in layout if k not in {r.torch_key for r in rules}]
        extra = [r.torch_key for r in rules if r.torch_key not in layout]
        raise RuntimeError(
            f"torch_ref.build_model({model!r}) does not give the official layout "
            f"(missing {missing[:5]}, extra {extra[:5]}, or a different order)"
        )
    return rules


def module_types_table() -> Dict[str, Any]:
    """The content of ``weights/module_types.json``, derived from the module tree."""
    kinds: Dict[str, str] = {}
    models: Dict[str, "OrderedDict[str, str]"] = {}
    for model in MODEL_NAMES:
        rules = torch_ref_rules(model)
        for rule in rules:
            if kinds.setdefault(rule.module_type, rule.kind) != rule.kind:
                raise RuntimeError(f"two module types named {rule.module_type} of different kinds")
        models[model] = OrderedDict((r.torch_key, r.module_type) for r in rules)
    return {
        "about": "module type owning each key of the official layouts (state-dict order), and "
        "each type's kind for the converter; derived from torch_ref by "
        "python -m torch_ref.module_types, checked by tests/test_convert.py",
        "kinds": dict(sorted(kinds.items())),
        "models": models,
    }


def module_types_text() -> str:
    """The table as the bytes of the file (one-space indent, trailing newline)."""
    return json.dumps(module_types_table(), indent=1) + "\n"


def write_module_types_table(path: Optional[Union[str, Path]] = None) -> Path:
    """Regenerate ``weights/module_types.json`` (or ``path``) atomically; returns the path."""
    data = module_types_text().encode("utf-8")
    return atomic_write(path or MODULE_TYPES_FILE, lambda handle: handle.write(data))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Regenerate weights/module_types.json (the module type owning each"
        " key of both official layouts) from torch_ref's module tree."
        " Exit status 0 done / up to date, 1 --check found it stale.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file differs from what would be written"
    )
    parser.add_argument(
        "--out",
        metavar="PATH",
        default=str(MODULE_TYPES_FILE),
        help="file to write or check (default: weights/module_types.json)",
    )
    args = parser.parse_args(argv)
    if args.check:
        try:
            current = Path(args.out).read_text(encoding="utf-8")
        except OSError as error:
            print(f"{PROG}: error: {args.out}: {error.strerror or error}", file=sys.stderr)
            return 2
        if current != module_types_text():
            print(f"{args.out} is stale: run {PROG}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    print(write_module_types_table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

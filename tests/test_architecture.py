"""The import rules of docs/architecture.md, checked by reading the code (ast; nothing imported).

Three rules, each with a planted violation that the check must catch:

- package arrows: a package imports only the packages :data:`ALLOWED` lists for it (the table
  of docs/architecture.md, compared below), so ``common`` stays a leaf (``weights`` and
  ``isaid`` import nothing but it), ``convert``
  never reaches into a model package and nothing imports ``align``;
- frameworks: the framework-free packages import neither torch nor Paddle (``convert`` imports
  torch in one function only), and each model package imports only its own framework;
- no file cycles: no module reaches itself through imports, counting imports inside functions
  (a lazy import still ties the two files together).

Every ``import`` statement counts, wherever it is (module level, function body, under ``if``).
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

import pytest
from conftest import ROOT

# The rooms and what each may import (besides itself, the standard library and third-party
# packages). Written also as the table of docs/architecture.md; a test keeps the two equal.
ALLOWED: Dict[str, FrozenSet[str]] = {
    "common": frozenset(),
    "weights": frozenset(),
    "isaid": frozenset({"common"}),
    "app": frozenset({"common", "isaid", "weights", "convert"}),
    "convert": frozenset({"common", "weights"}),
    "torch_ref": frozenset({"common", "weights", "isaid", "app", "convert"}),
    "paddle_impl": frozenset({"common", "weights", "isaid", "app", "convert"}),
    "align": frozenset({"common", "weights", "isaid", "app", "convert", "torch_ref", "paddle_impl"}),
}
PACKAGES = tuple(ALLOWED)
# Top-level names that are project code but no package of the library (never imported by one).
NOT_IMPORTABLE = ("tests", "benchmarks", "docs", "configs")

# Which deep-learning frameworks each package may import, and where ("*": any of its files).
FRAMEWORKS = ("torch", "paddle")
FRAMEWORK_ALLOWED: Dict[str, Dict[str, str]] = {
    "common": {},
    "weights": {},
    "isaid": {},
    "app": {},
    "convert": {"torch": "convert/safe_load.py"},  # import_torch(): lazily, for torch tensors only
    "torch_ref": {"torch": "*"},
    "paddle_impl": {"paddle": "*"},
    "align": {"torch": "*", "paddle": "*"},
}

# ------------------------------------------------------------------------------ reading imports


def module_name(path: Path, root: Path = ROOT) -> str:
    """``torch_ref/evaluate.py`` -> ``torch_ref.evaluate``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def imported_names(source: str, module: str, is_package: bool) -> Tuple[Tuple[str, int], ...]:
    """(absolute dotted name, line) of everything ``source`` imports, relative imports resolved.

    ``from a import b`` yields both ``a`` and ``a.b`` (``b`` may be a submodule or a name in
    ``a``; :func:`resolve` decides against the files that exist). Cached: the planted-bug
    tests re-read every file with one of them changed.
    """
    return tuple(_imported_names(ast.parse(source), module, is_package))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[Tuple[str, int]]:
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module or not node.level:  # `from . import sub` names the submodule only
                yield target, node.lineno
            for alias in node.names:
                if alias.name != "*":
                    yield f"{target}.{alias.name}", node.lineno


def resolve(name: str, modules: Set[str]) -> Optional[str]:
    """The project module a dotted name lives in (longest existing prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


class Code:
    """The project's Python files under ``root`` and their imports."""

    def __init__(self, root: Path = ROOT, overrides: Optional[Dict[str, str]] = None) -> None:
        """``overrides``: ``{relative path: source}`` read instead of (or besides) the files."""
        self.root = root
        sources: Dict[str, str] = {}
        for package in PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                sources[path.relative_to(root).as_posix()] = path.read_text(encoding="utf-8")
        sources.update(overrides or {})
        self.sources = sources
        self.modules = {module_name(root / path, root): path for path in sources}

    def imports(self) -> Iterator[Tuple[str, str, str, int]]:
        """(importing module, its file, imported dotted name, line) for every import."""
        for module, path in sorted(self.modules.items()):
            is_package = path.endswith("__init__.py")
            for name, line in imported_names(self.sources[path], module, is_package):
                yield module, path, name, line

    def module_edges(self) -> Dict[str, Set[str]]:
        """module -> the project modules it imports (itself excluded)."""
        edges: Dict[str, Set[str]] = {module: set() for module in self.modules}
        for module, _, name, _ in self.imports():
            target = resolve(name, set(self.modules))
            if target is not None and target != module:
                edges[module].add(target)
        return edges


# ------------------------------------------------------------------------------ the three rules


def arrow_violations(code: Code) -> List[str]:
    """``file:line imports X`` for every import of a project package the table does not allow."""
    found = []
    for module, path, name, line in code.imports():
        source, target = module.split(".")[0], name.split(".")[0]
        if target == source:
            continue
        if target in NOT_IMPORTABLE or (target in ALLOWED and target not in ALLOWED[source]):
            found.append(
                f"{path}:{line} imports {name} ({source} may import:"
                f" {', '.join(sorted(ALLOWED[source])) or 'no project package'})"
            )
    return sorted(set(found))


def framework_violations(code: Code) -> List[str]:
    """``file:line imports torch`` for every framework import its package may not make there."""
    found = []
    for module, path, name, line in code.imports():
        framework = name.split(".")[0]
        if framework not in FRAMEWORKS:
            continue
        where = FRAMEWORK_ALLOWED[module.split(".")[0]].get(framework)
        if where is None or (where != "*" and where != path):
            found.append(f"{path}:{line} imports {name}")
    return sorted(set(found))


def file_cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def cycles(code: Code) -> List[List[str]]:
    """The file cycles of ``code`` (each a sorted list of modules)."""
    return file_cycles(code.module_edges())


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def code() -> Code:
    return Code()


def test_every_package_is_read(code: Code) -> None:
    assert {module.split(".")[0] for module in code.modules} == set(PACKAGES)
    assert sum(1 for _ in code.imports()) > 100  # the parser sees the imports at all


def test_package_arrows_follow_the_table(code: Code) -> None:
    assert arrow_violations(code) == []


def test_frameworks_only_where_allowed(code: Code) -> None:
    assert framework_violations(code) == []


def test_no_file_cycles(code: Code) -> None:
    assert cycles(code) == []


# Planted violations: each check must see a bad import added to a real file.
@pytest.mark.parametrize(
    "path,line,check,needle",
    [
        ("convert/rules.py", "import torch_ref", arrow_violations, "convert/rules.py"),
        ("convert/writers.py", "from isaid import palette", arrow_violations, "convert/writers.py"),
        ("common/atomic.py", "from isaid import palette", arrow_violations, "common/atomic.py"),
        ("common/resources.py", "import weights", arrow_violations, "common/resources.py"),
        ("common/constants.py", "import numpy, torch", framework_violations, "common/constants.py"),
        ("isaid/palette.py", "from weights import MODEL_NAMES", arrow_violations, "isaid/palette.py"),
        ("weights/__init__.py", "from isaid import palette", arrow_violations, "weights/__init__.py"),
        ("common/bounded_yaml.py", "from isaid import palette", arrow_violations, "common/bounded_yaml.py"),
        ("common/cli.py", "import torch", framework_violations, "common/cli.py"),
        ("app/cli.py", "from torch_ref import build_model", arrow_violations, "app/cli.py"),
        ("torch_ref/evaluate.py", "import paddle_impl", arrow_violations, "torch_ref/evaluate.py"),
        ("paddle_impl/infer.py", "from align import compare", arrow_violations, "paddle_impl/infer.py"),
        ("app/raster.py", "from tests import model_helpers", arrow_violations, "app/raster.py"),
        ("app/evaluation.py", "import torch", framework_violations, "app/evaluation.py"),
        ("isaid/windows.py", "import paddle.nn", framework_violations, "isaid/windows.py"),
        ("convert/rules.py", "import torch", framework_violations, "convert/rules.py"),
        ("paddle_impl/sliding_window.py", "import torch", framework_violations, "paddle_impl/sliding_window.py"),
        ("torch_ref/layers.py", "import paddle", framework_violations, "torch_ref/layers.py"),
    ],
)
def test_planted_bad_import_is_caught(code: Code, path, line, check, needle) -> None:
    # Inside a function, as lazy imports are written: those count too.
    planted = code.sources[path] + f"\n\ndef _planted():\n    {line}\n"
    found = check(Code(overrides={path: planted}))
    assert any(v.startswith(needle + ":") for v in found), found


@pytest.mark.parametrize(
    "path,line,cycle",
    [
        ("paddle_impl/infer.py", "from .export import export", {"paddle_impl.export", "paddle_impl.infer"}),
        ("isaid/palette.py", "from .metrics import miou", {"isaid.metrics", "isaid.palette"}),
        ("app/cli.py", "from app.predict import run_predictor", {"app.cli", "app.predict"}),
        ("weights/__init__.py", "from weights import __init__", None),  # a module importing itself: no cycle
    ],
)
def test_planted_file_cycle_is_caught(code: Code, path, line, cycle) -> None:
    planted = code.sources[path] + f"\n\ndef _planted():\n    {line}\n"
    found = cycles(Code(overrides={path: planted}))
    if cycle is None:
        assert found == []
    else:
        assert any(cycle <= set(c) for c in found), found


def test_cycle_finder_on_a_small_graph() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert file_cycles(edges) == [["a", "b", "c"]]
    assert file_cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve() -> None:
    names = dict(
        imported_names("from . import build_model\nfrom ..isaid import palette\n", "torch_ref.evaluate", False)
    )
    # `from . import x` names x (a submodule, or a name that resolves to the package itself).
    assert {"torch_ref.build_model", "isaid.palette", "isaid"} <= set(names)
    names = dict(imported_names("from .farseg import FarSeg\n", "torch_ref", True))
    assert "torch_ref.farseg" in names


def _doc_table(text: str) -> Dict[str, FrozenSet[str]]:
    """The ``| package | may import |`` table of docs/architecture.md's "What may import what"."""
    section = text.split("## What may import what", 1)[1].split("\n## ", 1)[0]
    table: Dict[str, FrozenSet[str]] = {}
    for row in re.findall(r"^\| *`(\w+)/` *\|([^|]*)\|", section, flags=re.MULTILINE):
        package, cell = row
        table[package] = frozenset(re.findall(r"`(\w+)`", cell))
    return table


def test_docs_state_the_same_arrows() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert _doc_table(text) == ALLOWED


def test_docs_comparison_sees_a_changed_row() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    changed = text.replace("| `convert/` | `common`, `weights` |", "| `convert/` | `common`, `torch_ref` |")
    assert changed != text and _doc_table(changed) != ALLOWED


def missing_modules(code: Code) -> List[str]:
    """``file:line imports X`` for every import (function-local ones too) of a project module
    that does not exist: a stale path after a move, which the arrow rules cannot see because
    ``isaid.config`` still resolves to the package ``isaid``."""
    problems = []
    for module, path in sorted(code.modules.items()):
        package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
        for node in ast.walk(ast.parse(code.sources[path])):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = package[: len(package) - (node.level - 1)] if node.level else []
                names = [".".join(base + [node.module])]
            else:
                continue
            for name in names:
                if name.split(".")[0] in PACKAGES and name not in code.modules:
                    problems.append(f"{path}:{node.lineno} imports {name}")
    return problems


def test_every_project_import_names_an_existing_module(code: Code) -> None:
    assert missing_modules(code) == []


def test_benchmarks_and_tests_import_existing_modules(code: Code) -> None:
    """The same for ``benchmarks/`` and ``tests/``: their project imports often sit inside
    functions that no quick test runs (a benchmark's writer), so a move leaves them stale."""
    problems = []
    for path in sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            problems += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] in PACKAGES and name not in code.modules
            ]
    assert problems == []


def test_planted_stale_import_after_a_move_is_caught(code: Code) -> None:
    planted = Code(
        overrides={
            "align/train/run.py": code.sources["align/train/run.py"]
            + "\n\ndef _f():\n    from isaid.config import load_config\n"
        }
    )
    assert any("imports isaid.config" in problem for problem in missing_modules(planted))


# ------------------------------------------------------------------------------ written once


def argument_parser_classes(code: Code) -> List[str]:
    """``file:line`` of every class deriving from ``argparse.ArgumentParser``: the project has
    one (``app.cli.OneLineArgumentParser``, one-line errors); a second drifts from it."""
    found = []
    for path, source in sorted(code.sources.items()):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith("ArgumentParser") for base in node.bases
            ):
                found.append(f"{path}:{node.lineno}")
    return found


def private_imports(code: Code) -> List[str]:
    """``file:line imports module._name``: a name another module keeps private, imported from
    outside that module (make it public, or keep it inside)."""
    found = []
    for module, path, name, line in code.imports():
        target = resolve(name, set(code.modules))
        last = name.rsplit(".", 1)[-1]
        if target is not None and target != module and name != target and last.startswith("_"):
            if not last.startswith("__"):
                found.append(f"{path}:{line} imports {name}")
    return sorted(set(found))


def test_one_argument_parser_class_and_no_private_imports(code: Code) -> None:
    assert [p.split(":")[0] for p in argument_parser_classes(code)] == ["common/cli.py"]
    # align.x2paddle's modules still share private helpers among themselves (10 imports, its
    # owner's to make public); everywhere else, none.
    assert [p for p in private_imports(code) if not p.startswith("align/x2paddle/")] == []


def test_planted_second_parser_and_private_import_are_caught(code: Code) -> None:
    parser = "\n\nclass OneLineParser(argparse.ArgumentParser):\n    pass\n"
    planted = Code(overrides={"align/cli.py": code.sources["align/cli.py"] + parser})
    assert any(p.startswith("align/cli.py:") for p in argument_parser_classes(planted))
    private = "\n\ndef _planted():\n    from .rules import _listing\n"
    planted = Code(overrides={"convert/foreign.py": code.sources["convert/foreign.py"] + private})
    assert any("convert.rules._listing" in p for p in private_imports(planted)), private_imports(planted)

"""Shared pytest set-up, written once for every test file: the repository root on sys.path,
quiet framework warnings, the environment and runners of subprocess commands, and the tiny
prepared dataset the trainer tests share.

Test files import the plain helpers by name (``from conftest import ROOT, ENV, run_module``:
pytest puts ``tests/`` on ``sys.path``); ``prepared`` is a fixture.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
for _path in (ROOT, BENCHMARKS):  # the packages, and the benchmark scripts' helper _common
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
# Subprocesses started by tests (python -m ...) must find the packages too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
warnings.filterwarnings("ignore", message=".*ccache.*")

# The environment of every command a test starts: one intra-op thread (2 shared cores: more
# threads were measured slower), no warnings cluttering the stderr the tests read.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
# Patch side of the shared prepared dataset (``prepared``).
PREPARED_WINDOW = 64


def run_command(
    argv: list,
    cwd: Union[str, Path] = ROOT,
    timeout: float = 600,
    env: Optional[Mapping[str, str]] = None,
    stdin: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` (text output captured, never raising on a non-zero exit) with :data:`ENV`
    (plus ``env``)."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_module(module: str, *args: object, **options) -> subprocess.CompletedProcess:
    """``python -m module args`` (options: those of :func:`run_command`)."""
    return run_command([sys.executable, "-m", module, *args], **options)


def run_script(path: Union[str, Path], *args: object, **options) -> subprocess.CompletedProcess:
    """``python path args``, e.g. a benchmark script (options: those of :func:`run_command`)."""
    return run_command([sys.executable, str(path), *args], **options)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny prepared iSAID, shared by the trainer tests: 2 synthetic 128x128 train scenes cut
    into 64x64 patches at stride 48 (``isaid.synth`` then ``isaid.prepare``, as users run them)."""
    root = tmp_path_factory.mktemp("prepared_data")
    synth = ["--train", "2", "--val", "1", "--size", "128", "--seed", "0", "--no-zip"]
    prepare = ["--window", PREPARED_WINDOW, "--stride", "48", "--splits", "train", "--no-progress"]
    for result in (
        run_module("isaid.synth", root / "src", *synth, timeout=300),
        run_module("isaid.prepare", root / "src", root / "out", *prepare, timeout=300),
    ):
        assert result.returncode == 0, result.stderr[-2000:]
    return root / "out"


@pytest.fixture(autouse=True, scope="session")
def _engine_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Paddle's --weights engine cache (paddle_impl.engine_cache) goes to a temporary folder,
    never to the user's cache, for the tests and the commands they start."""
    folder = str(tmp_path_factory.mktemp("engine-cache"))
    os.environ["RSSEG_ENGINE_CACHE"] = ENV["RSSEG_ENGINE_CACHE"] = folder

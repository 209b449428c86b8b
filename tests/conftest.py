"""Shared pytest set-up: the repository root on sys.path, quiet framework warnings."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Subprocesses started by tests (python -m ...) must find the packages too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
warnings.filterwarnings("ignore", message=".*ccache.*")


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _engine_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Paddle's --weights engine cache (paddle_impl.engine_cache) goes to a temporary folder,
    never to the user's cache, for the tests and the commands they start."""
    os.environ["RSSEG_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))

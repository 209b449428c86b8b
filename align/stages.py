"""Every stage module by name: ``python -m align`` and ``align.run_stage`` find a stage's ``run`` here.

(``align.cli`` imports no stage module: each stage's ``main`` imports it. A new stage: its module,
its name in ``align.config.STAGES`` and its line here.)
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable, Dict

from . import backward, forward, loss, metric, train
from .compare import StageResult

MODULES: Dict[str, ModuleType] = {
    "forward": forward,
    "loss": loss,
    "backward": backward,
    "metric": metric,
    "train": train,
}
RUNNERS: Dict[str, Callable[..., StageResult]] = {name: module.run for name, module in MODULES.items()}


def stage_runner(stage: str) -> Callable[..., StageResult]:
    """``align.<stage>.run(config, fixture, progress=...)``."""
    return RUNNERS[stage]

"""Staged alignment of torch_ref (the reference) against paddle_impl (the port).

Stages, each callable from Python with an ``AlignConfig`` and returning a ``StageResult``
(``.passed``, ``.rows``, ``.first_divergence``, ``.localisation``):

- ``align.forward.run``: eval probabilities and logits, training-mode logits;
- ``align.loss.run``: the training losses and their gradients on identical logits;
- ``align.backward.run``: k iterations of the trainers' own ``TrainStep`` (configs/*.yaml recipe);
- ``align.metric.run``: confusion matrix and mIoU;
- ``align.train.run``: both trainers for N iterations, curves and mIoU (minutes; not in the default run).

Any model pair: ``align.compare(torch_model, paddle_model, inputs, ...)`` and
``python -m align.forward --torch SPEC --paddle SPEC --inputs 2x3x64x64`` (docs/align.md).

Command line: ``python -m align`` (all stages, both models) and ``python -m align.forward``,
``.loss``, ``.backward``, ``.metric``, ``.train``; ``--help`` lists the options. Nothing heavy is imported
here (torch and Paddle load when a stage runs).

Example::

    from align import AlignConfig, run_stage
    result = run_stage("forward", AlignConfig(model="farseg", out=None))
    assert result.passed, result.first_divergence
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from .compare import DEFAULT_TOLERANCES, Row, StageResult, Tolerance
from .config import DEFAULT_STAGES, STAGES, AlignConfig, AlignInputError

__all__ = [
    "AlignConfig",
    "AlignInputError",
    "DEFAULT_TOLERANCES",
    "Row",
    "STAGES",
    "StageResult",
    "Tolerance",
    "compare",
    "run_stage",
    "run_all",
]


def compare(torch_model: Any, paddle_model: Any, inputs: Any, **options: Any) -> List[StageResult]:
    """Any torch model against its Paddle port: ``[forward]`` or ``[forward, backward]`` results
    (``align.api.compare`` documents every option: targets, losses, optimisers, dtype,
    pairing, out, ...)."""
    from .api import compare as compare_pair

    return compare_pair(torch_model, paddle_model, inputs, **options)


def run_stage(stage: str, config: AlignConfig, fixture: Optional[Any] = None) -> StageResult:
    """Run one stage ("forward", "loss", "backward", "metric" or "train") for ``config``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    from .stages import stage_runner

    return stage_runner(stage)(config, fixture)


def run_all(config: AlignConfig, stages: Sequence[str] = DEFAULT_STAGES) -> List[StageResult]:
    """Run ``stages`` in order for ``config.model`` on one shared fixture."""
    from .fixtures import get_fixture

    fixture = get_fixture(config)
    return [run_stage(stage, config, fixture) for stage in stages]

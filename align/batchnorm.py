"""BatchNorm running variance: torch updates it with the unbiased batch variance, Paddle with the
biased one. ``BatchNormRecorder`` records what torch's BatchNorms saw so that torch's running
variance can be converted to Paddle's rule before the two are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ContextManager, Dict, List, Tuple

import numpy as np

from .sides import TORCH, hooks

TORCH_BN_MOMENTUM = 0.1  # torch convention (weight of the new batch statistic)


@dataclass
class BatchNormRecorder:
    """Forward pre-hooks on the reference's BatchNorms: biased batch variance and n per
    training-mode call."""

    model: Any
    records: Dict[str, List[Tuple[int, np.ndarray]]] = field(default_factory=dict)

    def hooked(self) -> ContextManager[None]:
        """Record inside the block."""
        modules = dict(TORCH.modules(self.model))

        def make_hook(name: str):
            def hook(inputs: Any) -> None:
                if modules[name].training:
                    x = TORCH.numpy(inputs[0]).astype(np.float64)
                    channels = x.shape[1]
                    var = x.swapaxes(0, 1).reshape(channels, -1).var(axis=1)
                    self.records.setdefault(name, []).append((x.size // channels, var))

            return hook

        return hooks(TORCH, [(modules[n], make_hook(n)) for n in TORCH.batchnorms(self.model)], before=True)

    def paddle_equivalent_var(self, name: str, torch_running_var: np.ndarray, steps: int) -> np.ndarray:
        """The running variance Paddle's biased rule gives from the first ``steps`` batches torch saw."""
        correction = np.zeros_like(torch_running_var, dtype=np.float64)
        for n, var in self.records.get(name, [])[:steps]:
            correction = (1.0 - TORCH_BN_MOMENTUM) * correction + TORCH_BN_MOMENTUM * var / (n - 1)
        return torch_running_var.astype(np.float64) - correction

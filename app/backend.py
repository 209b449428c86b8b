"""What the shared commands need from a framework: the :class:`Backend` protocol.

``app``'s evaluate runner (:mod:`app.evaluation`) and predict driver (:mod:`app.predict`) are
written once, against this protocol; ``torch_ref.backend.BACKEND`` and
``paddle_impl.backend.BACKEND`` implement it (structural typing: they do not import this
module's classes, only match them). Everything a backend does is framework-specific; anything
that is not (options, input checks, reports, files) stays in ``app``.

Tensors cross the protocol as opaque values (``Any``): ``app`` only hands a tensor the backend
produced back to the same backend.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Protocol, Tuple

import numpy as np

# (y0, x0, y1, x1) -> uint8 [y1 - y0, x1 - x0, 3] RGB
ReadWindow = Callable[[int, int, int, int], np.ndarray]


class Engine(Protocol):
    """The sliding-window engine of a framework (``<package>.inference.SlidingWindowInference``)."""

    device: Any
    window: int
    stride: int

    def run(
        self, height: int, width: int, read_window: ReadWindow, progress: Any = True
    ) -> Iterator[Tuple[int, int, Any]]:
        """Yield ``(row_start, row_end, class indices [rows, width])`` on the device, in row order."""
        ...

    def to_device(self, array: np.ndarray) -> Any:
        """A host array as a tensor on the engine's device."""
        ...


class Backend(Protocol):
    """One framework, as the evaluate and predict commands use it."""

    name: str  # "torch" / "paddle": the evaluator's JSON and the package's commands
    display_name: str  # "PyTorch" / "PaddlePaddle": help texts
    version: str  # the framework's version, recorded in results
    gpu_name: str  # how the framework spells its GPU device: "cuda" / "gpu"
    supports_model_dir: bool  # evaluate and predict can run an exported program (``--model-dir``)
    deploy_backends: Tuple[str, ...]  # the ``--backend`` choices for ``--model-dir`` ("auto" first)
    # The ``--engine`` choices for ``--weights`` ("auto" first; empty: one engine, no option and
    # only engine="auto" in :meth:`build_engine`; ``engine_cache``: where a built engine is kept).
    engines: Tuple[str, ...]
    # Errors building an engine may raise besides convert's CheckpointError, and errors running
    # one (besides RasterError): reported as one line, exit status 2.
    engine_errors: Tuple[type, ...]
    run_errors: Tuple[type, ...]

    def gpu_available(self) -> bool:
        """Whether a GPU can run the model (``--device auto`` picks it then)."""
        ...

    def resolve_device(self, device: str) -> Any:
        """The framework's device for ``device`` ("cpu", "cuda", "gpu", "gpu:N"); ValueError if unusable."""
        ...

    def check_amp(self, device: str, amp: Optional[str], engine: str = "auto") -> Optional[str]:
        """Raise ValueError (the command's one-line refusal) when ``engine`` cannot run ``amp``
        ("fp16", "bf16" or None) on ``device``; return what computes instead of the framework's
        autocast (e.g. "Paddle Inference oneDNN bf16"), or None. :meth:`build_engine` calls it
        first, and ``python -m align.env`` calls it to say what ``--amp`` does: one answer for both."""
        ...

    def build_engine(
        self,
        model_name: str,
        weights: str,
        window: int,
        stride: int,
        device: str,
        batch_size: int = 1,
        amp: Optional[str] = None,
        dtype: str = "float32",
        exact_float32: bool = True,
        engine: str = "auto",
        engine_cache: Optional[str] = None,
    ) -> Tuple[Engine, str]:
        """Build ``model_name``, load ``weights`` (CheckpointError), wrap it in the engine.

        Returns (engine, how the weights were loaded). ``exact_float32``: turn off the GPU's
        reduced-precision float32 matmuls where the framework has a switch (evaluation);
        False leaves the framework's defaults (prediction).
        """
        ...

    def build_deployed_engine(
        self,
        model_dir: str,
        window: Optional[int],
        stride: Optional[int],
        device: str,
        batch_size: int,
        backend: str,
        amp: str,
    ) -> Tuple[Engine, str]:
        """An engine over an exported program (only if ``supports_model_dir``); window and
        stride default to the export's own; ``backend``: the inference backend (one of
        ``deploy_backends``); ``amp``: "none", or "bf16" where the runtime has a bf16 path
        (Paddle Inference's oneDNN), refused otherwise. Raises ExportError (from
        :mod:`app.exported`) when the folder is not an export or its ``model.yml`` does not
        describe its program. Returns (engine, what it runs)."""
        ...

    def new_confusion(self, engine: Engine, num_classes: int) -> Any:
        """A zero int64 [C, C] confusion matrix on the engine's device."""
        ...

    def confusion_matrix(self, classes: Any, target: Any, num_classes: int) -> Any:
        """int64 [C, C] counts of one band (rows = truth), on the device; 255 in ``target`` skipped."""
        ...

    def to_host(self, tensor: Any) -> np.ndarray:
        """A device tensor as a numpy array (the final confusion matrix)."""
        ...

    def classes_to_host(self, classes: Any) -> np.ndarray:
        """Class indices on the device as a uint8 numpy array (only these leave the device)."""
        ...

"""The one exception type the converter raises for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

MAX_MESSAGE = 1000  # characters of the headline
MAX_DETAIL = 300  # characters of each report line


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " ... (cut)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not match the expected layout.

    ``message`` is one line. ``details`` are extra lines (the key-by-key validation report);
    ``path`` names the file when known. ``str(err)`` is ``"<path>: <message>"`` followed by the
    detail lines, which is what the CLI prints after ``error: ``.
    """

    def __init__(self, message: str, details: Sequence[str] = (), path: Optional[Union[str, Path]] = None) -> None:
        # Keep the headline on one line whatever the underlying library wrote, and short
        # whatever a hostile file named its keys.
        self.message = _bounded(" ".join(str(message).split()), MAX_MESSAGE)
        self.details = [_bounded(str(line), MAX_DETAIL) for line in details]
        self.path = None if path is None else str(path)
        super().__init__(self.format())

    def with_path(self, path: Union[str, Path]) -> "CheckpointError":
        """The same error attributed to ``path`` (kept if one is already set)."""
        if self.path is not None:
            return self
        return CheckpointError(self.message, self.details, path)

    def headline(self) -> str:
        """``"<path>: <message>"`` (one line)."""
        return f"{self.path}: {self.message}" if self.path else self.message

    def format(self) -> str:
        return "\n".join([self.headline(), *self.details])

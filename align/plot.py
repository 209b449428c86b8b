"""``divergence.png``: per-layer worst relative error along execution order, one curve per pass.

Log y axis; each curve's threshold as a dashed line of its colour; the first layer beyond its
threshold marked and named. 1600 x 700 px at 100 dpi, legend outside the data (right), so the
picture reads at 100% zoom. matplotlib is optional: without it the plot is skipped with one line.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from convert import atomic_write

INSTALL_HINT = "divergence.png skipped: matplotlib is not installed (pip install matplotlib)"
FLOOR = 1e-18  # exact agreement (rel 0) is drawn here: a log axis has no 0
MAX_NAMED_TICKS = 48  # more layers than this: ticks show indices, not names


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _value(row: Any) -> float:
    rel = row.rel
    if not math.isfinite(rel):
        return 1e3  # not comparable (missing, shape mismatch): drawn at the top
    return max(rel, FLOOR)


def plot_divergence(path: Path, curves: Dict[str, Sequence[Any]], title: str) -> Optional[str]:
    """Write the plot of ``curves`` (name -> ``align.compare.Row`` objects in execution order) to
    ``path`` atomically.
    Returns None when written, else the line saying why not."""
    curves = {name: rows for name, rows in curves.items() if rows}
    if not curves:
        return None
    if not matplotlib_available():
        return INSTALL_HINT
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = divergence_figure(curves, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = buffer.getvalue()
    atomic_write(Path(path), lambda f: f.write(data))
    return None


def divergence_figure(curves: Dict[str, Sequence[Any]], title: str) -> Any:
    """The matplotlib figure of ``plot_divergence`` (non-empty ``curves``; Agg backend set)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(16, 7), dpi=100)
    longest: List[Any] = []
    marked = 0  # "first divergence" labels placed so far: each gets its own row, never overlapping
    for index, (name, rows) in enumerate(curves.items()):
        color = f"C{index % 10}"
        xs = list(range(len(rows)))
        ax.plot(xs, [_value(r) for r in rows], marker=".", markersize=4, linewidth=1.2, color=color, label=name)
        thresholds = {r.tol.rtol for r in rows}
        for rtol in sorted(thresholds):
            ax.axhline(max(rtol, FLOOR), color=color, linestyle="--", linewidth=1, label=f"{name} threshold {rtol:.0e}")
        first = next((i for i, r in enumerate(rows) if not r.passed), None)
        if first is not None:
            ax.plot([first], [_value(rows[first])], marker="o", markersize=12, fillstyle="none", color="red", mew=2)
            # Labels stack down from the top of the axes, on the side away from their point
            # (curves often diverge at the same layer: offsets from the point would overlap).
            left_half = first < max(len(rows), 1) / 2
            ax.annotate(
                f"first divergence ({name}): {rows[first].name}",
                xy=(first, _value(rows[first])),
                xytext=(0.98 if left_half else 0.02, 0.97 - 0.09 * marked),
                textcoords="axes fraction",
                ha="right" if left_half else "left",
                va="top",
                fontsize=11,
                color="red",
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "red", "alpha": 0.9},
                arrowprops={"arrowstyle": "->", "color": "red"},
            )
            marked += 1
        if len(rows) > len(longest):
            longest = list(rows)
    ax.set_yscale("log")
    ax.set_xlabel("layer / value in execution order", fontsize=12)
    ax.set_ylabel("worst relative error  max|t-p| / max|t|", fontsize=12)
    ax.set_title(title, fontsize=13)
    ax.grid(True, which="major", alpha=0.3)
    if len(longest) <= MAX_NAMED_TICKS:
        ax.set_xticks(range(len(longest)))
        ax.set_xticklabels([r.name.split("/")[-1] for r in longest], rotation=70, ha="right", fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=10, borderaxespad=0)
    fig.tight_layout()
    return fig

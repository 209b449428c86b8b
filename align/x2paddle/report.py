"""The verdict of a three-way comparison and its text report."""

from __future__ import annotations

from typing import Any, Dict, Sequence

PAIRS = ("torch_ref vs x2paddle", "paddle_impl vs x2paddle", "torch_ref vs paddle_impl")


def verdicts(rows: Sequence[Dict[str, Any]]) -> Dict[str, str]:
    """Per output: which side the three-way comparison points at."""
    by_output: Dict[str, Dict[str, bool]] = {}
    for row in rows:
        by_output.setdefault(row["output"], {})[row["pair"]] = bool(row["passed"])
    out = {}
    for output, ok in by_output.items():
        tx, px, tp = (ok.get(p) for p in PAIRS)
        if tx is None or px is None:
            out[output] = "no X2Paddle program: torch_ref and paddle_impl " + ("agree" if tp else "differ")
        elif tx and px and tp:
            out[output] = "all agree"
        elif tx and not px and not tp:
            out[output] = "paddle_impl differs (X2Paddle sides with torch_ref)"
        elif tp and not tx and not px:
            out[output] = "x2paddle differs (a conversion problem, not a porting bug)"
        elif px and not tx and not tp:
            # paddle_impl equals the program generated from torch_ref's own graph, so the port is
            # structurally right; what both Paddle programs share is Paddle's kernels.
            out[output] = (
                "both Paddle programs agree and differ from torch_ref: a kernel/rounding "
                "difference between the frameworks (or a threshold too tight for float32), "
                "not a porting bug"
            )
        else:
            out[output] = "inconclusive (more than one side differs, or the tolerance is borderline)"
    return out


def format_report(result: Dict[str, Any]) -> str:
    """The rows as a fixed-width table, then verdicts, untraceable parts and timings."""
    lines = [f"{'pair':<26} {'output':<34} {'shape':<18} {'max_abs':>10} {'mean_abs':>10} {'max_rel':>10}  ok"]
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"])) if isinstance(r["shape"], list) else str(r["shape"])
        lines.append(
            f"{r['pair']:<26} {r['output']:<34} {shape:<18} {r['max_abs']:>10.3g} "
            f"{r['mean_abs']:>10.3g} {r['max_rel']:>10.3g}  {'yes' if r['passed'] else 'NO'}"
        )
    lines.append("")
    for output, verdict in result["verdicts"].items():
        lines.append(f"verdict {output}: {verdict}")
    for item in result["untraceable"]:
        lines.append(f"untraceable: {item['part']}: {item['why']}")
    for c in result["conversions"]:
        state = (
            "reused (same fingerprint)"
            if c["reused"]
            else f"{'ok' if c['ok'] else 'FAILED'} in {c['seconds']:.1f} s (CPU {c['cpu_seconds']:.1f} s)"
        )
        lines.append(
            f"conversion {c['target']}: {state}" + (f" -> {c['directory']}" if c["directory"] else f" (log {c['log']})")
        )
    lines.append(
        f"network attempts during conversion: {len(result['network_attempts'])}"
        + (f" {result['network_attempts']}" if result["network_attempts"] else "")
    )
    lines.append(
        f"x2paddle {result['x2paddle_version']}, {result['dtype']}, input "
        f"{'x'.join(map(str, result['input_shape']))}, thresholds mean_abs <= "
        f"{result['thresholds']['atol_mean']:g}, max_rel <= {result['thresholds']['rtol_max']:g}; "
        f"total {result['seconds']:.1f} s (CPU {result['cpu_seconds']:.1f} s)"
    )
    lines.append(f"{'PASSED' if result['passed'] else 'FAILED'}")
    return "\n".join(lines)

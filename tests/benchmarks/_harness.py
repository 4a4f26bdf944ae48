"""Shared helpers for the benchmark scripts: results in one JSON shape, medians, ratios."""

from __future__ import annotations

import gc
import operator
import statistics
import time
from collections.abc import Callable
from typing import Any

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def result(
    name: str,
    metric: str,
    value: float,
    baseline_name: str | None,
    baseline_value: float | None,
    goal: str,
) -> dict[str, Any]:
    """One benchmark figure. ``goal`` is "<op> <number>" applied to the ratio value/baseline
    (or to the value itself when there is no baseline)."""
    ratio = value / baseline_value if baseline_value else None
    op, _, target = goal.partition(" ")
    subject = ratio if ratio is not None else value
    met = bool(_OPS[op](subject, float(target)))
    return {
        "name": name,
        "metric": metric,
        "value": round(value, 6),
        "baseline_name": baseline_name,
        "baseline_value": None if baseline_value is None else round(baseline_value, 6),
        "ratio": None if ratio is None else round(ratio, 4),
        "goal": goal,
        "met": met,
    }


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run in turn ``repeats`` times (noise hits all alike)."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            samples[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in samples.items()}

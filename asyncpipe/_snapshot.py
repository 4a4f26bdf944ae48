"""What front ends get from :class:`~asyncpipe.Metrics`: frozen snapshots of a run and its
stages, and the plain-text and HTML renderings shared by the terminal, the notebook and the
run history."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FailureInfo",
    "MetricsSnapshot",
    "StageSnapshot",
    "fmt_bytes",
    "fmt_seconds",
    "percentile",
    "stage_line",
    "stall_text",
]


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """One permanent failure, from a :class:`~asyncpipe._events.PartitionFailed` event."""

    t: float
    stage: str
    partition: Any
    attempts: int
    error_type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class StageSnapshot:
    """Counters and rates of one stage at one instant. Ratios are 0.0 when undefined.

    >>> import asyncpipe as ap
    >>> from asyncpipe._events import RunStarted, StageProgress
    >>> clock = ap.FakeClock()
    >>> metrics = ap.Metrics(clock=clock)
    >>> metrics(RunStarted(run_id="r1", t=0.0, pipeline="p", stages=("fetch",)))
    >>> clock.advance(4.0)
    >>> metrics(StageProgress(run_id="r1", t=4.0, stage="fetch", finished=8, cached=2, total=10,
    ...                       durations=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6)))
    >>> st = metrics.snapshot().stage("fetch")
    >>> st.done, st.cached, st.progress, st.throughput, st.cache_hit_ratio
    (8, 2, 0.8, 2.0, 0.25)
    """

    name: str
    total: int | None
    done: int
    failed: int
    cached: int
    running: int
    queued: int
    throughput: float
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    error_rate: float
    cache_hit_ratio: float
    limit: int | None
    rate: float | None
    progress: float | None
    retries: int = 0
    eta: float | None = None


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The whole run at one instant; safe to keep, compare and render anywhere.

    A :class:`RunHandle` gives the latest one as ``handle.progress``:

    >>> import asyncio, tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def double(numbers):
    ...     return 2 * numbers
    >>> pipe = ap.Pipeline([numbers, double], cache=False, workdir=tempfile.mkdtemp())
    >>> async def main():
    ...     handle = pipe.start(range(5))
    ...     await handle
    ...     return handle.progress
    >>> snap = asyncio.run(main())
    >>> snap.status, snap.n_failures, snap.stage("double").done, snap.stage("double").total
    ('succeeded', 0, 5, 5)
    """

    run_id: str
    status: str
    started_at: float | None
    elapsed: float
    eta: float | None
    items_per_s: float
    cpu_percent: float | None
    rss_bytes: int | None
    worst_loop_lag: float | None
    stages: tuple[StageSnapshot, ...]
    n_failures: int
    recent_failures: tuple[FailureInfo, ...]
    pipeline: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    finished_at: float | None = None
    n_processes: int | None = None
    error: str | None = None
    #: stages that had calls in worker threads while the loop stalled over 20 ms, in most stalls first
    stall_suspects: tuple[str, ...] = ()

    def stage(self, name: str) -> StageSnapshot:
        """The snapshot of stage ``name`` (KeyError if unknown)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} in this run; stages: {[s.name for s in self.stages]}")

    def __str__(self) -> str:
        lines = [_headline(self)]
        for s in self.stages:
            lines.append("  " + stage_line(s))
        if self.recent_failures:
            f = self.recent_failures[-1]
            lines.append(f"  last failure: {f.stage} [{_label(f.partition)}] {f.error_type}: {f.message}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        e = html.escape
        head = "".join(f"<th>{h}</th>" for h in _HTML_COLS)
        rows = []
        for s in self.stages:
            cells = (s.name, _count(s), s.failed, s.cached, s.running, s.queued, f"{s.throughput:,.1f}",
                     fmt_seconds(s.latency_p50), fmt_seconds(s.latency_p95), fmt_seconds(s.eta),
                     "" if s.limit is None else s.limit)
            rows.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
        return (f"<div><p><b>{e(_headline(self))}</b></p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table></div>")


_HTML_COLS = ("stage", "done/total", "failed", "cached", "running", "queued", "items/s", "p50", "p95",
              "ETA", "limit")


def percentile(ordered: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100) of sorted values; None if empty.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    """
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


#: A loop stall longer than this is worth telling the user about: a widget click or
#: another cell's ``await`` waits that long (the budget benchmark P8 holds asyncpipe to).
STALL_BUDGET = 0.020


def stall_text(stalls: int, suspects: Mapping[str, int]) -> str:
    """How often the loop stalled over the budget, and during which stages, most first.

    >>> stall_text(4, {"parse": 1, "load": 3})
    '4 stalls over 20 ms during load (3), parse (1)'
    """
    text = f"{stalls} stall{'s' if stalls != 1 else ''} over {STALL_BUDGET * 1e3:.0f} ms"
    ranked = sorted(suspects.items(), key=lambda kv: -kv[1])
    if ranked:
        text += " during " + ", ".join(f"{name} ({n})" for name, n in ranked)
    return text


def fmt_seconds(s: float | None) -> str:
    """Human duration: ``850µs``, ``12.3ms``, ``4.1s``, ``3m05s``, ``1h02m``; '-' for None."""
    if s is None:
        return "-"
    if s == 0:
        return "0s"
    if s < 1e-3:
        return f"{s * 1e6:.0f}µs"
    if s < 1.0:
        return f"{s * 1e3:.1f}ms"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def fmt_bytes(n: int | None) -> str:
    """Human size in binary units; '-' for None.

    >>> fmt_bytes(123456789)
    '117.7 MiB'
    """
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _label(partition: Any) -> str:
    return str(getattr(partition, "label", partition))


def _count(s: StageSnapshot) -> str:
    return f"{s.done}/{'?' if s.total is None else s.total}"


def stage_line(s: StageSnapshot) -> str:
    """One plain-text line for a stage: counts, rate, latency and ETA."""
    pct = "" if s.progress is None else f" ({s.progress:.0%})"
    extra = "".join(f", {n} {w}" for n, w in ((s.failed, "failed"), (s.cached, "cached"),
                                              (s.retries, "retries")) if n)
    return (f"{s.name}: {_count(s)}{pct}{extra}, {s.running} running, {s.queued} queued, "
            f"{s.throughput:,.1f}/s, p95 {fmt_seconds(s.latency_p95)}, ETA {fmt_seconds(s.eta)}")


def _headline(s: MetricsSnapshot) -> str:
    cpu = "-" if s.cpu_percent is None else f"{s.cpu_percent:.0f}%"
    name = f" ({s.pipeline})" if s.pipeline else ""
    fails = f", {s.n_failures} failures" if s.n_failures else ""
    return (f"run {s.run_id or '-'}{name} {s.status}{fails}: elapsed {fmt_seconds(s.elapsed)}, "
            f"ETA {fmt_seconds(s.eta)}, {s.items_per_s:,.1f} items/s, CPU {cpu}, "
            f"RSS {fmt_bytes(s.rss_bytes)}, worst loop lag {fmt_seconds(s.worst_loop_lag)}")

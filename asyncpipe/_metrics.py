"""Metrics: a pure aggregator over the event stream; front ends poll its frozen snapshots
(:mod:`asyncpipe._snapshot`).

:class:`Metrics` is an event subscriber (``bus.subscribe(metrics)``). Each event
updates a few counters in O(1); nothing is rendered here. Front ends (terminal
progress, the notebook panel, run history) call :meth:`Metrics.snapshot` on their
own timer and get a frozen :class:`MetricsSnapshot`.

Definitions (per stage): ``done`` counts finished partitions *including* cache
hits, ``cached`` counts the hits, ``failed`` the permanent failures.
``throughput`` is the count finished over the last ``window`` seconds (over the
elapsed time while the run is younger than that), smoothed by an EWMA.
Latency percentiles come from the last :data:`RESERVOIR` compute durations.

>>> from asyncpipe._clock import FakeClock
>>> from asyncpipe._events import RunStarted, StageProgress
>>> clock = FakeClock()
>>> m = Metrics(clock=clock)
>>> m(RunStarted(run_id="r1", t=0.0, pipeline="p", stages=("double",)))
>>> clock.advance(2.0)
>>> m(StageProgress(run_id="r1", t=2.0, stage="double", finished=50, total=100))
>>> s = m.snapshot()
>>> s.stages[0].done, s.stages[0].throughput, s.eta
(50, 25.0, 2.0)
"""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock
from ._events import (
    Event,
    LimitChanged,
    LoopLag,
    PartitionFailed,
    ResourceSample,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageProgress,
)
from ._snapshot import FailureInfo, MetricsSnapshot, StageSnapshot, percentile

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["SERIES_COLUMNS", "Metrics", "series_frame"]

#: Compute durations kept per stage for percentiles. Sorting 512 floats costs
#: ~15 µs, so a snapshot of 10 busy stages stays well under 1 ms
#: (tests/benchmarks/bench_monitoring.py prints the measured cost).
RESERVOIR = 512
#: PartitionFailed events kept for display.
RECENT_FAILURES = 20
#: A rate measured over less than one engine flush (0.1 s) is noise.
_MIN_SPAN = 0.1
#: EWMA time constant as a fraction of the window. The window count already
#: averages per-flush jitter, but it jumps twice per burst (when a burst enters
#: the window, and again when it leaves ``window`` seconds later). tau = 0.2 *
#: window (1 s by default) spreads those jumps over about a second while adding
#: only ~tau of lag to the window's own ramp: after a sustained change of rate
#: the value shown covers ~80% of it one window later and ~98% another 2.5 s
#: later (tests/test_metrics.py::test_throughput_follows_a_step_smoothed).
_TAU_FRACTION = 0.2
#: Series samples kept before the series is thinned (every other sample
#: dropped, interval doubled): bounded memory for runs of any length.
MAX_SAMPLES = 10_000


class _Stage:
    """Mutable per-stage state; only :class:`Metrics` touches it."""

    __slots__ = ("cached", "done", "durations", "ewma", "ewma_t", "failed", "limit", "name", "pct",
                 "pct_version", "queued", "rate", "retries", "running", "total", "version", "win",
                 "win_done", "win_failed")

    def __init__(self, name: str) -> None:
        self.name = name
        self.total: int | None = None
        self.done = self.failed = self.cached = self.running = self.queued = self.retries = 0
        self.limit: int | None = None
        self.rate: float | None = None
        self.durations: collections.deque[float] = collections.deque(maxlen=RESERVOIR)
        self.version = 0
        self.pct_version = -1
        self.pct: tuple[float | None, float | None, float | None] = (None, None, None)
        self.win: collections.deque[tuple[float, int, int]] = collections.deque()
        self.win_done = self.win_failed = 0
        self.ewma: float | None = None
        self.ewma_t = 0.0

    def percentiles(self) -> tuple[float | None, float | None, float | None]:
        if self.pct_version != self.version:
            ordered = sorted(self.durations)
            self.pct = (percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99))
            self.pct_version = self.version
        return self.pct


class Metrics:
    """Aggregates one run's events into counters, rates, percentiles and a time series.

    Subscribe it to the bus (``bus.subscribe(metrics)``); a :class:`RunStarted`
    resets it, so one instance follows the latest run. Not thread-safe: feed and
    poll it from the event-loop thread.

    >>> import asyncpipe as ap
    >>> from asyncpipe._events import RunStarted, StageProgress
    >>> clock = ap.FakeClock()
    >>> bus, metrics = ap.EventBus(), ap.Metrics(clock=clock)
    >>> unsubscribe = bus.subscribe(metrics)
    >>> bus.publish(RunStarted(run_id="r1", t=0.0, pipeline="p", stages=("parse",)))
    >>> clock.advance(2.0)
    >>> bus.publish(StageProgress(run_id="r1", t=2.0, stage="parse", finished=30, failed=1, total=60))
    >>> snap = metrics.snapshot()
    >>> snap.run_id, snap.stage("parse").done, snap.stage("parse").failed, snap.items_per_s
    ('r1', 30, 1, 15.0)
    """

    def __init__(
        self, *, clock: Clock | None = None, window: float = 5.0, series_interval: float = 1.0
    ) -> None:
        if window <= 0 or series_interval <= 0:
            raise ValueError(f"window and series_interval must be > 0, got {window!r}, {series_interval!r}")
        self._clock = clock if clock is not None else SystemClock()
        self._window = window
        self._tau = _TAU_FRACTION * window
        self._interval0 = series_interval
        self._reset("", "pending")

    def _reset(self, run_id: str, status: str) -> None:
        self._run_id = run_id
        self._status = status
        self._pipeline = ""
        self._params: dict[str, Any] = {}
        self._error: str | None = None
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._t0 = self._clock.now()
        self._t_end: float | None = None
        self._stages: dict[str, _Stage] = {}
        self._n_failures = 0
        self._failures: collections.deque[FailureInfo] = collections.deque(maxlen=RECENT_FAILURES)
        self._cpu: float | None = None
        self._rss: int | None = None
        self._nproc: int | None = None
        self._worst_lag: float | None = None
        self._stall_suspects: collections.Counter[str] = collections.Counter()
        self._lag_since_sample = 0.0
        self._interval = self._interval0
        self._next_sample = self._t0
        self._samples: list[list[tuple[Any, ...]]] = []

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def run_id(self) -> str:
        return self._run_id

    # -- event intake -----------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._reset(event.run_id, "running")
            self._pipeline, self._params, self._started_at = event.pipeline, dict(event.params), event.t
            for name in event.stages:
                self._stages[name] = _Stage(name)
            return
        if self._run_id and event.run_id != self._run_id:
            return  # a stale event of an earlier run
        if not self._run_id:
            self._run_id = event.run_id
        now = self._clock.now()
        if self._t_end is not None and not isinstance(event, RunFinished):
            now = self._t_end
        if isinstance(event, StageProgress):
            self._progress(event, now)
        elif isinstance(event, PartitionFailed):
            self._n_failures += 1
            self._failures.append(FailureInfo(event.t, event.stage, event.partition, event.attempts,
                                              event.error_type, event.message, event.traceback))
        elif isinstance(event, ResourceSample):
            self._cpu, self._rss, self._nproc = event.cpu_percent, event.rss_bytes, event.n_processes
        elif isinstance(event, LoopLag):
            self._worst_lag = event.worst if self._worst_lag is None else max(self._worst_lag, event.worst)
            self._lag_since_sample = max(self._lag_since_sample, event.worst)
            self._stall_suspects.update(dict(event.suspects))
        elif isinstance(event, RetryScheduled):
            self._stage(event.stage).retries += 1
        elif isinstance(event, LimitChanged):
            st = self._stage(event.stage)
            if event.kind == "concurrency":
                st.limit = None if event.new is None else int(event.new)
            elif event.kind == "rate":
                st.rate = event.new
        elif isinstance(event, RunFinished):
            self._status, self._error, self._finished_at = event.status, event.error, event.t
            self._n_failures = max(self._n_failures, event.n_failures)
            self._t_end = now
            self._sample(now)
            return
        if now >= self._next_sample:
            self._sample(now)

    def _stage(self, name: str) -> _Stage:
        st = self._stages.get(name)
        if st is None:
            st = self._stages[name] = _Stage(name)
        return st

    def _progress(self, ev: StageProgress, now: float) -> None:
        st = self._stage(ev.stage)
        st.done += ev.finished
        st.failed += ev.failed
        st.cached += ev.cached
        st.running, st.queued = ev.running, ev.queued
        if ev.limit is not None:
            st.limit = ev.limit
        if ev.total is not None:
            st.total = ev.total
        if ev.durations:
            st.durations.extend(ev.durations[-RESERVOIR:])
            st.version += 1
        if ev.finished or ev.failed:
            st.win.append((now, ev.finished, ev.failed))
            st.win_done += ev.finished
            st.win_failed += ev.failed
        x = self._windowed(st, now)
        if st.ewma is None:
            st.ewma = x
        else:
            st.ewma += (1.0 - math.exp(-(now - st.ewma_t) / self._tau)) * (x - st.ewma)
        st.ewma_t = now

    def _windowed(self, st: _Stage, now: float) -> float:
        """Items finished per second over the window ending at ``now`` (expires old entries)."""
        horizon = now - self._window
        win = st.win
        while win and win[0][0] <= horizon:
            _, d, f = win.popleft()
            st.win_done -= d
            st.win_failed -= f
        span = min(self._window, max(now - self._t0, _MIN_SPAN))
        return st.win_done / span

    def _throughput(self, st: _Stage, now: float) -> float:
        """The EWMA projected to ``now`` without storing it (so polling never changes results)."""
        x = self._windowed(st, now)
        if st.ewma is None:
            return x
        return st.ewma + (1.0 - math.exp(-max(0.0, now - st.ewma_t) / self._tau)) * (x - st.ewma)

    # -- read side ----------------------------------------------------------------
    def _now(self) -> float:
        return self._t_end if self._t_end is not None else self._clock.now()

    def _stage_snapshot(self, st: _Stage, now: float) -> StageSnapshot:
        thr = self._throughput(st, now)
        p50, p95, p99 = st.percentiles()
        ended = st.done + st.failed
        wend = st.win_done + st.win_failed
        error_rate = st.win_failed / wend if wend else (st.failed / ended if ended else 0.0)
        progress = eta = None
        if st.total:
            progress = min(1.0, ended / st.total)
            remaining = st.total - ended
            eta = 0.0 if remaining <= 0 else (remaining / thr if thr > 0 else None)
        return StageSnapshot(st.name, st.total, st.done, st.failed, st.cached, st.running, st.queued, thr,
                             p50, p95, p99, error_rate, st.cached / st.done if st.done else 0.0, st.limit,
                             st.rate, progress, st.retries, eta)

    def snapshot(self) -> MetricsSnapshot:
        """A frozen view of the run now: O(stages), plus sorting changed latency reservoirs."""
        now = self._now()
        stages = tuple(self._stage_snapshot(st, now) for st in self._stages.values())
        return MetricsSnapshot(
            run_id=self._run_id, status=self._status, started_at=self._started_at,
            elapsed=max(0.0, now - self._t0) if self._status != "pending" else 0.0,
            eta=self._eta(stages), items_per_s=_items_per_s(stages),
            cpu_percent=self._cpu, rss_bytes=self._rss, worst_loop_lag=self._worst_lag, stages=stages,
            n_failures=self._n_failures, recent_failures=tuple(self._failures), pipeline=self._pipeline,
            params=dict(self._params), finished_at=self._finished_at, n_processes=self._nproc,
            error=self._error, stall_suspects=tuple(n for n, _ in self._stall_suspects.most_common()))

    def _eta(self, stages: tuple[StageSnapshot, ...]) -> float | None:
        """Seconds left: the slowest stage's remaining/throughput; None when unknown."""
        if self._status != "running":
            return 0.0 if self._status == "succeeded" else None
        etas = [s.eta for s in stages if s.total is not None and s.progress is not None and s.progress < 1.0]
        known = [e for e in etas if e is not None]
        if known:
            return max(known)
        if stages and not etas and all(s.total is not None for s in stages):
            return 0.0
        return None

    # -- time series ----------------------------------------------------------------
    def _sample(self, now: float) -> None:
        t = now - self._t0
        wall = self._finished_at if self._t_end is not None else self._clock.time()
        lag, self._lag_since_sample = self._lag_since_sample, 0.0
        rows = [(t, wall, st.name, st.done, st.failed, st.cached, st.running, st.queued,
                 self._throughput(st, now), st.limit, st.rate, st.percentiles()[1],
                 self._cpu, self._rss, lag) for st in self._stages.values()]
        if self._samples and self._samples[-1] and self._samples[-1][0][0] == t:
            self._samples[-1] = rows  # the final sample at the same instant replaces the periodic one
        else:
            self._samples.append(rows)
        if len(self._samples) > MAX_SAMPLES:
            self._samples = self._samples[::2]
            self._interval *= 2
        k = math.floor((now - self._t0) / self._interval) + 1
        self._next_sample = self._t0 + k * self._interval

    def series(self) -> pd.DataFrame:
        """The sampled time series in long format: one row per (sample, stage).

        Columns: ``t`` (seconds since the run started), ``time`` (UTC timestamp),
        ``stage``, ``done``, ``failed``, ``cached``, ``running``, ``queued``,
        ``throughput``, ``limit``, ``rate``, ``p95`` and the run-wide
        ``cpu_percent``, ``rss_bytes``, ``loop_lag`` (worst since the previous
        sample), repeated on each stage's row. Pivot for a wide view:
        ``df.pivot(index="t", columns="stage", values="throughput")``.
        """
        return series_frame(self.series_table())

    def series_table(self) -> pa.Table:
        """:meth:`series` as a pyarrow Table (built column-wise: ~10x cheaper than the frame)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        rows = [r for sample in self._samples for r in sample]
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(SERIES_COLUMNS)
        arrays = [pa.array(col, type=typ) for col, typ in zip(columns, _series_types(), strict=True)]
        micros = pc.cast(pc.round(pc.multiply(arrays[1], 1e6)), pa.int64())
        arrays[1] = micros.cast(pa.timestamp("us", tz="UTC"))
        return pa.Table.from_arrays(arrays, names=list(SERIES_COLUMNS))


def _series_types() -> list[pa.DataType]:
    import pyarrow as pa

    f8, i8 = pa.float64(), pa.int64()
    return [f8, f8, pa.string(), i8, i8, i8, i8, i8, f8, i8, f8, f8, f8, i8, f8]


def series_frame(table: pa.Table) -> pd.DataFrame:
    """The pandas view of a series table: UTC ``time``, nullable ``limit`` and ``rss_bytes``."""
    import pandas as pd

    df = table.to_pandas()
    df["time"] = pd.to_datetime(df["time"], utc=True).astype("datetime64[ns, UTC]")
    for col in ("limit", "rss_bytes"):
        df[col] = df[col].astype("Int64")
    for col in ("rate", "p95", "cpu_percent", "throughput", "loop_lag", "t"):
        df[col] = df[col].astype("float64")
    return df


def _items_per_s(stages: tuple[StageSnapshot, ...]) -> float:
    """Run-wide items/s: the most downstream stage (pipeline order) that has finished anything,
    skipping single-partition stages (reduces), whose rate says nothing about items."""
    for s in reversed(stages):
        if s.done and s.total != 1:
            return s.throughput
    return 0.0


SERIES_COLUMNS = ("t", "time", "stage", "done", "failed", "cached", "running", "queued", "throughput",
                  "limit", "rate", "p95", "cpu_percent", "rss_bytes", "loop_lag")

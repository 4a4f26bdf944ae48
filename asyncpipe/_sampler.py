"""Run-wide probes: CPU and memory of the process tree, and event-loop lag.

Both are small tasks the engine starts next to a run and cancels before it
publishes :class:`~asyncpipe._events.RunFinished`. They publish events; the
metrics aggregator turns them into the run-wide figures.

- :class:`ResourceSampler` measures this process plus every descendant (process
  pool workers, loky, subprocesses) with psutil. psutil calls read /proc and can
  take milliseconds with many children, so each sample runs in a worker thread.
- :class:`LoopLagProbe` is a ticker that sleeps ``tick`` seconds and records how
  late it wakes: the time the loop was busy with something else. A stage that
  blocks the loop (a slow sync call run inline) shows up here as a stall, and so
  does a stage whose calls hold the GIL in a worker thread: the probe counts, per
  stage, the stalls over :data:`STALL_BUDGET` during which that stage had calls in
  flight in this process (``suspects``), so a run can say which stage to move out.

>>> from asyncpipe._clock import FakeClock
>>> probe = LoopLagProbe(lambda e: None, "r1", clock=FakeClock())
>>> probe.worst, probe.percentile(99)
(0.0, 0.0)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable, Iterable

import psutil

from ._clock import Clock, SystemClock
from ._events import Event, LoopLag, ResourceSample
from ._snapshot import STALL_BUDGET, percentile

__all__ = ["LoopLagProbe", "ResourceSampler"]

_log = logging.getLogger("asyncpipe.monitor")

Publish = Callable[[Event], None]
_GONE = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
#: Delay of the first resource sample: CPU% over 0.1 s is still meaningful (the
#: kernel counts CPU time in 10 ms ticks, so +-10%) and a 0.2 s run gets a sample.
FIRST_SAMPLE = 0.1
#: Seconds between rescans of the process tree. Listing descendants makes psutil
#: read /proc/<pid>/stat of every process on the machine (~1.5-3 ms with ~90
#: processes, measured), while reading the known ones costs ~30 µs each; so new
#: workers are discovered within RESCAN s, and a sample costs ~0.1 ms in between.
RESCAN = 2.0
#: Lags kept for percentiles: 10,000 ticks = 50 s at the default 5 ms tick.
LAG_HISTORY = 10_000



class ResourceSampler:
    """Publishes :class:`ResourceSample` every ``interval`` seconds until cancelled.

    ``cpu_percent`` is the sum over the tree in psutil's unit (100 = one core
    busy, so 2 busy cores read 200); ``rss_bytes`` the summed resident memory
    (shared pages of forked workers are counted once per process, so it
    over-estimates for fork-heavy trees).

    >>> sampler = ResourceSampler(lambda e: None, "r1")
    >>> cpu, rss, n = sampler.sample()   # the first call primes cpu_percent
    >>> rss > 0 and n >= 1
    True
    """

    def __init__(self, publish: Publish, run_id: str, *, interval: float = 0.5,
                 clock: Clock | None = None, rescan: float = RESCAN) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self._publish = publish
        self._run_id = run_id
        self.interval = interval
        self._clock = clock if clock is not None else SystemClock()
        self._root = psutil.Process(os.getpid())
        # One psutil.Process per pid: cpu_percent() compares with the previous call
        # on the same object, so a worker's first reading primes and reads 0.0.
        self._procs: dict[int, psutil.Process] = {}
        self.rescan = rescan
        self._scanned: float | None = None

    def sample(self) -> tuple[float, int, int]:
        """Blocking: (cpu_percent, rss_bytes, n_processes) of the tree now. Call it in a thread.

        The tree is listed again when ``rescan`` seconds passed since the last listing;
        in between, the processes already known are read (those gone are dropped).
        """
        now = self._clock.now()
        procs: list[psutil.Process]
        if self._scanned is None or now - self._scanned >= self.rescan:
            self._scanned = now
            try:
                procs = [self._root, *self._root.children(recursive=True)]
            except _GONE:
                procs = [self._root]
        else:
            procs = list(self._procs.values()) or [self._root]
        seen: dict[int, psutil.Process] = {}
        cpu = 0.0
        rss = 0
        for proc in procs:
            known = self._procs.get(proc.pid, proc)
            try:
                with known.oneshot():
                    c = known.cpu_percent(None)
                    r = known.memory_info().rss
            except _GONE:
                continue  # exited (or hidden) between listing and reading: skip it
            cpu += c
            rss += r
            seen[proc.pid] = known
        self._procs = seen
        return cpu, rss, len(seen)

    def prime(self) -> None:
        """Start this process's CPU count (~30 µs, loop-safe). The process tree is listed
        at the first sample: listing reads every process on the machine (milliseconds),
        which a run that ends before its first sample need not pay."""
        try:
            self._root.cpu_percent(None)
        except _GONE:
            return
        self._procs = {self._root.pid: self._root}

    async def run(self) -> None:
        """Sample until cancelled: prime, publish a first sample soon, then one per ``interval``."""
        self.prime()
        # The first sample comes after FIRST_SAMPLE s, so that even a short run gets one.
        wait = min(self.interval, FIRST_SAMPLE)
        while True:
            await self._clock.sleep(wait)
            wait = self.interval
            try:
                cpu, rss, n = await asyncio.to_thread(self.sample)
            except Exception:
                _log.exception("resource sampling failed; stopping the sampler")
                return
            self._publish(ResourceSample(run_id=self._run_id, t=self._clock.time(), cpu_percent=cpu,
                                         rss_bytes=rss, n_processes=n))


class LoopLagProbe:
    """A ticker measuring how late the event loop wakes it.

    Every ``report_every`` seconds it publishes :class:`LoopLag` with the worst
    lateness of that window. ``worst`` is the worst over its life and
    :meth:`percentile` reads the last :data:`LAG_HISTORY` lags. Cost: one wake-up
    per tick (~10-20 µs at 200 Hz, well under 1% of one core).

    ``stalls`` counts the lags over ``budget``; ``suspects()``, asked at each, names
    the stages with calls in flight in worker threads, and ``blamed`` counts them.
    """

    def __init__(self, publish: Publish, run_id: str, *, tick: float = 0.005, report_every: float = 0.5,
                 clock: Clock | None = None, suspects: Callable[[], Iterable[str]] | None = None,
                 budget: float = STALL_BUDGET) -> None:
        if tick <= 0 or report_every <= 0:
            raise ValueError(f"tick and report_every must be > 0, got {tick!r}, {report_every!r}")
        self._publish = publish
        self._run_id = run_id
        self.tick = tick
        self.report_every = report_every
        self._clock = clock if clock is not None else SystemClock()
        self.worst = 0.0
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_HISTORY)
        self._window_worst = 0.0
        self._window_start: float | None = None
        self.budget = budget
        self.stalls = 0
        self.blamed: collections.Counter[str] = collections.Counter()
        self._suspects = suspects
        self._window_suspects: collections.Counter[str] = collections.Counter()

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0-100) of the recent lags in seconds; 0.0 before any tick."""
        value = percentile(sorted(self._lags), q)
        return 0.0 if value is None else value

    async def run(self) -> None:
        """Tick until cancelled. Cancelling publishes nothing (the run may be over):
        call :meth:`flush` before ``RunFinished`` to report the last partial window."""
        clock = self._clock
        self._window_start = clock.now()
        while True:
            before = clock.now()
            await clock.sleep(self.tick)
            now = clock.now()
            lag = max(0.0, now - before - self.tick)
            self._lags.append(lag)
            if lag > self._window_worst:
                self._window_worst = lag
                if lag > self.worst:
                    self.worst = lag
            if lag > self.budget:
                self.stalls += 1
                if self._suspects is not None:
                    self._blame()
            if now - self._window_start >= self.report_every - 1e-12:
                self.flush()

    def _blame(self) -> None:
        assert self._suspects is not None
        try:
            names = list(self._suspects())
        except Exception:  # a diagnostic must never stop the probe
            _log.exception("could not tell which stages were running; no more stall suspects")
            self._suspects = None
            return
        self.blamed.update(names)
        self._window_suspects.update(names)

    def flush(self) -> None:
        """Publish the worst lag since the last report now, if any time passed."""
        if self._window_start is None:
            return
        now = self._clock.now()
        span = now - self._window_start
        if span <= 0:
            return
        self._publish(LoopLag(run_id=self._run_id, t=self._clock.time(), worst=self._window_worst,
                              window=span, suspects=tuple(sorted(self._window_suspects.items()))))
        self._window_worst = 0.0
        self._window_suspects.clear()
        self._window_start = now

"""The event stream: frozen records the engine publishes, and the bus that carries them.

The engine knows nothing about front ends. It publishes events; the metrics
aggregator, terminal progress, the notebook panel, loggers and run history
subscribe.

Granularity. At ~10 µs of engine work per item, one Python object per item per
stage would cost more than the work itself, so the default stream is coalesced:
:class:`StageProgress` carries per-stage *deltas* (started, finished, failed,
cached, durations) at most every ``flush_interval`` seconds (0.1 s), while
everything rare is published one by one as it happens (run start/finish,
retries, failures, limit changes, resource and loop-lag samples). Per-partition
:class:`PartitionStarted` / :class:`PartitionFinished` events are opt-in
(``subscribe(..., partition_events=True)``) and cost nothing when nobody asks.

Ordering guarantees: a partition's ``PartitionStarted`` precedes its
``PartitionFinished``; a :class:`StageProgress` flush always precedes
:class:`RunFinished`; :class:`RunFinished` is the last event of every run, on
success, failure and cancellation alike.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "EventBus",
    "LimitChanged",
    "LoopLag",
    "PartitionFailed",
    "PartitionFinished",
    "PartitionStarted",
    "ResourceSample",
    "RetryScheduled",
    "RunFinished",
    "RunStarted",
    "StageProgress",
]

_log = logging.getLogger("asyncpipe.events")


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event. ``t`` is wall-clock seconds since the epoch."""

    run_id: str
    t: float


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    pipeline: str
    stages: tuple[str, ...]
    total_inputs: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    """Always the last event of a run. ``status``: succeeded, failed or cancelled."""

    status: str
    n_failures: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StageProgress(Event):
    """Coalesced progress of one stage since its previous ``StageProgress``.

    ``started``/``finished``/``failed``/``cached`` are deltas; ``running``,
    ``queued``, ``limit`` and ``total`` are gauges (``total`` is None while the
    number of partitions is not yet known). ``durations`` are the compute times
    (seconds) of the partitions finished in this window, cache hits excluded — the
    last 512 of them (``asyncpipe._metrics.RESERVOIR``, what latency percentiles use).
    """

    stage: str
    started: int = 0
    finished: int = 0
    failed: int = 0
    cached: int = 0
    running: int = 0
    queued: int = 0
    limit: int | None = None
    total: int | None = None
    durations: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class PartitionStarted(Event):
    stage: str
    partition: Any
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class PartitionFinished(Event):
    """``cache`` is "hit", "miss" or "off"; ``cache_reason`` says why it missed."""

    stage: str
    partition: Any
    duration: float
    attempt: int = 1
    cache: str = "off"
    cache_reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryScheduled(Event):
    stage: str
    partition: Any
    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True)
class PartitionFailed(Event):
    """A partition failed permanently at ``stage``; it is in the dead-letter record."""

    stage: str
    partition: Any
    attempts: int
    error_type: str
    message: str
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class LimitChanged(Event):
    """A stage limit changed. ``kind``: concurrency, rate or admission."""

    stage: str
    kind: str
    old: float | None
    new: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class ResourceSample(Event):
    """CPU and memory of the process tree (this process plus its worker processes)."""

    cpu_percent: float
    rss_bytes: int
    n_processes: int = 1


@dataclass(frozen=True, slots=True)
class LoopLag(Event):
    """How late the event loop woke a ticker, worst over the last ``window`` seconds.
    ``suspects``: (stage, n) for each stage that had calls in worker threads during n of
    the window's stalls over 20 ms."""

    worst: float
    window: float
    suspects: tuple[tuple[str, int], ...] = ()


Callback = Callable[[Event], None]
_DETAIL = (PartitionStarted, PartitionFinished)


class _Stream:
    """A subscriber's bounded buffer; drops the oldest non-final events when full."""

    def __init__(self, maxlen: int) -> None:
        self.buffer: collections.deque[Event] = collections.deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None

    def push(self, event: Event) -> None:
        if len(self.buffer) >= self.maxlen:
            self.buffer.popleft()
            self.dropped += 1
        self.buffer.append(event)
        if isinstance(event, RunFinished):
            self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class EventBus:
    """Fan-out of events to callbacks and async iterators. Publishing never blocks.

    Callbacks run synchronously inside :meth:`publish` and must be cheap; one that
    raises is logged and removed, never allowed to break the run.

    >>> bus = EventBus()
    >>> seen = []
    >>> unsubscribe = bus.subscribe(seen.append)
    >>> bus.publish(RunFinished(run_id="r1", t=0.0, status="succeeded"))
    >>> [type(e).__name__ for e in seen]
    ['RunFinished']
    """

    def __init__(self) -> None:
        self._callbacks: list[Callback] = []
        self._detail_callbacks: list[Callback] = []
        self._streams: list[_Stream] = []

    @property
    def wants_partition_events(self) -> bool:
        """True when some subscriber asked for per-partition events."""
        return bool(self._detail_callbacks)

    def subscribe(self, callback: Callback, *, partition_events: bool = False) -> Callable[[], None]:
        """Call ``callback(event)`` for each event; returns a function that unsubscribes."""
        target = self._detail_callbacks if partition_events else self._callbacks
        target.append(callback)

        def unsubscribe() -> None:
            if callback in target:
                target.remove(callback)

        return unsubscribe

    def publish(self, event: Event) -> None:
        detail = isinstance(event, _DETAIL)
        targets = self._detail_callbacks if detail else (*self._callbacks, *self._detail_callbacks)
        for callback in tuple(targets):
            try:
                callback(event)
            except Exception:
                _log.exception("event subscriber %r failed; unsubscribing it", callback)
                for lst in (self._callbacks, self._detail_callbacks):
                    if callback in lst:
                        lst.remove(callback)
        if not detail:
            for stream in self._streams:
                stream.push(event)

    async def stream(self, *, maxlen: int = 10_000) -> AsyncIterator[Event]:
        """Iterate events as they come, ending after :class:`RunFinished`.

        A consumer slower than the run loses the oldest progress events past
        ``maxlen`` (counted), never the final one.
        """
        st = _Stream(maxlen)
        self._streams.append(st)
        try:
            while True:
                while st.buffer:
                    yield st.buffer.popleft()
                if st.closed:
                    return
                st.waiter = asyncio.get_running_loop().create_future()
                await st.waiter
                st.waiter = None
        finally:
            self._streams.remove(st)

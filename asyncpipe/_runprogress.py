"""A run's progress events: counters flushed as coalesced ``StageProgress`` events at
<= 10 Hz, and the per-partition detail events subscribers can ask for. Mixed into
:class:`~asyncpipe._engine.Run`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._events import Event, StageProgress
from ._metrics import RESERVOIR

if TYPE_CHECKING:
    from ._stagerun import StageRun

__all__ = ["FLUSH_INTERVAL", "RunProgress"]

#: StageProgress flush period: front ends refresh at <= 10 Hz, so faster is wasted work.
FLUSH_INTERVAL = 0.1


class RunProgress:
    """Event publishing and progress flushing of a :class:`~asyncpipe._engine.Run`."""

    run_id: str
    bus: Any
    clock: Any
    stages: dict[str, StageRun]

    def publish(self, cls: type[Event], **fields: Any) -> None:
        self.bus.publish(cls(run_id=self.run_id, t=self.clock.time(), **fields))

    def publish_detail(self, cls: type[Event], *args: Any) -> None:
        names: tuple[str, ...] = ("stage", "partition", "duration", "attempt", "cache", "cache_reason")
        if cls.__name__ == "PartitionStarted":
            names = ("stage", "partition", "attempt")
        self.bus.publish(cls(run_id=self.run_id, t=self.clock.time(), **dict(zip(names, args, strict=False))))

    def flush_progress(self) -> None:
        for rt in self.stages.values():
            now = (rt.started, rt.done, rt.failed, rt.cached)
            last = rt.flushed
            if now == last and not rt.running:
                continue
            rt.flushed = now
            # Percentiles use the last RESERVOIR durations: older ones in this window
            # would be dropped at once, so they are not even collected (at 400k
            # partitions/s, collecting them all held the loop 5-10 ms per flush).
            n = len(rt.records)
            fresh = rt.records[max(rt.flushed_records, n - RESERVOIR) : n]
            rt.flushed_records = n
            lim = rt.limiter
            durations = tuple(r[2] for r in fresh if r[1] == "ok")
            self.publish(
                StageProgress,
                stage=rt.name,
                started=now[0] - last[0],
                finished=now[1] - last[1],
                failed=now[2] - last[2],
                cached=now[3] - last[3],
                running=rt.running,
                queued=rt.q.qsize(),
                limit=int(lim.limit) if lim is not None else rt.conc,
                total=self.expected(rt),
                durations=durations,
            )

    def expected(self, rt: StageRun) -> int | None:
        """How many partitions ``rt`` will see, when known: a source's input count; a
        reduce's 1; otherwise its upstream's expected count less what failed there."""
        if rt.kind == "source":
            return None if rt.is_async_gen or rt.is_sync_gen else rt.total
        if rt.kind == "reduce":
            return 1
        counts = []
        for name in rt.slots:
            up = self.stages[name]
            if up.kind == "reduce":
                continue
            n = self.expected(up)
            if n is None:
                return None
            counts.append(n - up.failed - up.skipped)
        return min(counts) if counts else 1

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush_progress()

    def threaded_stages(self) -> list[str]:
        """Stages with calls in flight in this process's worker threads (not waiting for a
        limiter or a retry): what can hold the GIL away from the loop."""
        return [rt.name for rt in self.stages.values() if rt.in_flight and rt.executor.name == "thread"]

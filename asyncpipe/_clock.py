"""Injectable clocks: the engine never calls ``time`` or ``asyncio.sleep`` directly.

Everything that waits or measures (retry backoff, token buckets, adaptive limits,
throughput windows) takes a :class:`Clock`, so tests can drive time with
:class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock:
    """Interface: a monotonic ``now()``, wall-clock ``time()`` and ``sleep()``.

    Code that waits takes a ``Clock``, so a test can pass a :class:`FakeClock`
    (``pipe.run(..., clock=...)`` does the same for a whole run):

    >>> import asyncio
    >>> import asyncpipe as ap
    >>> async def poll(clock: ap.Clock, tries: int, every: float) -> float:
    ...     start = clock.now()
    ...     for _ in range(tries):
    ...         await clock.sleep(every)
    ...     return clock.now() - start
    >>> async def main():
    ...     clock = ap.FakeClock()
    ...     task = asyncio.create_task(poll(clock, 3, 10.0))
    ...     await asyncio.sleep(0)  # let it start sleeping
    ...     await clock.run_for(30.0, step=1.0)  # 30 "seconds" pass at once
    ...     return await task
    >>> asyncio.run(main())
    30.0
    """

    def now(self) -> float:
        """Monotonic seconds, for durations."""
        raise NotImplementedError

    def time(self) -> float:
        """Wall-clock seconds since the epoch, for records."""
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable)."""
        raise NotImplementedError


class SystemClock(Clock):
    """The real clock: ``time.perf_counter`` and ``asyncio.sleep``.

    >>> import asyncio
    >>> import asyncpipe as ap
    >>> clock = ap.SystemClock()
    >>> start = clock.now()
    >>> asyncio.run(clock.sleep(0.01))
    >>> clock.now() - start > 0.005, clock.time() > 1.6e9
    (True, True)
    """

    now = staticmethod(time.perf_counter)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock(Clock):
    """A clock that only moves when told to; sleepers wake when it passes their deadline.

    >>> clock = FakeClock()
    >>> clock.advance(2.5)
    >>> clock.now()
    2.5
    """

    def __init__(self, start: float = 0.0, *, wall: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall0 = wall - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return self._wall0 + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now + 1e-12:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def run_for(self, seconds: float, *, step: float = 0.001) -> None:
        """Advance ``seconds`` in ``step`` increments, letting woken tasks run between."""
        end = self._now + seconds
        while self._now < end - 1e-12:
            self.advance(min(step, end - self._now))
            for _ in range(3):
                await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now:.6f})"

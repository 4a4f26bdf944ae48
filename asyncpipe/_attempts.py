"""Calling a stage's function: attempts, retries and the way each call reaches its executor.

An attempt takes a permit from the stage's limiter, calls, and on failure retries as
the stage's :class:`~asyncpipe.Retry` says, then dead-letters the partition. The call
itself goes inline, to a thread (taking a CPU slot when the stage is CPU-bound), to a
process or to a cluster; "auto" stages probe their first calls to choose.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import _cpuslots
from ._cpuslots import call_in_slot
from ._deadletter import Failure
from ._events import PartitionFailed, PartitionFinished, PartitionStarted, RetryScheduled
from ._exceptions import SerializationError
from ._partition import FAILED, PartitionKey

__all__ = ["AUTO_PROBES", "CPU_BOUND", "INLINE_BAIL", "INLINE_MAX", "Attempts"]

#: "auto" sync stages: probe this many calls in a thread; if every one took less than
#: INLINE_MAX seconds, run the rest inline (a thread hop costs ~150 µs, 10-50x a cheap call).
AUTO_PROBES = 8
INLINE_MAX = 0.0002
#: "auto" stages whose probed calls spent more than this share of their wall time on the
#: CPU are CPU-bound: they run with one thread per core unless concurrency= was given.
CPU_BOUND = 0.7
#: An inline call slower than this sends the stage back to threads for good.
INLINE_BAIL = 0.005


def _timed(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], now: Any) -> tuple[Any, float, float]:
    """Call in the worker thread; return (result, wall seconds, this thread's CPU seconds)."""
    t0, c0 = now(), time.thread_time()
    out = fn(*args, **kwargs)
    return out, now() - t0, time.thread_time() - c0


class Attempts:
    """Attempts and calls: mixed into :class:`~asyncpipe._stagerun.StageRun`."""

    run: Any
    name: str
    kind: str
    ps: Any
    fn: Any
    executor: Any
    limiter: Any
    timeout: float | None
    retry: Any
    params: dict[str, Any]
    slots: tuple[str, ...]
    mode: str
    inline: bool
    probes: list[float]
    probe_cpu: float
    worker_cap: int
    cpu_slot: bool
    concurrency_is_default: bool
    is_async_gen: bool
    is_sync_gen: bool
    worker_store: Any
    rng: Any
    records: list[tuple[Any, ...]]
    in_flight: int
    started: int
    done: int
    failed: int
    busy_seconds: float
    cache_on: bool

    def build_call(
        self, pkey: PartitionKey, values: tuple[Any, ...]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ps = self.ps
        if self.kind == "source":
            kwargs = dict(self.params)
            if ps.wants_partition:
                kwargs["partition"] = pkey
            return (pkey.item,), kwargs
        if len(ps.wiring) == 1 and not ps.wants_partition and not self.params:
            return values, {}
        by_slot = dict(zip(self.slots, values, strict=True))
        kwargs = {param: by_slot[up] for param, up in ps.wiring}
        kwargs.update(self.params)
        if ps.wants_partition:
            kwargs["partition"] = pkey
        return (), kwargs

    async def compute(
        self,
        pkey: PartitionKey,
        values: tuple[Any, ...],
        reason: str,
        first: tuple[BaseException, float] | None = None,
        key: str | None = None,
    ) -> Any:
        """Call the function with retries; FAILED (after dead-lettering) on permanent failure.

        ``first`` is an attempt already made by the worker's fast path that raised.
        ``key``: the cache key, for stages whose worker writes its own entry.
        """
        run = self.run
        args, kwargs = self.build_call(pkey, values)
        attempt = 0
        first_failed = 0.0
        lim = self.limiter
        clock = run.clock
        self.started += 1
        try:
            while True:
                attempt += 1
                if run.detail:
                    run.publish_detail(PartitionStarted, self.name, pkey, attempt)
                if lim is not None and not lim.try_acquire():
                    await lim.acquire()
                t0 = clock.now()
                try:
                    if first is not None:
                        exc, first = first[0], None
                        raise exc
                    out, dt = await self.call(args, kwargs, t0, key)
                except asyncio.CancelledError:
                    if lim is not None:
                        lim.release("cancelled", clock.now() - t0)
                    raise
                except Exception as exc:
                    dt = clock.now() - t0
                    if lim is not None:
                        lim.release(run.classify(exc), dt)
                    first_failed = first_failed or clock.time()
                    if attempt < self.retry.attempts and self.retry.retryable(exc):
                        delay = self.retry.delay(attempt, exc, self.rng)
                        run.publish(
                            RetryScheduled,
                            stage=self.name,
                            partition=pkey,
                            attempt=attempt,
                            delay=delay,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                        await clock.sleep(delay)
                        continue
                    self.fail(pkey, exc, attempt, first_failed)
                    return FAILED
                if lim is not None:
                    lim.release("ok", dt)
                break
        except BaseException:
            self.started -= 1  # cancelled mid-attempt: no longer running
            raise
        if self.is_async_gen or self.is_sync_gen:
            out = [(PartitionKey(pkey.index, sub, pkey.item), part) for sub, part in enumerate(out)]
        self.done += 1
        self.busy_seconds += dt
        self.records.append((pkey, "ok", dt, attempt, reason))
        if run.detail:
            run.publish_detail(
                PartitionFinished, self.name, pkey, dt, attempt, "miss" if self.cache_on else "off", reason
            )
        return out

    async def call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], t0: float, key: str | None = None
    ) -> tuple[Any, float]:
        now = self.run.clock.now
        if key is not None and self.worker_store is not None:
            # shared cache: the worker that computes the output writes its entry
            from .cache._remote import KEY_KWARG

            call = self.executor.submit(self.worker_store, args, {**kwargs, KEY_KWARG: key})
            return await self._bounded(call), now() - t0
        if self.inline:
            out = self.fn(*args, **kwargs)
            dt = now() - t0
            if dt > INLINE_BAIL and self.mode == "inline-auto":
                self.inline, self.mode = False, "thread"  # too slow for the loop: back to threads
            return out, dt
        if self.is_async_gen:
            return [part async for part in self.fn(*args, **kwargs)], now() - t0
        fn = self.fn
        if self.is_sync_gen:
            fn = _ListOf(self.fn)
        if self.mode == "auto" and len(self.probes) < AUTO_PROBES:
            aw = self.executor.submit(call_in_slot, (_timed, (fn, args, kwargs, now), {}), {})
            out, inner, cpu = await self._bounded(aw)
            self.probes.append(inner)
            self.probe_cpu += cpu
            if len(self.probes) == AUTO_PROBES:
                self.settle_auto()
            return out, now() - t0
        try:
            if self.cpu_slot:
                out = await self._bounded(self.executor.submit(call_in_slot, (fn, args, kwargs), {}))
            else:
                out = await self._bounded(self.executor.submit(fn, args, kwargs))
        except Exception as exc:
            if self.executor.name == "process" and "pickl" in str(exc).lower():
                cause = exc.__cause__ or exc
                raise SerializationError(
                    f"Stage {self.name!r} could not send a value to or from a process worker: "
                    f"{type(cause).__name__}: {cause}. Make the stage's inputs and output picklable, "
                    "or use executor='thread'.",
                    stage=self.name,
                ) from exc
            raise
        return out, now() - t0

    def settle_auto(self) -> None:
        """After the probes: cheap calls go inline; CPU-bound ones get one thread per core.

        A call whose thread was busy on the CPU for most of its wall time holds the GIL
        (pandas/numpy conversions, pure Python): more threads than cores then only
        contend, slowing the stage and starving the event loop (P3 workload: 4 threads
        took 1.36 s with 115 ms loop stalls, 2 threads 0.89 s with 55 ms).
        """
        wall = sum(self.probes)
        self.cpu_slot = False
        if max(self.probes) < INLINE_MAX and self.timeout is None:
            self.inline, self.mode = True, "inline-auto"
        elif wall > 0 and self.probe_cpu / wall > CPU_BOUND and self.concurrency_is_default:
            self.worker_cap = _cpuslots.SLOTS  # one thread per CPU slot
            self.cpu_slot = True

    async def _bounded(self, aw: Any) -> Any:
        """Await an executor call (under the stage's timeout), counted in ``in_flight``."""
        self.in_flight += 1
        try:
            if self.timeout is None:
                return await aw
            async with asyncio.timeout(self.timeout):
                return await aw
        finally:
            self.in_flight -= 1

    def fail(self, pkey: PartitionKey, exc: BaseException, attempts: int, first: float) -> None:
        self.failed += 1
        self.records.append((pkey, "failed", 0.0, attempts, f"{type(exc).__name__}: {exc}"))
        failure = Failure.from_exception(self.name, pkey, exc, attempts, first, self.run.clock.time())
        self.run.failed(failure)
        self.run.publish(
            PartitionFailed,
            stage=self.name,
            partition=pkey,
            attempts=attempts,
            error_type=failure.error_type,
            message=failure.message,
            traceback=failure.traceback,
        )


class _ListOf:
    """Wraps a sync generator function so a worker thread drains it into a list."""

    #: what executors test for (a remote one splits the list into one future per part)
    asyncpipe_list_of = True

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "generator")

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return list(self.fn(*args, **kwargs))

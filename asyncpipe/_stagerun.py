"""One stage at run time: its queue, workers, hot path and counters (attempts and retries
are in ``_attempts``, cache keys and cached inputs in ``_stagecache``).

Hot path notes (the whole per-item budget is ~10 µs for three stages):
``Queue.get_nowait`` before ``await get()``, no per-item events unless a subscriber
asked for them, counters are plain ints flushed by the run at <= 10 Hz, and cheap
sync functions run inline on the loop (yielding every ``YIELD_EVERY`` seconds).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import TYPE_CHECKING, Any

from ._attempts import INLINE_BAIL, Attempts
from ._events import PartitionFinished
from ._logging import _partition as _partition_var
from ._logging import set_task_context
from ._partition import ALL, FAILED, STOP, PartitionKey
from ._stage import DEFAULT
from ._stagecache import CacheSide, Lazy

set_partition = _partition_var.set  # a bound method: no Python call layer on the hot path

if TYPE_CHECKING:
    from ._engine import Run
    from ._plan import PlannedStage
    from .executors import Executor

#: An inline worker gives the loop a turn after this long, so a stream of cheap items
#: never holds the loop for more than ~2 ms (the loop-stall budget is 20 ms worst).
YIELD_EVERY = 0.0005


class StageRun(Attempts, CacheSide):
    """One stage of a run: its queue and workers, the hot path, and a partition's way
    through the cache (:class:`CacheSide`) and the function (:class:`Attempts`)."""

    def __init__(self, run: Run, ps: PlannedStage, executor: Executor, limiter: Any) -> None:
        self.run = run
        self.ps = ps
        self.name = ps.name
        self.kind = ps.kind
        self.fn = ps.stage.fn
        self.executor = executor
        self.limiter = limiter
        self.timeout = ps.timeout
        self.retry = ps.retry
        self.cache_on = False  # set by the run once the cache is open
        self.code_key = ""
        self.opts_key = ""
        self.slots = ps.upstream  # one slot per upstream stage
        self.params = {p: run.params[p] for p in ps.params}
        self.is_async_gen = inspect.isasyncgenfunction(inspect.unwrap(self.fn))
        self.is_sync_gen = inspect.isgeneratorfunction(inspect.unwrap(self.fn))
        self.mode = ps.executor if isinstance(ps.executor, str) else executor.name  # "auto" may go inline
        self.inline = executor.inline
        self.probes: list[float] = []
        self.in_flight = 0  # calls submitted to the executor and not back yet
        self.probe_cpu = 0.0
        self.worker_cap = 1 << 30  # "auto" lowers it for CPU-bound functions
        self.concurrency_is_default = (
            ps.stage.options.concurrency is DEFAULT and run.pipe.defaults.get("concurrency") is DEFAULT
        )
        # "auto" thread calls take a CPU slot (asyncpipe._cpuslots) while probed and, if
        # settle_auto finds them CPU-bound, for good: GIL-holding calls of all stages then
        # share the cores.
        self.cpu_slot = False
        self.conc = int(getattr(limiter, "max_limit", ps.concurrency) if limiter else ps.concurrency)
        self.q: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(2, self.conc))
        self.inbox = self.q  # where upstream stages deliver (joins have a separate one)
        self.downstream: list[tuple[StageRun, int | None]] = []
        self.open_upstreams = len(self.slots) or 1
        self.workers: list[asyncio.Task[None]] = []
        self.live = 0
        self.closing = False
        self.keep = False
        self.outputs: list[tuple[PartitionKey, Any]] = []
        self.records: list[tuple[Any, ...]] = []
        # cumulative counters (plain ints: the hot path only increments); the run's
        # flusher turns them into StageProgress deltas. done counts cache hits too.
        self.started = self.done = self.failed = self.cached = self.skipped = 0
        self.flushed = (0, 0, 0, 0)
        self.flushed_records = 0  # records already reported in a StageProgress
        self.busy_seconds = 0.0  # summed compute time of the partitions done
        self.total: int | None = None
        self.rng = random.Random()
        self.fetchers: list[Any] = []
        self.worker_store: Any = None  # StoreOnWorker when a cluster writes its own cache entries
        #: cached stages: permits for partitions computed but not yet durable (see handle)
        self.flight: asyncio.Semaphore | None = None
        self.permits = 0  # the flight semaphore's size
        self.content_fingerprint = (
            getattr(self.fn, "asyncpipe_fingerprint", None) if self.kind == "source" else None
        )
        self.any_fetch = False
        self._fusable = False
        self.n_workers = self.conc

    @property
    def running(self) -> int:
        """Partitions being computed now (attempts and retry waits included)."""
        return self.started - (self.done - self.cached) - self.failed

    # -- plumbing ---------------------------------------------------------------------
    def start_workers(self, n: int) -> None:
        for _ in range(n):
            self.live += 1
            self.workers.append(
                asyncio.get_running_loop().create_task(self.worker(), name=f"asyncpipe:{self.name}")
            )

    async def upstream_done(self) -> None:
        self.open_upstreams -= 1
        if self.open_upstreams == 0:
            self.closing = True
            for _ in range(self.live):
                await self.q.put(STOP)

    async def deliver(self, pkey: PartitionKey, value: Any, key: str | None) -> None:
        run = self.run
        if self.keep and value is not FAILED:
            self.outputs.append((pkey, value))
        for ds, slot in self.downstream:
            if run.tracking:
                run.track(pkey, 1)
            env = (pkey, value, key) if slot is None else (slot, pkey, value, key)
            q = ds.inbox
            if q.full():
                await q.put(env)
            else:
                q.put_nowait(env)

    def fast_path(self) -> bool:
        """True when a partition needs nothing but the call: no cache, limiter, events or extras."""
        ps = self.ps
        return (
            not self.cache_on
            and self.limiter is None
            and not self.run.detail
            and not (self.is_async_gen or self.is_sync_gen)
            and self.kind in ("source", "map", "sink")
            and (len(ps.wiring) == 1 or self.kind == "source")
            and not ps.wants_partition
            and not self.params
            and self.timeout is None
            and not self.any_fetch
        )

    async def worker(self) -> None:
        q, run = self.q, self.run
        set_task_context(run.run_id, self.name)  # log records from this worker carry run and stage
        now = run.clock.now
        fast = self.fast_path()
        fn = self.fn
        direct_async = self.mode == "async"
        records = self.records
        out: Any = None
        # one plain downstream queue and nothing kept: deliver without a coroutine call
        solo_rt = (
            self.downstream[0][0] if len(self.downstream) == 1 and self.downstream[0][1] is None else None
        )
        solo = solo_rt.inbox if solo_rt is not None and not self.keep else None
        last_yield = now()
        try:
            while True:
                if run.paused:
                    await run.resume_event.wait()
                if self.live > self.worker_cap and not self.closing:
                    break  # "auto" found the stage CPU-bound: fewer threads
                if q.qsize():
                    env = q.get_nowait()
                else:
                    env = await q.get()
                    last_yield = now()
                if env is STOP:
                    break
                pkey, value, key = env
                set_partition(pkey)  # log records from the stage carry the partition
                if value is FAILED:
                    self.skipped += 1
                    await self.deliver(pkey, FAILED, None)
                elif (
                    fast
                    and (self.inline or direct_async)
                    and type(value) is not Lazy
                    and self.limiter is None
                ):
                    # The hot path, inlined: ~1 us of bookkeeping around the call.
                    self.started += 1
                    t0 = now()
                    try:
                        out = fn(value) if self.inline else await fn(value)
                    except Exception as exc:
                        self.started -= 1  # compute() counts the attempt again
                        out = await self.compute(pkey, (value,), "cache disabled", first=(exc, now() - t0))
                    else:
                        dt = now() - t0
                        self.done += 1
                        self.busy_seconds += dt
                        records.append((pkey, "ok", dt, 1, "cache disabled"))
                        if self.inline and dt > INLINE_BAIL and self.mode == "inline-auto":
                            self.inline, self.mode = False, "thread"
                    if solo is not None and out is not FAILED and not run.tracking:
                        if solo_rt.fusable and solo_rt.inline and solo_rt.limiter is None:
                            await self.fused(solo_rt, pkey, out)
                        elif solo.full():
                            await solo.put((pkey, out, None))
                        else:
                            solo.put_nowait((pkey, out, None))
                    else:
                        await self.deliver(pkey, out, None)
                else:
                    await self.handle(pkey, (value,), (key,))
                if run.tracking:
                    run.track(pkey, -1)
                # drop references before waiting for the next item: an idle worker must
                # not keep its last partition alive (memory is O(in flight), not O(workers))
                env = value = out = None
                if now() - last_yield > YIELD_EVERY:
                    await asyncio.sleep(0)
                    last_yield = now()
        finally:
            self.live -= 1
        if self.live == 0:
            await self.run.stage_closed(self)

    @property
    def fusable(self) -> bool:
        """Can an upstream worker call this stage directly instead of queueing to it?

        Only for inline stages on the plain path (no cache, limiter, timeout, retries
        state, joins): the call would run on the loop thread either way, so skipping
        the queue hop changes nothing but the ~2 us it costs. Re-read per item:
        "auto" stages become inline (and may leave it) during the run.
        """
        return self._fusable and self.inline

    async def fused(self, ds: StageRun, pkey: PartitionKey, value: Any) -> None:
        """Run a chain of fusable inline stages on ``value`` right here, then queue the
        last result onward. A failing call falls back to that stage's normal path."""
        now = self.run.clock.now
        stage = self
        while True:
            ds.started += 1
            t0 = now()
            try:
                out = ds.fn(value)
            except Exception as exc:
                ds.started -= 1
                out = await ds.compute(pkey, (value,), "cache disabled", first=(exc, now() - t0))
                await ds.deliver(pkey, out, None)
                return
            dt = now() - t0
            ds.done += 1
            ds.busy_seconds += dt
            ds.records.append((pkey, "ok", dt, 1, "cache disabled"))
            if dt > INLINE_BAIL and ds.mode == "inline-auto":
                ds.inline, ds.mode = False, "thread"
            stage, value = ds, out
            nxt = (
                stage.downstream[0][0]
                if len(stage.downstream) == 1 and stage.downstream[0][1] is None
                else None
            )
            if nxt is None or stage.keep or not nxt.fusable or nxt.limiter is not None:
                break
            ds = nxt
        await stage.deliver(pkey, value, None)

    # -- one partition ----------------------------------------------------------------
    async def handle(self, pkey: PartitionKey, values: tuple[Any, ...], keys: tuple[Any, ...]) -> None:
        key = parts = None
        reason = "cache disabled"
        if self.cache_on and not (self.is_async_gen or self.is_sync_gen):
            if self.content_fingerprint is not None:
                # the item names external data (a file, an object): key on its current version too
                try:
                    version = await asyncio.to_thread(self.content_fingerprint, pkey.item)
                except Exception as exc:  # unreadable now: the call itself will report it
                    version = f"unavailable:{type(exc).__name__}"
                keys = (*keys, version)
            hit, key, reason, parts = self.cache_key(pkey, keys)
            if hit:
                self.cached += 1
                self.done += 1
                self.records.append((pkey, "cached", 0.0, 0, "cache hit"))
                if self.run.detail:
                    self.run.publish_detail(PartitionFinished, self.name, pkey, 0.0, 0, "hit", "")
                await self.deliver(pkey, Lazy(self, pkey, key, values), key)
                return
        values = await self.resolve(values)
        flight = self.flight if key is not None else None
        if flight is not None:
            # a permit from compute start until the output is durable: at most
            # `concurrency` partitions of this stage are computed-but-not-yet-written
            await flight.acquire()
        try:
            out = await self.compute(pkey, values, reason, key=key)
        except BaseException:
            if flight is not None:
                flight.release()
            raise
        if out is FAILED:
            if flight is not None:
                flight.release()
            await self.deliver(pkey, FAILED, None)
            return
        if self.is_async_gen or self.is_sync_gen:
            for sub, (spkey, part) in enumerate(out):
                skey = None
                if self.run.cache is not None and keys[0] is not None:
                    skey = f"{keys[0]}/{sub}"
                await self.deliver(spkey, part, skey)
            return
        write = None
        if key is not None and self.worker_store is not None:
            self.run.cache.record(self.name, key, parts, pkey.id)  # the worker wrote it already
            if flight is not None:
                flight.release()
        elif key is not None:
            try:
                write = self.run.cache.store(self.name, key, await self.cacheable(out), parts, pkey.id)
            finally:
                if flight is not None:
                    if write is None:
                        flight.release()
                    else:  # downstream gets the value now; the permit returns once it is durable
                        loop = asyncio.get_running_loop()
                        write.add_done_callback(lambda _: loop.call_soon_threadsafe(flight.release))
        await self.deliver(pkey, out, key)

    def finalize(self) -> None:
        """Once the cache is open: decide whether upstream workers may call this stage directly,
        and how many workers it needs."""
        self._fusable = self.kind in ("map", "sink") and type(self) is StageRun and self.fast_path()
        self.n_workers = self.conc
        cache = self.run.cache
        shared = getattr(cache, "shared", False)
        if self.cache_on and self.executor.remote and shared and self.kind != "reduce":
            from .cache._index import stage_dirname
            from .cache._remote import StoreOnWorker

            self.worker_store = StoreOnWorker(self.fn, str(cache.location), stage_dirname(self.name))
            self.executor.prepare(self.worker_store, self.name, self.conc)
        if self.cache_on and self.kind != "reduce" and not (self.is_async_gen or self.is_sync_gen):
            # twice the workers, `concurrency` permits: one worker computes while another's
            # output is still being written, and a crash loses at most `concurrency` partitions
            self.flight = asyncio.Semaphore(self.conc)
            self.permits = self.conc
            self.n_workers = 2 * self.conc

    def raise_limit(self, limit: int) -> None:
        """The concurrency limit rose at runtime: start the workers it needs and, for a
        cached stage, add write permits (they never shrink: a lower limit is the limiter's
        to enforce, so a crash then loses at most the highest limit's worth)."""
        workers = limit
        if self.flight is not None:
            for _ in range(limit - self.permits):
                self.flight.release()
            self.permits = max(self.permits, limit)
            workers = 2 * limit
        if workers > self.live:
            self.start_workers(workers - self.live)


__all__ = ["ALL", "FAILED", "STOP", "Lazy", "StageRun"]

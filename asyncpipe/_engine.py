"""The scheduler: one :class:`Run` streams partitions through the plan's stages.

Shape: a feeder task turns input items into :class:`PartitionKey` s and puts them
on each source's bounded queue; every stage has a pool of worker tasks reading its
queue and writing to its downstream queues (bounded too, so a slow stage pushes
back all the way to the feeder: memory stays O(concurrency x partition size)).
Reduces collect; joins match partitions by key. When a stage's upstreams are all
done it drains, its workers stop, and it tells its downstream stages.

The engine imports no front end. It publishes events on an :class:`EventBus`;
counters are plain ints, flushed as coalesced :class:`StageProgress` events.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock
from ._deadletter import DeadLetter, Failure
from ._events import EventBus, RunFinished, RunStarted
from ._exceptions import RunFailed
from ._gcfreeze import GcFreeze
from ._joins import JoinRun, ReduceRun
from ._partition import PartitionKey, cheap_to_fingerprint, item_fingerprint
from ._runlimits import RunLimits
from ._runprogress import RunProgress
from ._stagerun import StageRun
from .executors import Executor, create_executor

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["Run"]

_log = logging.getLogger("asyncpipe")

#: On cancel, how long to wait for tasks to unwind before giving up on them.
CANCEL_GRACE = 1.0


class Run(RunLimits, RunProgress):
    """State of one pipeline run. Created and driven by :mod:`asyncpipe._runner`."""

    def __init__(
        self,
        pipe: Pipeline,
        inputs: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        run_id: str,
        params: dict[str, Any],
        cache: Any,
        fail_fast: bool,
        keep: Any,
        bus: EventBus,
        clock: Clock | None = None,
        executors: dict[str, Executor] | None = None,
        classify: Callable[[BaseException], str] | None = None,
        freeze_gc: bool = True,
    ) -> None:
        self.pipe = pipe
        self.plan = pipe.plan
        self.run_id = run_id
        self.inputs = inputs
        self.params = params
        self.cache = cache
        self.fail_fast = fail_fast
        self.bus = bus
        self.clock = clock or SystemClock()
        self.detail = bus.wants_partition_events
        self.paused = False
        self.resume_event = asyncio.Event()
        self.resume_event.set()
        self.tracking = False
        self.failures: list[Failure] = []
        self.items: list[Any] = []
        self.status = "pending"
        self.error: BaseException | None = None
        self.started_at = self.finished_at = 0.0
        self.run_dir = Path(pipe.workdir) / "runs" / run_id
        self._deadletter: DeadLetter | None = None
        self._classify = classify or _default_classify
        self._user_executors = dict(executors or {})
        self._executors: dict[str, Executor] = {}
        self._done: asyncio.Future[None] | None = None
        self._open = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self.stages: dict[str, StageRun] = {}
        self._keep = keep
        self.governed = pipe.memory_budget is not None
        self.freeze_gc = freeze_gc
        self._refs: dict[int, int] = {}
        self._admission: Any = None
        self._governor: Any = None
        #: called just before the final progress flush and RunFinished (monitors flush here)
        self.before_finish: list[Callable[[], None]] = []

    # -- construction ------------------------------------------------------------------
    def _executor(self, spec: Any) -> Executor:
        if isinstance(spec, Executor):
            return spec
        if spec in self._user_executors:
            return self._user_executors[spec]
        if spec not in self._executors:
            self._executors[spec] = create_executor(spec)
        return self._executors[spec]

    def _build(self) -> None:
        keep = self._keep
        for ps in self.plan.stages:
            ex = self._executor(ps.executor)
            limiter = self._limiter(ps)
            cls = (
                ReduceRun
                if ps.kind == "reduce"
                else (JoinRun if len(ps.upstream) > 1 or ps.broadcast else StageRun)
            )
            rt = cls(self, ps, ex, limiter)
            ex.prepare(ps.stage.fn, ps.name, rt.conc)
            if keep == "all":
                rt.keep = True
            elif keep is None:
                rt.keep = not ps.downstream
            else:
                rt.keep = ps.name in keep
            self.stages[ps.name] = rt
        for rt in self.stages.values():
            for i, up in enumerate(rt.slots):
                slot = i if isinstance(rt, JoinRun | ReduceRun) else None
                self.stages[up].downstream.append((rt, slot))
        for rt in self.stages.values():
            rt.bind_fetchers()

    def classify(self, exc: BaseException) -> str:
        return self._classify(exc)

    # -- failures ----------------------------------------------------------------------
    def failed(self, failure: Failure) -> None:
        self.failures.append(failure)
        if self._deadletter is None:
            self._deadletter = DeadLetter(self.run_dir)
        self._deadletter.record(failure)
        _log.warning(
            "run %s: %s", self.run_id, failure, extra={"run_id": self.run_id, "stage": failure.stage}
        )
        if self.fail_fast and self._done is not None and not self._done.done():
            err = RunFailed(f"Stopped at the first failure (fail_fast=True): {failure}", failures=(failure,))
            err.__cause__ = failure.error
            self._done.set_exception(err)

    # -- running -----------------------------------------------------------------------
    async def stage_closed(self, rt: StageRun) -> None:
        for ds, _ in rt.downstream:
            await ds.upstream_done()
        self._open -= 1
        if self._open == 0 and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _feed(self) -> None:
        sources = [rt for rt in self.stages.values() if rt.kind == "source"]
        cache_on = any(rt.cache_on for rt in sources)
        items = self.items
        n = 0

        async def put(item: Any) -> None:
            nonlocal n
            if self.paused:
                await self.resume_event.wait()
            pkey = PartitionKey(n, 0, item)
            items.append(item)
            key = None
            if cache_on:
                if cheap_to_fingerprint(item):
                    key = item_fingerprint(item)
                else:
                    key = await asyncio.to_thread(item_fingerprint, item)
            env = (pkey, item, key)
            if self.tracking:
                adm = self._admission
                if not adm.try_acquire():
                    await adm.acquire()
                self._refs[pkey.index] = len(sources)
            for rt in sources:
                q = rt.q
                if q.full():
                    await q.put(env)
                else:
                    q.put_nowait(env)
            n += 1

        try:
            inputs = self.inputs
            if inputs is None:
                pass
            elif hasattr(inputs, "__aiter__"):
                async for item in inputs:
                    await put(item)
            else:
                for item in inputs:
                    await put(item)
        finally:
            for rt in sources:
                rt.total = n
        for rt in sources:
            await rt.upstream_done()

    async def _open_cache(self) -> None:
        cache = self.cache
        if cache is None:
            return
        stages = [rt for rt in self.stages.values() if rt.ps.cache]

        def code_keys() -> list[tuple[str, str]]:
            out = []
            for rt in stages:
                code, _ = cache.code_key(rt.ps.stage)
                # what else changes the output: kind, concat, run params, and a callable
                # object's own settings token (built-in stores: format, headers...)
                token = getattr(rt.fn, "asyncpipe_cache_token", None)
                opts = repr(
                    (
                        rt.ps.kind,
                        rt.ps.stage.options.concat,
                        sorted(rt.params.items()),
                        token() if callable(token) else None,
                    )
                )
                out.append((code, opts))
            return out

        def blocking() -> tuple[list[tuple[str, str]], Any]:
            # one thread for both: two would fight for the GIL (5 ms switch interval)
            keys = code_keys()
            cache.save_code_memo()
            return keys, cache.read_indexes([rt.name for rt in stages])

        keys, indexes = await asyncio.to_thread(blocking)
        cache.adopt(indexes)
        for rt, (code, opts) in zip(stages, keys, strict=True):
            rt.code_key, rt.opts_key, rt.cache_on = code, opts, True

    async def execute(self) -> None:
        loop = asyncio.get_running_loop()
        self.started_at = self.clock.time()
        self.status = "running"
        self.publish(
            RunStarted,
            pipeline=self.plan.name,
            stages=self.plan.names,
            total_inputs=len(self.inputs) if hasattr(self.inputs, "__len__") else None,  # type: ignore[arg-type]
            params=dict(self.params),
        )
        cancelled = False
        if self.freeze_gc:
            GcFreeze.enter()
        try:
            self._build()
            for ex in {id(rt.executor): rt.executor for rt in self.stages.values()}.values():
                await ex.start()  # e.g. a LocalCluster: not counted against any timeout=
            await self._open_cache()
            self._done = loop.create_future()
            self._open = len(self.stages)
            if self.governed:
                await self._start_governor(loop)
            for rt in self.stages.values():
                rt.finalize()
            for rt in self.stages.values():
                rt.start_workers(rt.n_workers)
                self._tasks.extend(rt.workers)
            self._tasks.append(loop.create_task(self._feed(), name="asyncpipe:feed"))
            flusher = loop.create_task(self._flusher(), name="asyncpipe:flush")
            try:
                await self._watch(self._done)
            finally:
                flusher.cancel()
            self.status = "failed" if self.failures else "succeeded"
        except asyncio.CancelledError:
            cancelled = True
            self.status = "cancelled"
            raise
        except BaseException as exc:
            self.status = "failed"
            self.error = exc
            raise
        finally:
            await self._shutdown(cancel=self.status == "cancelled" or self.error is not None)
            self.finished_at = self.clock.time()
            for hook in self.before_finish:
                try:
                    hook()
                except Exception:
                    _log.exception("run %s: a before-finish hook failed", self.run_id)
            self.flush_progress()
            if cancelled:
                self.status = "cancelled"
            if self.freeze_gc:
                GcFreeze.exit()
            self.publish(
                RunFinished,
                status=self.status,
                n_failures=len(self.failures),
                error=None if self.error is None else f"{type(self.error).__name__}: {self.error}",
            )

    async def _watch(self, done: asyncio.Future[None]) -> None:
        """Wait for the run to finish; a crashed engine task fails the run at once."""
        pending = set(self._tasks)
        while not done.done():
            finished, _ = await asyncio.wait([done, *pending], return_when=asyncio.FIRST_COMPLETED)
            for t in finished:
                if t is done:
                    continue
                pending.discard(t)
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            pending = {t for t in self._tasks if not t.done()}
        done.result()

    async def _shutdown(self, *, cancel: bool) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        closers = []
        if cancel:
            # abandon work still running; remote executors the user passed in cancel
            # their futures too (finished ones would otherwise linger on the cluster)
            closers += [ex.aclose(cancel=True) for ex in self._executors.values()]
            closers += [ex.aclose(cancel=True) for ex in self._user_executors.values() if ex.remote]
            self._executors = {}
        for rt in self.stages.values():
            aclose = getattr(rt.fn, "aclose", None)
            if aclose is not None:
                closers.append(aclose())
        if self.cache is not None:
            closers.append(self.cache.flush())
        results = await asyncio.gather(*closers, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                _log.warning("run %s: error while closing: %r", self.run_id, res)
        if self._deadletter is not None:
            await asyncio.to_thread(self._deadletter.close)

    async def close_executors(self) -> None:
        """Release the executors this run created, after the result has been collected
        (remote executors must stay connected until kept outputs are fetched)."""
        owned, self._executors = self._executors, {}
        results = await asyncio.gather(*[ex.aclose() for ex in owned.values()], return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                _log.warning("run %s: error while closing an executor: %r", self.run_id, res)

    # -- control -----------------------------------------------------------------------
    def pause(self) -> None:
        self.paused = True
        self.resume_event.clear()

    def resume(self) -> None:
        self.paused = False
        self.resume_event.set()

    @property
    def workdir(self) -> str:
        return os.fspath(self.pipe.workdir)


def _default_classify(exc: BaseException) -> str:
    from ._limiter import classify

    return classify(exc)

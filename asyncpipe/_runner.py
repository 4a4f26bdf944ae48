"""Entry points: ``await run()``, ``start()`` -> :class:`RunHandle`, and ``run_sync()``.

Blocking and non-blocking have different names, and nothing here switches on
"is a loop running": ``start`` always needs one, ``run_sync`` always runs a
private loop on a worker thread (so it works in scripts and in sync notebook
cells alike, without patching the kernel's loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._engine import Run
from ._events import Event, EventBus
from ._exceptions import AsyncpipeError, DefinitionError, RunCancelled
from ._handle import RunHandle
from ._history import new_run_id
from ._partition import PartitionKey
from ._result import RunResult, StageSummary
from ._stage import DEFAULT
from ._stagerun import Lazy

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["RunHandle", "call_on_private_loop", "run_pipeline", "run_pipeline_sync", "start_pipeline"]

T = TypeVar("T")

_CACHES: dict[str, Any] = {}


def open_cache(pipe: Pipeline, cache: Any) -> Any:
    """The :class:`~asyncpipe.cache.Cache` for a run, shared per location within a process
    (so its in-memory tier answers warm re-runs in the same kernel)."""
    setting = pipe.cache if cache is DEFAULT else cache
    if setting is False or setting is None:
        return None
    from .cache import Cache

    if isinstance(setting, Cache):
        return setting
    location = os.path.join(pipe.workdir, "cache") if setting is True else os.fspath(setting)
    key = os.path.abspath(location) if "://" not in location else location
    if key not in _CACHES:
        _CACHES[key] = Cache(location)
    return _CACHES[key]


def _discover_inputs(pipe: Pipeline) -> list[Any] | None:
    for ps in pipe.plan.stages:
        finder = getattr(ps.stage.fn, "asyncpipe_inputs", None)
        if ps.kind == "source" and finder is not None:
            return list(finder())
    return None


class _Session:
    """Everything a run needs besides the engine: bus, metrics, monitors, record."""

    def __init__(self, pipe: Pipeline, inputs: Any, options: dict[str, Any]) -> None:
        unknown = set(options) - _RUN_OPTIONS
        if unknown:
            raise TypeError(
                f"run() got unknown option(s) {', '.join(sorted(unknown))}; "
                f"options are {', '.join(sorted(_RUN_OPTIONS))}."
            )
        self.pipe = pipe
        self.inputs = inputs
        self.options = options
        self.bus = EventBus()
        self.metrics: Any = None
        self.run: Run | None = None
        on_event: Callable[[Event], None] | None = options.get("on_event")
        if on_event is not None:
            self.bus.subscribe(on_event, partition_events=bool(options.get("partition_events")))
        if options.get("monitor", True) or options.get("progress"):
            from ._metrics import Metrics

            clock = options.get("clock")
            self.metrics = Metrics(clock=clock) if clock is not None else Metrics()
            self.bus.subscribe(self.metrics)
        overrides = dict(options.get("params") or {})
        for name in overrides:
            if name not in pipe.params:
                import difflib

                close = difflib.get_close_matches(name, list(pipe.params), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise DefinitionError(
                    f"run() got unknown parameter {name!r}.{hint} Declare run parameters with their "
                    "defaults in Pipeline(..., params={...})."
                )
        params = {**pipe.params, **overrides}
        fail_fast = options.get("fail_fast")
        self.run = Run(
            pipe,
            None,
            run_id=new_run_id(options.get("clock")),
            params=params,
            cache=None,
            fail_fast=pipe.fail_fast if fail_fast is None else fail_fast,
            keep=options.get("keep", pipe.keep),
            bus=self.bus,
            clock=options.get("clock"),
            executors=options.get("executors"),
            freeze_gc=bool(options.get("freeze_gc", True)),
        )

    async def execute(self) -> RunResult:
        run = self.run
        assert run is not None
        inputs = self.inputs
        if inputs is None:
            inputs = await asyncio.to_thread(_discover_inputs, self.pipe)
            if inputs is None:
                raise AsyncpipeError(
                    f"Pipeline {self.pipe.name!r} got no inputs. Pass the items its sources read, "
                    "e.g. pipe.run(['a.csv', 'b.csv']), or use a source that lists its own inputs."
                )
        run.inputs = inputs
        run.cache = await asyncio.to_thread(open_cache, self.pipe, self.options.get("cache", DEFAULT))
        monitors = await self._start_monitors()
        try:
            try:
                await run.execute()
            finally:
                for t in monitors:
                    t.cancel()
            return await self.result()
        finally:
            await run.close_executors()

    async def _start_monitors(self) -> list[asyncio.Task[Any]]:
        if not self.options.get("monitor", True):
            return []
        from ._sampler import LoopLagProbe, ResourceSampler

        run = self.run
        assert run is not None
        self.probe = LoopLagProbe(self.bus.publish, run.run_id, suspects=run.threaded_stages)
        self.sampler = ResourceSampler(self.bus.publish, run.run_id)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self.probe.run(), name="asyncpipe:lag"),
            loop.create_task(self.sampler.run(), name="asyncpipe:resources"),
        ]

        def stop_monitors() -> None:
            # before RunFinished: nothing may be published after it, and the last
            # half second of loop lag must still reach the metrics
            for t in tasks:
                t.cancel()
            self.probe.flush()

        run.before_finish.append(stop_monitors)
        return tasks

    async def result(self) -> RunResult:
        run = self.run
        assert run is not None
        metrics = self.metrics

        def collect() -> tuple[Any, ...]:
            # O(partitions) work, in a thread so the loop stays free: the run is over, so
            # nothing mutates these any more (the metrics stopped with RunFinished)
            outputs: dict[str, dict[PartitionKey, Any]] = {}
            pending: dict[str, list[PartitionKey]] = {}
            for rt in run.stages.values():
                if rt.keep:
                    kept = outputs[rt.name] = dict(rt.outputs)
                    ex = rt.executor
                    if rt.cached or ex.remote:  # else nothing can be lazy or remote: skip the scan
                        pending[rt.name] = [
                            k for k, v in kept.items() if type(v) is Lazy or (ex.remote and ex.is_ref(v))
                        ]
            summaries = tuple(
                StageSummary(rt.name, rt.kind, rt.done, rt.cached, rt.failed, rt.skipped, rt.busy_seconds)
                for rt in run.stages.values()
            )
            series = metrics.series_table() if metrics is not None else None
            return outputs, pending, summaries, list(run.items), series

        if len(run.items) * len(run.stages) <= _COLLECT_INLINE:  # microseconds: skip the hop
            outputs, pending, summaries, items, series = collect()
        else:
            outputs, pending, summaries, items, series = await asyncio.to_thread(collect)
        probe = getattr(self, "probe", None)
        result = RunResult(
            run_id=run.run_id,
            pipeline=run.plan.name,
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
            inputs=items,
            outputs=outputs,
            stages=summaries,
            failure_list=tuple(run.failures),
            records={rt.name: rt.records for rt in run.stages.values()},
            series_table=series,
            worst_loop_lag=getattr(probe, "worst", None),
            loop_stalls=getattr(probe, "stalls", 0),
            stall_suspects=dict(probe.blamed) if probe is not None else {},
            run_dir=str(run.run_dir),
        )
        # The record does not depend on the outputs: save it while they load.
        saved = asyncio.ensure_future(asyncio.to_thread(_save_record, result, run))
        n_failures = len(run.failures)
        try:
            for name, keys in pending.items():
                if keys:  # load/fetch concurrently (Dask merges fetches into one gather)
                    await _materialize_all(run, name, outputs[name], keys)
        finally:
            for rt in run.stages.values():
                rt.outputs.clear()
            await saved
        if len(run.failures) != n_failures:  # a corrupt entry's recompute failed while loading
            result = dataclasses.replace(result, failure_list=tuple(run.failures))
            await asyncio.to_thread(_save_record, result, run)
        return result


#: Partitions x stages up to which a run's result is collected on the loop (tens of µs).
_COLLECT_INLINE = 256


async def _materialize_all(
    run: Run, stage: str, kept: dict[PartitionKey, Any], keys: list[PartitionKey]
) -> None:
    """Replace the lazy or remote values among ``kept[keys]`` with the values themselves."""
    ex = run.stages[stage].executor
    lazy = [kept[k] for k in keys if type(kept[k]) is Lazy]
    if lazy and run.cache is not None:  # warm outputs: read in a few batches
        loaded = await run.cache.load_many(stage, [v.key for v in lazy])
        for k in keys:
            v = kept[k]
            if type(v) is Lazy and v.key in loaded:
                kept[k] = loaded[v.key]
    values = await asyncio.gather(*[_materialize(ex, kept[k]) for k in keys])
    kept.update(zip(keys, values, strict=True))


async def _materialize(executor: Any, value: Any) -> Any:
    """A kept output as a value in this process: loaded from the cache, or fetched."""
    if type(value) is Lazy:
        value = await value.get()
    if executor.remote and executor.is_ref(value):
        value = await executor.fetch(value)
    return value


_RUN_OPTIONS = frozenset(
    {
        "params",
        "cache",
        "fail_fast",
        "keep",
        "on_event",
        "partition_events",
        "monitor",
        "clock",
        "executors",
        "progress",
        "freeze_gc",
    }
)


def _save_record(result: RunResult, run: Run) -> None:
    from ._history import save_run

    stages = {
        s.name: {
            "kind": s.kind,
            "done": s.done,
            "cached": s.cached,
            "failed": s.failed,
            "skipped": s.skipped,
            "seconds": round(s.seconds, 6),
        }
        for s in result.stages
    }
    save_run(
        run.workdir,
        run_id=result.run_id,
        pipeline=result.pipeline,
        params={k: repr(v) for k, v in run.params.items()},
        started_at=result.started_at,
        finished_at=result.finished_at,
        status=result.status,
        stages=stages,
        n_failures=len(result.failure_list),
        worst_loop_lag=result.worst_loop_lag,
        error=None if run.error is None else f"{type(run.error).__name__}: {run.error}",
        series=result.series_table,
        extra={"loop_stalls": result.loop_stalls, "stall_suspects": dict(result.stall_suspects)}
        if result.loop_stalls
        else None,
    )


async def run_pipeline(pipe: Pipeline, inputs: Iterable[Any] | None, **options: Any) -> RunResult:
    session = _Session(pipe, inputs, options)
    if options.get("progress"):
        return await _with_progress(session)
    return await session.execute()


async def _with_progress(session: _Session) -> RunResult:
    from ._progress import TerminalProgress

    progress = TerminalProgress(session.metrics)
    task = asyncio.get_running_loop().create_task(progress.run())
    try:
        return await session.execute()
    finally:
        task.cancel()
        progress.close()


def start_pipeline(pipe: Pipeline, inputs: Iterable[Any] | None, **options: Any) -> RunHandle:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise AsyncpipeError(
            "start() needs a running event loop (a notebook cell, or inside async code). "
            "In a plain script use pipe.run_sync(inputs), or asyncio.run(pipe.run(inputs))."
        ) from None
    session = _Session(pipe, inputs, options)
    task = loop.create_task(run_pipeline_session(session), name=f"asyncpipe:{pipe.name}")
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return RunHandle(session, task)


async def run_pipeline_session(session: _Session) -> RunResult:
    if session.options.get("progress"):
        return await _with_progress(session)
    return await session.execute()


#: Strong references to background runs, so the loop never garbage-collects one mid-run.
_BACKGROUND: set[asyncio.Task[Any]] = set()


def call_on_private_loop(make: Callable[[], Awaitable[T]], *, name: str) -> T:
    """Run ``make()`` to completion on a new event loop in a worker thread and return its result.

    The way to block from synchronous code without touching the caller's loop (a
    running kernel loop cannot be re-entered, and patching it breaks ipykernel 7):
    Ctrl-C / kernel interrupt in the calling thread cancels the task, then re-raises.
    """
    box: dict[str, Any] = {}
    ready = threading.Event()

    def target() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(make())
            box["loop"], box["task"] = loop, task
            ready.set()
            box["result"] = loop.run_until_complete(task)
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    thread = threading.Thread(target=target, name=f"asyncpipe-run:{name}", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        ready.wait()
        loop, task = box.get("loop"), box.get("task")
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
        thread.join(10)
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def run_pipeline_sync(pipe: Pipeline, inputs: Iterable[Any] | None, **options: Any) -> RunResult:
    try:
        return call_on_private_loop(lambda: run_pipeline(pipe, inputs, **options), name=pipe.name)
    except asyncio.CancelledError:
        raise RunCancelled(f"Run of {pipe.name!r} was cancelled.") from None

"""P8 loop stall: how long asyncpipe holds the event loop it shares with everything else.

A ticker task asks to wake every 5 ms on the same loop while a run goes on; its extra
delay (how late it woke) is what a widget click or another cell's await would wait.
Cases, in one run: (a) the P1 workload (20,000 items, 3 stages, monitoring on), (b) the
P3 memoization workload cold and then warm, (c) 2,000 partitions with the notebook monitor
panel model attached (widgets and charts created, no browser) and the resource sampler on.
Peer: pipefunc's ``map_async`` on workload (a), when pipefunc is installed.
Goals: worst extra delay <= 20 ms and p99 <= 5 ms in every case.

Two more rows take the cold P3 run apart, with the same goals:

- ``p3-cold-gilfree``: asyncpipe's own share. The three stages are replaced by stand-ins
  that sleep (releasing the GIL) as long as the real stage takes and return the real
  frames, built beforehand. The run does all the rest of the cold run's work: keys,
  scheduling, 534 MiB of Parquet writes, the index, the result.
- ``p3-cold-dask``: the real stages on two single-threaded Dask worker processes, with a
  ``file://`` cache so that each worker writes its own entries; only the small aggregates
  reach this process. Shown when dask.distributed is installed.

In ``p3-cold`` the real stages run in this process's worker threads. ``load`` builds string
columns in C code that holds the GIL for 15-24 ms at a time (``gil_hold`` measures it and
the missed rows' note prints it), and the loop's thread waits for the GIL as long: no
scheduling can shorten that. The two rows above say how much is
asyncpipe's and what running such stages out of process gives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import result

import asyncpipe as ap

TICK = 0.005


async def probe(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Run ``work`` with a 5 ms ticker beside it; return (worst, p99) extra delay in seconds."""
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t0 = time.perf_counter()
            await asyncio.sleep(TICK)
            lags.append(max(0.0, time.perf_counter() - t0 - TICK))

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(TICK * 2)
    await work()
    stop = True
    await task
    lags.sort()
    return lags[-1], lags[int(0.99 * (len(lags) - 1))]


def gil_hold(call: Callable[[], Any], times: int = 5) -> float:
    """The longest the GIL stays held while ``call`` runs, in ms: how late a thread that asks
    to wake every 1 ms wakes. It is what the loop's thread would wait, had the call run in a
    worker thread."""
    lates: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            lates.append(time.perf_counter() - t0 - 0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(times):
            call()
    finally:
        done.set()
        watcher.join()
    return max(lates) * 1e3


def _measure(
    name: str,
    work: Callable[[], Awaitable[Any]],
    repeats: int,
    runner: asyncio.Runner | None = None,
    note: str = "",
) -> list[dict[str, Any]]:
    """Median worst and p99 over ``repeats`` runs; the metric names the median run time."""
    worst, p99, wall = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        w, p = runner.run(probe(work)) if runner is not None else asyncio.run(probe(work))
        wall.append(time.perf_counter() - t0)
        worst.append(w * 1e3)
        p99.append(p * 1e3)
    took = f"runs took {statistics.median(wall):.2f} s"
    rows = [
        result(f"P8-{name}-worst", f"worst extra ticker delay, ms; {took}", statistics.median(worst),
               None, None, "<= 20"),
        result(f"P8-{name}-p99", f"p99 extra ticker delay, ms; {took}", statistics.median(p99),
               None, None, "<= 5"),
    ]
    for r in rows:
        r["note"] = note
    return rows


def case_p1(repeats: int) -> list[dict[str, Any]]:
    from bench_core import p1_pipeline

    pipe = p1_pipeline()
    items = list(range(20_000))

    async def work() -> None:
        await pipe.run(items)  # monitoring on (the default)

    return _measure("p1", work, repeats)


def case_p3(quick: bool, repeats: int) -> list[dict[str, Any]]:
    import bench_cache

    parts, rows = (8, 40_000) if quick else (16, 250_000)
    its = bench_cache.items(parts, rows)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))

        blamed: dict[str, int] = {}

        async def cold() -> None:
            pipe = bench_cache.pipeline(f"{tmp}/cold{next(counter)}")
            result = await pipe.run(its)
            blamed.clear()  # what the run itself says: the last run's report
            blamed.update(result.stall_suspects)

        first = bench_cache.load(its[0])
        held = {
            "load": gil_hold(lambda: bench_cache.load(its[0])),
            "transform": gil_hold(lambda: bench_cache.transform(first)),
            "aggregate": gil_hold(lambda: bench_cache.aggregate(bench_cache.transform(first)), 2),
        }
        note = "the stages alone, outside asyncpipe, hold the GIL for up to " + ", ".join(
            f"{ms:.1f} ms ({name})" for name, ms in held.items()
        ) + " at a time; the p3-cold-gilfree and p3-cold-dask rows run the same work without that"
        out += _measure("p3-cold", cold, repeats)
        said = ", ".join(f"{name} ({n})" for name, n in sorted(blamed.items(), key=lambda kv: -kv[1]))
        note += f"; the run's own loop report named: {said or 'nothing'}"
        for r in out:
            r["note"] = note
        warm_pipe = bench_cache.pipeline(f"{tmp}/warm")
        asyncio.run(warm_pipe.run(its))

        async def warm() -> None:
            await warm_pipe.run(its)

        out += _measure("p3-warm", warm, repeats)
    return out


def case_p3_gilfree(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """Cold P3 with GIL-free stand-ins for the stages: the loop stall that is asyncpipe's."""
    import bench_cache

    parts, rows = (8, 40_000) if quick else (16, 250_000)
    its = bench_cache.items(parts, rows)
    # the engine may hand a stage a shallow copy of its input: look frames up by content
    def tag(frame: Any) -> float:
        return float(frame["f1"].iat[0])

    loads = {it: bench_cache.load(it) for it in its}
    transforms = {tag(f): bench_cache.transform(f) for f in loads.values()}
    aggregates = {tag(f): bench_cache.aggregate(f) for f in transforms.values()}
    first = loads[its[0]]
    spent = {}
    for name, fn, arg in (
        ("load", bench_cache.load, its[0]),
        ("transform", bench_cache.transform, first),
        ("aggregate", bench_cache.aggregate, transforms[tag(first)]),
    ):
        t0 = time.perf_counter()
        fn(arg)
        spent[name] = time.perf_counter() - t0

    def load(item: tuple[int, int]) -> Any:
        time.sleep(spent["load"])
        return loads[item]

    def transform(load: Any) -> Any:
        time.sleep(spent["transform"])
        return transforms[tag(load)]

    def aggregate(transform: Any) -> Any:
        time.sleep(spent["aggregate"])
        return aggregates[tag(transform)]

    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))

        async def cold() -> None:
            stages = [ap.source(load), ap.stage(transform), ap.stage(aggregate)]
            result = await ap.Pipeline(stages, name="p3", cache=f"{tmp}/cold{next(counter)}").run(its)
            assert result.ok, result.failures

        return _measure("p3-cold-gilfree", cold, repeats)


def case_p3_dask(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """Cold P3 with the real stages on Dask worker processes that write their own entries."""
    try:
        from asyncpipe.executors import DaskExecutor
    except ImportError:
        return []
    import bench_cache

    parts, rows = (8, 40_000) if quick else (16, 250_000)
    its = bench_cache.items(parts, rows)
    stages = [ap.source(bench_cache.load, executor="dask"), ap.stage(bench_cache.transform, executor="dask"),
              ap.stage(bench_cache.aggregate, executor="dask")]
    ex = DaskExecutor(n_workers=2, threads_per_worker=1)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(1000))

        async def cold() -> None:
            pipe = ap.Pipeline(stages, name="p3", cache=f"file://{tmp}/cold{next(counter)}")
            result = await pipe.run(its, executors={"dask": ex})
            assert result.ok, result.failures

        async def start_and_warm_up() -> None:
            await ex.start()
            await cold()  # the workers import pandas and pyarrow before the clock

        async def close() -> None:
            await ex.aclose()

        # one loop for the cluster's whole life: its asynchronous client belongs to it
        runner = asyncio.Runner()
        try:
            runner.run(start_and_warm_up())
            return _measure("p3-cold-dask", cold, repeats, runner=runner)
        finally:
            runner.run(close())
            runner.close()


def case_panel(repeats: int) -> list[dict[str, Any]]:
    from asyncpipe.notebook import monitor

    async def fetch(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    def parse(fetch: int) -> int:
        return fetch * 2

    pipe = ap.Pipeline([ap.source(fetch, concurrency=32), parse], name="panel", cache=False)

    async def work() -> None:
        handle = pipe.start(range(2_000))
        mon = monitor(handle, charts=True, display=False)
        await handle
        await asyncio.sleep(0.1)  # the final paint
        mon.close() if hasattr(mon, "close") else None

    return _measure("panel", work, repeats)


def case_pipefunc(repeats: int) -> list[dict[str, Any]]:
    try:
        from pipefunc import Pipeline, pipefunc
    except ImportError:
        return []

    @pipefunc(output_name="a", mapspec="x[i] -> a[i]")
    def s1(x: int) -> int:
        return x

    @pipefunc(output_name="b", mapspec="a[i] -> b[i]")
    def s2(a: int) -> int:
        return a + 1

    @pipefunc(output_name="c", mapspec="b[i] -> c[i]")
    def s3(b: int) -> int:
        return b * 2

    pf = Pipeline([s1, s2, s3])

    async def work() -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            r = pf.map_async(
                inputs={"x": list(range(20_000))},
                run_folder=None,
                storage="dict",
                executor=ex,
                show_progress=False,
            )
            await r.task

    rows = _measure("pipefunc-p1", work, repeats)
    for r in rows:
        r["goal"] = "peer (for comparison)"
        r["met"] = True
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    repeats = 3
    rows = case_p1(repeats)
    rows += case_p3(quick, 1 if quick else repeats)
    rows += case_p3_gilfree(quick, 1 if quick else repeats)
    rows += case_p3_dask(quick, 1 if quick else repeats)
    rows += case_panel(repeats)
    rows += case_pipefunc(1 if quick else repeats)
    return rows


if __name__ == "__main__":
    import sys

    for r in run("--quick" in sys.argv):
        print(r)

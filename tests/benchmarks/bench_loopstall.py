"""P8 loop stall: how long asyncpipe holds the event loop it shares with everything else.

A ticker task asks to wake every 5 ms on the same loop while a run goes on; its extra
delay (how late it woke) is what a widget click or another cell's await would wait.
Cases, in one run: (a) the P1 workload (20,000 items, 3 stages, monitoring on), (b) the
P3 memoization workload cold and then warm, (c) 2,000 partitions with the notebook monitor
panel model attached (widgets and charts created, no browser) and the resource sampler on.
Peer: pipefunc's ``map_async`` on workload (a), when pipefunc is installed.
Goals: worst extra delay <= 20 ms and p99 <= 5 ms in every case.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
import tempfile
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


def _measure(name: str, work: Callable[[], Awaitable[Any]], repeats: int) -> list[dict[str, Any]]:
    worst, p99 = [], []
    for _ in range(repeats):
        w, p = asyncio.run(probe(work))
        worst.append(w * 1e3)
        p99.append(p * 1e3)
    return [
        result(
            f"P8-{name}-worst", "worst extra ticker delay, ms", statistics.median(worst), None, None, "<= 20"
        ),
        result(f"P8-{name}-p99", "p99 extra ticker delay, ms", statistics.median(p99), None, None, "<= 5"),
    ]


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

        async def cold() -> None:
            pipe = bench_cache.pipeline(f"{tmp}/cold{next(counter)}")
            await pipe.run(its)

        out += _measure("p3-cold", cold, repeats)
        warm_pipe = bench_cache.pipeline(f"{tmp}/warm")
        asyncio.run(warm_pipe.run(its))

        async def warm() -> None:
            await warm_pipe.run(its)

        out += _measure("p3-warm", warm, repeats)
    return out


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
    rows += case_panel(repeats)
    rows += case_pipefunc(1 if quick else repeats)
    return rows


if __name__ == "__main__":
    import sys

    for r in run("--quick" in sys.argv):
        print(r)

"""P9: Dask scale-out on a 2-worker LocalCluster (worker processes, 1 thread each).

P9-speedup. 16 partitions of ~0.25 s pure-Python CPU work. Serial: the 16 calls one after
the other in this process. asyncpipe: a pipeline whose source runs on the cluster
(``executor="dask"``), values brought back into the result. Goal: speedup >= 1.7x.

P9-overhead. 2,000 tiny partitions (``i + 1``). Peer: raw futures in the same run,
``client.submit`` x 2,000 then one ``await client.gather``, on the same cluster with the
same asynchronous client. asyncpipe: a dask source feeding a local async stage that
receives the values (so the data crosses back per partition, as it does in a pipeline).
Goal: asyncpipe's wall time per partition <= 1.25x the raw futures'. With tasks this small
the time is all per-task overhead: client -> scheduler -> worker -> scheduler -> client.

Both use one cluster started once; medians of >= 3 interleaved repeats.

Run: ``/work/venv/bin/python tests/benchmarks/bench_dask.py [--quick]``
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import cloudpickle

import asyncpipe as ap

try:
    from _harness import result
except ImportError:  # run from elsewhere
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _harness import result

# Workers cannot import this script: ship its functions by value, as for notebook code.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

#: In-flight partitions for the dask stage of P9-overhead: tiny tasks need many in flight
#: to hide the ~2-4 ms client -> scheduler -> worker round trip (found by running this script).
OVERHEAD_CONCURRENCY = 128


def burn(seconds: float) -> float:
    """Pure-Python CPU work for about ``seconds`` (holds the GIL, like parsing code does)."""
    end = time.perf_counter() + seconds
    x = 0.0
    while time.perf_counter() < end:
        x += 1.0
    return x


def work(i: int) -> int:
    burn(0.25)
    return i


def tiny(i: int) -> int:
    return i + 1


async def _speedup(ex: Any, n: int, repeats: int) -> tuple[float, float]:
    pipe = ap.Pipeline([ap.source(work, executor="dask", concurrency=n)], name="p9-speedup", cache=False)
    serial, dask = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            work(i)
        serial.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = await pipe.run(range(n), executors={"dask": ex}, monitor=False)
        dask.append(time.perf_counter() - t0)
        assert res.output() == list(range(n)), res.status
    return statistics.median(serial), statistics.median(dask)


async def _overhead(ex: Any, n: int, repeats: int) -> tuple[float, float]:
    client = ex.client
    got: list[int] = []

    async def received(tiny: int) -> None:
        got.append(tiny)

    pipe = ap.Pipeline(
        [
            ap.source(tiny, executor="dask", concurrency=OVERHEAD_CONCURRENCY),
            ap.sink(received, concurrency=OVERHEAD_CONCURRENCY),
        ],
        name="p9-overhead",
        cache=False,
    )
    raw, ours = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        futures = [client.submit(tiny, i, pure=False) for i in range(n)]
        values = await client.gather(futures)
        raw.append(time.perf_counter() - t0)
        assert values == [i + 1 for i in range(n)]
        del futures
        got.clear()
        t0 = time.perf_counter()
        res = await pipe.run(range(n), executors={"dask": ex}, monitor=False, keep=[])
        ours.append(time.perf_counter() - t0)
        assert res.status == "succeeded" and sorted(got) == [i + 1 for i in range(n)]
    return statistics.median(raw), statistics.median(ours)


async def _main(quick: bool) -> list[dict[str, Any]]:
    from distributed import LocalCluster

    from asyncpipe.executors._dask import DaskExecutor

    repeats = 3
    n_tiny = 500 if quick else 2000
    async with (
        LocalCluster(
            processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None, asynchronous=True
        ) as cluster,
        DaskExecutor(address=cluster.scheduler_address) as ex,
    ):
        await ex.client.wait_for_workers(2)
        await ex.client.run(burn, 0.01)  # warm both workers
        serial, dask = await _speedup(ex, 16, repeats)
        raw, ours = await _overhead(ex, n_tiny, repeats)
    return [
        result(
            "P9-speedup",
            "speedup (serial s / asyncpipe-on-dask s), 16 x 0.25 s CPU, 2 workers",
            serial / dask,
            None,
            None,
            ">= 1.7",
        ),
        result(
            "P9-overhead",
            f"wall s per partition, {n_tiny} tiny partitions",
            ours / n_tiny,
            "raw client.submit + gather",
            raw / n_tiny,
            "<= 1.25",
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    return asyncio.run(_main(quick))


if __name__ == "__main__":
    for r in run("--quick" in sys.argv):
        print(r)

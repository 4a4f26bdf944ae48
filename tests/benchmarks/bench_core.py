"""Core engine figures, each against peers measured in the same run.

- P1 per-item overhead: 20,000 items x 3 stages (async sleep(0), x+1, x*2) vs a hand-written
  asyncio.Queue pipeline (4 workers per stage); asyncio.gather+Semaphore reported too.
- P2 fan-out: 500 sources x 50 ms async latency at concurrency 50 vs the ideal 0.5 s.
- P4 CPU: 16 partitions x ~0.25 s CPU on 2 worker processes vs serial, ProcessPoolExecutor
  and joblib.Parallel(loky).
- P5 memory: 400 sources x 5 MB DataFrames into a Parquet sink at concurrency 8: peak RSS vs a
  hand-written bounded asyncio pipeline and gather-everything (each in a fresh process).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _harness import interleaved_medians, result

import asyncpipe as ap

# -- P1 ------------------------------------------------------------------------------------


async def _s1(x: int) -> int:
    await asyncio.sleep(0)
    return x


def _s2(x: int) -> int:
    return x + 1


def _s3(x: int) -> int:
    return x * 2


async def handwritten(items: list[int], workers: int = 4) -> list[int]:
    q1: asyncio.Queue[Any] = asyncio.Queue(8)
    q2: asyncio.Queue[Any] = asyncio.Queue(8)
    q3: asyncio.Queue[Any] = asyncio.Queue(8)
    out: dict[int, int] = {}

    async def feed() -> None:
        for i, x in enumerate(items):
            await q1.put((i, x))
        for _ in range(workers):
            await q1.put(None)

    async def worker(
        qin: asyncio.Queue[Any], qout: asyncio.Queue[Any] | None, fn: Any, is_async: bool
    ) -> None:
        while True:
            env = await qin.get()
            if env is None:
                return
            i, x = env
            y = await fn(x) if is_async else fn(x)
            if qout is None:
                out[i] = y
            else:
                await qout.put((i, y))

    async def stage(qin: Any, qout: Any, fn: Any, is_async: bool) -> None:
        await asyncio.gather(*[worker(qin, qout, fn, is_async) for _ in range(workers)])
        if qout is not None:
            for _ in range(workers):
                await qout.put(None)

    await asyncio.gather(
        feed(), stage(q1, q2, _s1, True), stage(q2, q3, _s2, False), stage(q3, None, _s3, False)
    )
    return [out[i] for i in range(len(items))]


async def gather_semaphore(items: list[int], limit: int = 16) -> list[int]:
    sem = asyncio.Semaphore(limit)

    async def one(x: int) -> int:
        async with sem:
            return _s3(_s2(await _s1(x)))

    return list(await asyncio.gather(*[one(x) for x in items]))


def p1_pipeline() -> ap.Pipeline:
    return ap.Pipeline(
        [
            ap.source(_s1, name="fetch"),
            ap.stage(_s2, name="inc", inputs={"x": "fetch"}),
            ap.stage(_s3, name="double", inputs={"x": "inc"}),
        ],
        name="p1",
        cache=False,
    )


def p1(quick: bool) -> list[dict[str, Any]]:
    n = 20_000
    items = list(range(n))
    pipe = p1_pipeline()
    expected = [(x + 1) * 2 for x in items]
    assert asyncio.run(pipe.run(items, monitor=False)).output("double") == expected
    assert asyncio.run(handwritten(items)) == expected
    times = interleaved_medians(
        {
            "asyncpipe": lambda: asyncio.run(pipe.run(items, monitor=False)),
            "handwritten": lambda: asyncio.run(handwritten(items)),
            "gather": lambda: asyncio.run(gather_semaphore(items)),
        },
        repeats=5 if quick else 9,
    )
    us = {k: v / n * 1e6 for k, v in times.items()}
    return [
        result(
            "P1-per-item",
            "us/item (20k items, 3 stages)",
            us["asyncpipe"],
            "hand-written asyncio.Queue",
            us["handwritten"],
            "<= 1.5",
        ),
        result(
            "P1-per-item-vs-gather",
            "us/item",
            us["asyncpipe"],
            "asyncio.gather+Semaphore",
            us["gather"],
            "<= 1.5",
        ),
    ]


# -- P2 ------------------------------------------------------------------------------------


async def _latency(i: int) -> int:
    await asyncio.sleep(0.05)
    return i


def p2(quick: bool) -> list[dict[str, Any]]:
    pipe = ap.Pipeline([ap.source(_latency, name="fetch", concurrency=50)], name="p2", cache=False)
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        asyncio.run(pipe.run(range(500), monitor=False))
        samples.append(time.perf_counter() - t0)
    return [
        result(
            "P2-fan-out",
            "wall s (500 x 50 ms, concurrency 50)",
            statistics.median(samples),
            "ideal",
            0.5,
            "<= 1.1",
        )
    ]


# -- P4 ------------------------------------------------------------------------------------


def cpu_work(i: int, seconds: float = 0.25) -> int:
    # pure-Python arithmetic, calibrated below to ~0.25 s
    n = int(seconds * _RATE)
    acc = 0
    for k in range(n):
        acc = (acc + k * i) % 1_000_003
    return acc


def _calibrate() -> float:
    n = 200_000
    t0 = time.perf_counter()
    acc = 0
    for k in range(n):
        acc = (acc + k * 3) % 1_000_003
    return n / (time.perf_counter() - t0)


_RATE = float(os.environ.get("ASYNCPIPE_BENCH_RATE", "0") or 0) or _calibrate()
os.environ["ASYNCPIPE_BENCH_RATE"] = str(_RATE)  # workers (spawned) reuse the calibration


def p4(quick: bool) -> list[dict[str, Any]]:
    import joblib

    parts = list(range(16))
    seconds = 0.25 if not quick else 0.15
    from asyncpipe.executors import ProcessExecutor

    workers = ProcessExecutor(max_workers=2)  # 2 worker processes; default concurrency queues 2 tasks each
    pipe = ap.Pipeline(
        [ap.source(cpu_work, name="crunch", executor="process")],
        name="p4",
        cache=False,
        params={"seconds": seconds},
    )

    def serial() -> None:
        [cpu_work(i, seconds) for i in parts]

    def ours() -> None:
        pipe.run_sync(parts, monitor=False, executors={"process": workers})

    def ppe() -> None:
        with concurrent.futures.ProcessPoolExecutor(2) as ex:
            list(ex.map(cpu_work, parts, [seconds] * len(parts)))

    def jl() -> None:
        joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(cpu_work)(i, seconds) for i in parts)

    ours()
    jl()  # warm both loky pools the same way
    times = interleaved_medians({"serial": serial, "asyncpipe": ours, "ppe": ppe, "joblib": jl}, repeats=3)
    best_peer = min(times["ppe"], times["joblib"])
    best_name = "ProcessPoolExecutor" if times["ppe"] <= times["joblib"] else "joblib.Parallel(loky)"
    return [
        result(
            "P4-cpu-speedup",
            "speedup vs serial (16 x CPU work, 2 workers)",
            times["serial"] / times["asyncpipe"],
            None,
            None,
            ">= 1.8",
        ),
        result(
            "P4-cpu-vs-peers",
            "throughput relative to best peer",
            best_peer / times["asyncpipe"],
            None,
            None,
            ">= 0.95",
        )
        | {
            "baseline_name": best_name,
            "baseline_value": round(best_peer, 4),
            "value": round(times["asyncpipe"], 4),
        },
    ]


# -- P5 ------------------------------------------------------------------------------------

P5_ROWS = 5 * 2**20 // (8 * 4)  # 4 float64 columns = 5 MB


def _frame(i: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(i)
    return pd.DataFrame(rng.random((P5_ROWS, 4)), columns=list("abcd"))


async def _make(i: int) -> Any:
    await asyncio.sleep(0.001)
    return await asyncio.to_thread(_frame, i)


def _write(df: Any, path: str) -> None:
    df.to_parquet(path)


def _p5_child(mode: str, n: int, out: str) -> None:
    if mode == "asyncpipe":

        @ap.sink(concurrency=8)
        def save(make, partition):
            _write(make, os.path.join(out, f"{partition.id}.parquet"))

        pipe = ap.Pipeline([ap.source(_make, name="make", concurrency=8), save], name="p5", cache=False)
        asyncio.run(pipe.run(range(n), monitor=False))
    elif mode == "handwritten":

        async def main() -> None:
            q: asyncio.Queue[Any] = asyncio.Queue(8)
            sem = asyncio.Semaphore(8)

            async def produce() -> None:
                async def one(i: int) -> None:
                    async with sem:
                        await q.put((i, await _make(i)))

                await asyncio.gather(*[one(i) for i in range(n)])  # bounded by the semaphore + queue
                for _ in range(8):
                    await q.put(None)

            async def consume() -> None:
                while (env := await q.get()) is not None:
                    await asyncio.to_thread(_write, env[1], os.path.join(out, f"{env[0]}.parquet"))

            await asyncio.gather(produce(), *[consume() for _ in range(8)])

        asyncio.run(main())
    else:  # gather everything, then write

        async def main() -> None:
            frames = await asyncio.gather(*[_make(i) for i in range(n)])
            for i, df in enumerate(frames):
                await asyncio.to_thread(_write, df, os.path.join(out, f"{i}.parquet"))

        asyncio.run(main())
    print(_peak_rss())


def _peak_rss() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: on Linux that survives exec, so a
    child started from a big benchmark process would report its parent's peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def p5(quick: bool) -> list[dict[str, Any]]:
    n = 80 if quick else 400
    peaks: dict[str, list[int]] = {"asyncpipe": [], "handwritten": [], "gather": []}
    for _ in range(1 if quick else 3):
        for mode in peaks:
            with tempfile.TemporaryDirectory() as out:
                proc = subprocess.run(
                    [sys.executable, __file__, "--p5-child", mode, str(n), out],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)},
                )
                peaks[mode].append(int(proc.stdout.split()[-1]))
    med = {k: statistics.median(v) / 2**20 for k, v in peaks.items()}
    return [
        result(
            "P5-memory",
            f"peak RSS MB ({n} x 5 MB frames, concurrency 8)",
            med["asyncpipe"],
            "hand-written bounded asyncio",
            med["handwritten"],
            "<= 1.25",
        ),
        result(
            "P5-memory-vs-gather",
            "peak RSS MB",
            med["asyncpipe"],
            "gather-everything",
            med["gather"],
            "<= 1.0",
        ),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    wanted = [n for n in os.environ.get("ASYNCPIPE_BENCH_NAMES", "").split(",") if n]
    out = []
    for fid, fn in (("P1", p1), ("P2", p2), ("P4", p4), ("P5", p5)):
        if not wanted or any(w.startswith(fid) or fid.startswith(w) for w in wanted):
            out.extend(fn(quick))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--p5-child":
        _p5_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        for r in run("--quick" in sys.argv):
            print(r)

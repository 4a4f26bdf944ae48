"""P6 / P6b: adaptive concurrency against a simulated service, and the memory governor.

P6 adaptive. An in-process async service whose latency is flat (``BASE`` s) up to 16
concurrent requests and grows with the square of the load beyond (4x at 32), and which
rejects with ``Overloaded`` above 32 concurrent. 2,000 requests; a rejected request is
retried after ``BASE`` s. In one run: sweep static concurrency 1, 2, 4, ... 64, find the
best static throughput, then run adaptive (gradient) starting from 1. Goals: adaptive >= 85 %
of the best static throughput, <= 2 % of requests rejected, and the limit settles (stays
within +-20 % of its final median) within the first 20 % of the requests.

P6b memory. Sources produce 50 MB partitions (real numpy allocations, pages touched) at
requested concurrency 32 against a 1 GB budget; the ResourceGovernor samples the real RSS
with psutil. Goal: peak RSS (sampled every 10 ms by a separate thread) <= 1.1 x budget while
every partition completes.

P6 goes through the real ``Pipeline`` (an async source stage with ``concurrency=`` and retries).
P6b drives :class:`~asyncpipe._limiter.Limiter` + :class:`~asyncpipe._governor.ResourceGovernor`
with worker tasks that mimic the engine (the engine does not wire the governor yet):
workers = ``max_limit``; ``try_acquire() or await acquire()``; ``release(outcome, latency)``.
``drive()`` is the same engine-free driver for P6, kept for comparison.

Run: ``/work/venv/bin/python tests/benchmarks/bench_ratecontrol.py [--quick]``
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import tempfile
import threading
import time
import timeit
from typing import Any

import numpy as np
import psutil

from asyncpipe._adaptive import Adaptive
from asyncpipe._exceptions import Overloaded
from asyncpipe._limiter import Limiter, classify

BASE = 0.005  # flat latency of the simulated service (s)
KNEE = 16  # latency flat up to this many concurrent requests
REJECT_ABOVE = 32  # Overloaded above this many concurrent requests
REQUESTS = 2000
MB = 1 << 20


class Service:
    """Latency is a function of the requests in flight when one arrives."""

    def __init__(self) -> None:
        self.inflight = 0
        self.rejected = 0

    async def call(self) -> None:
        self.inflight += 1
        try:
            n = self.inflight
            if n > REJECT_ABOVE:
                self.rejected += 1
                raise Overloaded(f"{n} concurrent requests", retry_after=BASE)
            await asyncio.sleep(BASE if n <= KNEE else BASE * (n / KNEE) ** 2)
        finally:
            self.inflight -= 1


async def drive(concurrency: int | Adaptive, n: int = REQUESTS) -> dict[str, Any]:
    """Push ``n`` requests through a Limiter the way the engine does; throughput and the limit trace."""
    svc = Service()
    trace: list[tuple[int, float]] = []  # (requests done when the limit changed, new limit)
    done = 0

    def on_change(stage: str, kind: str, old: float | None, new: float | None, reason: str) -> None:
        trace.append((done, float(new or 0)))

    lim = Limiter("svc", concurrency=concurrency, on_change=on_change)
    trace.append((0, float(lim.limit)))
    todo = iter(range(n))

    async def worker() -> None:
        nonlocal done
        for _ in todo:
            while True:
                if not lim.try_acquire():
                    await lim.acquire()
                t0 = time.perf_counter()
                try:
                    await svc.call()
                except Overloaded as exc:
                    lim.release(classify(exc), time.perf_counter() - t0)
                    await asyncio.sleep(exc.retry_after or BASE)
                    continue
                except BaseException as exc:
                    lim.release(classify(exc), time.perf_counter() - t0)
                    raise
                lim.release("ok", time.perf_counter() - t0)
                done += 1
                break

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(lim.max_limit)))
    elapsed = time.perf_counter() - t0
    assert lim.in_use == 0
    return {"throughput": n / elapsed, "rejected": svc.rejected, "trace": trace, "final": lim.limit, "n": n}


def settle_fraction(trace: list[tuple[int, float]], n: int, band: float = 0.2) -> float:
    """Fraction of the requests done before the limit last left +-band of its median over the second half."""

    def limit_at(k: int) -> float:
        cur = trace[0][1]
        for done, lim in trace:
            if done > k:
                break
            cur = lim
        return cur

    late = [limit_at(k) for k in range(n // 2, n, max(1, n // 200))]
    target = statistics.median(late)
    lo, hi = target * (1 - band), target * (1 + band)
    last_out = 0
    cur = trace[0][1]
    for done, lim in trace:
        if not (lo <= cur <= hi):
            last_out = done
        cur = lim
    if not (lo <= cur <= hi):
        last_out = n
    return last_out / n


async def drive_pipeline(concurrency: int | Adaptive, n: int = REQUESTS) -> dict[str, Any]:
    """The same service called from a real ``Pipeline`` source stage (retries absorb rejections)."""
    import asyncpipe as ap

    svc = Service()
    trace: list[tuple[int, float]] = []
    done = 0

    @ap.source(concurrency=concurrency, retries=100, cache=False)
    async def call(item: int) -> int:
        nonlocal done
        await svc.call()
        done += 1
        return item

    def on_event(ev: Any) -> None:
        if type(ev).__name__ == "LimitChanged" and ev.kind == "concurrency":
            trace.append((done, float(ev.new)))

    start = concurrency.initial if isinstance(concurrency, Adaptive) else concurrency
    trace.append((0, float(start)))
    with tempfile.TemporaryDirectory() as workdir:
        pipe = ap.Pipeline([call], name="p6", workdir=workdir)
        t0 = time.perf_counter()
        result = await pipe.run(range(n), on_event=on_event, monitor=False)
        elapsed = time.perf_counter() - t0
    assert result.status == "succeeded", result
    final = trace[-1][1]
    return {"throughput": n / elapsed, "rejected": svc.rejected, "trace": trace, "final": final, "n": n}


def fast_path_us() -> float:
    """try_acquire() + release() on a static limiter without a rate, in microseconds (median of 5)."""
    lim = Limiter("x", concurrency=8)
    ta, rel = lim.try_acquire, lim.release

    def pair() -> None:
        ta()
        rel("ok", 0.001)

    n = 200_000
    return statistics.median(timeit.timeit(pair, number=n) / n * 1e6 for _ in range(5))


def p6(quick: bool) -> list[dict[str, Any]]:
    sweep = [4, 8, 16, 32, 64] if quick else [1, 2, 4, 8, 16, 32, 64]
    repeats = 1 if quick else 3
    asyncio.run(drive_pipeline(16, 200))  # warm-up: imports and first-run costs out of the measurement
    static = {c: asyncio.run(drive_pipeline(c))["throughput"] for c in sweep}
    best_c = max(static, key=static.__getitem__)
    best, adaptive, aimd = [], [], []
    for _ in range(repeats):  # peers interleaved in the same run
        best.append(asyncio.run(drive_pipeline(best_c))["throughput"])
        adaptive.append(asyncio.run(drive_pipeline(Adaptive(max=64))))
        aimd.append(asyncio.run(drive_pipeline(Adaptive(algorithm="aimd", max=64))))
    best_tp = statistics.median(best)
    ad_tp = statistics.median(r["throughput"] for r in adaptive)
    rej = statistics.median(r["rejected"] / r["n"] for r in adaptive)
    settle = statistics.median(settle_fraction(r["trace"], r["n"]) for r in adaptive)
    finals = [r["final"] for r in adaptive]
    aimd_tp = statistics.median(r["throughput"] for r in aimd)
    fast = fast_path_us()
    sweep_s = ", ".join(f"{c}:{tp:.0f}" for c, tp in static.items())
    return [
        {
            "name": "P6 adaptive throughput",
            "metric": "req/s",
            "value": ad_tp,
            "baseline_name": f"best static (c={best_c}; sweep {sweep_s})",
            "baseline_value": best_tp,
            "ratio": ad_tp / best_tp,
            "goal": ">= 0.85",
            "met": ad_tp / best_tp >= 0.85,
            "note": f"final limits {finals}",
        },
        {
            "name": "P6 adaptive rejected",
            "metric": "fraction of requests",
            "value": rej,
            "baseline_name": "requests",
            "baseline_value": REQUESTS,
            "ratio": rej,
            "goal": "<= 0.02",
            "met": rej <= 0.02,
        },
        {
            "name": "P6 adaptive settle point",
            "metric": "fraction of the run",
            "value": settle,
            "baseline_name": "run",
            "baseline_value": 1.0,
            "ratio": settle,
            "goal": "<= 0.20",
            "met": settle <= 0.2,
        },
        {
            "name": "Limiter fast path",
            "metric": "us per try_acquire+release",
            "value": fast,
            "baseline_name": "per-item engine budget",
            "baseline_value": 1.0,
            "ratio": fast,
            "goal": "< 1 us",
            "met": fast < 1.0,
        },
        {
            "name": "P6 aimd throughput (info)",
            "metric": "req/s",
            "value": aimd_tp,
            "baseline_name": f"best static (c={best_c})",
            "baseline_value": best_tp,
            "ratio": aimd_tp / best_tp,
            "goal": "info",
            "met": True,
            "note": f"rejected {statistics.median(r['rejected'] / r['n'] for r in aimd):.3f}",
        },
    ]


# ------------------------------------------------------------------------------------------ P6b memory


class PeakRSS:
    """Samples this process's RSS every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _make_partition(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8, dtype=np.float64)  # writes every page: real RSS


def _process(arr: np.ndarray) -> float:
    time.sleep(0.03)  # stand-in for CPU work that releases the GIL
    return float(arr[::4096].sum())


async def drive_memory(partitions: int, part_bytes: int, budget: int, governed: bool) -> dict[str, Any]:
    """The real pipeline: an async source making 50 MB partitions at concurrency 32 and a
    thread stage consuming them, with ``memory_budget=`` turning the governor on."""
    import asyncpipe as ap

    async def make(i: int) -> np.ndarray:
        return await asyncio.to_thread(_make_partition, part_bytes)

    def consume(make: np.ndarray) -> float:
        return _process(make)

    pipe = ap.Pipeline(
        [ap.source(make, concurrency=32), ap.stage(consume, executor="thread", concurrency=32)],
        name="p6b",
        cache=False,
        memory_budget=budget if governed else None,
    )
    changes: list[Any] = []

    def on_event(ev: Any) -> None:
        if type(ev).__name__ == "LimitChanged":
            changes.append((ev.stage, ev.new))

    gc.collect()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        result = await pipe.run(range(partitions), on_event=on_event)
    elapsed = time.perf_counter() - t0
    return {
        "peak": peak.peak,
        "done": len(result.output("consume")),
        "elapsed": elapsed,
        "changes": len(changes),
    }


def p6b(quick: bool) -> list[dict[str, Any]]:
    budget = 1 << 30
    part = 50 * MB
    n = 40 if quick else 80
    # each run in a fresh process: the budget is on the process tree's RSS, which must
    # not include what earlier benchmarks left in this one
    runs = [_in_child(n, part, budget) for _ in range(1 if quick else 3)]
    peak = statistics.median(r["peak"] for r in runs)
    ok = all(r["done"] == n for r in runs)
    elapsed = statistics.median(r["elapsed"] for r in runs)
    return [
        {
            "name": "P6b peak RSS under 1 GB budget",
            "metric": "bytes",
            "value": peak,
            "baseline_name": "memory_budget",
            "baseline_value": budget,
            "ratio": peak / budget,
            "goal": "<= 1.1 and all partitions done",
            "met": peak / budget <= 1.1 and ok,
            "note": f"{n} x 50 MB partitions through Pipeline(memory_budget=1 GB), concurrency 32, "
            f"{elapsed:.2f} s, "
            f"max peak {max(r['peak'] for r in runs) / MB:.0f} MB, "
            f"ceiling changes {runs[0]['changes']}",
        },
    ]


def _in_child(n: int, part: int, budget: int) -> dict[str, Any]:
    import json
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--p6b-child", str(n), str(part), str(budget)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict[str, Any]]:
    return p6(quick) + p6b(quick)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--p6b-child":
        import json

        n_, part_, budget_ = map(int, sys.argv[2:5])
        print(json.dumps(asyncio.run(drive_memory(n_, part_, budget_, True))))
        sys.exit(0)
    for row in run("--quick" in sys.argv):
        print(
            f"{row['name']:34s} {row['value']:>12.4g} {row['metric']:22s} ratio {row['ratio']:.3f} "
            f"goal {row['goal']:>8s} {'MET' if row['met'] else 'MISSED'}  [{row['baseline_name']}"
            f"{'; ' + row['note'] if 'note' in row else ''}]"
        )

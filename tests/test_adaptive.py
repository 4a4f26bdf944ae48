"""Adaptive concurrency controllers against a simulated service, under a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from asyncpipe._adaptive import Adaptive, AIMDController, GradientController, coerce_concurrency
from asyncpipe._clock import FakeClock
from asyncpipe._exceptions import DefinitionError, Overloaded
from asyncpipe._limiter import Limiter, classify


class SimService:
    """Latency is a function of the requests in flight when one arrives; rejects above ``reject_above``."""

    def __init__(self, clock: FakeClock, latency: Callable[[int], float], reject_above: int = 10**9) -> None:
        self.clock = clock
        self.latency = latency
        self.reject_above = reject_above
        self.inflight = 0
        self.peak = 0
        self.ok = 0
        self.rejected = 0

    async def call(self) -> None:
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            if self.inflight > self.reject_above:
                self.rejected += 1
                raise Overloaded("busy")
            await self.clock.sleep(self.latency(self.inflight))
            self.ok += 1
        finally:
            self.inflight -= 1


def steep(base: float = 0.01, knee: int = 16) -> Callable[[int], float]:
    return lambda n: base if n <= knee else base * (n / knee) ** 2


async def run_sim(
    lim: Limiter, svc: SimService, seconds: float, workers: int | None = None
) -> list[tuple[float, int]]:
    """Engine-like workers for ``seconds`` of fake time; returns the limit over time."""
    clock = svc.clock
    trace: list[tuple[float, int]] = [(0.0, lim.limit)]

    async def worker() -> None:
        while True:
            if not lim.try_acquire():
                await lim.acquire()
            t0 = clock.now()
            try:
                await svc.call()
            except Overloaded as exc:
                lim.release(classify(exc), clock.now() - t0)
                await clock.sleep(0.005)
                continue
            except BaseException as exc:
                lim.release(classify(exc), clock.now() - t0)
                raise
            lim.release("ok", clock.now() - t0)

    tasks = [asyncio.create_task(worker()) for _ in range(workers or lim.max_limit)]
    steps = int(seconds / 0.05)
    for _ in range(steps):
        await clock.run_for(0.05, step=0.0005)
        trace.append((clock.now(), lim.limit))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert lim.in_use == 0 and lim.waiting == 0
    return trace


@pytest.mark.asyncio
async def test_gradient_finds_the_knee_of_a_steep_service():
    clock = FakeClock()
    svc = SimService(clock, steep(), reject_above=32)
    changes: list[tuple] = []
    lim = Limiter("svc", concurrency="adaptive", clock=clock, on_change=lambda *a: changes.append(a))
    trace = await run_sim(lim, svc, 3.0)
    late = [n for t, n in trace if t >= 1.0]
    assert all(15 <= n <= 20 for n in late), late
    assert svc.rejected <= 0.02 * svc.ok
    # throughput within 15 % of the best static limit (16 -> 1600/s)
    assert svc.ok / 3.0 >= 0.85 * 1600
    settled = next(t for t, n in trace if all(15 <= m <= 20 for s, m in trace if s >= t))
    assert settled <= 0.6  # within the first 20 % of the run
    assert changes[0][:2] == ("svc", "concurrency")
    assert all("adaptive gradient" in c[4] for c in changes)
    assert any("latency above baseline" in c[4] for c in changes)


@pytest.mark.asyncio
async def test_gradient_backs_off_on_overload_signals_when_latency_is_flat():
    """A service that rejects above 12 without slowing down: overloads, not latency, cap the limit."""
    clock = FakeClock()
    svc = SimService(clock, lambda n: 0.01, reject_above=12)
    lim = Limiter("svc", concurrency=Adaptive(max=64), clock=clock)
    trace = await run_sim(lim, svc, 3.0)
    late = [n for t, n in trace if t >= 1.5]
    assert max(late) <= 16 and min(late) >= 6, late
    # no latency signal: it probes the threshold about once every 4-5 round trips (measured 3.3 %)
    assert svc.rejected <= 0.05 * svc.ok


@pytest.mark.asyncio
async def test_aimd_stays_under_the_reject_threshold():
    clock = FakeClock()
    svc = SimService(clock, lambda n: 0.01, reject_above=20)
    lim = Limiter("svc", concurrency=Adaptive(algorithm="aimd", max=64), clock=clock)
    trace = await run_sim(lim, svc, 3.0)
    late = [n for t, n in trace if t >= 1.0]
    assert max(late) <= 22 and min(late) >= 12, late
    assert svc.rejected <= 0.02 * svc.ok


@pytest.mark.asyncio
async def test_app_limited_stage_does_not_inflate_its_limit():
    clock = FakeClock()
    svc = SimService(clock, lambda n: 0.01)
    lim = Limiter("svc", concurrency=Adaptive(max=64), clock=clock)
    await run_sim(lim, svc, 2.0, workers=3)  # only 3 callers ever
    assert lim.limit <= 7


@pytest.mark.asyncio
async def test_probe_rebases_when_the_service_gets_permanently_slower():
    """Without the periodic probe a min-baseline would read 3x slower as overload forever."""
    clock = FakeClock()
    slow = {"factor": 1.0}
    svc = SimService(clock, lambda n: slow["factor"] * steep()(n))
    lim = Limiter("svc", concurrency=Adaptive(max=64, probe_interval=1.0), clock=clock)
    await run_sim(lim, svc, 1.0)
    assert 15 <= lim.limit <= 20
    slow["factor"] = 3.0
    trace = await run_sim(lim, svc, 4.0)
    assert 14 <= trace[-1][1] <= 20, trace[-10:]


def test_overload_cuts_once_per_round_trip():
    clock = FakeClock()
    ctl = GradientController(Adaptive(initial=20, max=64), clock)
    clock.advance(1.0)
    for _ in range(30):  # 30 rejections of requests sent together, 50 ms ago
        ctl.sample("overload", 0.05, 20)
    assert ctl.limit == pytest.approx(16.0)
    assert not ctl.slow_start
    clock.advance(0.1)
    ctl.sample("timeout", 0.05, 16)  # sent after the cut: new evidence
    assert ctl.limit == pytest.approx(12.8)
    ctl.sample("error", 0.001, 12)
    ctl.sample("cancelled", 0.001, 12)
    assert ctl.limit == pytest.approx(12.8)  # errors say nothing about capacity
    for _ in range(20):
        ctl.sample("overload", 0.01, 1)
    assert ctl.limit >= 1


def test_limits_respect_bounds():
    clock = FakeClock()
    ctl = AIMDController(Adaptive(algorithm="aimd", initial=4, min=3, max=6), clock)
    for _ in range(50):
        clock.advance(0.01)
        ctl.sample("ok", 0.01, 10)
    assert ctl.limit == 6
    for _ in range(50):
        clock.advance(1.0)
        ctl.sample("overload", 0.01, 6)
    assert ctl.limit == 3
    assert "overload" in ctl.describe()


def test_adaptive_config():
    a = Adaptive(initial=100, max=32)
    assert a.initial == 32
    assert repr(Adaptive(queue=4.0)) == "Adaptive(algorithm='gradient', initial=1, min=1, max=64, queue=4.0)"
    for bad in (
        dict(algorithm="vegas"),
        dict(min=0),
        dict(min=9, max=8),
        dict(backoff=1.0),
        dict(smoothing=0),
        dict(tolerance=0.5),
    ):
        with pytest.raises(DefinitionError):
            Adaptive(**bad)
    assert coerce_concurrency("aimd") == Adaptive(algorithm="aimd")
    assert coerce_concurrency(" Adaptive ") == Adaptive()
    assert coerce_concurrency(a) is a

"""Resource sampler (real child processes) and loop-lag probe (fake clock, plus one real stall)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil
import pytest

from asyncpipe._clock import FakeClock, SystemClock
from asyncpipe._events import LoopLag, ResourceSample
from asyncpipe._sampler import LoopLagProbe, ResourceSampler

# A child that holds ~40 MB, burns CPU for 0.3 s, says so, then waits for stdin to close.
BUSY_CHILD = """
import sys, time
ballast = bytearray(40 * 1024 * 1024)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("burnt", flush=True)
sys.stdin.read()
"""
# A child that starts a grandchild and waits for stdin to close.
PARENT_CHILD = """
import subprocess, sys
g = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(g.pid, flush=True)
sys.stdin.read()
g.stdin.close()
g.wait()
"""


def spawn(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def until(cond, within: float = 5.0) -> None:
    """Wait (for a worker thread) until ``cond()`` holds."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def test_sample_covers_children_and_grandchildren():
    sampler = ResourceSampler(lambda e: None, "r1", rescan=0)
    _, rss_alone, n_alone = sampler.sample()
    child = spawn(PARENT_CHILD)
    try:
        grandchild = int(child.stdout.readline())
        _, rss, n = sampler.sample()
        assert n == n_alone + 2
        assert {child.pid, grandchild} <= set(sampler._procs)
        assert rss > rss_alone
    finally:
        stop(child)


def test_cpu_and_memory_of_a_busy_worker_are_counted():
    sampler = ResourceSampler(lambda e: None, "r1", rescan=0)
    _, rss_alone, _ = sampler.sample()
    child = spawn(BUSY_CHILD)
    try:
        sampler.sample()  # the new worker is listed and primed here (it reads 0.0)
        assert child.stdout.readline().strip() == "burnt"  # ~0.3 s of its CPU time passes
        cpu, rss, n = sampler.sample()
        assert cpu > 30.0  # one core busy for most of the interval reads ~100
        assert rss > rss_alone + 30 * 1024 * 1024  # the worker's 40 MB
        assert n >= 2 and child.pid in sampler._procs
    finally:
        stop(child)


def test_exited_and_zombie_children_are_skipped():
    sampler = ResourceSampler(lambda e: None, "r1", rescan=0)
    quitter = spawn("import sys; sys.stdin.read()")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _, _, n_before = sampler.sample()
        assert quitter.pid in sampler._procs
        stop(quitter)  # gone between two samples
        deadline = time.monotonic() + 5
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet reaped
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cpu, rss, n = sampler.sample()
        assert quitter.pid not in sampler._procs
        assert n < n_before + 1 and rss > 0 and cpu >= 0.0
    finally:
        zombie.wait(10)


def test_the_tree_is_listed_again_only_every_rescan_seconds():
    clock = FakeClock()
    sampler = ResourceSampler(lambda e: None, "r1", clock=clock, rescan=2.0)
    _, _, n0 = sampler.sample()
    child = spawn("import sys; sys.stdin.read()")
    try:
        clock.advance(1.0)
        assert sampler.sample()[2] == n0  # known processes only: cheap
        clock.advance(1.0)
        assert sampler.sample()[2] == n0 + 1 and child.pid in sampler._procs  # rescanned
        stop(child)
        clock.advance(0.5)
        assert sampler.sample()[2] == n0  # a known worker that exited is dropped without a rescan
    finally:
        stop(child)


@pytest.mark.asyncio
async def test_run_publishes_a_sample_per_interval():
    clock = FakeClock()
    events: list[ResourceSample] = []
    sampler = ResourceSampler(events.append, "r9", interval=0.5, clock=clock)
    task = asyncio.create_task(sampler.run())
    try:
        await until(lambda: clock.sleepers == 1)  # primed in a thread, now sleeping
        assert events == []  # the priming call publishes nothing
        clock.advance(0.1)  # the first sample comes early, so short runs get one
        await until(lambda: len(events) == 1 and clock.sleepers == 1)
        for k in (2, 3):
            clock.advance(0.4999)
            await asyncio.sleep(0.01)
            assert len(events) == k - 1
            clock.advance(0.0001)
            await until(lambda k=k: len(events) == k and clock.sleepers == 1)
        ev = events[-1]
        assert isinstance(ev, ResourceSample) and ev.run_id == "r9" and ev.t == clock.time()
        assert ev.rss_bytes > 0 and ev.n_processes >= 1 and ev.cpu_percent >= 0.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_invalid_intervals_are_rejected():
    with pytest.raises(ValueError, match="interval"):
        ResourceSampler(lambda e: None, "r", interval=0)
    with pytest.raises(ValueError, match="tick"):
        LoopLagProbe(lambda e: None, "r", tick=0)


@pytest.mark.asyncio
async def test_lag_probe_measures_lateness_and_reports_each_window():
    clock = FakeClock()
    events: list[LoopLag] = []
    probe = LoopLagProbe(events.append, "r1", tick=0.005, report_every=0.5, clock=clock)
    task = asyncio.create_task(probe.run())
    try:
        await until(lambda: clock.sleepers == 1)
        for _ in range(40):  # 0.2 s of punctual ticks
            clock.advance(0.005)
            await until(lambda: clock.sleepers == 1)
        assert probe.worst == pytest.approx(0.0, abs=1e-9) and events == []
        clock.advance(0.105)  # the loop was busy: this tick wakes 100 ms late
        await until(lambda: clock.sleepers == 1)
        assert probe.worst == pytest.approx(0.1)
        for _ in range(39):
            clock.advance(0.005)
            await until(lambda: clock.sleepers == 1)
        assert len(events) == 1  # 0.2 + 0.105 + 0.195 = 0.5 s: one report
        assert events[0].worst == pytest.approx(0.1) and events[0].window == pytest.approx(0.5)
        assert events[0].run_id == "r1"
        for _ in range(100):
            clock.advance(0.005)
            await until(lambda: clock.sleepers == 1)
        assert len(events) == 2 and events[1].worst == pytest.approx(0.0, abs=1e-9)  # per window
        assert probe.worst == pytest.approx(0.1)  # ... and overall
        assert probe.percentile(50) == pytest.approx(0.0, abs=1e-9)
        assert probe.percentile(100) == pytest.approx(0.1)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(events) == 2  # cancelling publishes nothing: the run may already be over


@pytest.mark.asyncio
async def test_lag_probe_flush_reports_the_partial_window():
    clock = FakeClock()
    events: list[LoopLag] = []
    probe = LoopLagProbe(events.append, "r1", tick=0.01, report_every=1.0, clock=clock)
    probe.flush()
    assert events == []  # never started
    task = asyncio.create_task(probe.run())
    await until(lambda: clock.sleepers == 1)
    clock.advance(0.03)
    await until(lambda: clock.sleepers == 1)
    probe.flush()
    task.cancel()
    assert len(events) == 1
    assert events[0].worst == pytest.approx(0.02) and events[0].window == pytest.approx(0.03)
    probe.flush()
    assert len(events) == 1  # no time passed since


def test_lag_probe_catches_a_real_blocking_call():
    """A stage that blocks the loop for 50 ms shows up as a >= 40 ms stall."""
    events: list[LoopLag] = []

    async def main() -> LoopLagProbe:
        probe = LoopLagProbe(events.append, "r1", tick=0.005, report_every=0.05, clock=SystemClock())
        task = asyncio.create_task(probe.run())
        await asyncio.sleep(0.03)
        time.sleep(0.05)  # noqa: ASYNC251 - the blocking call on the loop is the point
        await asyncio.sleep(0.06)
        task.cancel()
        return probe

    probe = asyncio.run(main())
    assert 0.04 <= probe.worst < 1.0
    assert max(e.worst for e in events) == probe.worst


@pytest.mark.asyncio
async def test_lag_probe_counts_stalls_over_the_budget_and_blames_the_stages_in_threads():
    clock = FakeClock()
    in_threads: list[str] = []
    events: list[LoopLag] = []
    probe = LoopLagProbe(events.append, "r1", tick=0.005, report_every=10.0, clock=clock,
                         suspects=lambda: list(in_threads))
    task = asyncio.create_task(probe.run())
    try:
        await until(lambda: clock.sleepers == 1)
        for lateness, running in ((0.010, ["load"]), (0.030, ["load", "parse"]), (0.025, []),
                                  (0.050, ["load"]), (0.015, ["parse"])):
            in_threads[:] = running
            clock.advance(0.005 + lateness)
            await until(lambda: clock.sleepers == 1)
        # 10 and 15 ms are within the 20 ms budget; 30, 25 and 50 ms are not
        assert probe.stalls == 3
        assert dict(probe.blamed) == {"load": 2, "parse": 1}
        probe.flush()
        assert events[-1].suspects == (("load", 2), ("parse", 1))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_a_failing_suspects_callback_stops_blaming_but_not_the_probe(caplog):
    clock = FakeClock()

    def broken() -> list[str]:
        raise RuntimeError("stages not built")

    probe = LoopLagProbe(lambda e: None, "r1", tick=0.005, clock=clock, suspects=broken)
    task = asyncio.create_task(probe.run())
    try:
        await until(lambda: clock.sleepers == 1)
        for _ in range(2):
            clock.advance(0.005 + 0.030)
            await until(lambda: clock.sleepers == 1)
        assert probe.stalls == 2 and probe.blamed == {} and not task.done()
        assert caplog.text.count("no more stall suspects") == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

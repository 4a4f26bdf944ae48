"""ResourceGovernor: predictive memory admission, CPU saturation, never starving, real psutil tree."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from asyncpipe._clock import FakeClock
from asyncpipe._governor import ResourceGovernor, _TreeSampler
from asyncpipe._limiter import Limiter

MB = 1 << 20
GB = 1 << 30


class Tree:
    """A fake process tree whose RSS is rss0 + per-partition bytes for every admitted partition."""

    def __init__(self, admission: Limiter, rss0: int, per: int) -> None:
        self.admission, self.rss0, self.per = admission, rss0, per
        self.extra = 0
        self.cpu = 0.0

    def sample(self) -> tuple[float, int]:
        return self.cpu, self.rss0 + self.admission.in_use * self.per + self.extra


def fill(lim: Limiter) -> None:
    while lim.try_acquire():
        pass


def test_memory_admission_starts_at_one_and_ramps_to_the_prediction():
    admission = Limiter("<admission>", concurrency=32)
    tree = Tree(admission, rss0=100 * MB, per=50 * MB)
    gov = ResourceGovernor(memory_budget=GB, sample=tree.sample)
    gov.attach(admission, [])
    assert admission.limit == 1
    limits, peak = [], 0
    for _ in range(10):
        fill(admission)  # sources always want more
        cpu, rss = tree.sample()
        peak = max(peak, rss)
        gov.step(cpu, rss)
        limits.append(admission.limit)
    assert limits[:3] == [4, 15, 15]  # (0.85 GB - 100 MB) / 50 MB = 15.4, ramp x4 capped
    assert peak <= 0.85 * GB
    assert gov.per_partition == 50 * MB
    assert "memory" in repr(gov) or "MB" in repr(gov)


def test_small_partitions_lift_the_ceiling_quickly():
    admission = Limiter("<admission>", concurrency=32)
    tree = Tree(admission, rss0=100 * MB, per=10_000)
    gov = ResourceGovernor(memory_budget=GB, sample=tree.sample)
    gov.attach(admission, [])
    for _ in range(3):
        fill(admission)
        gov.step(*tree.sample())
    assert admission.ceiling is None and admission.limit == 32  # 1 -> 4 -> 16 -> lifted


def test_high_watermark_sheds_and_low_watermark_restores():
    changes: list[tuple] = []
    admission = Limiter("<admission>", concurrency=32, on_change=lambda *a: changes.append(a))
    tree = Tree(admission, rss0=100 * MB, per=10 * MB)
    gov = ResourceGovernor(memory_budget=GB, sample=tree.sample)
    gov.attach(admission, [])
    for _ in range(4):
        fill(admission)
        gov.step(*tree.sample())
    assert admission.limit == 32
    tree.extra = 700 * MB  # something else grew: a cache, kept outputs
    gov.step(*tree.sample())
    assert admission.limit < 32
    shed = admission.limit
    assert "memory" in changes[-1][4] and "high-watermark" in changes[-1][4]
    while admission.in_use > admission.limit:  # partitions leave the pipeline
        admission.release()
    tree.extra = 0
    for _ in range(6):
        fill(admission)
        gov.step(*tree.sample())
    assert admission.limit > shed


def test_never_below_one_partition_even_over_budget():
    admission = Limiter("<admission>", concurrency=8)
    gov = ResourceGovernor(memory_budget=100 * MB, sample=lambda: (0.0, 500 * MB))
    gov.attach(admission, [])
    for _ in range(5):
        fill(admission)
        gov.step(0.0, 500 * MB)
        assert admission.limit == 1
    assert admission.try_acquire() or admission.in_use == 1


def test_sustained_cpu_saturation_lowers_cpu_stages_and_admission_then_restores():
    clock = FakeClock()
    admission = Limiter("<admission>", concurrency=64)
    crunch = Limiter("crunch", concurrency=16)
    gov = ResourceGovernor(sustain=2.0, clock=clock, cpus=2, sample=lambda: (0.0, 0))
    gov.attach(admission, [crunch])
    assert admission.limit == 64  # no memory budget: no start ceiling
    fill(admission)

    def run(cpu: float, seconds: float) -> None:
        for _ in range(int(seconds / 0.25)):
            gov.step(cpu, 100 * MB)
            clock.advance(0.25)

    run(199.0, 1.5)  # a spike shorter than `sustain`: nothing
    assert (crunch.limit, admission.limit) == (16, 64)
    run(150.0, 1.0)
    run(199.0, 2.5)
    assert crunch.limit == 12 and admission.limit == 48
    run(199.0, 30.0)
    assert crunch.limit == 2  # never below the number of cores
    assert admission.limit == 4  # never below 2 per core
    run(100.0, 60.0)  # well under 95 % - 15 %
    assert crunch.ceiling is None and admission.ceiling is None
    assert (crunch.limit, admission.limit) == (16, 64)


@pytest.mark.asyncio
async def test_run_loop_with_engine_like_workers_completes_and_lifts_ceilings():
    """Workers that hold an admission permit per partition: every partition finishes, none starves."""
    clock = FakeClock()
    admission = Limiter("<admission>", concurrency=32, clock=clock)
    tree = Tree(admission, rss0=200 * MB, per=100 * MB)
    samples: list[tuple[float, int]] = []
    gov = ResourceGovernor(memory_budget=GB, interval=0.25, clock=clock, sample=tree.sample)
    gov.on_sample = lambda cpu, rss: samples.append((cpu, rss))
    gov.attach(admission, [])
    todo = iter(range(60))
    done, peak = 0, 0

    async def worker() -> None:
        nonlocal done, peak
        for _ in todo:
            if not admission.try_acquire():
                await admission.acquire()
            try:
                peak = max(peak, tree.sample()[1])
                await clock.sleep(0.2)
                done += 1
            finally:
                admission.release()

    task = asyncio.create_task(gov.run())
    workers = [asyncio.create_task(worker()) for _ in range(admission.max_limit)]
    while not all(w.done() for w in workers):
        await clock.run_for(0.05, step=0.01)
        assert clock.now() < 60, "the run stalled"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert done == 60
    assert peak <= 0.9 * GB
    assert samples and all(rss >= 200 * MB for _, rss in samples)
    assert admission.ceiling is None  # lifted when the governor stops


def test_bad_settings():
    with pytest.raises(ValueError, match="watermark"):
        ResourceGovernor(low_watermark=0.9, high_watermark=0.8)
    with pytest.raises(ValueError, match="memory_budget"):
        ResourceGovernor(memory_budget=0)


def test_tree_sampler_counts_child_processes():
    sampler = _TreeSampler()
    _, before = sampler.sample()
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; b = b'x' * (80 << 20); print(1, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        cpu, after = sampler.sample()
        assert sampler.n_processes >= 2
        assert after - before >= 70 * MB
        assert cpu >= 0.0
    finally:
        child.kill()
        child.wait()
        child.stdout.close()

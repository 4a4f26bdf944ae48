"""Retries, backoff under a fake clock, timeouts."""

from __future__ import annotations

import asyncio
import random

import pytest

import asyncpipe as ap
from asyncpipe import FakeClock, RetryPolicy


def test_backoff_schedule_is_exponential_capped_and_jittered():
    p = RetryPolicy(attempts=6, backoff=1.0, multiplier=3.0, max_delay=10.0, jitter=0.0)
    assert [p.delay(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 10.0, 10.0]
    j = RetryPolicy(backoff=1.0, jitter=0.5)
    rng = random.Random(1)
    delays = [j.delay(1, rng=rng) for _ in range(200)]
    assert 0.5 <= min(delays) < 0.6 and 0.9 < max(delays) <= 1.0


def test_retry_after_hint_is_honoured_up_to_max_delay():
    p = RetryPolicy(backoff=0.1, jitter=0.0, max_delay=5.0)
    assert p.delay(1, ap.RateLimited("slow down", retry_after=2.0)) == 2.0
    assert p.delay(1, ap.RateLimited("slow down", retry_after=60.0)) == 5.0


def test_retryable_classification():
    p = RetryPolicy()
    assert (
        p.retryable(TimeoutError()) and p.retryable(ConnectionResetError()) and p.retryable(ap.Overloaded())
    )
    assert not p.retryable(ValueError()) and not p.retryable(asyncio.CancelledError())
    custom = RetryPolicy(predicate=lambda e: isinstance(e, ValueError))
    assert custom.retryable(ValueError()) and not custom.retryable(OSError())


def test_coerce_and_validation():
    assert RetryPolicy.coerce(None).attempts == 1
    assert RetryPolicy.coerce(2).attempts == 3
    with pytest.raises(ap.DefinitionError):
        RetryPolicy(attempts=0)
    with pytest.raises(ap.DefinitionError):
        RetryPolicy.coerce("3")


@pytest.mark.asyncio
async def test_engine_waits_the_backoff_on_the_injected_clock():
    clock = FakeClock()
    calls = []

    async def flaky(i):
        calls.append(clock.now())
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return i

    events = []
    pipe = ap.Pipeline(
        [ap.source(flaky, retries=RetryPolicy(attempts=3, backoff=2.0, jitter=0.0))], cache=False
    )
    task = asyncio.ensure_future(pipe.run([7], clock=clock, on_event=events.append, monitor=False))
    while not task.done():
        await asyncio.sleep(0)
        if clock.sleepers:
            clock.advance(0.5)
    result = task.result()
    assert result.output() == [7]
    assert calls == [0.0, 2.0, 6.0]  # waits of 2 s then 4 s, not a moment of real sleeping
    retries = [e for e in events if type(e).__name__ == "RetryScheduled"]
    assert [(e.attempt, e.delay) for e in retries] == [(1, 2.0), (2, 4.0)]
    assert "ConnectionResetError" in retries[0].error


@pytest.mark.asyncio
async def test_timeouts_fire_and_are_retried():
    attempts = []

    async def slow_then_fast(i):
        attempts.append(i)
        if len(attempts) == 1:
            await asyncio.sleep(3600)
        return i

    policy = RetryPolicy(attempts=2, backoff=0.0, jitter=0.0)
    pipe = ap.Pipeline([ap.source(slow_then_fast, timeout=0.05, retries=policy)], cache=False)
    result = await pipe.run([1])
    assert result.output() == [1] and len(attempts) == 2


@pytest.mark.asyncio
async def test_permanent_failure_after_attempts_is_dead_lettered_with_attempt_count():
    async def broken(i):
        raise TimeoutError("always")

    pipe = ap.Pipeline(
        [ap.source(broken, retries=RetryPolicy(attempts=3, backoff=0.0, jitter=0.0))], cache=False
    )
    result = await pipe.run([1, 2])
    assert result.failures["attempts"].tolist() == [3, 3]


@pytest.mark.asyncio
async def test_cancel_during_a_retry_wait_stops_at_once():
    clock = FakeClock()
    failed = asyncio.Event()

    async def flaky(i):
        failed.set()
        raise ConnectionError("down")

    pipe = ap.Pipeline([ap.source(flaky, retries=RetryPolicy(attempts=5, backoff=100.0))], cache=False)
    handle = pipe.start([1], clock=clock)
    await failed.wait()
    await asyncio.sleep(0)
    assert clock.sleepers == 1  # waiting out the backoff
    handle.cancel()
    with pytest.raises(ap.RunCancelled):
        await asyncio.wait_for(handle._wait(), 1.0)

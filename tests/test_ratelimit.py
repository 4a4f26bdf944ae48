"""TokenBucket and rate strings, under a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from asyncpipe._clock import FakeClock
from asyncpipe._ratelimit import RECHECK_SECONDS, TokenBucket, format_rate, parse_rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/s", (100.0, 10.0)),
        ("30/min", (0.5, 1.0)),
        ("30/mins", (0.5, 1.0)),
        ("3600/h", (1.0, 1.0)),
        ("2/hours", (2 / 3600, 1.0)),
        ("10/5s", (2.0, 1.0)),
        ("7 / 2 min, burst=4", (7 / 120, 4.0)),
        ("10/s burst 50", (10.0, 50.0)),
        (".5/sec", (0.5, 1.0)),
        (2.5, (2.5, 1.0)),
        (1000, (1000.0, 100.0)),
    ],
)
def test_parse_rate(text, expected):
    rate, burst = parse_rate(text)
    assert rate == pytest.approx(expected[0])
    assert burst == pytest.approx(expected[1])


@pytest.mark.parametrize("bad", ["fast", "10", "1/ms", "0/s", "-1/s", "5/s burst 0.5", 0, -3.0, True, [1]])
def test_parse_rate_rejects_with_a_hint(bad):
    with pytest.raises(ValueError, match=r"rate|burst"):
        parse_rate(bad)


def test_parse_rate_none_means_unlimited():
    assert parse_rate(None) is None
    assert format_rate(None) == "unlimited"
    assert format_rate(2 / 3600) == "2/h"


def test_burst_then_steady_rate():
    clock = FakeClock()
    bucket = TokenBucket("10/s burst 5", clock=clock)
    assert sum(bucket.try_take() for _ in range(20)) == 5  # the burst, no more
    taken = 0
    for _ in range(1000):  # 10 s in 10 ms steps
        clock.advance(0.01)
        taken += bucket.try_take()
    assert taken == 100  # exactly rate x time after the burst
    assert bucket.delay() == pytest.approx(0.1)


def test_idle_bucket_refills_only_up_to_burst():
    clock = FakeClock()
    bucket = TokenBucket("1/s burst 3", clock=clock)
    for _ in range(3):
        assert bucket.try_take()
    clock.advance(3600)
    assert bucket.tokens == 3
    assert sum(bucket.try_take() for _ in range(10)) == 3


@pytest.mark.asyncio
async def test_take_is_fifo_and_paced():
    clock = FakeClock()
    bucket = TokenBucket("2/s burst 1", clock=clock)
    assert bucket.try_take()
    done: list[tuple[int, float]] = []

    async def taker(i: int) -> None:
        await bucket.take()
        done.append((i, clock.now()))

    tasks = [asyncio.create_task(taker(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert bucket.waiting == 4
    assert not bucket.try_take()  # nobody jumps the queue
    await clock.run_for(2.5, step=0.01)
    assert [i for i, _ in done] == [0, 1, 2, 3]
    assert [round(t, 2) for _, t in done] == [0.5, 1.0, 1.5, 2.0]
    await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_cancelled_waiter_takes_nothing_and_the_next_moves_up():
    clock = FakeClock()
    bucket = TokenBucket("1/s burst 1", clock=clock)
    assert bucket.try_take()
    first = asyncio.create_task(bucket.take())
    second = asyncio.create_task(bucket.take())
    await clock.run_for(0.3, step=0.01)
    first.cancel()  # the head, while it sleeps for its token
    await asyncio.sleep(0)
    assert first.cancelled()
    await clock.run_for(0.75, step=0.01)
    assert second.done()  # got the token the head never took, at t=1.0
    assert bucket.waiting == 0
    assert bucket.tokens < 1


@pytest.mark.asyncio
async def test_rate_raised_at_runtime_applies_to_waiters():
    clock = FakeClock()
    bucket = TokenBucket("1/min", clock=clock)
    assert bucket.try_take()
    waiters = [asyncio.create_task(bucket.take()) for _ in range(3)]
    await clock.run_for(0.2, step=0.01)
    assert not any(w.done() for w in waiters)
    bucket.set_rate("100/s burst 1")
    await clock.run_for(RECHECK_SECONDS + 0.05, step=0.005)
    assert all(w.done() for w in waiters)


@pytest.mark.asyncio
async def test_release_waiters_lets_everyone_through():
    clock = FakeClock()
    bucket = TokenBucket("1/h", clock=clock)
    assert bucket.try_take()
    waiters = [asyncio.create_task(bucket.take()) for _ in range(5)]
    await asyncio.sleep(0)
    bucket.release_waiters()
    await clock.run_for(RECHECK_SECONDS * 2, step=0.01)
    assert all(w.done() for w in waiters)
    assert "1/h" in repr(bucket)

"""Limiter: permits, FIFO waiters, runtime changes, and permits always coming back."""

from __future__ import annotations

import asyncio

import pytest

from asyncpipe._adaptive import Adaptive
from asyncpipe._clock import FakeClock
from asyncpipe._exceptions import DefinitionError, Overloaded, RateLimited
from asyncpipe._limiter import OUTCOMES, Limiter, classify


def recorder() -> tuple[list[tuple], object]:
    changes: list[tuple] = []
    return changes, lambda *args: changes.append(args)


def test_static_limit_caps_try_acquire():
    lim = Limiter("s", concurrency=3)
    assert [lim.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert (lim.limit, lim.max_limit, lim.in_use, lim.rate) == (3, 3, 3, None)
    lim.release("ok", 0.1)
    assert lim.try_acquire()
    for _ in range(3):
        lim.release()
    assert lim.in_use == 0
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        lim.release()


@pytest.mark.parametrize("bad", [0, -2, "fast", 2.5, None, True])
def test_bad_concurrency_is_a_definition_error(bad):
    with pytest.raises(DefinitionError, match="concurrency"):
        Limiter("s", concurrency=bad)


@pytest.mark.asyncio
async def test_waiters_are_served_in_order_and_cannot_be_barged():
    lim = Limiter("s", concurrency=1)
    assert lim.try_acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await lim.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert lim.waiting == 3
    lim.release()
    assert not lim.try_acquire()  # the freed permit was handed to waiter 0
    for _ in range(3):
        await asyncio.sleep(0)
        lim.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert lim.in_use == 0


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_nothing_behind():
    lim = Limiter("s", concurrency=2)
    assert lim.try_acquire() and lim.try_acquire()
    tasks = [asyncio.create_task(lim.acquire()) for _ in range(5)]
    await asyncio.sleep(0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (lim.in_use, lim.waiting) == (2, 0)
    lim.release()
    lim.release()
    assert lim.in_use == 0 and lim.try_acquire()


@pytest.mark.asyncio
async def test_waiter_cancelled_right_after_the_handover_gives_the_permit_back():
    lim = Limiter("s", concurrency=1)
    assert lim.try_acquire()
    task = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    lim.release()  # permit handed to the waiter ...
    assert lim.in_use == 1
    task.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.in_use == 0


async def attempt(lim: Limiter, work, clock=None) -> str:
    """What the engine does around one attempt."""
    if not lim.try_acquire():
        await lim.acquire()
    try:
        await work()
    except BaseException as exc:
        lim.release(classify(exc), 0.0)
        raise
    lim.release("ok", 0.0)
    return "ok"


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", ["error", "overload", "timeout", "cancelled"])
async def test_permits_come_back_on_every_outcome(failure):
    lim = Limiter("s", concurrency=Adaptive(initial=4, max=8))
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        if failure == "error":
            raise KeyError("bad row")
        if failure == "overload":
            raise RateLimited("429", retry_after=1.0)
        if failure == "timeout":
            async with asyncio.timeout(0):
                await asyncio.sleep(1)
        await asyncio.sleep(3600)

    tasks = [asyncio.create_task(attempt(lim, work)) for _ in range(10)]  # 4 run, 6 wait
    await started.wait()
    await asyncio.sleep(0)
    if failure == "cancelled":
        assert lim.in_use == 4 and lim.waiting == 6
        for t in tasks:
            t.cancel()  # holders and waiters alike
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, BaseException) for r in results)
    assert (lim.in_use, lim.waiting) == (0, 0)


@pytest.mark.asyncio
async def test_permit_context_manager_times_and_classifies():
    clock = FakeClock()
    lim = Limiter("s", concurrency=Adaptive(initial=5, max=10), clock=clock)

    async def body() -> None:
        async with lim.permit():
            await clock.sleep(0.5)
            raise Overloaded("busy")

    task = asyncio.create_task(body())
    await clock.run_for(0.6, step=0.05)
    with pytest.raises(Overloaded):
        await task
    assert lim.in_use == 0
    assert lim.limit == 4  # one overload cut: 5 x 0.8


@pytest.mark.asyncio
async def test_token_wait_cancelled_gives_the_permit_back():
    clock = FakeClock()
    lim = Limiter("s", concurrency=4, rate="1/s burst 1", clock=clock)
    assert lim.try_acquire()
    assert not lim.try_acquire()  # a permit is free but no token
    task = asyncio.create_task(lim.acquire())
    await clock.run_for(0.2, step=0.05)
    assert lim.in_use == 2  # holds a permit while it waits for the token
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lim.in_use == 1


@pytest.mark.asyncio
async def test_rate_limits_throughput_and_changes_at_runtime():
    clock = FakeClock()
    changes, on_change = recorder()
    lim = Limiter("api", concurrency=100, rate="10/s burst 1", clock=clock, on_change=on_change)
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            if not lim.try_acquire():
                await lim.acquire()
            lim.release("ok", 0.0)
            done += 1
            await asyncio.sleep(0)

    workers = [asyncio.create_task(worker()) for _ in range(5)]
    await clock.run_for(2.0, step=0.01)
    assert 20 <= done <= 22  # 1 burst token + 10/s
    lim.set_rate("100/s burst 1", reason="panel")
    before = done
    await clock.run_for(1.0, step=0.005)
    assert 90 <= done - before <= 102
    lim.set_rate(None)
    before = done
    await clock.run_for(0.05, step=0.005)
    assert done - before >= 30  # unlimited: only loop turns bound it (100/s would allow 5)
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert [c[1] for c in changes] == ["rate", "rate"]
    assert changes[0][2:4] == (10.0, 100.0) and "panel" in changes[0][4]
    assert changes[1][3] is None
    assert lim.in_use == 0


@pytest.mark.asyncio
async def test_set_concurrency_wakes_waiters_and_raises_max_limit():
    changes, on_change = recorder()
    lim = Limiter("s", concurrency=1, on_change=on_change)
    assert lim.try_acquire()
    tasks = [asyncio.create_task(lim.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    lim.set_concurrency(4, reason="panel")
    await asyncio.gather(*tasks)
    assert (lim.in_use, lim.limit, lim.max_limit) == (4, 4, 4)
    lim.set_concurrency(0)  # clamped to 1; permits already out are not revoked
    assert (lim.limit, lim.max_limit, lim.in_use) == (1, 4, 4)
    for _ in range(4):
        lim.release()
    assert changes == [("s", "concurrency", 1.0, 4.0, "panel"), ("s", "concurrency", 4.0, 1.0, "user")]


def test_switching_between_static_and_adaptive():
    lim = Limiter("s", concurrency=6)
    lim.set_concurrency("adaptive")
    assert lim.adaptive == Adaptive() and lim.limit == 6 and lim.max_limit == 64
    lim.set_concurrency(3)
    assert lim.adaptive is None and lim.limit == 3
    assert "limit=3" in repr(lim)


def test_ceiling_caps_and_lifts_never_below_one():
    changes, on_change = recorder()
    lim = Limiter("s", concurrency=8, on_change=on_change)
    lim.set_ceiling(3, reason="memory high-watermark")
    assert (lim.limit, lim.ceiling, lim.max_limit) == (3, 3, 8)
    lim.set_ceiling(0, reason="memory")
    assert lim.limit == 1
    lim.set_concurrency(2)  # below the ceiling: the target rules
    assert lim.limit == 1
    lim.set_ceiling(None, reason="memory low-watermark")
    assert lim.limit == 2
    assert [c[3] for c in changes] == [3.0, 1.0, 2.0]
    assert changes[0][4] == "memory high-watermark"
    assert "ceiling" not in repr(lim)


def test_classify():
    assert OUTCOMES == ("ok", "error", "overload", "timeout", "cancelled")
    assert classify(None) == "ok"
    assert classify(Overloaded()) == "overload"
    assert classify(RateLimited()) == "overload"
    assert classify(TimeoutError()) == "timeout"
    assert classify(asyncio.CancelledError()) == "cancelled"
    assert classify(ValueError()) == "error"
    is_503 = lambda e: "503" in str(e)  # noqa: E731
    assert classify(RuntimeError("HTTP 503"), is_503) == "overload"
    assert classify(RuntimeError("HTTP 500"), is_503) == "error"


def test_broken_predicate_counts_as_error(caplog):
    def broken(exc):
        raise ZeroDivisionError

    assert classify(RuntimeError("x"), broken) == "error"
    assert "predicate" in caplog.text


def test_on_change_failure_is_logged_not_raised(caplog):
    def boom(*args):
        raise RuntimeError("panel gone")

    lim = Limiter("s", concurrency=2, on_change=boom)
    lim.set_concurrency(5)
    assert lim.limit == 5
    assert "on_change" in caplog.text

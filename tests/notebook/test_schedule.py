"""Interval and cron schedules on the running loop, under a fake clock."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

import asyncpipe as ap
from asyncpipe._clock import FakeClock
from asyncpipe.notebook import Schedule, schedule, schedules


def numbers(n):
    return n


def _pipe():
    return ap.Pipeline([numbers], name="sched", cache=False)


async def _settle(handle):
    if handle is not None:
        await handle


@pytest.mark.asyncio
async def test_every_n_minutes_runs_and_records_history():
    clock = FakeClock()
    sched = schedule(_pipe(), inputs=[1, 2, 3], every=2, clock=clock)
    await asyncio.sleep(0)
    assert sched in schedules()
    assert sched.next_run == pytest.approx(clock.time() + 120)
    await clock.run_for(119, step=1)
    assert sched.history == []
    await clock.run_for(2, step=1)
    assert len(sched.history) == 1
    await _settle(sched.history[0].handle)
    await clock.run_for(120, step=1)
    await _settle(sched.history[-1].handle)
    assert [r.status for r in sched.history] == ["succeeded", "succeeded"]
    assert sched.history[1].due - sched.history[0].due == pytest.approx(120)
    assert sched.history[0].handle.result()["numbers"] == [1, 2, 3]
    sched.cancel()
    await asyncio.sleep(0)
    assert sched not in schedules() and sched.next_run is None
    await clock.run_for(300, step=10)
    assert len(sched.history) == 2


@pytest.mark.asyncio
async def test_an_occurrence_is_skipped_while_the_previous_run_goes_on():
    gate = asyncio.Event()

    async def slow(n):
        await gate.wait()
        return n

    clock = FakeClock()
    sched = Schedule(ap.Pipeline([slow], cache=False), inputs=[1], every=dt.timedelta(minutes=1), clock=clock)
    await clock.run_for(61, step=1)
    await clock.run_for(60, step=1)
    assert [r.status for r in sched.history] == ["running", "skipped"]
    gate.set()
    await sched.history[0].handle
    await asyncio.sleep(0)
    assert sched.history[0].status == "succeeded" and sched.history[0].finished_at is not None
    sched.cancel(cancel_running=True)


@pytest.mark.asyncio
async def test_cron_next_run_follows_the_expression():
    clock = FakeClock(wall=dt.datetime(2024, 1, 1, 10, 7, tzinfo=dt.UTC).timestamp())
    sched = schedule(_pipe(), inputs=[1], cron="*/15 * * * *", clock=clock)
    await asyncio.sleep(0)
    assert sched.next_run_at.minute == 15 and sched.next_run - clock.time() == pytest.approx(8 * 60)
    await clock.run_for(8 * 60 + 1, step=5)
    await _settle(sched.history[0].handle)
    assert len(sched.history) == 1 and sched.history[0].status == "succeeded"
    assert sched.next_run_at.minute == 30
    assert "cron '*/15 * * * *'" in repr(sched)
    sched.cancel()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "every tuesday"}, "Invalid cron expression"),
    ({"every": 0}, "positive number of minutes"),
    ({}, "exactly one"),
    ({"every": 1, "cron": "* * * * *"}, "exactly one"),
])
@pytest.mark.asyncio
async def test_bad_schedules_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedule(_pipe(), inputs=[1], **kwargs)
    assert schedules() == []


def test_a_schedule_needs_the_running_loop():
    with pytest.raises(RuntimeError):
        schedule(_pipe(), inputs=[1], every=1)

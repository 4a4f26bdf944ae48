"""Terminal progress: plain log lines when not a TTY, a rich live display on one."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

from asyncpipe._clock import FakeClock
from asyncpipe._events import PartitionFailed, RunFinished, RunStarted, StageProgress
from asyncpipe._metrics import Metrics
from asyncpipe._progress import TerminalProgress

RUN = "20260101-000000-abcdef"


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def begin(clock: FakeClock) -> Metrics:
    m = Metrics(clock=clock)
    m(RunStarted(run_id=RUN, t=clock.time(), pipeline="etl", stages=("fetch", "store")))
    return m


def work(m: Metrics, clock: FakeClock, stage: str, n: int, total: int = 100) -> None:
    m(StageProgress(run_id=RUN, t=clock.time(), stage=stage, started=n, finished=n, total=total,
                    durations=(0.01,) * n))


async def until(cond, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asyncpipe.progress"]


@pytest.mark.asyncio
async def test_not_a_tty_logs_periodic_lines_then_the_final_state(caplog):
    caplog.set_level(logging.INFO, logger="asyncpipe.progress")
    clock = FakeClock()
    m = begin(clock)
    stream = io.StringIO()
    progress = TerminalProgress(m, stream=stream, refresh=0.25, log_every=5.0)
    assert progress.tty is False
    task = asyncio.create_task(progress.run())
    for _ in range(16):  # 4 s: nothing logged yet
        await clock.run_for(0.25, step=0.25)
        work(m, clock, "fetch", 2)
    assert progress_lines(caplog) == []
    await clock.run_for(1.25, step=0.25)
    lines = progress_lines(caplog)
    assert len(lines) == 3  # the run, then one line per stage
    assert lines[0].startswith(f"run {RUN} running: elapsed 5.2s, ETA ")
    assert lines[1].startswith("fetch: 32/100 (32%), 0 running, 0 queued, ")
    assert lines[2].startswith("store: 0/?, 0 running")
    records = [r for r in caplog.records if r.name == "asyncpipe.progress"]
    assert [(r.run_id, r.stage) for r in records] == [(RUN, "-"), (RUN, "fetch"), (RUN, "store")]
    m(PartitionFailed(run_id=RUN, t=clock.time(), stage="store", partition="p3", attempts=1,
                      error_type="ValueError", message="bad"))
    work(m, clock, "fetch", 68)
    final = RunFinished(run_id=RUN, t=clock.time(), status="failed", n_failures=1)
    m(final)
    progress(final)  # as a bus subscriber: the run ended, so run() returns and shows the end
    await clock.run_for(0.25, step=0.25)
    await asyncio.wait_for(task, 5)
    lines = progress_lines(caplog)
    assert len(lines) == 6
    assert lines[3].startswith(f"run {RUN} failed, 1 failures: elapsed 5.2s")
    assert lines[4].startswith("fetch: 100/100 (100%)")
    assert stream.getvalue() == ""  # library code writes to logging, never to the stream
    progress.close()
    assert len(progress_lines(caplog)) == 6  # close() is idempotent


@pytest.mark.asyncio
async def test_cancelling_the_task_still_shows_the_final_state(caplog):
    caplog.set_level(logging.INFO, logger="asyncpipe.progress")
    clock = FakeClock()
    m = begin(clock)
    progress = TerminalProgress(m, stream=io.StringIO(), log_every=60.0)
    task = asyncio.create_task(progress.run())
    await clock.run_for(1.0, step=0.25)
    work(m, clock, "fetch", 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lines = progress_lines(caplog)
    assert len(lines) == 3 and lines[1].startswith("fetch: 10/100 (10%)")


def test_quiet_logger_costs_nothing(caplog):
    caplog.set_level(logging.WARNING, logger="asyncpipe.progress")
    progress = TerminalProgress(begin(FakeClock()), stream=io.StringIO())
    progress.close()
    assert progress_lines(caplog) == []


@pytest.mark.asyncio
async def test_tty_draws_a_live_display_and_a_final_frame():
    clock = FakeClock()
    m = begin(clock)
    stream = TTYStream()
    progress = TerminalProgress(m, stream=stream, refresh=0.25)
    assert progress.tty is True
    task = asyncio.create_task(progress.run())
    work(m, clock, "fetch", 40)
    await until(lambda: "fetch" in stream.getvalue())
    first = stream.getvalue()
    assert "etl" in first and RUN in first and "running" in first
    assert "40/100" in first and "store" in first and "0/?" in first
    work(m, clock, "fetch", 60)
    work(m, clock, "store", 100)
    m(RunFinished(run_id=RUN, t=clock.time(), status="succeeded"))
    progress(RunFinished(run_id=RUN, t=clock.time(), status="succeeded"))
    await clock.run_for(0.5, step=0.25)
    await asyncio.wait_for(task, 5)
    out = stream.getvalue()
    last_frame = out[out.rindex("etl "):]
    assert "succeeded" in last_frame and last_frame.count("100/100") == 2 and "ETA 0s" in last_frame
    size = len(out)
    progress.close()
    assert len(stream.getvalue()) == size  # nothing drawn after the final frame


def test_tty_close_without_run_prints_the_state_once():
    clock = FakeClock()
    m = begin(clock)
    work(m, clock, "fetch", 5)
    stream = io.StringIO()
    progress = TerminalProgress(m, stream=stream, tty=True)
    progress.close()
    progress.close()
    out = stream.getvalue()
    assert out.count("5/100") == 1 and "fetch" in out


def test_invalid_periods_are_rejected():
    with pytest.raises(ValueError, match="refresh"):
        TerminalProgress(Metrics(), refresh=0)

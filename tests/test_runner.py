"""Entry points: start() handles, run_sync(), cancellation, pause/resume."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import threading
import time

import pytest

import asyncpipe as ap


def _pipe(fn, **kw):
    kw.setdefault("cache", False)
    return ap.Pipeline([ap.source(fn, name="work")], **kw)


def test_run_sync_in_a_script():
    result = _pipe(lambda i: i * 2).run_sync(range(3))
    assert result.output() == [0, 2, 4]


def test_run_sync_inside_a_running_loop_uses_a_private_loop():
    async def sync_cell():
        # what a synchronous notebook cell does while the kernel loop runs
        return _pipe(lambda i: i + 1).run_sync([1, 2])

    assert asyncio.run(sync_cell()).output() == [2, 3]


def test_start_without_a_loop_explains_what_to_do():
    with pytest.raises(ap.AsyncpipeError, match=r"start\(\) needs a running event loop.*run_sync"):
        _pipe(lambda i: i).start([1])


@pytest.mark.asyncio
async def test_start_returns_at_once_and_the_handle_is_awaitable():
    gate = asyncio.Event()

    async def work(i):
        await gate.wait()
        return i

    handle = _pipe(work).start(range(3))
    await asyncio.sleep(0.01)
    assert not handle.done() and handle.status == "running"
    assert "running" in repr(handle)
    with pytest.raises(ap.AsyncpipeError, match="still running"):
        handle.result()
    gate.set()
    result = await handle
    assert result.output() == [0, 1, 2]
    assert handle.result() is result and handle.status == "succeeded"
    assert handle.counts()["work"]["done"] == 3


@pytest.mark.asyncio
async def test_cancel_stops_every_stage_within_a_second_and_engine_is_reusable():
    started = asyncio.Event()

    async def work(i):
        started.set()
        await asyncio.sleep(3600)

    events = []
    pipe = _pipe(work)
    handle = pipe.start(range(100), on_event=events.append)
    await asyncio.wait_for(started.wait(), 5)
    t0 = time.perf_counter()
    handle.cancel()
    with pytest.raises(ap.RunCancelled):
        await handle
    assert time.perf_counter() - t0 < 1.0
    assert handle.status == "cancelled"
    assert type(events[-1]).__name__ == "RunFinished" and events[-1].status == "cancelled"
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("asyncpipe:")]
    assert leftovers == []
    # the same pipeline runs again afterwards
    fresh = _pipe(lambda i: i)
    assert (await fresh.run([1])).output() == [1]


@pytest.mark.asyncio
async def test_cancelling_the_awaiting_task_cancels_the_run():
    async def work(i):
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(_pipe(work).run(range(4)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("asyncpipe:")] == []


@pytest.mark.asyncio
async def test_pause_holds_new_partitions_and_resume_continues():
    calls = []

    async def work(i):
        calls.append(i)
        await asyncio.sleep(0)
        return i

    handle = _pipe(work, concurrency=1).start(range(50))
    handle.pause()
    await asyncio.sleep(0.02)
    n = len(calls)
    await asyncio.sleep(0.02)
    assert len(calls) == n < 50 and handle.status == "paused"
    handle.resume()
    assert (await handle).output() == list(range(50))


def test_keyboard_interrupt_in_run_sync_cancels_the_run():
    started = threading.Event()

    async def work(i):
        started.set()
        await asyncio.sleep(3600)

    def interrupt():
        started.wait(5)
        import _thread

        _thread.interrupt_main()

    threading.Thread(target=interrupt).start()
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        _pipe(work).run_sync(range(3))
    assert time.perf_counter() - t0 < 5


def test_unknown_run_option_is_an_error():
    with pytest.raises(TypeError, match=r"unknown option.*kep"):
        _pipe(lambda i: i).run_sync([1], kep="all")


def test_runs_freeze_preexisting_objects_out_of_gc_scans_and_undo_it_once_idle(monkeypatch):
    import gc

    from asyncpipe import _gcfreeze

    seen = []

    def probe(i):
        seen.append((gc.get_freeze_count(), gc.get_threshold()[2]))
        return i

    assert _gcfreeze.GcFreeze.wait_thawed(timeout=30)
    before, threshold2 = gc.get_freeze_count(), gc.get_threshold()[2]
    monkeypatch.setattr(_gcfreeze, "GC_THAW_DELAY", 3600.0)
    _pipe(probe).run_sync([1])
    # objects alive at the start were frozen during the run, with full collections held back
    assert seen[-1][0] > before and seen[-1][1] >= _gcfreeze.RUN_GEN2_THRESHOLD
    # the objects stay frozen (and full collections held back) until idle
    assert gc.get_freeze_count() > before and gc.get_threshold()[2] >= _gcfreeze.RUN_GEN2_THRESHOLD
    assert not _gcfreeze.GcFreeze.wait_thawed(timeout=0.01)
    # a run starting meanwhile cancels the pending thaw; the next idle period thaws
    monkeypatch.setattr(_gcfreeze, "GC_THAW_DELAY", 0.0)
    _pipe(probe).run_sync([1])
    assert _gcfreeze.GcFreeze.wait_thawed(timeout=30)
    assert (gc.get_freeze_count(), gc.get_threshold()[2]) == (before, threshold2)
    _pipe(probe).run_sync([1], freeze_gc=False)
    assert seen[-1] == (before, threshold2)
    # back-to-back runs (a schedule) do not keep objects frozen past GC_MAX_FROZEN
    monkeypatch.setattr(_gcfreeze, "GC_THAW_DELAY", 3600.0)
    monkeypatch.setattr(_gcfreeze, "GC_MAX_FROZEN", 0.0)
    _pipe(probe).run_sync([1])
    assert _gcfreeze.GcFreeze.wait_thawed(timeout=30)
    assert gc.get_freeze_count() == before


def test_progress_carries_at_most_the_kept_durations_and_summaries_count_all_time():
    from asyncpipe._events import StageProgress
    from asyncpipe._metrics import RESERVOIR

    events = []
    result = _pipe(lambda i: i).run_sync(range(3 * RESERVOIR), on_event=events.append)
    progress = [e for e in events if isinstance(e, StageProgress)]
    assert sum(e.finished for e in progress) == 3 * RESERVOIR
    assert all(len(e.durations) <= RESERVOIR for e in progress)
    assert any(len(e.durations) > 0 for e in progress)
    (summary,) = [s for s in result.stages if s.done]
    recorded = sum(r[2] for r in result.records[summary.name])
    assert summary.seconds == pytest.approx(recorded, rel=1e-9, abs=1e-12)


def test_the_first_run_imports_the_engine_off_the_event_loop():
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import asyncio, sys, threading
        import asyncpipe as ap

        seen = {}

        class Spy:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("asyncpipe._") and name not in seen:
                    seen[name] = threading.current_thread() is threading.main_thread()
                return None

        sys.meta_path.insert(0, Spy())
        pipe = ap.Pipeline([ap.source(lambda i: i, name="work")], cache=False)
        assert asyncio.run(pipe.run([1, 2])).output() == [1, 2]
        print(seen.get("asyncpipe._runner"), seen.get("asyncpipe._sampler"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False"]  # imported, and not on the loop's thread


def test_a_stage_holding_the_gil_in_a_thread_is_named_in_the_loop_report(tmp_path, gil_holder):
    """gil_holder keeps the GIL ~100 ms in one C call: the loop's thread waits as long, and
    the result names the stage that had calls in flight."""
    result = _pipe(gil_holder, executor="thread", concurrency=1, workdir=tmp_path).run_sync(range(3))
    assert result.ok
    assert result.worst_loop_lag is not None and result.worst_loop_lag > 0.020
    assert result.loop_stalls >= 1
    assert set(result.stall_suspects) == {"work"}
    assert "during work (" in result.loop_report and "executor='process' or 'dask'" in result.loop_report
    assert result.loop_report in repr(result)
    assert html.escape(result.loop_report) in result._repr_html_()
    record = ap.load_run(result.run_id, tmp_path)
    assert record.extra["loop_stalls"] == result.loop_stalls
    assert record.extra["stall_suspects"] == dict(result.stall_suspects)


def test_the_loop_report_of_a_responsive_run_is_its_worst_stall_alone(tmp_path):
    result = _pipe(lambda i: i, workdir=tmp_path).run_sync(range(3))
    calm = dataclasses.replace(result, worst_loop_lag=0.0042, loop_stalls=0, stall_suspects={})
    assert calm.loop_report == "worst loop stall 4.2 ms"
    assert repr(calm).splitlines()[0].endswith(", worst loop stall 4.2 ms>")
    unmeasured = _pipe(lambda i: i, workdir=tmp_path).run_sync(range(3), monitor=False)
    assert unmeasured.worst_loop_lag is None and unmeasured.loop_report == ""

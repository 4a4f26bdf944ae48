"""The monitor panel, tested on widget model state without a kernel."""

from __future__ import annotations

import asyncio
import time

import pytest

import asyncpipe as ap
from asyncpipe import RunCancelled
from asyncpipe.notebook import Monitor, monitor


def _pipe(n_fail: int = 0, delay: float = 0.0, name: str = "m"):
    async def load(n):
        if delay:
            await asyncio.sleep(delay)
        return n

    def check(load):
        if load < n_fail:
            raise ValueError(f"bad item {load}")
        return load

    return ap.Pipeline([load, check], name=name, cache=False)


@pytest.mark.asyncio
async def test_final_state_on_success(comm_log):
    handle = _pipe().start(range(20))
    mon = Monitor(handle)
    result = await mon
    assert result.ok
    assert "succeeded" in mon.header.value and "items/s" in mon.header.value
    assert "worst loop stall" in mon.header.value
    for row in mon.rows.values():
        assert row.bar.value == 1.0 and row.bar.bar_style == "success"
        assert "20/20 done" in row.stats.value and "p95" in row.stats.value and "limit" in row.stats.value
    assert mon.pause_button.disabled and mon.resume_button.disabled and mon.cancel_button.disabled
    assert mon.chart.value[:4] == b"\x89PNG" and mon.chart_frames >= 1
    assert mon.errors.value == ""


@pytest.mark.asyncio
async def test_final_state_on_failures_lists_errors_with_tracebacks(comm_log):
    handle = _pipe(n_fail=3).start(range(10))
    mon = Monitor(handle, charts=False)
    await mon
    assert handle.status == "failed"
    assert "3 failure(s)" in mon.errors.value
    assert mon.errors.value.count("<details>") == 3 and "ValueError: bad item 0" in mon.errors.value
    assert "Traceback" in mon.errors.value  # on demand: inside <details>
    assert mon.rows["check"].bar.bar_style == "danger"
    assert "3 failed" in mon.rows["check"].stats.value


@pytest.mark.asyncio
async def test_buttons_pause_resume_and_cancel_the_run(comm_log):
    handle = _pipe(delay=0.05).start(range(200))
    mon = Monitor(handle, charts=False)
    await asyncio.sleep(0.15)
    mon.pause_button.click()
    assert handle.status == "paused" and mon.resume_button.disabled is False and mon.pause_button.disabled
    mon.resume_button.click()
    assert handle.status == "running" and mon.resume_button.disabled
    mon.cancel_button.click()
    with pytest.raises(RunCancelled):
        await mon
    assert "cancelled" in mon.header.value
    assert mon.rows["load"].bar.bar_style == "warning"
    assert mon.cancel_button.disabled


@pytest.mark.asyncio
async def test_updates_are_coalesced_and_bounded_per_refresh(comm_log):
    """A fast pipeline (thousands of items/s) for ~1 s: <= 10 refreshes/s, <= 3 chart frames/s,
    and at most one message per widget per refresh, whatever the item count."""
    handle = _pipe(delay=0.01, name="fast").configure("load", concurrency=64).start(range(5000))
    t0 = time.perf_counter()
    mon = Monitor(handle)
    comm_log.clear()
    await mon
    elapsed = time.perf_counter() - t0
    n_widgets = len(mon._all_widgets())
    sends = [m for kind, m in comm_log if kind == "send"]
    assert elapsed > 0.5
    # +3: the final paint, the initial one and timer phase
    assert mon.refreshes <= 10 * elapsed + 3, (mon.refreshes, elapsed)
    assert mon.chart_frames <= 3 * elapsed + 3, (mon.chart_frames, elapsed)
    resend = n_widgets  # await re-sends every widget once from the awaiting task
    assert len(sends) - resend <= n_widgets * mon.refreshes + mon.chart_frames
    assert len(sends) / elapsed < 200, len(sends) / elapsed
    assert mon.refresh_seconds / mon.refreshes < 0.005  # O(stages): well under a millisecond or two


@pytest.mark.asyncio
async def test_awaiting_resends_every_widget_state(comm_log):
    handle = _pipe().start(range(5))
    mon = Monitor(handle, charts=False)
    await handle
    await asyncio.sleep(0.05)
    comm_log.clear()
    await mon
    updated = [m for kind, m in comm_log if kind == "send" and m.get("method") == "update"]
    assert len(updated) >= len(mon._all_widgets())


@pytest.mark.asyncio
async def test_monitor_of_a_finished_handle_paints_final_state_at_once(comm_log):
    handle = _pipe().start(range(4))
    await handle
    mon = monitor(handle, display=False, charts=False)
    assert mon.final and "succeeded" in mon.header.value
    assert all(r.bar.value == 1.0 for r in mon.rows.values())


@pytest.mark.asyncio
async def test_text_and_html_fallbacks(comm_log):
    handle = _pipe().start(range(4))
    mon = Monitor(handle, charts=False)
    await mon
    bundle = mon._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "succeeded" in bundle["text/plain"] and "<table>" in bundle["text/html"]


def test_monitor_needs_metrics():
    async def main():
        handle = _pipe().start(range(2), monitor=False)
        with pytest.raises(ValueError, match="monitor=False"):
            Monitor(handle)
        await handle

    asyncio.run(main())


@pytest.mark.asyncio
async def test_chart_frames_are_drawn_in_a_helper_process_with_a_thread_fallback(comm_log, monkeypatch):
    import os

    from asyncpipe.notebook import _render

    drawn_in: list[int] = []
    real = Monitor._render

    async def spy(self, charts, final):
        png = await real(self, charts, final)
        pool = _render.renderer()
        drawn_in.append(pool.submit(os.getpid).result() if pool is not None else os.getpid())
        return png

    monkeypatch.setattr(Monitor, "_render", spy)
    mon = Monitor(_pipe().start(range(20)))
    await mon
    assert mon.chart.value[:4] == b"\x89PNG"
    assert drawn_in and os.getpid() not in drawn_in  # matplotlib ran in the helper, not here
    assert "figure" not in vars(mon.charts)  # ... and this process never built a figure

    # no helper available: frames are still drawn, in a thread of this process
    monkeypatch.setattr(_render, "renderer", lambda: None)
    drawn_in.clear()
    mon = Monitor(_pipe().start(range(20)))
    await mon
    assert mon.chart.value[:4] == b"\x89PNG" and drawn_in and set(drawn_in) == {os.getpid()}
    assert "figure" in vars(mon.charts)


@pytest.mark.asyncio
async def test_the_header_names_the_stages_in_threads_when_the_loop_stalled(comm_log, gil_holder):
    stage = ap.source(gil_holder, name="hold", executor="thread", concurrency=1)  # ~100 ms with the GIL
    pipe = ap.Pipeline([stage], name="gil", cache=False)
    mon = Monitor(pipe.start(range(3)), charts=False)
    result = await mon
    assert set(result.stall_suspects) == {"hold"}
    assert "during hold" in mon.header.value
    assert "title=\"executor='process' or 'dask'" in mon.header.value  # the tooltip says what to do


def test_the_chart_helper_keeps_a_bounded_number_of_figures(monkeypatch):
    from asyncpipe.notebook import _render

    monkeypatch.setattr(_render, "_figures", {})
    monkeypatch.setattr(_render, "MAX_FIGURES", 2)
    for stages in (("a",), ("b",), ("a",), ("c",)):
        (name,) = stages
        frame = {"t": [0.0, 1.0], "throughput": {name: [1.0, 2.0]}, "limit": {name: [1, 1]},
                 "cpu": [10.0, 20.0], "rss": [1e6, 2e6]}
        assert _render.render_frame(stages, frame, False)[:4] == b"\x89PNG"
    assert list(_render._figures) == [("a",), ("c",)]  # "b" was the least recently used

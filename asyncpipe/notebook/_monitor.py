"""The monitor panel: live ipywidgets view of one run, built from metrics snapshots only.

A timer task on the loop polls ``handle.metrics.snapshot()`` at most every
:data:`REFRESH` seconds and assigns only the widget traits whose value changed
(O(stages) per refresh, whatever the number of items); charts are recorded at
most every :data:`CHART_REFRESH` seconds and rendered to PNG in the chart helper process
(``_render``), or a worker thread when that is unavailable.
On :class:`~asyncpipe._events.RunFinished` (success, failure and cancel alike)
the final state is painted, charts included.

>>> import asyncio, tempfile, asyncpipe as ap
>>> def numbers(n):
...     return n
>>> async def main():
...     handle = ap.Pipeline([numbers], name="demo", cache=False, workdir=tempfile.mkdtemp()).start(range(5))
...     mon = Monitor(handle, charts=False)
...     await mon.wait()
...     return mon.header.value
>>> "succeeded" in asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .._events import Event, RunFinished
from ._rows import StageRow, estimated_totals, failures_html, headline_html

__all__ = ["CHART_REFRESH", "REFRESH", "Monitor", "monitor"]

_log = logging.getLogger("asyncpipe.notebook")

#: Widget refresh period: 10 Hz. jupyter_server drops iopub traffic above ~1000
#: msg/s and each trait update costs ~0.1-0.2 ms in the kernel (../shared/DESIGN.md),
#: so one message per changed widget at 10 Hz keeps a 20-stage panel under ~300 msg/s.
REFRESH = 0.1
#: Chart period: 3 Hz. A PNG frame costs ~25 ms to render (in a thread).
CHART_REFRESH = 1 / 3


class Monitor:
    """Live panel for a :class:`~asyncpipe.RunHandle`: header, stage rows, errors, buttons, charts.

    ``charts=False`` leaves out the matplotlib charts. ``sleep`` replaces
    ``asyncio.sleep`` for the timer (tests). Counters for tests and benchmarks:
    ``refreshes``, ``refresh_seconds`` (total time spent in :meth:`refresh`),
    ``chart_frames``.
    """

    def __init__(
        self,
        handle: Any,
        *,
        charts: bool = True,
        refresh: float = REFRESH,
        chart_refresh: float = CHART_REFRESH,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        import ipywidgets as w

        if getattr(handle, "metrics", None) is None:
            raise ValueError("This run has no metrics to monitor: it was started with monitor=False.")
        self.handle = handle
        self._refresh_period = refresh
        self._chart_period = chart_refresh
        self._sleep = sleep or asyncio.sleep
        plan = handle.pipeline.plan
        self._stage_names = list(plan.names)
        self._plan = plan
        self.refreshes = 0
        self.refresh_seconds = 0.0
        self.chart_frames = 0
        self.final = False
        self._last_chart = -1e9
        self._failures_seen: tuple[int, Any] = (-1, None)
        self._display: Any = None
        self._shown_in: int | None = None
        self._timer: asyncio.Task[None] | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._rendering = False
        self._chart_task: asyncio.Task[None] | None = None

        self.header = w.HTML(layout=w.Layout(width="100%"))
        self.pause_button = w.Button(description="Pause", icon="pause", layout=w.Layout(width="95px"))
        self.resume_button = w.Button(description="Resume", icon="play", disabled=True,
                                      layout=w.Layout(width="95px"))
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="danger",
                                      layout=w.Layout(width="95px"))
        self.pause_button.on_click(lambda _: self._control("pause"))
        self.resume_button.on_click(lambda _: self._control("resume"))
        self.cancel_button.on_click(lambda _: self._control("cancel"))
        self.rows = {name: StageRow(name) for name in self._stage_names}
        self.errors = w.HTML()
        self.chart = w.Image(format="png", layout=w.Layout(width="100%", max_width="900px"))
        self.charts = None
        if charts:
            from ._charts import LiveCharts

            self.charts = LiveCharts(self._stage_names)
        buttons = w.HBox([self.pause_button, self.resume_button, self.cancel_button])
        children: list[Any] = [self.header, buttons, *(r.widget for r in self.rows.values()), self.errors]
        if self.charts is not None:
            children.append(self.chart)
        self.widget = w.VBox(children, layout=w.Layout(border="1px solid #ddd", padding="6px"))
        self.widget.add_class("asyncpipe-monitor")

        self._unsubscribe = handle.bus.subscribe(self._on_event)
        add_hook = getattr(handle, "add_await_hook", None)
        if add_hook is not None:  # so a plain ``await handle`` re-sends the final state too
            add_hook(self.repaint)
        if handle.done():
            self._paint_final_sync()
        else:
            self.refresh()
            self._start_timer()

    # -- lifecycle ---------------------------------------------------------------------
    def _start_timer(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (plain IPython): the panel is painted once the run finishes
        self._timer = loop.create_task(self._tick(), name="asyncpipe:monitor")

    async def _tick(self) -> None:
        while not self.final:
            await self._sleep(self._refresh_period)
            if self.final:
                return
            self.refresh()
            now = time.monotonic()
            due = now - self._last_chart >= self._chart_period
            if self.charts is not None and not self._rendering and due:
                # A frame takes ~50-150 ms in its thread: render beside the timer, not in it,
                # so widget refreshes keep their 10 Hz.
                self._last_chart = now
                self._rendering = True
                self._chart_task = asyncio.get_running_loop().create_task(
                    self._render_chart(), name="asyncpipe:monitor-chart")

    def _on_event(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            self._schedule_finish()

    def _schedule_finish(self) -> None:
        if self._finishing is not None or self.final:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._paint_final_sync()
            return
        self._finishing = loop.create_task(self._finish(), name="asyncpipe:monitor-final")

    async def _finish(self) -> None:
        # Let the run task finish too, so status and counters are the final ones.
        with contextlib.suppress(BaseException):
            await asyncio.wait([self.handle.task], timeout=5.0)
        self.final = True
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self.refresh()
        if self.charts is not None:
            if self._chart_task is not None:
                with contextlib.suppress(BaseException):
                    await self._chart_task
            if self.handle.progress is not None:
                self.charts.record(self.handle.progress, force=True)
            await self._render_chart(record=False, final=True)
        self._unsubscribe()
        if self._display is not None:
            self._display.update(self._repr_mimebundle_(), raw=True)

    def _paint_final_sync(self) -> None:
        """Final paint without a loop (a run that ended on another loop, or plain IPython)."""
        self.final = True
        self.refresh()
        snap = self.handle.progress
        if self.charts is not None and snap is not None:
            self.charts.record(snap, force=True)
            self._set_image(self.charts.render(self.charts.frame(), relayout=True))
        self._unsubscribe()

    async def wait(self) -> Any:
        """Await the run, then paint and re-send the final state from the awaiting cell.

        Returns the :class:`~asyncpipe.RunResult`; raises like awaiting the handle.
        Headless runners (nbclient, nbval) drop widget updates sent by a background
        task during a later cell, so the re-send is what a saved notebook shows.
        """
        try:
            return await self.handle
        finally:
            await self.repaint()

    async def repaint(self) -> None:
        """Wait for the final paint (if the run is over) and re-send every widget's state."""
        if self.handle.done():
            self._schedule_finish()
            if self._finishing is not None:
                await asyncio.shield(self._finishing)
        self.refresh()
        for widget in self._all_widgets():
            widget.send_state()
        if self._display is not None:
            self._display.update(self._repr_mimebundle_(), raw=True)

    def _all_widgets(self) -> list[Any]:
        out = [self.header, self.pause_button, self.resume_button, self.cancel_button, self.errors,
               self.chart]
        for row in self.rows.values():
            out.extend(row.widgets)
        return out

    def close(self) -> None:
        """Stop the timer and close every widget (frees their comms)."""
        self.final = True
        if self._timer is not None:
            self._timer.cancel()
        self._unsubscribe()
        for widget in [*self._all_widgets(), self.widget]:
            widget.close()

    # -- painting ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Paint the current snapshot: O(stages), only changed traits are sent."""
        t0 = time.perf_counter()
        snap = self.handle.progress
        status = self.handle.status
        if snap is None:
            return
        final = self.final or self.handle.done()
        totals = estimated_totals(self._plan, snap)
        by_name = {s.name: s for s in snap.stages}
        for name, row in self.rows.items():
            s = by_name.get(name)
            if s is not None:
                row.update(s, totals.get(name), status=status, final=final)
        _assign(self.header, "value", headline_html(snap, status, self.handle.pipeline.name))
        key = (snap.n_failures, snap.recent_failures[-1] if snap.recent_failures else None)
        if key != self._failures_seen:
            self._failures_seen = key
            _assign(self.errors, "value", failures_html(snap))
        running = not final
        _assign(self.pause_button, "disabled", not running or status == "paused")
        _assign(self.resume_button, "disabled", not running or status != "paused")
        _assign(self.cancel_button, "disabled", not running)
        self.refreshes += 1
        self.refresh_seconds += time.perf_counter() - t0

    async def _render_chart(self, *, record: bool = True, final: bool = False) -> None:
        charts = self.charts
        if charts is None:
            return
        snap = self.handle.progress
        if record and snap is not None:
            charts.record(snap)
        if charts.n_points == 0:
            self._rendering = False
            return
        self._rendering = True
        try:
            png = await self._render(charts, final)
        except Exception:  # a chart must never break the run or the panel
            _log.exception("rendering the monitor charts failed")
            return
        finally:
            self._rendering = False
        self._set_image(png)

    async def _render(self, charts: Any, final: bool) -> bytes:
        """A PNG frame, drawn in the chart helper process (see ``_render``), else a thread."""
        from . import _render

        pool = _render.renderer()
        frame = charts.frame()
        if pool is not None:
            try:
                fut = pool.submit(_render.render_frame, tuple(self._stage_names), frame, final)
                return await asyncio.wrap_future(fut)
            except Exception:
                _log.warning("the chart helper process failed; rendering in a thread", exc_info=True)
                _render.discard()
        return await asyncio.to_thread(charts.render, frame, relayout=final)

    def _set_image(self, png: bytes) -> None:
        self.chart.value = png
        self.chart_frames += 1

    def _control(self, action: str) -> None:
        getattr(self.handle, action)()
        self.refresh()

    # -- display -----------------------------------------------------------------------
    def show(self) -> Monitor:
        """Display the panel (a display id lets the final state replace the text fallback)."""
        from IPython.display import display

        self._display = display(self._repr_mimebundle_(), raw=True, display_id=True)
        self._shown_in = _execution_count()
        return self

    def _ipython_display_(self) -> None:
        # monitor(handle) as a cell's last expression: already shown by this cell.
        if self._shown_in is None or self._shown_in != _execution_count():
            self.show()

    def __await__(self) -> Any:
        return self.wait().__await__()

    def text(self) -> str:
        snap = self.handle.progress
        return f"<Monitor {self.handle.pipeline.name!r}: {self.handle.status}>" if snap is None else str(snap)

    def _repr_html_(self) -> str:
        snap = self.handle.progress
        return "" if snap is None else snap._repr_html_()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_() or {})
        data["text/plain"] = self.text()
        data["text/html"] = self._repr_html_()
        return data

    def __repr__(self) -> str:
        return f"<Monitor {self.handle.pipeline.name!r}: {self.handle.status}>"


def _execution_count() -> int | None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


def _assign(widget: Any, trait: str, value: Any) -> None:
    if getattr(widget, trait) != value:
        setattr(widget, trait, value)


def monitor(handle: Any, *, charts: bool = True, display: bool = True) -> Monitor:
    """Show the live monitor panel for a running (or finished) handle; returns the :class:`Monitor`.

    Works for handles from ``pipe.start(...)`` and for the ``%%pipeline`` handle.
    Await the monitor (rather than the handle) in a later cell, so the final state
    is re-sent from that cell, which is what a notebook executed headless saves::

        handle = pipe.start(urls)
        mon = asyncpipe.monitor(handle)
        ...
        result = await mon
    """
    existing = getattr(handle, "monitor", None)
    inner = getattr(handle, "handle", handle)
    mon = existing if isinstance(existing, Monitor) else Monitor(inner, charts=charts)
    if display:
        mon.show()
    return mon


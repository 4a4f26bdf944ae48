"""Schedules: run a pipeline every N minutes or on a cron expression, on the kernel's loop.

A :class:`Schedule` is a task on the running loop that sleeps until the next
due time and starts a run (``pipe.start``), so it lives exactly as long as the
kernel and never blocks a cell. If the previous scheduled run is still going
when the next one is due, that occurrence is recorded as ``skipped`` instead
of piling up runs. Cron expressions use croniter in the machine's local time
zone. Every schedule is listed by :func:`schedules` until cancelled; :func:`schedule`
has an example.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._clock import Clock, SystemClock

__all__ = ["Schedule", "ScheduledRun", "schedule", "schedules"]

_log = logging.getLogger("asyncpipe.schedule")

#: Scheduled runs remembered per schedule (older ones are dropped from the history).
MAX_HISTORY = 200

_ACTIVE: list[Schedule] = []


@dataclass
class ScheduledRun:
    """One occurrence of a schedule. ``status``: running, succeeded, failed, cancelled or skipped."""

    due: float
    started_at: float | None
    status: str
    run_id: str = ""
    finished_at: float | None = None
    error: str = ""
    handle: Any = None

    @property
    def due_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.due).astimezone()


class Schedule:
    """Runs ``pipe`` on a timer; see :func:`schedule`."""

    def __init__(
        self,
        pipe: Any,
        *,
        inputs: Any = None,
        every: float | dt.timedelta | None = None,
        cron: str | None = None,
        run_options: dict[str, Any] | None = None,
        clock: Clock | None = None,
        on_change: Callable[[Schedule], None] | None = None,
        on_start: Callable[[Any], None] | None = None,
    ) -> None:
        if (every is None) == (cron is None):
            raise ValueError("Give exactly one of every=<minutes> or cron='<expression>'.")
        if every is not None:
            minutes = every.total_seconds() / 60 if isinstance(every, dt.timedelta) else float(every)
            if not minutes > 0:
                raise ValueError(f"every= must be a positive number of minutes; got {every!r}.")
            self.interval: float | None = minutes * 60.0
        else:
            from croniter import croniter

            if not croniter.is_valid(cron):
                raise ValueError(
                    f"Invalid cron expression {cron!r}: use five fields 'minute hour day month weekday', "
                    "e.g. '*/15 * * * *' (every 15 minutes) or '0 6 * * 1-5' (6:00 on weekdays)."
                )
            self.interval = None
        self.pipe = pipe
        self.inputs = inputs
        self.cron = cron
        self.run_options = dict(run_options or {})
        self.clock = clock or SystemClock()
        self.history: list[ScheduledRun] = []
        self.next_run: float | None = None
        self.active = True
        self._listeners: list[Callable[[Schedule], None]] = [on_change] if on_change else []
        self._on_start = on_start
        self._last_due: float | None = None
        loop = asyncio.get_running_loop()  # a schedule lives on the kernel's (running) loop
        self._task = loop.create_task(self._run(), name=f"asyncpipe:schedule:{pipe.name}")
        _ACTIVE.append(self)

    # -- timing ------------------------------------------------------------------------
    def due_after(self, t: float) -> float:
        """The first due time strictly after wall time ``t``."""
        if self.interval is not None:
            base = self._last_due if self._last_due is not None else t
            due = base + self.interval
            while due <= t:
                due += self.interval
            return due
        from croniter import croniter

        start = dt.datetime.fromtimestamp(t).astimezone()
        return float(croniter(self.cron, start).get_next(float))

    @property
    def next_run_at(self) -> dt.datetime | None:
        return None if self.next_run is None else dt.datetime.fromtimestamp(self.next_run).astimezone()

    @property
    def description(self) -> str:
        if self.interval is not None:
            return f"every {self.interval / 60:g} min"
        return f"cron '{self.cron}'"

    async def _run(self) -> None:
        try:
            while self.active:
                now = self.clock.time()
                due = self.due_after(now)
                self.next_run = due
                self._changed()
                await self.clock.sleep(max(0.0, due - now))
                self._last_due = due
                self._launch(due)
        except asyncio.CancelledError:
            pass
        finally:
            self.next_run = None
            self._changed()

    def _launch(self, due: float) -> None:
        prev = self.history[-1] if self.history else None
        if prev is not None and prev.status == "running":
            self._record(ScheduledRun(due, None, "skipped", error="previous run still running"))
            return
        try:
            handle = self.pipe.start(self.inputs, **self.run_options)
        except Exception as exc:
            _log.exception("scheduled run of %r could not start", self.pipe.name)
            self._record(ScheduledRun(due, self.clock.time(), "failed", error=f"{type(exc).__name__}: {exc}"))
            return
        rec = ScheduledRun(due, self.clock.time(), "running", run_id=handle.run_id, handle=handle)
        self._record(rec)
        handle.task.add_done_callback(lambda _t: self._finished(rec))
        if self._on_start is not None:
            try:
                self._on_start(handle)
            except Exception:
                _log.exception("schedule on_start callback failed")

    def _finished(self, rec: ScheduledRun) -> None:
        task = rec.handle.task
        rec.finished_at = self.clock.time()
        rec.status = rec.handle.status
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            rec.status, rec.error = "failed", f"{type(exc).__name__}: {exc}"
        self._changed()

    def _record(self, rec: ScheduledRun) -> None:
        self.history.append(rec)
        del self.history[:-MAX_HISTORY]
        self._changed()

    def _changed(self) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(self)
            except Exception:
                _log.exception("schedule listener failed")

    def subscribe(self, listener: Callable[[Schedule], None]) -> Callable[[], None]:
        """Call ``listener(schedule)`` whenever the next run time or the history changes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- control -----------------------------------------------------------------------
    def cancel(self, *, cancel_running: bool = False) -> None:
        """Stop scheduling (and, with ``cancel_running``, cancel a run in progress)."""
        self.active = False
        self._task.cancel()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if cancel_running:
            for rec in self.history:
                if rec.status == "running" and rec.handle is not None:
                    rec.handle.cancel()

    def __repr__(self) -> str:
        nxt = self.next_run_at
        when = f", next {nxt:%Y-%m-%d %H:%M:%S}" if nxt is not None and self.active else ""
        state = "active" if self.active else "cancelled"
        return f"<Schedule {self.pipe.name!r} {self.description}: {state}{when}, {len(self.history)} runs>"


def schedule(
    pipe: Any,
    *,
    inputs: Any = None,
    every: float | dt.timedelta | None = None,
    cron: str | None = None,
    clock: Clock | None = None,
    **run_options: Any,
) -> Schedule:
    """Run ``pipe`` every ``every`` minutes or on a ``cron`` expression, on the running loop.

    ``run_options`` go to ``pipe.start`` (``params``, ``cache``...). Returns the
    :class:`Schedule`; ``schedule.cancel()`` stops it, :func:`schedules` lists them.

    >>> import asyncio, tempfile
    >>> import asyncpipe as ap
    >>> def numbers(n):
    ...     return n
    >>> pipe = ap.Pipeline([numbers], name="nums", cache=False, workdir=tempfile.mkdtemp())
    >>> async def main():
    ...     clock = ap.FakeClock()  # the example fast-forwards a minute instead of waiting
    ...     sched = ap.schedule(pipe, inputs=[1, 2], every=1, clock=clock)
    ...     await clock.run_for(61, step=1)  # one minute passes: one run starts
    ...     result = await sched.history[0].handle
    ...     sched.cancel()
    ...     return sched.description, [r.status for r in sched.history], result["numbers"]
    >>> asyncio.run(main())
    ('every 1 min', ['succeeded'], [1, 2])
    """
    return Schedule(pipe, inputs=inputs, every=every, cron=cron, clock=clock, run_options=run_options)


def schedules() -> list[Schedule]:
    """The active schedules of this kernel, oldest first.

    >>> import asyncio, tempfile
    >>> import asyncpipe as ap
    >>> def numbers(n):
    ...     return n
    >>> pipe = ap.Pipeline([numbers], name="nums", cache=False, workdir=tempfile.mkdtemp())
    >>> async def main():
    ...     hourly = ap.schedule(pipe, inputs=[1], every=60)
    ...     mornings = ap.schedule(pipe, inputs=[1], cron="0 6 * * 1-5")  # 6:00 on weekdays
    ...     listed = [s.description for s in ap.schedules() if s.pipe is pipe]
    ...     hourly.cancel()
    ...     left = [s.description for s in ap.schedules() if s.pipe is pipe]
    ...     mornings.cancel()
    ...     return listed, left
    >>> asyncio.run(main())
    (['every 60 min', "cron '0 6 * * 1-5'"], ["cron '0 6 * * 1-5'"])
    """
    return list(_ACTIVE)

"""Terminal progress for scripts and the CLI: a live rich display on a TTY, log lines otherwise.

:class:`TerminalProgress` reads :meth:`Metrics.snapshot` on its own timer and
never touches the engine. On a terminal it draws one line per stage (bar,
counts, failures, rate, ETA) with ``rich``; the drawing runs in a worker
thread, since writing to a slow terminal may block. When the stream is not a
TTY (CI, files, pipes, notebooks) it writes plain ``logging`` INFO lines to the
``asyncpipe.progress`` logger every ``log_every`` seconds instead.
:meth:`~TerminalProgress.close` always shows the final state.

Typical use, next to a run (the CLI does this)::

    progress = TerminalProgress(metrics)
    bus.subscribe(progress)                     # stops it when the run finishes
    task = asyncio.create_task(progress.run())
    ...                                         # run the pipeline
    progress.close()                            # final state, also on failure
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import IO, Any

from ._clock import Clock
from ._events import Event, RunFinished
from ._metrics import Metrics
from ._snapshot import MetricsSnapshot, fmt_seconds, stage_line

__all__ = ["TerminalProgress"]

_log = logging.getLogger("asyncpipe.progress")
#: Width of a stage's bar in characters.
BAR_WIDTH = 28


class TerminalProgress:
    """Shows a run's progress from a :class:`Metrics`; subscribe it to see the run end promptly.

    ``tty`` forces the live display on or off (default: ``stream.isatty()``);
    ``refresh`` is the redraw period, ``log_every`` the period of log lines.

    >>> import io
    >>> from asyncpipe._clock import FakeClock
    >>> progress = TerminalProgress(Metrics(clock=FakeClock()), stream=io.StringIO())
    >>> progress.tty
    False
    """

    def __init__(self, metrics: Metrics, *, stream: IO[str] | None = None, refresh: float = 0.25,
                 log_every: float = 5.0, tty: bool | None = None, clock: Clock | None = None,
                 logger: logging.Logger | None = None) -> None:
        if refresh <= 0 or log_every <= 0:
            raise ValueError(f"refresh and log_every must be > 0, got {refresh!r}, {log_every!r}")
        self.metrics = metrics
        self.stream = stream if stream is not None else sys.stdout
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if callable(isatty) else False
        self.tty = tty
        self.refresh = refresh
        self.log_every = log_every
        self.logger = logger if logger is not None else _log
        self._clock = clock if clock is not None else metrics.clock
        self._finished = False
        self._closed = False
        self._lock = threading.Lock()
        self._live: Any = None

    def __call__(self, event: Event) -> None:
        """Event subscriber: notes the end of the run so :meth:`run` returns."""
        if isinstance(event, RunFinished):
            self._finished = True

    async def run(self) -> None:
        """Redraw (TTY) or log (otherwise) until the run finishes or the task is cancelled."""
        clock = self._clock
        next_log = clock.now() + self.log_every
        try:
            while not (self._finished or self._closed):
                snap = self.metrics.snapshot()
                if self.tty:
                    await asyncio.to_thread(self._draw, snap)
                elif clock.now() >= next_log - 1e-9:
                    self._log_lines(snap)
                    next_log = clock.now() + self.log_every
                await clock.sleep(self.refresh)
        finally:
            self.close()

    def close(self) -> None:
        """Show the final state once (idempotent) and release the terminal."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        snap = self.metrics.snapshot()
        if not self.tty:
            self._log_lines(snap)
            return
        with self._lock:
            if self._live is None:
                self._console().print(self._render(snap))
            else:
                self._live.update(self._render(snap), refresh=True)
                self._live.stop()
                self._live = None

    # -- plain log lines ------------------------------------------------------------------
    def _log_lines(self, snap: MetricsSnapshot) -> None:
        log = self.logger
        if not log.isEnabledFor(logging.INFO):
            return
        head = {"run_id": snap.run_id or "-", "stage": "-", "partition": "-"}
        fails = f", {snap.n_failures} failures" if snap.n_failures else ""
        cpu = "-" if snap.cpu_percent is None else f"{snap.cpu_percent:.0f}%"
        log.info("run %s %s%s: elapsed %s, ETA %s, %.1f items/s, CPU %s", snap.run_id or "-", snap.status,
                 fails, fmt_seconds(snap.elapsed), fmt_seconds(snap.eta), snap.items_per_s, cpu, extra=head)
        for s in snap.stages:
            log.info("%s", stage_line(s), extra={**head, "stage": s.name})

    # -- rich display (runs in a worker thread) ----------------------------------------------
    def _console(self) -> Any:
        from rich.console import Console

        return Console(file=self.stream, force_terminal=True, highlight=False)

    def _draw(self, snap: MetricsSnapshot) -> None:
        from rich.live import Live

        with self._lock:
            if self._closed:
                return
            if self._live is None:
                self._live = Live(console=self._console(), auto_refresh=False, redirect_stdout=False,
                                  redirect_stderr=False, transient=False)
                self._live.start()
            self._live.update(self._render(snap), refresh=True)

    def _render(self, snap: MetricsSnapshot) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        cpu = "-" if snap.cpu_percent is None else f"{snap.cpu_percent:.0f}%"
        head = Text.assemble(
            (f"{snap.pipeline or 'run'} ", "bold"), (f"{snap.run_id} ", "dim"),
            (snap.status, _STATUS_STYLE.get(snap.status, "")),
            f"  {fmt_seconds(snap.elapsed)} elapsed, ETA {fmt_seconds(snap.eta)}, "
            f"{snap.items_per_s:,.1f} items/s, CPU {cpu}, loop lag max {fmt_seconds(snap.worst_loop_lag)}",
            (f"  {snap.n_failures} failures" if snap.n_failures else "", "red"))
        grid = Table.grid(padding=(0, 1))
        for s in snap.stages:
            ended = s.done + s.failed
            bar = ProgressBar(total=s.total or None, completed=ended, width=BAR_WIDTH,
                              pulse=not s.total and snap.status == "running")
            grid.add_row(
                Text(s.name, style="bold"), bar,
                f"{s.done}/{'?' if s.total is None else s.total}",
                Text(f"{s.failed} failed" if s.failed else "", style="red"),
                Text(f"{s.cached} cached" if s.cached else "", style="cyan"),
                f"{s.running} running", f"{s.throughput:,.1f}/s", f"ETA {fmt_seconds(s.eta)}")
        return Group(head, grid)


_STATUS_STYLE = {"running": "yellow", "succeeded": "green", "failed": "red", "cancelled": "magenta"}

"""The handle ``%%pipeline NAME`` binds: a :class:`~asyncpipe.RunHandle` plus its monitor.

Everything a ``RunHandle`` has is delegated (``cancel()``, ``pause()``,
``status``, ``progress``, ``metrics``, ``result()``...). Added here:

- awaiting it re-sends the monitor's final state from the awaiting cell (what
  a notebook executed by nbclient/nbval and saved to disk then shows);
- :meth:`show` displays the panel again (or a text/HTML summary if it has none);
- ``outputs`` / ``failures`` / ``summary()`` read the result once the run is over;
- its ``repr`` is a plain-text and HTML summary, for places widgets cannot render.

>>> import asyncio, tempfile, asyncpipe as ap
>>> def numbers(n):
...     return n * 10
>>> async def main():
...     pipe = ap.Pipeline([numbers], name="demo", cache=False, workdir=tempfile.mkdtemp())
...     run = NotebookRun(pipe.start(range(3)))
...     result = await run
...     return run.outputs["numbers"], run.status
>>> asyncio.run(main())
([0, 10, 20], 'succeeded')
"""

from __future__ import annotations

import html
from typing import Any

from .._exceptions import AsyncpipeError

__all__ = ["NotebookRun"]


class NotebookRun:
    """A run started by ``%%pipeline`` (or :func:`asyncpipe.panel`), with its monitor."""

    def __init__(self, handle: Any, monitor: Any = None) -> None:
        self.handle = handle
        self.monitor = monitor

    def __getattr__(self, name: str) -> Any:
        if name in ("handle", "monitor"):
            raise AttributeError(name)
        return getattr(self.handle, name)

    def __await__(self) -> Any:
        return self._wait().__await__()

    async def _wait(self) -> Any:
        if self.monitor is not None:
            return await self.monitor.wait()
        return await self.handle

    async def wait(self) -> Any:
        """Same as ``await handle``: the :class:`~asyncpipe.RunResult` once done."""
        return await self._wait()

    async def show(self) -> NotebookRun:
        """Re-display the final state from this cell (await it: ``await run.show()``)."""
        if self.monitor is not None:
            await self.monitor.repaint()
            self.monitor.show()
        else:
            from IPython.display import display

            display(self)
        return self

    # -- results -----------------------------------------------------------------------
    @property
    def outputs(self) -> dict[str, Any]:
        """``{stage: output}`` for the kept stages (the final ones by default), once done."""
        result = self.result()
        return {stage: result.output(stage) for stage in result.outputs}

    @property
    def failures(self) -> Any:
        """The failed partitions: the dead-letter DataFrame once done, else the latest seen live."""
        if self.handle.done() and not self.handle.task.cancelled() and self.handle.task.exception() is None:
            return self.handle.result().failures
        snap = self.handle.progress
        import pandas as pd

        rows = [] if snap is None else [
            (f.stage, str(getattr(f.partition, "label", f.partition)), f.attempts, f.error_type, f.message,
             f.traceback) for f in snap.recent_failures]
        columns = ["stage", "partition", "attempts", "error_type", "message", "traceback"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self) -> str:
        """The deterministic text summary once done (for CI); the live headline before."""
        if self.handle.done():
            try:
                return self.handle.result().summary()
            except BaseException as exc:
                return f"run {self.handle.pipeline.name}: {self.handle.status} ({type(exc).__name__}: {exc})"
        snap = self.handle.progress
        return f"run {self.handle.pipeline.name}: {self.handle.status}" if snap is None else str(snap)

    def result(self) -> Any:
        return self.handle.result()

    # -- display -----------------------------------------------------------------------
    def __repr__(self) -> str:
        head = f"<pipeline run {self.handle.pipeline.name!r} {self.handle.run_id}: {self.handle.status}>"
        return head + "\n" + self.summary()

    def _repr_html_(self) -> str:
        if self.handle.done():
            try:
                return self.handle.result()._repr_html_()
            except (AsyncpipeError, Exception):
                pass
        snap = self.handle.progress
        head = html.escape(f"{self.handle.pipeline.name} {self.handle.run_id}: {self.handle.status}")
        return f"<div><b>{head}</b>{'' if snap is None else snap._repr_html_()}</div>"

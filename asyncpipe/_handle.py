"""RunHandle: a run going on in the background, as the caller sees it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._exceptions import AsyncpipeError, RunCancelled

if TYPE_CHECKING:
    from ._result import RunResult
    from ._runner import _Session

__all__ = ["RunHandle"]


class RunHandle:
    """A run going on in the background: awaitable, cancellable, observable.

    ``await handle`` returns the :class:`RunResult` (raises :class:`RunCancelled`
    if it was cancelled). ``handle.progress`` is a live metrics snapshot.

    >>> import asyncio, tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... async def numbers(n):
    ...     return n
    >>> @ap.stage
    ... async def double(numbers):
    ...     return 2 * numbers
    >>> pipe = ap.Pipeline([numbers, double], cache=False, workdir=tempfile.mkdtemp())
    >>> async def main():
    ...     handle = pipe.start(range(10))  # returns at once: the run is a task on this loop
    ...     result = await handle
    ...     return handle.status, handle.counts()["double"], result["double"][:3]
    >>> asyncio.run(main())
    ('succeeded', {'done': 10, 'cached': 0, 'failed': 0, 'running': 0}, [0, 2, 4])

    Cancelling stops every stage; awaiting the handle then raises :class:`RunCancelled`:

    >>> @ap.stage
    ... async def stuck(numbers):
    ...     await asyncio.Event().wait()
    >>> async def cancel_it():
    ...     handle = ap.Pipeline([numbers, stuck], cache=False, workdir=tempfile.mkdtemp()).start(range(3))
    ...     await asyncio.sleep(0.01)
    ...     handle.cancel()
    ...     try:
    ...         await handle
    ...     except ap.RunCancelled:
    ...         return handle.status
    >>> asyncio.run(cancel_it())
    'cancelled'
    """

    def __init__(self, session: _Session, task: asyncio.Task[RunResult]) -> None:
        self._session = session
        self.task = task
        self.bus = session.bus
        self.metrics = session.metrics
        self.pipeline = session.pipe
        self._await_hooks: list[Callable[[], Any]] = []

    @property
    def run_id(self) -> str:
        assert self._session.run is not None
        return self._session.run.run_id

    @property
    def status(self) -> str:
        if self.task.cancelled():
            return "cancelled"
        run = self._session.run
        if run is not None and run.paused and not self.task.done():
            return "paused"
        return run.status if run is not None else "pending"

    def done(self) -> bool:
        return self.task.done()

    def cancel(self) -> bool:
        """Cancel the run: every stage stops within about a second."""
        return self.task.cancel()

    def pause(self) -> None:
        """Stop taking new partitions (those in flight finish)."""
        assert self._session.run is not None
        self._session.run.pause()

    def resume(self) -> None:
        assert self._session.run is not None
        self._session.run.resume()

    @property
    def progress(self) -> Any:
        """The latest metrics snapshot (None with ``monitor=False``)."""
        return None if self.metrics is None else self.metrics.snapshot()

    def counts(self) -> dict[str, dict[str, int]]:
        """Live per-stage counters straight from the engine."""
        run = self._session.run
        assert run is not None
        return {
            name: {"done": rt.done, "cached": rt.cached, "failed": rt.failed, "running": rt.running}
            for name, rt in run.stages.items()
        }

    def set_concurrency(self, stage: str, n: Any, reason: str = "user") -> None:
        """Change a stage's concurrency now (an int, or "adaptive"), without restarting."""
        assert self._session.run is not None
        self._session.run.ensure_limiter(stage).set_concurrency(n, reason=reason)

    def set_rate(self, stage: str, rate: Any, reason: str = "user") -> None:
        """Change a stage's rate limit now ("100/s", "30/min", a number, or None = off)."""
        assert self._session.run is not None
        self._session.run.ensure_limiter(stage).set_rate(rate, reason=reason)

    def limits(self) -> dict[str, dict[str, Any]]:
        """Current concurrency limit and rate per stage."""
        run = self._session.run
        assert run is not None
        return {
            name: {
                "concurrency": int(rt.limiter.limit) if rt.limiter else rt.conc,
                "rate": rt.limiter.rate if rt.limiter else None,
            }
            for name, rt in run.stages.items()
        }

    def result(self) -> RunResult:
        """The result once done (raises if the run failed, was cancelled, or is still going)."""
        if not self.task.done():
            raise AsyncpipeError(f"Run {self.run_id} is still {self.status}; await the handle first.")
        if self.task.cancelled():
            raise RunCancelled(f"Run {self.run_id} was cancelled.")
        return self.task.result()

    def __await__(self) -> Any:
        return self._wait().__await__()

    def add_await_hook(self, hook: Callable[[], Any]) -> None:
        """Run ``await hook()`` in the task that awaits this handle, once the run is done.

        Front ends use it to re-send their final state from the awaiting cell, so a
        notebook executed headless (nbclient, nbval) saves final values.
        """
        self._await_hooks.append(hook)

    async def _wait(self) -> RunResult:
        try:
            return await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.task.cancelled():
                raise RunCancelled(f"Run {self.run_id} was cancelled.") from None
            raise
        finally:
            if self.task.done():
                for hook in tuple(self._await_hooks):
                    try:
                        await hook()
                    except Exception:
                        logging.getLogger("asyncpipe").exception("a handle await hook failed")

    def __repr__(self) -> str:
        return f"<RunHandle {self.pipeline.name!r} {self.run_id}: {self.status}>"

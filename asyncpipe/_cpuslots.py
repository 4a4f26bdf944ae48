"""CPU slots: one per core, shared by every thread that burns CPU for asyncpipe.

Stage calls that hold the GIL ("auto" stages found CPU-bound, and their probe calls)
and cache writes (Parquet encoding) each take a slot *in their worker thread* for the
duration of the call. More CPU-burning threads than cores only take turns at the GIL
and the cores — and starve the event loop, which needs the GIL to answer a click.
Slots are taken and given back between threads directly, never through the event
loop, so a busy loop does not slow the hand-offs::

    >>> with slot():
    ...     pass
    >>> call_in_slot(sum, ([1, 2, 3],), {})
    6

The number of slots is :data:`SLOTS` (``os.cpu_count()``); :func:`configure` changes it
(tests, or to leave cores to other work).

Slots are a soft limit: a call that waited :data:`MAX_WAIT` seconds for one runs
anyway. Otherwise a stage call that holds a slot while it waits for other slotted work
(a pipeline run inside a stage, say) could wait forever.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SLOTS", "call_in_slot", "configure", "slot"]

#: Slots in the process: one per core.
SLOTS = max(1, os.cpu_count() or 1)
#: Seconds a call waits for a slot before it runs without one.
MAX_WAIT = 2.0
_sem = threading.Semaphore(SLOTS)


def configure(n: int) -> None:
    """Use ``n`` slots from now on (calls holding a slot of the old set finish normally)."""
    global SLOTS, _sem
    if n < 1:
        raise ValueError(f"CPU slots must be >= 1, got {n!r}")
    SLOTS, _sem = n, threading.Semaphore(n)


@contextlib.contextmanager
def slot() -> Iterator[None]:
    """Hold one CPU slot (waiting up to :data:`MAX_WAIT` s for one). Call in a worker thread."""
    sem = _sem
    got = sem.acquire(timeout=MAX_WAIT)
    try:
        yield
    finally:
        if got:
            sem.release()


def call_in_slot(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` holding a CPU slot (for ``executor.submit``)."""
    with slot():
        return fn(*args, **kwargs)

"""Chart frames rendered in a helper process, so matplotlib never holds the kernel's GIL.

Rendering a frame is ~60-120 ms of matplotlib and PNG encoding, much of it in C code that
keeps the GIL: done in a thread, it delayed the kernel's event loop (widget clicks, other
cells' awaits) by up to 65-210 ms per frame (measured ad hoc with bench_loopstall.py's
panel case before frames moved here; the benchmark now measures this helper only).
One helper process per kernel owns the figures instead; the kernel sends the few hundred
points of a frame and gets PNG bytes back. If the helper cannot start, frames are
rendered in a thread as before.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

__all__ = ["render_frame", "renderer"]

_log = logging.getLogger("asyncpipe.notebook")
_pool: Any = None
_failed = False
_lock = threading.Lock()
_figures: dict[tuple[str, ...], Any] = {}  # in the helper process: one figure per stage list
#: figures the helper keeps (the least recently used go first)
MAX_FIGURES = 8


def renderer() -> Any:
    """The shared helper process pool (one worker), or None when it is unavailable."""
    global _pool, _failed
    with _lock:
        if _pool is None and not _failed:
            try:
                from loky import ProcessPoolExecutor

                # idle for 10 minutes: the helper exits; the next frame starts a new one
                _pool = ProcessPoolExecutor(max_workers=1, timeout=600)
                atexit.register(_shutdown)  # joined before interpreter teardown
            except Exception:  # pragma: no cover - restricted environments
                _log.warning("no chart helper process; rendering charts in a thread", exc_info=True)
                _failed = True
        return _pool


def _shutdown() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, kill_workers=True)


def discard() -> None:
    """Forget a broken helper (and stop it): the next frames render in a thread."""
    global _pool, _failed
    with _lock:
        pool, _pool, _failed = _pool, None, True
    if pool is not None:
        pool.shutdown(wait=False, kill_workers=True)


def render_frame(stages: tuple[str, ...], frame: dict[str, Any], relayout: bool) -> bytes:
    """In the helper process: draw ``frame`` on this stage list's figure; PNG bytes."""
    charts = _figures.pop(stages, None)
    if charts is None:
        from ._charts import LiveCharts

        charts = LiveCharts(list(stages))
        while len(_figures) >= MAX_FIGURES:
            del _figures[next(iter(_figures))]
    _figures[stages] = charts  # most recently used last
    return bytes(charts.render(frame, relayout=relayout))

"""Keeping the cyclic garbage collector's full pauses out of runs.

A run shares the kernel's event loop; a full collection stops that loop for as long as
it takes to walk every tracked object. :class:`GcFreeze` is entered and exited by each
run (``freeze_gc=True``, the default).
"""

from __future__ import annotations

import gc
import threading
import time

__all__ = ["GC_MAX_FROZEN", "GC_THAW_DELAY", "RUN_GEN2_THRESHOLD", "GcFreeze"]

#: Young (generation 1) collections between full ones while a run is active: ~7M net
#: allocations at the default thresholds, against ~70k normally.
RUN_GEN2_THRESHOLD = 1000
#: Seconds without an active run before frozen objects go back to the collector.
GC_THAW_DELAY = 1.0
#: Seconds after which back-to-back runs stop extending a frozen period.
GC_MAX_FROZEN = 30.0


class GcFreeze:
    """Keep objects that were alive before a run out of the collector's scans during it.

    A full (generation 2) collection walks every tracked object: in a kernel with pandas,
    pyarrow and ipywidgets loaded that is ~0.5M objects and a 30-90 ms pause of the
    event loop (measured ad hoc under bench_loopstall.py's ticker), on top of whatever the
    run allocates. ``gc.freeze()`` moves the pre-existing objects to a permanent generation
    while runs are active (young collections only touch what the runs allocate).

    With the old objects frozen, CPython's rule that a full collection waits until the
    objects pending in the oldest generation reach 25% of those already there fires
    far too often (there are almost none there), so every ten young collections meant
    a full one: 8-32 ms pauses in a 20,000-item run. The oldest threshold is raised
    to :data:`RUN_GEN2_THRESHOLD` while the objects are frozen; young collections still run.

    Unfreezing makes the next collection a full one over everything (the 30-60 ms
    pause), so it is not done as a run ends — where it would stall whatever awaited the
    run — but once no run has been active for :data:`GC_THAW_DELAY` seconds, followed
    by that collection, in a timer thread. A run starting before then keeps the
    objects frozen — but not for more than :data:`GC_MAX_FROZEN` seconds of runs
    following each other with shorter gaps (a schedule, say): the run ending after
    that thaws at once, so cyclic garbage made between runs is still collected.
    """

    active = 0
    _frozen_since: float | None = None
    _thresholds: tuple[int, int, int] | None = None
    _thaw: threading.Timer | None = None
    _lock = threading.Lock()

    @classmethod
    def enter(cls) -> None:
        with cls._lock:
            if cls._thaw is not None:
                cls._thaw.cancel()
                cls._thaw = None
            if cls.active == 0:
                gc.freeze()
                if cls._frozen_since is None:
                    cls._frozen_since = time.monotonic()
                if cls._thresholds is None:
                    cls._thresholds = gc.get_threshold()
                    t0, t1, t2 = cls._thresholds
                    gc.set_threshold(t0, t1, max(t2, RUN_GEN2_THRESHOLD))
            cls.active += 1

    @classmethod
    def exit(cls) -> None:
        with cls._lock:
            cls.active -= 1
            if cls.active > 0:
                return
            frozen_for = time.monotonic() - (cls._frozen_since or 0.0)
            delay = GC_THAW_DELAY if frozen_for < GC_MAX_FROZEN else 0.0
            cls._thaw = threading.Timer(delay, cls._thaw_if_idle)
            cls._thaw.daemon = True
            cls._thaw.start()

    @classmethod
    def _thaw_if_idle(cls) -> None:
        with cls._lock:
            if cls.active or cls._thaw is not threading.current_thread():
                return  # a run started meanwhile (or a newer timer owns the thaw)
            cls._thaw = None
            cls._frozen_since = None
            if cls._thresholds is not None:
                gc.set_threshold(*cls._thresholds)
                cls._thresholds = None
            gc.unfreeze()
        if gc.isenabled():  # whoever turned the collector off collects when they choose
            gc.collect()

    @classmethod
    def wait_thawed(cls, timeout: float | None = None) -> bool:
        """Block until a pending thaw has run; False if it is still pending after ``timeout``."""
        timer = cls._thaw
        if timer is not None:
            timer.join(timeout)
        return cls._thaw is None

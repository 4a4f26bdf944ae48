"""Process executor: loky worker processes, functions shipped once per worker."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import cloudpickle
import xxhash

from .._exceptions import PickleWarning
from ._base import Executor
from ._worker import NeedFunction, call

_log = logging.getLogger("asyncpipe.executors")

#: A pickled stage function above this size is dragging globals along; warn, since every
#: worker must receive and unpickle it (measured: a 25 MB global cut a 2-core speedup
#: from 1.8x to 1.14x when sent per task).
LARGE_FUNCTION_BYTES = 1 << 20

#: Idle workers exit after this many seconds; a notebook re-run within it reuses them.
IDLE_TIMEOUT = 120


_pools: list[Any] = []
_lock = threading.Lock()


def _shared_pool(n: int) -> Any:
    """asyncpipe's own loky pool, kept warm across runs (not loky's global reusable executor,
    which joblib also resizes: sharing it would respawn workers whenever both are used)."""
    from loky import ProcessPoolExecutor

    with _lock:
        pool = _pools[-1] if _pools else None
        broken = pool is not None and getattr(pool, "_flags", None) is not None and pool._flags.broken
        if pool is None or broken or pool._max_workers != n:
            if pool is not None:
                _pools.remove(pool)
                pool.shutdown(wait=False)
            if not _exit_hook[0]:
                atexit.register(shutdown_workers)
                _exit_hook[0] = True
            pool = ProcessPoolExecutor(max_workers=n, timeout=IDLE_TIMEOUT)
            _pools.append(pool)
        return pool


_exit_hook = [False]


def shutdown_workers(kill: bool = False) -> None:
    """Stop the shared worker processes now (they restart on the next process stage)."""
    while _pools:
        pool = _pools.pop()
        try:
            pool.shutdown(wait=True, kill_workers=kill)
        except Exception:  # pragma: no cover - interpreter teardown
            _log.debug("shutting down process workers failed", exc_info=True)


class ProcessExecutor(Executor):
    """Runs stage calls in loky worker processes (works with notebook/``__main__`` functions).

    The pool is asyncpipe's own loky executor: warm across runs, resized on demand, its
    workers exit after ``IDLE_TIMEOUT`` idle seconds and never outlive this
    process. Cancelling a run kills the workers running its tasks.
    """

    name: ClassVar[str] = "process"

    def __init__(self, max_workers: int | None = None) -> None:
        self._max = max_workers
        self._wanted = 0
        self._payloads: dict[int, tuple[str, bytes]] = {}
        self._pool: Any = None

    def prepare(self, fn: Callable[..., Any], stage: str, concurrency: int) -> None:
        self._wanted = max(self._wanted, concurrency)
        payload = cloudpickle.dumps(fn)
        if len(payload) > LARGE_FUNCTION_BYTES:
            warnings.warn(
                f"Stage {stage!r} pickles to {len(payload) / 2**20:.1f} MB for process workers, most likely "
                "large globals it references. Load big data inside the function or pass it as an input.",
                PickleWarning,
                stacklevel=2,
            )
        self._payloads[id(fn)] = (xxhash.xxh3_128_hexdigest(payload), payload)

    def _get_pool(self) -> Any:
        if self._pool is None:
            n = self._max or min(self._wanted or os.cpu_count() or 2, os.cpu_count() or 2)
            self._pool = _shared_pool(n)
        return self._pool

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        entry = self._payloads.get(id(fn))
        if entry is None:
            self.prepare(fn, getattr(fn, "__name__", "?"), 1)
            entry = self._payloads[id(fn)]
        digest, payload = entry
        pool = self._get_pool()
        try:
            return await asyncio.wrap_future(pool.submit(call, digest, None, args, kwargs))
        except NeedFunction:
            return await asyncio.wrap_future(pool.submit(call, digest, payload, args, kwargs))

    async def aclose(self, *, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and cancel:
            # Tasks may still run in the workers: kill them so nothing outlives the run.
            with _lock:
                if pool in _pools:
                    _pools.remove(pool)
            await asyncio.to_thread(pool.shutdown, wait=True, kill_workers=True)

"""Process executor: loky worker processes, functions shipped once per worker."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
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


def _register_exit_hook(pool: Any) -> None:
    """Join the workers when the interpreter exits, so none outlives it."""
    if not _pools:
        atexit.register(shutdown_workers)
    if pool not in _pools:
        _pools.append(pool)


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

    The pool is loky's reusable executor: warm across runs, resized on demand, its
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
            from loky import get_reusable_executor

            n = self._max or min(self._wanted or os.cpu_count() or 2, os.cpu_count() or 2)
            self._pool = get_reusable_executor(max_workers=n, timeout=IDLE_TIMEOUT)
            _register_exit_hook(self._pool)
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
            await asyncio.to_thread(pool.shutdown, wait=True, kill_workers=True)

"""Executors in this process: async (the loop), inline (the loop thread) and threads."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from ._base import Executor

#: A thread pool never grows past this, whatever the stages ask for: beyond it threads
#: mostly contend for the GIL and memory.
MAX_THREADS = 64


class AsyncExecutor(Executor):
    """Awaits coroutine functions on the running loop."""

    name: ClassVar[str] = "async"

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return await fn(*args, **kwargs)


class InlineExecutor(Executor):
    """Calls sync functions directly on the loop thread: for cheap functions only."""

    name: ClassVar[str] = "inline"
    inline: ClassVar[bool] = True

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fn(*args, **kwargs)


class ThreadExecutor(Executor):
    """Runs sync functions in a private thread pool sized to the stages that use it."""

    name: ClassVar[str] = "thread"

    def __init__(self, max_workers: int | None = None) -> None:
        self._max = max_workers
        self._wanted = 0
        self._pool: ThreadPoolExecutor | None = None

    def prepare(self, fn: Callable[..., Any], stage: str, concurrency: int) -> None:
        self._wanted += concurrency

    def _get_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            size = self._max or max(1, min(MAX_THREADS, self._wanted or 4))
            self._pool = ThreadPoolExecutor(size, thread_name_prefix="asyncpipe")
        return self._pool

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._get_pool(), call)

    async def aclose(self, *, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Never join on the loop: a thread may still be inside a long call.
            pool.shutdown(wait=False, cancel_futures=True)

"""Cache entries written and read by the workers of a cluster, for shared cache locations.

When a run's cache is a ``file://`` URL (a directory every worker mounts, such as an NFS or
a cluster file system, or this machine's disk for a ``LocalCluster``), a stage running on
a remote executor writes its output on the worker that computed it, and a worker that needs
a cached input reads it there: the data never travels through the notebook process. The
client only records the key in its index (:meth:`asyncpipe.cache.Cache.record`).

>>> import tempfile
>>> import asyncpipe as ap
>>> location = tempfile.mkdtemp()
>>> on_worker = StoreOnWorker(lambda x: {"x": x}, location, "double")
>>> on_worker(21, **{KEY_KWARG: "k1"})
{'x': 21}
>>> load_entry(location, "double", "k1")
{'x': 21}
"""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["KEY_KWARG", "StoreOnWorker", "load_entry"]

#: The keyword the engine adds to a call so the worker knows which entry to write.
KEY_KWARG = "_asyncpipe_cache_key"

_backends: dict[str, Any] = {}
_lock = threading.Lock()


def _backend(location: str) -> Any:
    """This process's store backend for ``location`` (one per worker process)."""
    with _lock:
        backend = _backends.get(location)
        if backend is None:
            from ._store import open_store

            backend = _backends[location] = open_store(pathlib.Path(location))
        return backend


class StoreOnWorker:
    """Wraps a stage function: compute on the worker, write the entry there, return the value."""

    def __init__(self, fn: Callable[..., Any], location: str, stage_dir: str) -> None:
        self.fn = fn
        self.location = location
        self.stage_dir = stage_dir
        self.__name__ = getattr(fn, "__name__", "stage")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = kwargs.pop(KEY_KWARG)
        value = self.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
        from ._memory import freeze
        from ._store import choose_format, entry_id

        fmt, _problem = choose_format(value)
        _backend(self.location).write_entry(entry_id(self.stage_dir, key), freeze(value), fmt)
        return value


async def _await(awaitable: Any) -> Any:
    return await awaitable


def load_entry(location: str, stage_dir: str, key: str) -> Any:
    """Read one entry where this code runs (a worker): raises if it is missing or corrupt."""
    from ._store import entry_id

    return _backend(location).read_entry(entry_id(stage_dir, key))

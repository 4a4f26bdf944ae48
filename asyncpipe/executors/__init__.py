"""Executors: where a stage's function runs.

Built in: ``"async"`` (coroutines on the loop), ``"thread"`` (a thread pool),
``"inline"`` (on the loop thread, for cheap sync functions), ``"auto"`` (the
default for sync functions: a thread, or inline once measured cheap),
``"process"`` (loky worker processes, cloudpickled functions) and ``"dask"``
(a ``distributed`` cluster, imported lazily). :func:`register_executor` adds more.

This package imports nothing heavy: worker processes import it.

>>> import tempfile, threading
>>> import asyncpipe as ap
>>> {"async", "inline", "thread", "auto", "process", "dask"} <= set(ap.executors.executor_names())
True
>>> @ap.source
... def numbers(n):
...     return n
>>> @ap.stage(executor="thread", concurrency=2)  # a blocking function: keep it off the loop
... def worker(numbers):
...     return threading.current_thread().name.startswith("asyncpipe")
>>> pipe = ap.Pipeline([numbers, worker], cache=False, workdir=tempfile.mkdtemp())
>>> pipe.plan["worker"].executor, pipe.run_sync([1, 2])["worker"]
('thread', [True, True])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._base import Executor

__all__ = [
    "DaskExecutor",
    "Executor",
    "ProcessExecutor",
    "ThreadExecutor",
    "cluster_sample",
    "create_executor",
    "executor_names",
    "register_executor",
    "worker_memory",
]

_LAZY = {
    "DaskExecutor": "asyncpipe.executors._dask",
    "cluster_sample": "asyncpipe.executors._dask",
    "worker_memory": "asyncpipe.executors._dask",
    "ProcessExecutor": "asyncpipe.executors._process",
    "ThreadExecutor": "asyncpipe.executors._local",
}


def __getattr__(name: str) -> Any:
    """Executors with heavy dependencies (dask, loky) import on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncpipe.executors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, str | Callable[..., Executor]] = {
    "async": "asyncpipe.executors._local:AsyncExecutor",
    "inline": "asyncpipe.executors._local:InlineExecutor",
    "thread": "asyncpipe.executors._local:ThreadExecutor",
    "auto": "asyncpipe.executors._local:ThreadExecutor",
    "process": "asyncpipe.executors._process:ProcessExecutor",
    "dask": "asyncpipe.executors._dask:DaskExecutor",
}


def register_executor(name: str, factory: Callable[..., Executor] | str) -> None:
    """Make ``executor=name`` available to stages.

    ``factory`` is a class/callable taking keyword configuration, or a lazy
    ``"module:attr"`` string (imported on first use).
    """
    _REGISTRY[name] = factory


def executor_names() -> list[str]:
    return sorted(_REGISTRY)


def create_executor(name: str, **config: Any) -> Executor:
    """Instantiate the executor registered as ``name``."""
    factory = _REGISTRY[name]
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            extra = {"dask": "dask"}.get(name, name)
            raise ImportError(
                f"The {name!r} executor needs optional dependencies: pip install 'asyncpipe[{extra}]'"
            ) from exc
    return factory(**config)  # type: ignore[operator]

"""Executors: where a stage's function runs.

Built in: ``"async"`` (coroutines on the loop), ``"thread"`` (a thread pool),
``"inline"`` (on the loop thread, for cheap sync functions), ``"auto"`` (the
default for sync functions: a thread, or inline once measured cheap),
``"process"`` (loky worker processes, cloudpickled functions) and ``"dask"``
(a ``distributed`` cluster, imported lazily). :func:`register_executor` adds more.

This package imports nothing heavy: worker processes import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ._base import Executor

__all__ = ["Executor", "create_executor", "executor_names", "register_executor"]

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

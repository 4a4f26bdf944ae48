"""asyncpipe: Jupyter-first async data pipelines.

Write stage functions, wire them by parameter name, and stream partitions through
them on the running event loop (in a notebook: the kernel's), memoized as
Parquet, with live monitoring::

    import asyncpipe as ap

    @ap.source
    async def fetch(url): ...

    @ap.stage
    def clean(fetch): ...

    pipe = ap.Pipeline([fetch, clean])
    result = await pipe.run(urls)          # or pipe.start(urls) / pipe.run_sync(urls)

Attributes load lazily, so ``import asyncpipe`` stays light (worker processes
import it) and pulls in no IPython, ipywidgets, matplotlib, dask or SQLAlchemy.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# Library code never prints: without a handler configured by the application, records
# from the "asyncpipe" logger go nowhere (not to stderr through logging's last resort).
logging.getLogger("asyncpipe").addHandler(logging.NullHandler())

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ALL": "._partition",
    "Adaptive": "._adaptive",
    "ResourceGovernor": "._governor",
    "AsyncpipeError": "._exceptions",
    "AsyncpipeWarning": "._exceptions",
    "CacheError": "._exceptions",
    "CacheWarning": "._exceptions",
    "Clock": "._clock",
    "DEFAULT": "._stage",
    "DefinitionError": "._exceptions",
    "EventBus": "._events",
    "Failure": "._deadletter",
    "Metrics": "._metrics",
    "MetricsSnapshot": "._snapshot",
    "RunNotFoundError": "._history",
    "RunRecord": "._history",
    "StageSnapshot": "._snapshot",
    "TerminalProgress": "._progress",
    "configure_logging": "._logging",
    "load_run": "._history",
    "log_context": "._logging",
    "monitor": ".notebook",
    "panel": ".notebook",
    "schedule": ".notebook",
    "schedules": ".notebook",
    "runs": "._history",
    "FakeClock": "._clock",
    "Overloaded": "._exceptions",
    "PartitionKey": "._partition",
    "PickleWarning": "._exceptions",
    "Pipeline": "._pipeline",
    "Plan": "._plan",
    "RateLimited": "._exceptions",
    "RetryPolicy": "._retry",
    "RunCancelled": "._exceptions",
    "RunFailed": "._exceptions",
    "RunHandle": "._handle",
    "RunResult": "._result",
    "SerializationError": "._exceptions",
    "Stage": "._stage",
    "StageError": "._exceptions",
    "StoreError": "._exceptions",
    "SystemClock": "._clock",
    "TransientError": "._exceptions",
    "read_failures": "._deadletter",
    "reduce": "._stage",
    "sink": "._stage",
    "source": "._stage",
    "stage": "._stage",
}

#: Subpackages reachable as attributes (``ap.io.read_files``, ``ap.executors``...).
_SUBPACKAGES = ("cache", "executors", "io")

__all__ = sorted([*_EXPORTS, *_SUBPACKAGES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext asyncpipe``: register the ``%%pipeline`` cell magic (needs the notebook extra)."""
    from .notebook import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext asyncpipe``: cancel the schedules this kernel runs."""
    from .notebook import unload_ipython_extension as unload

    unload(ipython)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ._adaptive import Adaptive
    from ._clock import Clock, FakeClock, SystemClock
    from ._deadletter import Failure, read_failures
    from ._events import EventBus
    from ._exceptions import (
        AsyncpipeError,
        AsyncpipeWarning,
        CacheError,
        CacheWarning,
        DefinitionError,
        Overloaded,
        PickleWarning,
        RateLimited,
        RunCancelled,
        RunFailed,
        SerializationError,
        StageError,
        StoreError,
        TransientError,
    )
    from ._governor import ResourceGovernor
    from ._handle import RunHandle
    from ._history import RunNotFoundError, RunRecord, load_run, runs
    from ._logging import configure_logging, log_context
    from ._metrics import Metrics
    from ._partition import ALL, PartitionKey
    from ._pipeline import Pipeline
    from ._plan import Plan
    from ._progress import TerminalProgress
    from ._result import RunResult
    from ._retry import RetryPolicy
    from ._snapshot import MetricsSnapshot, StageSnapshot
    from ._stage import DEFAULT, Stage, reduce, sink, source, stage
    from .notebook import monitor, panel, schedule, schedules

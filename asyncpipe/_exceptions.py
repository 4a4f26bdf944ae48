"""Exceptions and warnings raised by asyncpipe.

Every exception derives from one root, so ``except asyncpipe.AsyncpipeError``
catches anything the library raises on its own behalf::

    AsyncpipeError
    ├── DefinitionError          the pipeline is wired wrong (raised when it is built)
    ├── StageError               a stage failed permanently for one partition
    │   └── SerializationError   an argument or result could not be sent to a worker
    ├── RunFailed                a run stopped early (fail-fast) or failures were raised
    ├── RunCancelled             a run was cancelled before it finished
    ├── TransientError           raise from a stage: "try again", optionally after a delay
    │   └── Overloaded           the service is overloaded (adaptive limits back off)
    │       └── RateLimited      the service said "too many requests"
    ├── CacheError               a cache entry is unusable (recomputed, never fatal)
    └── StoreError               a source or sink could not read or write its store

    AsyncpipeWarning (UserWarning)
    ├── CacheWarning             a degraded cache read or write; the run continues
    └── PickleWarning            a stage ships large globals to process workers
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AsyncpipeError",
    "AsyncpipeWarning",
    "CacheError",
    "CacheWarning",
    "DefinitionError",
    "Overloaded",
    "PickleWarning",
    "RateLimited",
    "RunCancelled",
    "RunFailed",
    "SerializationError",
    "StageError",
    "StoreError",
    "TransientError",
]


class AsyncpipeError(Exception):
    """Root of every exception asyncpipe raises."""


class DefinitionError(AsyncpipeError, ValueError):
    """The pipeline definition is invalid.

    Raised when a :class:`~asyncpipe.Pipeline` is built, never during a run.
    ``stage`` names the offending stage when there is one.
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class StageError(AsyncpipeError):
    """A stage failed permanently for one partition.

    The original exception is chained as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        partition: Any = None,
        attempt: int = 1,
    ) -> None:
        super().__init__(message)
        self.stage = stage
        self.partition = partition
        self.attempt = attempt


class SerializationError(StageError):
    """A stage's function, argument or result could not be pickled for a worker."""


class RunFailed(AsyncpipeError):
    """A run stopped because of failures (fail-fast, or ``raise_for_failures``).

    ``failures`` holds the :class:`~asyncpipe.Failure` records.
    """

    def __init__(self, message: str, *, failures: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class RunCancelled(AsyncpipeError):
    """The run was cancelled before it finished; partial outputs are on ``result``."""

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class TransientError(AsyncpipeError):
    """Raise from a stage to ask for a retry, optionally after ``retry_after`` seconds."""

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(TransientError):
    """The service a stage talks to is overloaded: retry and lower the concurrency."""


class RateLimited(Overloaded):
    """The service rejected the request for exceeding its rate (HTTP 429)."""


class CacheError(AsyncpipeError):
    """A cache entry is missing, truncated or corrupt."""


class StoreError(AsyncpipeError):
    """A source or sink failed to read or write; ``store`` and ``obj`` say where."""

    def __init__(self, message: str, *, store: str = "", obj: str = "") -> None:
        super().__init__(message)
        self.store = store
        self.obj = obj


class AsyncpipeWarning(UserWarning):
    """Root of asyncpipe's warnings."""


class CacheWarning(AsyncpipeWarning):
    """A cache read or write degraded (fell back, recomputed, or was skipped)."""


class PickleWarning(AsyncpipeWarning):
    """A stage function drags large globals along to every process worker."""

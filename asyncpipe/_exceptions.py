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
    """Root of every exception asyncpipe raises.

    >>> from asyncpipe import AsyncpipeError, StageError
    >>> isinstance(StageError("boom", stage="parse"), AsyncpipeError)
    True
    """


class DefinitionError(AsyncpipeError, ValueError):
    """The pipeline definition is invalid.

    Raised when a :class:`~asyncpipe.Pipeline` is built, never during a run.
    ``stage`` names the offending stage when there is one.

    >>> from asyncpipe import DefinitionError
    >>> err = DefinitionError("Stage 'clean' needs input 'fetch'.", stage="clean")
    >>> err.stage, isinstance(err, ValueError)
    ('clean', True)
    """

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


class StageError(AsyncpipeError):
    """A stage failed permanently for one partition.

    The original exception is chained as ``__cause__``.

    >>> from asyncpipe import StageError
    >>> err = StageError("parse failed", stage="parse", partition=3, attempt=2)
    >>> err.stage, err.partition, err.attempt
    ('parse', 3, 2)
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
    """A stage's function, argument or result could not be pickled for a worker.

    >>> from asyncpipe import SerializationError, StageError
    >>> err = SerializationError("cannot pickle 'generator' object", stage="load", partition=0)
    >>> err.stage, isinstance(err, StageError)
    ('load', True)
    """


class RunFailed(AsyncpipeError):
    """A run stopped because of failures (fail-fast, or ``raise_for_failures``).

    ``failures`` holds the :class:`~asyncpipe.Failure` records.

    >>> from asyncpipe import RunFailed
    >>> try:
    ...     raise RunFailed("stage 'parse' failed for 1 partition", failures=())
    ... except RunFailed as err:
    ...     print(err, err.failures)
    stage 'parse' failed for 1 partition ()
    """

    def __init__(self, message: str, *, failures: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


class RunCancelled(AsyncpipeError):
    """The run was cancelled before it finished; partial outputs are on ``result``.

    >>> from asyncpipe import RunCancelled
    >>> err = RunCancelled("run cancelled after 2 of 5 partitions", result=None)
    >>> str(err), err.result is None
    ('run cancelled after 2 of 5 partitions', True)
    """

    def __init__(self, message: str, *, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class TransientError(AsyncpipeError):
    """Raise from a stage to ask for a retry, optionally after ``retry_after`` seconds.

    >>> from asyncpipe import TransientError
    >>> TransientError("service warming up", retry_after=2.0).retry_after
    2.0
    >>> TransientError().retry_after is None
    True
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(TransientError):
    """The service a stage talks to is overloaded: retry and lower the concurrency.

    >>> from asyncpipe import Overloaded, TransientError
    >>> err = Overloaded("HTTP 503", retry_after=1.5)
    >>> err.retry_after, isinstance(err, TransientError)
    (1.5, True)
    """


class RateLimited(Overloaded):
    """The service rejected the request for exceeding its rate (HTTP 429).

    >>> from asyncpipe import Overloaded, RateLimited
    >>> err = RateLimited("HTTP 429 Too Many Requests", retry_after=30.0)
    >>> err.retry_after, isinstance(err, Overloaded)
    (30.0, True)
    """


class CacheError(AsyncpipeError):
    """A cache entry is missing, truncated or corrupt.

    >>> from asyncpipe import AsyncpipeError, CacheError
    >>> err = CacheError("Cache entry output.parquet is truncated (no Parquet footer).")
    >>> isinstance(err, AsyncpipeError)
    True
    """


class StoreError(AsyncpipeError):
    """A source or sink failed to read or write; ``store`` and ``obj`` say where.

    >>> from asyncpipe import StoreError
    >>> err = StoreError("permission denied", store="file:///data/out", obj="part-0001.parquet")
    >>> err.store, err.obj
    ('file:///data/out', 'part-0001.parquet')
    """

    def __init__(self, message: str, *, store: str = "", obj: str = "") -> None:
        super().__init__(message)
        self.store = store
        self.obj = obj


class AsyncpipeWarning(UserWarning):
    """Root of asyncpipe's warnings.

    >>> import warnings
    >>> from asyncpipe import AsyncpipeWarning, CacheWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", AsyncpipeWarning)  # silences all of asyncpipe's warnings
    ...     warnings.warn("cache write skipped", CacheWarning)
    >>> issubclass(CacheWarning, UserWarning)
    True
    """


class CacheWarning(AsyncpipeWarning):
    """A cache read or write degraded (fell back, recomputed, or was skipped).

    >>> import warnings
    >>> from asyncpipe import CacheWarning
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warnings.warn("disk full: output not cached", CacheWarning)
    >>> caught[0].category.__name__, str(caught[0].message)
    ('CacheWarning', 'disk full: output not cached')
    """


class PickleWarning(AsyncpipeWarning):
    """A stage function drags large globals along to every process worker.

    >>> import warnings
    >>> from asyncpipe import PickleWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", PickleWarning)  # make it fatal, e.g. in CI
    ...     try:
    ...         warnings.warn("stage 'score' pickles 80 MB of globals", PickleWarning)
    ...     except PickleWarning as w:
    ...         print(w)
    stage 'score' pickles 80 MB of globals
    """

"""How stores report failures: one :class:`~asyncpipe.StoreError` naming the store and object.

Permanent problems (missing object, wrong credentials, malformed data, schema
mismatch) raise :class:`~asyncpipe.StoreError`. Problems that a retry may cure
(unreachable host, dropped connection, timeout) raise :class:`StoreUnavailable`,
which is both a ``StoreError`` and a :class:`~asyncpipe.TransientError`, so the
engine retries it and, once retries run out, the user still sees which store
and object failed.

>>> err = StoreUnavailable("cannot reach s3", store="files", obj="s3://b/x.csv", retry_after=2.0)
>>> isinstance(err, StoreError), isinstance(err, TransientError), err.retry_after
(True, True, 2.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from .._exceptions import StoreError, TransientError
from ._secrets import scrub, scrub_exception

__all__ = ["StoreUnavailable", "fail"]


class StoreUnavailable(StoreError, TransientError):
    """A store could not be reached (connection refused, timeout, dropped connection): retry."""

    def __init__(
        self, message: str, *, store: str = "", obj: str = "", retry_after: float | None = None
    ) -> None:
        StoreError.__init__(self, message, store=store, obj=obj)
        self.retry_after = retry_after

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_rebuild_unavailable, (str(self), self.store, self.obj, self.retry_after))


def _rebuild_unavailable(message: str, store: str, obj: str, retry_after: float | None) -> StoreUnavailable:
    return StoreUnavailable(message, store=store, obj=obj, retry_after=retry_after)


def fail(
    message: str,
    *,
    store: str,
    obj: str,
    cause: BaseException | None,
    secrets: Iterable[str] = (),
    transient: bool = False,
) -> NoReturn:
    """Raise a ``StoreError`` (or ``StoreUnavailable``) with secrets scrubbed, chaining ``cause``."""
    secrets = tuple(secrets)
    if cause is not None:
        scrub_exception(cause, secrets)
        detail = f"{type(cause).__name__}: {cause}".strip().rstrip(":")
        message = f"{message} ({detail})"
    text = scrub(message, secrets)
    obj = scrub(obj, secrets)
    if transient:
        raise StoreUnavailable(text, store=store, obj=obj) from cause
    raise StoreError(text, store=store, obj=obj) from cause

"""Retry policy: which failures are retried, how often, and how long to wait between attempts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import DefinitionError, TransientError

__all__ = ["RetryPolicy"]

#: Failures worth retrying by default: the transient kind that a second try can cure.
#: OSError covers ConnectionError (resets, refused) and most I/O hiccups; TimeoutError
#: is what ``timeout=`` raises; TransientError (and Overloaded/RateLimited) is how a
#: stage says "try again" explicitly.
DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (TimeoutError, OSError, TransientError)


@dataclass(frozen=True)
class RetryPolicy:
    """How a stage retries a failed partition.

    - ``attempts``: total tries including the first (1 = no retry).
    - ``backoff``: delay before the 2nd attempt; multiplied by ``multiplier`` each time.
    - ``max_delay``: cap on one wait.
    - ``jitter``: fraction of the delay randomized away ("equal jitter": the wait is
      uniform in ``[d*(1-jitter), d]``), so many partitions failing together don't retry
      in lockstep.
    - ``retry_on``: exception classes that are retryable.
    - ``predicate``: optional ``exc -> bool`` that overrides ``retry_on``.

    A ``retry_after`` attribute on the exception (``TransientError(retry_after=...)``,
    an HTTP Retry-After) is honoured: the wait is at least that long.

    >>> policy = RetryPolicy(attempts=4, backoff=0.5, jitter=0.0)
    >>> [policy.delay(n) for n in (1, 2, 3)]
    [0.5, 1.0, 2.0]
    >>> policy.retryable(ConnectionResetError()), policy.retryable(KeyError("x"))
    (True, False)
    """

    attempts: int = 3
    backoff: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.5
    retry_on: tuple[type[BaseException], ...] = DEFAULT_RETRY_ON
    predicate: Callable[[BaseException], bool] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise DefinitionError(f"RetryPolicy(attempts={self.attempts}) must be at least 1 (1 = no retry).")
        if self.backoff < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise DefinitionError("RetryPolicy needs backoff >= 0, max_delay >= 0 and 0 <= jitter <= 1.")

    @classmethod
    def coerce(cls, value: Any) -> RetryPolicy:
        """``None``/0 -> no retries; an int n -> n retries after the first try; a policy as is."""
        if value is None or value is False:
            return NO_RETRY
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DefinitionError(
                f"retries={value!r} is not valid: pass a number of retries (e.g. 3) or a RetryPolicy(...)."
            )
        return cls(attempts=value + 1)

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, asyncio.CancelledError):
            return False
        if self.predicate is not None:
            return bool(self.predicate(exc))
        return isinstance(exc, self.retry_on)

    def delay(
        self, attempt: int, exc: BaseException | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.backoff * self.multiplier ** (attempt - 1))
        if self.jitter:
            base -= base * self.jitter * (rng or random).random()
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and hint > 0:
            base = max(base, min(float(hint), self.max_delay))
        return base


NO_RETRY = RetryPolicy(attempts=1)

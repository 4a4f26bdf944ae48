"""Token buckets and rate strings ("100/s", "30/min", "5/s burst 20").

A :class:`TokenBucket` holds up to ``burst`` tokens and refills at ``rate``
tokens per second. Taking a token is how a stage spends one call against a
rate limit. Refill is computed lazily from the injected clock on each access,
so an idle bucket costs nothing and tests run under
:class:`~asyncpipe._clock.FakeClock` without sleeping.

Waiters are served first come, first served: only the head of the queue
sleeps, and :meth:`TokenBucket.try_take` refuses while anyone is queued, so a
fast caller can never starve a patient one. The rate may change at any time
(:meth:`TokenBucket.set_rate`); a waiting head notices within
:data:`RECHECK_SECONDS`.

>>> parse_rate("30/min")
(0.5, 1.0)
>>> parse_rate("100/s")
(100.0, 10.0)
>>> parse_rate("10/s burst 50")
(10.0, 50.0)
"""

from __future__ import annotations

import asyncio
import collections
import math
import re

from ._clock import Clock, SystemClock

__all__ = ["TokenBucket", "format_rate", "parse_rate"]

# Default burst = the tokens earned in BURST_SECONDS, at least 1. A tenth of a second absorbs event-loop and
# timer jitter (a late wake-up does not throw tokens away) while never exceeding the nominal rate by more than
# 10 % over any one-second window, which is what services that count "requests per second" enforce.
BURST_SECONDS = 0.1

# A waiting head re-reads the bucket at least this often, so a rate raised at runtime (say from 1/min to
# 100/s) takes effect within 50 ms without a wake-up channel per waiter. Waking costs ~3 us, negligible at
# any rate that needs limiting.
RECHECK_SECONDS = 0.05

# A token counts as whole when within float rounding of 1: refills summed over many small clock steps
# (0.1 s as ten 0.01 s steps) otherwise lose a token to rounding now and then.
_ONE = 1.0 - 1e-9

_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
}
_RATE_RE = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d*)?|\.\d+)\s*/\s*(?P<per>\d+(?:\.\d*)?)?\s*(?P<unit>[a-z]*)\s*"
    r"(?:[,;]?\s*burst\s*[=:]?\s*(?P<burst>\d+(?:\.\d*)?))?\s*$",
    re.IGNORECASE,
)


def parse_rate(rate: str | float | None) -> tuple[float, float] | None:
    """Parse a rate into ``(tokens_per_second, burst)``, or None for "no limit".

    Accepts a number (tokens per second), or a string ``"<count>/<period>"`` where
    period is ``s``, ``min``, ``h``, ``day`` optionally with a multiplier
    (``"10/5s"``), optionally followed by ``"burst <n>"``.

    >>> parse_rate(2.5)
    (2.5, 1.0)
    >>> parse_rate("3/10s")
    (0.3, 1.0)
    >>> parse_rate(None) is None
    True
    """
    if rate is None:
        return None
    burst: float | None = None
    if isinstance(rate, bool):
        raise ValueError(f"rate must be a number or a string like '100/s', not {rate!r}")
    if isinstance(rate, int | float):
        per_second = float(rate)
    elif isinstance(rate, str):
        m = _RATE_RE.match(rate)
        unit = (m.group("unit") or "").lower() if m else ""
        if unit not in _UNITS and unit.endswith("s") and unit[:-1] in _UNITS and unit != "ms":
            unit = unit[:-1]  # plurals: "30/mins", "2/hours"
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"Cannot parse rate {rate!r}: use '<count>/<period>' such as '100/s', '30/min', '1000/h', "
                "'10/5s', optionally with ' burst <n>' (e.g. '10/s burst 50')."
            )
        period = float(m.group("per") or 1.0) * _UNITS[unit]
        per_second = float(m.group("count")) / period
        if m.group("burst"):
            burst = float(m.group("burst"))
    else:
        raise ValueError(f"rate must be a number or a string like '100/s', not {rate!r}")
    if not math.isfinite(per_second) or per_second <= 0:
        raise ValueError(f"rate must be positive and finite, got {rate!r}")
    if burst is None:
        burst = max(1.0, per_second * BURST_SECONDS)
    if burst < 1:
        raise ValueError(f"burst must be at least 1 token, got {burst} in {rate!r}")
    return per_second, burst


def format_rate(per_second: float | None) -> str:
    """A short human form of a rate.

    >>> format_rate(0.5), format_rate(100.0), format_rate(None)
    ('30/min', '100/s', 'unlimited')
    """
    if per_second is None:
        return "unlimited"
    if per_second >= 1:
        return f"{per_second:g}/s"
    if per_second * 60 >= 1:
        return f"{per_second * 60:g}/min"
    return f"{per_second * 3600:g}/h"


class TokenBucket:
    """A token bucket on an injectable clock; its rate and burst can change at runtime.

    >>> from asyncpipe._clock import FakeClock
    >>> clock = FakeClock()
    >>> bucket = TokenBucket("2/s burst 2", clock=clock)
    >>> [bucket.try_take() for _ in range(3)]
    [True, True, False]
    >>> clock.advance(0.5)
    >>> bucket.try_take()
    True
    """

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens", "_waiters")

    def __init__(self, rate: str | float, *, burst: float | None = None, clock: Clock | None = None) -> None:
        parsed = parse_rate(rate)
        if parsed is None:
            raise ValueError("TokenBucket needs a rate; use no bucket for 'unlimited'")
        self._clock = clock if clock is not None else SystemClock()
        self._rate, default_burst = parsed
        self._burst = float(burst) if burst is not None else default_burst
        self._tokens = self._burst  # a fresh bucket is full: the first `burst` calls go at once
        self._stamp = self._clock.now()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """Most tokens the bucket holds."""
        return self._burst

    @property
    def tokens(self) -> float:
        """Tokens available now (refilled up to this instant)."""
        self._refill()
        return self._tokens

    @property
    def waiting(self) -> int:
        """Callers queued in :meth:`take`."""
        return len(self._waiters)

    def _refill(self) -> None:
        now = self._clock.now()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._stamp = now

    def try_take(self) -> bool:
        """Take one token if one is available now and nobody is queued; never waits."""
        if self._waiters:
            return False
        self._refill()
        if self._tokens >= _ONE:
            self._tokens -= 1.0
            return True
        return False

    def delay(self) -> float:
        """Seconds until one token will be available (0 if one is available now)."""
        self._refill()
        return 0.0 if self._tokens >= _ONE else (1.0 - self._tokens) / self._rate

    async def take(self) -> None:
        """Wait for a token, first come first served; cancelling a waiter takes nothing."""
        if not self._waiters and self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if self._waiters[0] is not fut:
                await fut  # wait until the previous head has its token
            while True:
                self._refill()
                if self._tokens >= _ONE:
                    self._tokens -= 1.0
                    return
                await self._clock.sleep(min((1.0 - self._tokens) / self._rate, RECHECK_SECONDS))
        finally:
            if self._waiters and self._waiters[0] is fut:
                self._waiters.popleft()
                if self._waiters and not self._waiters[0].done():
                    self._waiters[0].set_result(None)  # promote the next waiter to head
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:  # pragma: no cover - defensive: already removed
                    pass

    def set_rate(self, rate: str | float, *, burst: float | None = None) -> None:
        """Change the rate (and burst) now; tokens earned so far are kept, clipped to the new burst.

        >>> from asyncpipe._clock import FakeClock
        >>> bucket = TokenBucket("1/s", clock=FakeClock())
        >>> bucket.set_rate("30/min burst 5")
        >>> (bucket.rate, bucket.burst)
        (0.5, 5.0)
        """
        parsed = parse_rate(rate)
        if parsed is None:
            raise ValueError("TokenBucket needs a rate; drop the bucket for 'unlimited'")
        self._refill()  # tokens earned at the old rate up to now
        self._rate, default_burst = parsed
        self._burst = float(burst) if burst is not None else default_burst
        self._tokens = min(self._tokens, self._burst)

    def release_waiters(self) -> None:
        """Let every queued caller through at once (used when the limit is removed)."""
        self._tokens = max(self._tokens, 0.0) + len(self._waiters)
        self._burst = max(self._burst, self._tokens)
        if self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    def __repr__(self) -> str:
        rate = format_rate(self._rate)
        return f"TokenBucket({rate!r}, burst={self._burst:g}, waiting={len(self._waiters)})"

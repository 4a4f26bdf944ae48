"""The per-stage gate: at most ``limit`` attempts in flight, optionally a token-bucket rate.

The engine calls, for every attempt of a stage::

    if not lim.try_acquire():      # O(1), no allocation: the common case
        await lim.acquire()        # FIFO: permit first, then a token
    try:
        ...run the attempt...
    finally:
        lim.release(outcome, latency)   # exactly once: ok/error/overload/timeout/cancelled

Every limit can change while a run is going (:meth:`Limiter.set_concurrency`,
:meth:`Limiter.set_rate`, :meth:`Limiter.set_ceiling` for the resource governor),
and an adaptive limiter moves its own limit from the outcomes and latencies fed
to :meth:`Limiter.release`. Each change of the effective limit calls
``on_change(stage, kind, old, new, reason)`` once; the engine publishes it as a
``LimitChanged`` event.

>>> import asyncio
>>> lim = Limiter("fetch", concurrency=2)
>>> lim.try_acquire(), lim.try_acquire(), lim.try_acquire()
(True, True, False)
>>> lim.release("ok", 0.01); lim.in_use
1
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Callable
from typing import Any

from ._adaptive import HYSTERESIS, Adaptive, coerce_concurrency, make_controller
from ._clock import Clock, SystemClock
from ._exceptions import Overloaded
from ._ratelimit import TokenBucket, format_rate

__all__ = ["OUTCOMES", "Limiter", "classify"]

_log = logging.getLogger("asyncpipe.limiter")

OUTCOMES = ("ok", "error", "overload", "timeout", "cancelled")

OnChange = Callable[[str, str, "float | None", "float | None", str], None]


def classify(exc: BaseException | None, predicate: Callable[[BaseException], bool] | None = None) -> str:
    """The outcome of an attempt for :meth:`Limiter.release`.

    ``Overloaded``/``RateLimited``, or any exception ``predicate`` accepts, is an
    "overload"; ``TimeoutError`` a "timeout"; ``CancelledError`` "cancelled".

    >>> from asyncpipe._exceptions import RateLimited
    >>> classify(None), classify(RateLimited("429")), classify(TimeoutError()), classify(KeyError())
    ('ok', 'overload', 'timeout', 'error')
    >>> classify(ConnectionResetError(), lambda e: isinstance(e, ConnectionError))
    'overload'
    """
    if exc is None:
        return "ok"
    if isinstance(exc, Overloaded):
        return "overload"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if predicate is not None:
        try:
            if predicate(exc):
                return "overload"
        except Exception:  # a broken predicate must not break the run
            _log.exception("overload predicate %r raised on %r; treating it as an error", predicate, exc)
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


class Limiter:
    """Per-stage gate: at most ``limit`` permits out at once, and optionally a token-bucket rate.

    ``concurrency``: an int, ``"adaptive"`` (defaults of :class:`~asyncpipe.Adaptive`) or an
    ``Adaptive(...)``. ``rate``: tokens per second, a string such as ``"100/s"`` or
    ``"30/min burst 5"``, or None.
    """

    __slots__ = (
        "_bucket",
        "_ceiling",
        "_clock",
        "_ctl",
        "_in_use",
        "_limit",
        "_max_limit",
        "_target",
        "_waiters",
        "name",
        "on_change",
    )

    def __init__(
        self,
        name: str,
        *,
        concurrency: int | str | Adaptive = 8,
        rate: str | float | None = None,
        clock: Clock | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        self.name = name
        self._clock = clock if clock is not None else SystemClock()
        self.on_change = on_change
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ceiling: int | None = None
        self._ctl: Any = None
        self._target = 1
        self._max_limit = 1
        self._limit = 1
        self._configure(coerce_concurrency(concurrency))
        self._limit = self._target
        self._bucket = TokenBucket(rate, clock=self._clock) if rate is not None else None

    def _configure(self, conc: int | Adaptive) -> None:
        if isinstance(conc, Adaptive):
            self._ctl = make_controller(conc, self._clock)
            self._target = conc.initial
            self._max_limit = max(self._max_limit, conc.max)
        else:
            self._ctl = None
            self._target = conc
            self._max_limit = max(self._max_limit, conc)

    # -- state

    @property
    def limit(self) -> int:
        """The effective concurrency limit now: the target, capped by any governor ceiling."""
        return self._limit

    @property
    def max_limit(self) -> int:
        """The highest the limit may reach; grows when ``set_concurrency`` raises it (size pools from it)."""
        return self._max_limit

    @property
    def in_use(self) -> int:
        """Permits out now."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Callers queued in :meth:`acquire` for a permit."""
        return len(self._waiters)

    @property
    def rate(self) -> float | None:
        """Tokens per second, or None when there is no rate limit."""
        return self._bucket.rate if self._bucket is not None else None

    @property
    def ceiling(self) -> int | None:
        """The governor's cap on the limit, or None."""
        return self._ceiling

    @property
    def adaptive(self) -> Adaptive | None:
        """The adaptive configuration, or None for a static limit."""
        return self._ctl._cfg if self._ctl is not None else None

    # -- acquire / release

    def try_acquire(self) -> bool:
        """Take a permit and a token now if both are free and nobody is queued; never waits."""
        if self._in_use >= self._limit or self._waiters:
            return False
        bucket = self._bucket
        if bucket is not None and not bucket.try_take():
            return False
        self._in_use += 1
        return True

    async def acquire(self) -> None:
        """Wait for a permit, then a token, first come first served.

        Cancelled while waiting, it leaves nothing taken.
        """
        if self._in_use < self._limit and not self._waiters:
            self._in_use += 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._put_back()  # a permit was handed over just as we were cancelled
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise
        bucket = self._bucket
        if bucket is not None and not bucket.try_take():
            try:
                await bucket.take()
            except BaseException:
                self._put_back()
                raise

    def release(self, outcome: str = "ok", latency: float | None = None) -> None:
        """Give a permit back, once per successful acquire, with the attempt's outcome and latency (s)."""
        inflight = self._in_use
        if inflight <= 0:
            raise RuntimeError(f"Limiter {self.name!r}: release() without a matching acquire()")
        self._in_use = inflight - 1
        ctl = self._ctl
        if ctl is not None:
            ctl.sample(outcome, latency, inflight)
            if abs(ctl.limit - self._target) >= HYSTERESIS:
                self._set_target(max(1, round(ctl.limit)), ctl.describe())
        if self._waiters and self._in_use < self._limit:
            self._wake()

    def _put_back(self) -> None:
        self._in_use -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self._in_use < self._limit:
            fut = waiters.popleft()
            if not fut.done():
                self._in_use += 1  # hand the permit over: no barging by try_acquire in between
                fut.set_result(None)

    def permit(self, predicate: Callable[[BaseException], bool] | None = None) -> _Permit:
        """``async with lim.permit(): ...`` acquires, times the block, classifies and releases.

        A convenience for code outside the engine (HTTP sources, notebooks, benchmarks).
        """
        return _Permit(self, predicate)

    # -- runtime changes

    def _apply(self, reason: str) -> None:
        old = self._limit
        new = self._target if self._ceiling is None else max(1, min(self._target, self._ceiling))
        if new == old:
            return
        self._limit = new
        if new > old and self._waiters:
            self._wake()
        if self.on_change is not None:
            try:
                self.on_change(self.name, "concurrency", float(old), float(new), reason)
            except Exception:
                _log.exception("on_change callback failed for limiter %r", self.name)

    def _set_target(self, n: int, reason: str) -> None:
        self._target = n
        self._apply(reason)

    def set_concurrency(self, n: int | str | Adaptive, reason: str = "user") -> None:
        """Change the concurrency now (clamped >= 1): an int pins a static limit, "adaptive" adapts.

        Raising it above :attr:`max_limit` raises ``max_limit`` too; waiters wake at once.
        """
        if isinstance(n, int | float) and not isinstance(n, bool):
            n = max(1, int(n))
        conc = coerce_concurrency(n)
        self._configure(conc)
        if self._ctl is not None and isinstance(conc, Adaptive):
            self._ctl.limit = float(max(conc.min, min(conc.max, self._limit)))  # continue from where we are
            self._target = round(self._ctl.limit)
        self._apply(reason)

    def set_rate(self, rate: str | float | None, reason: str = "user") -> None:
        """Change the token-bucket rate now; None removes it (queued callers go at once)."""
        old = self.rate
        if rate is None:
            if self._bucket is not None:
                self._bucket.release_waiters()
            self._bucket = None
        elif self._bucket is None:
            self._bucket = TokenBucket(rate, clock=self._clock)
        else:
            self._bucket.set_rate(rate)
        new = self.rate
        if new != old and self.on_change is not None:
            try:
                self.on_change(self.name, "rate", old, new, f"{reason}: {format_rate(new)}")
            except Exception:
                _log.exception("on_change callback failed for limiter %r", self.name)

    def set_ceiling(self, n: int | None, reason: str) -> None:
        """Cap the effective limit at ``n`` (>= 1) until called again; None removes the cap."""
        self._ceiling = None if n is None else max(1, int(n))
        self._apply(reason)

    def __repr__(self) -> str:
        kind = repr(self._ctl._cfg) if self._ctl is not None else str(self._target)
        cap = f", ceiling={self._ceiling}" if self._ceiling is not None else ""
        rate = f", rate={format_rate(self.rate)!r}" if self._bucket is not None else ""
        return (
            f"Limiter({self.name!r}, limit={self._limit}, in_use={self._in_use}, "
            f"waiting={len(self._waiters)}, concurrency={kind}{cap}{rate})"
        )


class _Permit:
    __slots__ = ("_lim", "_pred", "_t0")

    def __init__(self, lim: Limiter, predicate: Callable[[BaseException], bool] | None) -> None:
        self._lim = lim
        self._pred = predicate
        self._t0 = math.nan

    async def __aenter__(self) -> Limiter:
        if not self._lim.try_acquire():
            await self._lim.acquire()
        self._t0 = self._lim._clock.now()
        return self._lim

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        self._lim.release(classify(exc, self._pred), self._lim._clock.now() - self._t0)


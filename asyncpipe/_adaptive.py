"""Adaptive concurrency: find the most requests in flight a service takes before it slows down.

Opt in per stage with ``concurrency="adaptive"`` or ``concurrency=Adaptive(...)``.
The stage's :class:`~asyncpipe._limiter.Limiter` feeds every finished attempt
(outcome, latency, requests in flight) to a controller, which moves a float
limit; the limiter applies its integer part with a little hysteresis.

Two controllers, after Netflix's *concurrency-limits* (AIMD, Vegas, Gradient2) and
TCP/BBR, written from their published descriptions:

``"gradient"`` (default; latency-based)
    Slow start: +:data:`SLOW_START_GAIN` per good sample (x1.5 per round trip) until a
    sample is :data:`SLOW_START_EXIT` x the baseline latency. Then once per *window* (the
    next ``max(WINDOW_MIN, limit / 2)`` attempts that *started after* the previous
    decision, so every decision is judged on evidence gathered under the current limit)::

        gradient  = clamp(tolerance * baseline / mean_latency_of_window, MIN_GRADIENT, 1)
        new_limit = limit * gradient + queue
        limit     = (1 - smoothing) * limit + smoothing * new_limit

    At the equilibrium ``mean/baseline = limit / (limit - queue)``: the limit sits just
    past the knee where latency starts to rise, with about ``queue`` requests waiting.
    Deciding per window instead of per sample (as Gradient2 does) matters: latency reacts
    to a new limit one round trip late, and per-sample updates then overshoot and
    oscillate (measured: limit swinging 11-26 around a knee of 16, 70 % of the best
    throughput; per window: 91-97 %).
``"aimd"`` (loss-based)
    +1 per round trip (after a slow start) while latency stays under
    :data:`AIMD_LATENCY_FACTOR` x baseline; x ``backoff`` on an overload, a timeout or a
    slow sample. Use it when the service signals overload (HTTP 429/503) clearly but its
    latency is noisy.

Both cut the limit by ``backoff`` on an ``"overload"`` or ``"timeout"`` outcome, at
most once per round trip: an attempt that started before the last cut was sent under
the old limit and is not new evidence (so a burst of 30 rejections cuts once, not 30
times). ``"error"`` and ``"cancelled"`` outcomes are ignored: a bad input says
nothing about capacity.

Baseline. The baseline is the lowest *window mean* latency since the last probe. A
minimum never drifts up under sustained load (an EWMA "long-term" latency does, which
lets Gradient2's limit creep upward); taking it over window means rather than single
samples keeps it comparable to the window mean it is divided by (the lowest single
sample of an asyncio service is ~10-20 % below its typical unloaded latency because of
timer jitter, which parked the limit well below the knee: measured 67-90 % of the best
throughput, vs 90-95 %). A minimum would never notice a service that got permanently
slower, so every :data:`PROBE_INTERVAL` (BBR's ProbeRTT) the controller halves the limit
for one round trip and takes the mean of those samples as the new baseline. Cost: about
half a round trip of throughput every 10 s.

>>> Adaptive(max=32)
Adaptive(algorithm='gradient', initial=1, min=1, max=32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from ._clock import Clock
from ._exceptions import DefinitionError

__all__ = ["Adaptive"]

# --- named constants (rationale next to each; the P6 figures come from tests/benchmarks/bench_ratecontrol.py)

# Gradient smoothing per window: move half-way to the proposed limit. The proposal reacts to a limit
# change one window late; with the full step (1.0) a steep service makes the limit ring around the knee
# (loop gain near -0.9 for P6's square-law latency), at 0.5 the ringing dies in ~2 windows.
SMOOTHING = 0.5
# A window closes after max(WINDOW_MIN, limit / 2) samples that started after it opened (~1.5 round trips).
# Fewer than 4 samples make the mean too noisy at low limits.
WINDOW_MIN = 4
# Requests allowed "in the queue" at equilibrium, and the growth per window (x smoothing) while latency
# stays at baseline. Smaller sits closer to the knee (better for services whose latency climbs steeply
# past capacity) but grows more slowly after a cut; 3 puts P6 within ~10 % of its best static limit.
QUEUE = 2.0
# Slow start: limit += SLOW_START_GAIN per good sample, i.e. x1.5 per round trip. TCP doubles, but
# latency shows a new limit only one round trip later, so doubling overshoots to ~3x the knee; x1.5 stays
# under 2x (P6: below the service's reject threshold at 2x its knee).
SLOW_START_GAIN = 0.5
# Latency the gradient accepts above baseline before pushing the limit down. 1.0 = none; Gradient2 uses 1.5,
# which parks the limit well past the knee of a steep service (P6: ~80 % of the best static throughput).
TOLERANCE = 1.0
# Never cut more than half in one sample (Gradient2's floor): one outlier must not collapse the limit.
MIN_GRADIENT = 0.5
# Multiplicative decrease on overload/timeout. 0.8 halves the excess over a 25 % overshoot in one step;
# AIMD's classic 0.5 throws away too much throughput against services that reject only the excess.
BACKOFF = 0.8
# Leave slow start when a sample is this much slower than the baseline: 25 % is above most of the timer
# and scheduling jitter of an asyncio loop at millisecond latencies, and well below a real queue forming.
SLOW_START_EXIT = 1.25
# AIMD treats a sample slower than this x baseline as congestion (Netflix AIMD uses a fixed timeout).
AIMD_LATENCY_FACTOR = 2.0
# Probe the baseline every max(PROBE_INTERVAL s, PROBE_RTTS round trips), dropping to PROBE_FRACTION of the
# limit for about one round trip; BBR probes every 10 s. The RTT multiple keeps the cost <= ~1 % for slow
# services.
PROBE_INTERVAL = 10.0
PROBE_RTTS = 50.0
PROBE_FRACTION = 0.5
# The integer limit moves only when the float limit is this far from it: keeps +-0.5 jitter from
# producing a LimitChanged event every few samples.
HYSTERESIS = 0.75

Algorithm = Literal["gradient", "aimd"]


@dataclass(frozen=True)
class Adaptive:
    """Adaptive concurrency for a stage: bounds, algorithm and tuning.

    ``initial`` is where the limit starts, ``min``/``max`` bound it; the rest default
    to the module's named constants (see the module docstring for what they do).

    >>> Adaptive(algorithm="aimd", initial=4, max=16).max
    16
    >>> Adaptive(min=8, max=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    asyncpipe._exceptions.DefinitionError: Adaptive(min=8, max=4): need 1 <= min <= initial <= max; ...
    """

    algorithm: Algorithm = "gradient"
    initial: int = 1
    min: int = 1
    max: int = 64
    smoothing: float = SMOOTHING
    queue: float = QUEUE
    tolerance: float = TOLERANCE
    backoff: float = BACKOFF
    probe_interval: float = PROBE_INTERVAL

    def __post_init__(self) -> None:
        if self.algorithm not in ("gradient", "aimd"):
            raise DefinitionError(f"Adaptive(algorithm={self.algorithm!r}): choose 'gradient' or 'aimd'.")
        initial = max(self.initial, self.min)
        object.__setattr__(self, "initial", min(initial, self.max))
        if not (1 <= self.min <= self.max):
            raise DefinitionError(
                f"Adaptive(min={self.min}, max={self.max}): need 1 <= min <= initial <= max; "
                "raise max or lower min."
            )
        if not (0 < self.smoothing <= 1 and 0 < self.backoff < 1 and self.tolerance >= 1 and self.queue > 0):
            raise DefinitionError(
                f"{self!r}: need 0 < smoothing <= 1, 0 < backoff < 1, tolerance >= 1 and queue > 0."
            )

    def __repr__(self) -> str:
        tuned = "".join(
            f", {f.name}={getattr(self, f.name)!r}"
            for f in fields(self)[4:]
            if getattr(self, f.name) != f.default
        )
        return (
            f"Adaptive(algorithm={self.algorithm!r}, initial={self.initial}, min={self.min}, "
            f"max={self.max}{tuned})"
        )


class Controller:
    """Shared state: float limit, min-latency baseline with periodic probes, cut-once-per-round-trip."""

    __slots__ = (
        "_cfg",
        "_clock",
        "_floor",
        "_last_cut",
        "_next_probe",
        "_probe_count",
                "_probe_need",
        "_probe_start",
        "_saved",
        "_win_max",
        "_win_n",
        "_win_start",
        "_win_sum",
        "baseline",
        "limit",
        "reason",
        "short",
        "slow_start",
    )

    def __init__(self, cfg: Adaptive, clock: Clock) -> None:
        self._cfg = cfg
        self._clock = clock
        self.limit = float(cfg.initial)
        self.baseline: float | None = None  # lowest window-mean latency since the last probe
        self.short: float | None = None  # mean latency of the last window
        self._floor: float | None = None  # lowest single sample: the reference until a window closes
        self.slow_start = True
        self.reason = "initial"
        self._last_cut = -math.inf
        self._next_probe = clock.now() + cfg.probe_interval
        self._saved: float | None = None  # the limit to restore after a probe; None when not probing
        self._probe_start = 0.0
        self._probe_count = 0
        self._probe_need = 0
        self._open_window(clock.now())

    def _open_window(self, now: float) -> None:
        self._win_start = now
        self._win_n = 0
        self._win_sum = 0.0
        self._win_max = 0

    def sample(self, outcome: str, latency: float | None, inflight: int) -> None:
        """Feed one finished attempt. ``inflight``: attempts out when it finished (itself included)."""
        if outcome == "ok":
            if latency is None or latency < 0:
                return
            if self._saved is not None:
                self._probe(latency)
                return
            if self._floor is None or latency < self._floor:
                self._floor = latency
            self._ok(latency, inflight, self._window(latency, inflight))
            self._maybe_start_probe()
        elif outcome in ("overload", "timeout"):
            self._congestion(outcome, latency)

    def _window(self, latency: float, inflight: int) -> float | None:
        """Add a sample to the window; the window's mean latency when it closes, else None."""
        now = self._clock.now()
        if now - latency < self._win_start:
            return None  # started before the last decision: not evidence about the current limit
        self._win_n += 1
        self._win_sum += latency
        if inflight > self._win_max:
            self._win_max = inflight
        if self._win_n < max(WINDOW_MIN, self.limit / 2):
            return None
        mean = self._win_sum / self._win_n
        self.short = mean
        if self.baseline is None or mean < self.baseline:
            self.baseline = mean
        return mean

    @property
    def reference(self) -> float:
        """The latency taken as "unloaded": the baseline, or the lowest sample before the first window."""
        ref = self.baseline if self.baseline is not None else self._floor
        assert ref is not None
        return ref

    # -- congestion and probes

    def _congestion(self, why: str, latency: float | None) -> bool:
        now = self._clock.now()
        if now - (latency or 0.0) < self._last_cut:
            return False  # sent under the old limit: already accounted for
        if self._saved is not None:  # abandon a probe: restore first, then cut
            self.limit, self._saved = self._saved, None
        self.slow_start = False
        self.limit = max(float(self._cfg.min), self.limit * self._cfg.backoff)
        self._last_cut = now
        self._open_window(now)
        self.reason = why
        return True

    def _maybe_start_probe(self) -> None:
        now = self._clock.now()
        if now < self._next_probe or self.slow_start or self.baseline is None:
            return
        self._saved = self.limit
        self.limit = max(float(self._cfg.min), self.limit * PROBE_FRACTION)
        self._probe_start = now
        self._probe_count = 0
        self._win_sum = 0.0
        self._probe_need = max(WINDOW_MIN, math.ceil(self.limit))
        self.reason = "baseline probe"

    def _probe(self, latency: float) -> None:
        now = self._clock.now()
        if now - latency < self._probe_start:
            return  # sent before the probe lowered the limit: not a probe sample
        self._probe_count += 1
        self._win_sum += latency
        if self._probe_count < self._probe_need:
            return
        self.baseline = self._win_sum / self._probe_count
        assert self._saved is not None
        self.limit, self._saved = self._saved, None
        self._next_probe = now + max(self._cfg.probe_interval, PROBE_RTTS * self.baseline)
        self._open_window(now)
        self.reason = "baseline probe done"

    def _ok(self, latency: float, inflight: int, mean: float | None) -> None:
        """Act on a good sample; ``mean`` is the window's mean latency when this sample closed it."""
        raise NotImplementedError

    def describe(self) -> str:
        """The reason for the latest move, with the numbers behind it (called only on a change)."""
        if self.baseline is None or self.short is None:
            return f"adaptive {self._cfg.algorithm}: {self.reason}"
        return (
            f"adaptive {self._cfg.algorithm}: {self.reason} (latency {self.short * 1e3:.3g} ms, "
            f"baseline {self.baseline * 1e3:.3g} ms)"
        )


class GradientController(Controller):
    """Latency-gradient controller (Vegas/Gradient2 family); see the module docstring."""

    __slots__ = ()

    def _ok(self, latency: float, inflight: int, mean: float | None) -> None:
        cfg = self._cfg
        if self.slow_start:
            if latency <= self.reference * SLOW_START_EXIT:
                if inflight * 2 >= self.limit and self.limit < cfg.max:  # else app-limited: no evidence
                    self.limit = min(float(cfg.max), self.limit + SLOW_START_GAIN)
                    self.reason = "slow start"
                if mean is not None:
                    self._open_window(self._clock.now())
                return
            self.slow_start = False
            self._open_window(self._clock.now())
            return
        if mean is None:
            return
        gradient = min(1.0, max(MIN_GRADIENT, cfg.tolerance * self.reference / mean))
        proposed = self.limit * gradient + cfg.queue
        if proposed <= self.limit or self._win_max * 2 >= self.limit:  # grow only if the limit was used
            new = self.limit + (proposed - self.limit) * cfg.smoothing
            self.reason = "latency at baseline" if new >= self.limit else "latency above baseline"
            self.limit = min(float(cfg.max), max(float(cfg.min), new))
        self._open_window(self._clock.now())


class AIMDController(Controller):
    """Additive increase (+1 per round trip), multiplicative decrease on overload/timeout/slow samples."""

    __slots__ = ()

    def _ok(self, latency: float, inflight: int, mean: float | None) -> None:
        cfg = self._cfg
        if mean is not None:
            self._open_window(self._clock.now())
        if latency > self.reference * AIMD_LATENCY_FACTOR:
            self._congestion("latency over 2x baseline", latency)
            return
        if inflight * 2 < self.limit or self.limit >= cfg.max:
            return
        self.limit = min(float(cfg.max), self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self.reason = "slow start" if self.slow_start else "additive increase"


def make_controller(cfg: Adaptive, clock: Clock) -> Controller:
    """The controller for ``cfg.algorithm``."""
    return (GradientController if cfg.algorithm == "gradient" else AIMDController)(cfg, clock)


def coerce_concurrency(value: int | str | Adaptive) -> int | Adaptive:
    """Normalize a ``concurrency=`` option: an int >= 1, "adaptive", or an :class:`Adaptive`.

    >>> coerce_concurrency("adaptive")
    Adaptive(algorithm='gradient', initial=1, min=1, max=64)
    >>> coerce_concurrency(4)
    4
    """
    if isinstance(value, Adaptive):
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("adaptive", "gradient", "aimd"):
            algo = value.strip().lower()
            return Adaptive(algorithm="gradient" if algo == "adaptive" else algo)  # type: ignore[arg-type]
        raise DefinitionError(f"concurrency={value!r}: use an int >= 1, 'adaptive', or Adaptive(...).")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(f"concurrency={value!r}: use an int >= 1, 'adaptive', or Adaptive(...).")
    return value

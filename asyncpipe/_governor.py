"""The resource governor: keeps a run under its memory budget and off a saturated CPU.

It samples CPU and resident memory of the whole process tree (this process and every
worker process) every ``interval`` seconds, and acts through ceilings
(:meth:`~asyncpipe._limiter.Limiter.set_ceiling`) on two kinds of gates:

- **admission**: how many partitions may be inside the pipeline at once (the engine takes
  an admission permit before asking a source for an item and gives it back when the
  partition leaves the pipeline);
- **CPU-heavy stages** (process/thread executors).

Memory, predictively. Reacting only once RSS crosses the high watermark overshoots when
partitions are big: 32 sources admitted at once with 50 MB each are 1.6 GB before the first
sample can see it. So the governor models ``rss ~= rss0 + in_flight * per_partition``:

1. ``rss0`` is the tree's RSS before anything was admitted (the first sample);
2. every sample with partitions in flight gives ``(rss - rss0) / in_flight``; the estimate
   takes a larger value at once and decays toward smaller ones slowly
   (:data:`ESTIMATE_DECAY`), so one lucky sample between allocations cannot raise the cap;
3. the predicted cap is ``(high_watermark * budget - rss0) / per_partition``;
4. admission starts at :data:`START_CEILING` and ramps by x :data:`RAMP` per sample, only
   while it is fully used and RSS is below the low watermark, never above the prediction;
5. above the high watermark it sheds at once to ``in_flight * high / rss`` (for growth the
   model missed, such as outputs kept in memory).

CPU. When the tree's CPU stays at or above ``cpu_saturation`` of all cores for ``sustain``
seconds, each CPU stage's ceiling steps down by :data:`CPU_STEP` (never below the number of
cores: capping there costs no throughput) and admission steps down too (never below
:data:`ADMISSION_CPU_FLOOR` per core, so CPU stages stay fed). It steps back up after
``sustain`` seconds below ``cpu_saturation - CPU_HYSTERESIS``.

Ceilings never go below 1: at least one partition always moves, and since an admission
permit is only held by a partition that is already inside the pipeline, the run cannot
deadlock on it.

>>> from asyncpipe._limiter import Limiter
>>> gov = ResourceGovernor(memory_budget=1000, sample=lambda: (0.0, 100))
>>> admission = Limiter("<admission>", concurrency=32)
>>> gov.attach(admission, []); admission.limit
1
>>> admission.try_acquire(), admission.try_acquire()
(True, False)
>>> gov.step(0.0, 300); admission.limit  # 200 bytes for one partition: (850 - 100) // 200
3
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
from collections.abc import Callable

from ._clock import Clock, SystemClock
from ._limiter import Limiter

__all__ = ["ResourceGovernor"]

_log = logging.getLogger("asyncpipe.governor")

# Admission starts here when a memory budget is in force: one partition is measured alone before
# the model is trusted with more. (A run with small partitions ramps x RAMP per sample: 1, 4, 16, 64 in
# 0.75 s at the default interval.)
START_CEILING = 1
# Growth per sample while fully used and below the low watermark: x4 reaches any realistic pool in a
# second; the prediction bounds it anyway.
RAMP = 4
# Per-partition estimate: a higher sample replaces it at once; a lower one pulls it down 5 % per sample
# (half-life ~3.5 s at the default 0.25 s interval), long enough to cover one partition's life.
ESTIMATE_DECAY = 0.05
# CPU: multiplicative step down/up per `sustain` period, and the gap below `cpu_saturation` that counts
# as "not saturated any more" (so the limit does not flap around the threshold).
CPU_STEP = 0.75
CPU_HYSTERESIS = 0.15
# Under CPU saturation admission never drops below this many partitions per core.
ADMISSION_CPU_FLOOR = 2


class ResourceGovernor:
    """Samples the process tree and sets admission and CPU-stage ceilings; see the module docstring.

    ``sample()`` returns ``(cpu_percent, rss_bytes)`` of the tree, with cpu in psutil's
    unit (100 = one busy core). The default reads psutil in a worker thread; an injected
    ``sample`` is called on the loop (tests pass a cheap function).

    A pipeline turns it on with ``Pipeline(stages, memory_budget=2 * 2**30)``; driven by
    hand, with fake samples (bytes):

    >>> import asyncpipe as ap
    >>> from asyncpipe._limiter import Limiter
    >>> gov = ap.ResourceGovernor(memory_budget=1_000, sample=lambda: (0.0, 100))
    >>> admission = Limiter("<admission>", concurrency=32)
    >>> gov.attach(admission, [])
    >>> admission.limit, admission.try_acquire()  # one partition is measured alone first
    (1, True)
    >>> gov.step(0.0, 150); admission.limit  # 50 bytes for it, far below budget: ramp x4
    4
    >>> [admission.try_acquire() for _ in range(3)]
    [True, True, True]
    >>> gov.step(0.0, 950); admission.limit  # 4 in flight put RSS over 85 %: shed
    3
    """

    def __init__(
        self,
        *,
        memory_budget: int | None = None,
        high_watermark: float = 0.85,
        low_watermark: float = 0.70,
        cpu_saturation: float = 0.95,
        sustain: float = 2.0,
        interval: float = 0.25,
        clock: Clock | None = None,
        sample: Callable[[], tuple[float, int]] | None = None,
        cpus: int | None = None,
    ) -> None:
        if not 0 < low_watermark < high_watermark <= 1:
            raise ValueError(
                f"need 0 < low_watermark < high_watermark <= 1, got {low_watermark} and {high_watermark}"
            )
        if memory_budget is not None and memory_budget <= 0:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        self.memory_budget = memory_budget
        self.high_watermark = high_watermark
        self.low_watermark = low_watermark
        self.cpu_saturation = cpu_saturation
        self.sustain = sustain
        self.interval = interval
        self._clock = clock if clock is not None else SystemClock()
        self._sample = sample
        self.cpus = cpus or os.cpu_count() or 1
        self.on_sample: Callable[[float, int], None] | None = None
        self.changes = 0  # ceilings changed so far
        self.per_partition = 0.0  # estimated bytes per admitted partition
        self._admission: Limiter | None = None
        self._cpu_stages: list[Limiter] = []
        self._rss0: int | None = None
        self._mem_cap: int = START_CEILING
        self._cpu_adm_cap: int | None = None
        self._cpu_caps: dict[int, int] = {}
        self._hot_since: float | None = None
        self._cool_since: float | None = None
        self._applied: dict[int, int | None] = {}
        self._tree: _TreeSampler | None = None

    def attach(self, admission: Limiter, cpu_stages: list[Limiter], *, rss0: int | None = None) -> None:
        """Govern ``admission`` (partitions inside the pipeline) and the given CPU-heavy stages.

        Call it before the first partition is admitted: it measures the unloaded RSS (``rss0``
        of the model; this process only, one cheap psutil call) and, under a memory budget,
        sets the starting admission ceiling at once, before the first sample.
        """
        self._admission = admission
        self._cpu_stages = list(cpu_stages)
        if rss0 is not None:  # measured by the caller (e.g. including a cluster's workers)
            self._rss0 = int(rss0)
        elif self._sample is not None:
            self._rss0 = int(self._sample()[1])
        else:
            import psutil

            self._rss0 = int(psutil.Process().memory_info().rss)
        if self.memory_budget:
            self._set(admission, START_CEILING if admission.max_limit > START_CEILING else None,
                      "memory budget: start with one partition, then ramp up as its size is measured")

    # -- one decision

    def step(self, cpu_percent: float, rss: int) -> None:
        """Act on one sample (``run`` calls this every ``interval``; tests call it directly)."""
        if self._rss0 is None:
            self._rss0 = rss
        adm = self._admission
        mem_cap = self._memory(rss, adm.in_use if adm is not None else 0) if self.memory_budget else None
        self._cpu(cpu_percent)
        if adm is not None:
            caps = [c for c in (mem_cap, self._cpu_adm_cap) if c is not None]
            cap = min(caps) if caps else None
            if cap is not None and cap >= adm.max_limit:
                cap = None
            why = "memory" if cap is not None and cap == mem_cap else "cpu"
            self._set(adm, cap, self._why(why, cpu_percent, rss))
        for lim in self._cpu_stages:
            self._set(lim, self._cpu_caps.get(id(lim)), self._why("cpu", cpu_percent, rss))

    def _memory(self, rss: int, in_use: int) -> int:
        budget = float(self.memory_budget or 0)
        high, low = self.high_watermark * budget, self.low_watermark * budget
        rss0 = float(self._rss0 or 0)
        if in_use > 0:
            per = max(0.0, rss - rss0) / in_use
            est = self.per_partition
            self.per_partition = per if per > est else est + (per - est) * ESTIMATE_DECAY
        predicted = math.inf
        if self.per_partition > 0:
            predicted = max(1.0, (high - rss0) / self.per_partition)
        cap = self._mem_cap
        if rss > high:
            new = min(cap, in_use * high / rss, predicted)
        elif in_use >= cap and rss < low:
            new = min(cap * RAMP, predicted)
        else:
            new = min(cap, predicted)
        self._mem_cap = max(1, int(min(new, 1 << 30)))
        return self._mem_cap

    def _cpu(self, cpu_percent: float) -> None:
        now = self._clock.now()
        full = 100.0 * self.cpus
        if cpu_percent >= self.cpu_saturation * full:
            self._cool_since = None
            if self._hot_since is None:
                self._hot_since = now
            elif now - self._hot_since >= self.sustain:
                self._hot_since = now  # one step per sustained period
                self._cpu_step(down=True)
        elif cpu_percent < (self.cpu_saturation - CPU_HYSTERESIS) * full:
            self._hot_since = None
            if self._cool_since is None:
                self._cool_since = now
            elif now - self._cool_since >= self.sustain:
                self._cool_since = now
                self._cpu_step(down=False)
        else:
            self._hot_since = self._cool_since = None

    def _cpu_step(self, *, down: bool) -> None:
        for lim in self._cpu_stages:
            cur = self._cpu_caps.get(id(lim), lim.limit)
            if down:
                self._cpu_caps[id(lim)] = max(self.cpus, 1, min(cur, math.floor(lim.limit * CPU_STEP)))
            elif id(lim) in self._cpu_caps:
                up = math.ceil(cur / CPU_STEP)
                if up >= lim.max_limit:
                    del self._cpu_caps[id(lim)]
                else:
                    self._cpu_caps[id(lim)] = up
        adm = self._admission
        if adm is None:
            return
        floor = max(1, ADMISSION_CPU_FLOOR * self.cpus)
        if down:
            cur = self._cpu_adm_cap if self._cpu_adm_cap is not None else max(adm.in_use, floor)
            self._cpu_adm_cap = max(floor, math.floor(cur * CPU_STEP))
        elif self._cpu_adm_cap is not None:
            up = math.ceil(self._cpu_adm_cap / CPU_STEP)
            self._cpu_adm_cap = None if up >= adm.max_limit else up

    def _why(self, what: str, cpu: float, rss: int) -> str:
        if what == "memory":
            budget = (self.memory_budget or 0) / 2**20
            return (
                f"memory: rss {rss / 2**20:.0f} MB of budget {budget:.0f} MB (high-watermark "
                f"{self.high_watermark:.0%}), ~{self.per_partition / 2**20:.1f} MB per partition"
            )
        return (
            f"cpu: {cpu:.0f}% of {self.cpus} cores (saturation {self.cpu_saturation:.0%} "
            f"for {self.sustain:g} s)"
        )

    def _set(self, lim: Limiter, cap: int | None, reason: str) -> None:
        if self._applied.get(id(lim), None) == cap and id(lim) in self._applied:
            return
        self._applied[id(lim)] = cap
        self.changes += 1
        lim.set_ceiling(cap, reason if cap is not None else "governor: ceiling lifted")

    # -- the loop

    async def run(self) -> None:
        """Sample and act every ``interval`` seconds until cancelled; lifts every ceiling on exit."""
        try:
            while True:
                if self._sample is not None:
                    got = self._sample()
                    cpu, rss = (await got) if inspect.isawaitable(got) else got
                else:
                    if self._tree is None:
                        self._tree = _TreeSampler()
                    cpu, rss = await asyncio.to_thread(self._tree.sample)
                    if self.memory_budget is None and self._rss0 is None:
                        self.memory_budget = rss + await asyncio.to_thread(_available_memory)
                self.step(cpu, rss)
                if self.on_sample is not None:
                    self.on_sample(cpu, rss)
                await self._clock.sleep(self.interval)
        finally:
            for lim in [self._admission, *self._cpu_stages]:
                if lim is not None and lim.ceiling is not None:
                    lim.set_ceiling(None, "governor stopped")

    def __repr__(self) -> str:
        budget = f"{self.memory_budget / 2**20:.0f} MB" if self.memory_budget else "auto"
        return (
            f"ResourceGovernor(memory_budget={budget}, watermarks={self.low_watermark:.0%}-"
            f"{self.high_watermark:.0%}, admission cap={self._applied.get(id(self._admission))})"
        )


def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


class _TreeSampler:
    """CPU (psutil units, summed) and RSS of this process and all its descendants."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}
        self.n_processes = 1

    def sample(self) -> tuple[float, int]:
        psutil = self._psutil
        gone = (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
        try:
            tree = [self._me, *self._me.children(recursive=True)]
        except gone:
            tree = [self._me]
        cpu, rss, alive = 0.0, 0, {}
        for p in tree:
            proc = self._procs.get(p.pid, p)  # keep Process objects: cpu_percent() measures since last call
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except gone:
                continue
            alive[p.pid] = proc
        self._procs = alive
        self.n_processes = len(alive)
        return cpu, rss

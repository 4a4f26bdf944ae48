"""A run's limits: the per-stage :class:`~asyncpipe._limiter.Limiter` where something can
change a stage's limit, the resource governor's admission gate, and the ``LimitChanged``
events both publish. Mixed into :class:`~asyncpipe._engine.Run`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._partition import PartitionKey
    from .executors import Executor

__all__ = ["ADMISSION", "RunLimits", "cluster_sampler"]

_log = logging.getLogger("asyncpipe")

#: Pseudo-stage name of the governor's admission gate in LimitChanged events.
ADMISSION = "<admission>"


class RunLimits:
    """Limiters, the governor and admission accounting of a :class:`~asyncpipe._engine.Run`."""

    run_id: str
    pipe: Any
    plan: Any
    clock: Any
    stages: dict[str, Any]
    governed: bool
    tracking: bool
    _refs: dict[int, int]
    _admission: Any
    _governor: Any
    _tasks: list[asyncio.Task[Any]]
    publish: Callable[..., None]

    def _limiter(self, ps: Any, *, force: bool = False) -> Any:
        """A stage's Limiter, only where something can change its limit: adaptive
        concurrency, a rate, or the resource governor (CPU-heavy stages). Static
        stages run without one (their worker count is the limit)."""
        if ps.kind == "reduce":
            return None
        adaptive = not isinstance(ps.concurrency, int)
        cpu_heavy = self.governed and ps.executor in ("thread", "auto", "process")
        if not (adaptive or ps.rate is not None or cpu_heavy or force):
            return None
        from ._limiter import Limiter

        return Limiter(
            ps.name, concurrency=ps.concurrency, rate=ps.rate, clock=self.clock, on_change=self._limit_changed
        )

    def ensure_limiter(self, stage: str) -> Any:
        """The stage's Limiter, created on demand so limits can change at runtime."""
        if stage not in self.plan.names:
            known = ", ".join(self.plan.names)
            raise KeyError(f"No stage {stage!r} in pipeline {self.plan.name!r} (stages: {known}).")
        if stage not in self.stages:
            raise RuntimeError(
                f"Run {self.run_id} has not started its stages yet; change limits once it runs "
                "(e.g. after `await asyncio.sleep(0)`), or set them on the pipeline: pipe.configure(...)."
            )
        rt = self.stages[stage]
        if rt.limiter is None:
            if rt.kind == "reduce":
                raise ValueError(f"Stage {stage!r} is a reduce: it has no concurrency to change.")
            lim = self._limiter(rt.ps, force=True)
            lim.set_concurrency(rt.conc, reason="initial")
            rt.limiter = lim
        return rt.limiter

    def _limit_changed(self, stage: str, kind: str, old: Any, new: Any, reason: str) -> None:
        from ._events import LimitChanged

        if stage == ADMISSION:
            kind = "admission"
        self.publish(LimitChanged, stage=stage, kind=kind, old=old, new=new, reason=reason)
        rt = self.stages.get(stage)
        if (rt is not None and kind == "concurrency" and rt.limiter is not None and not rt.closing
                and rt.kind != "reduce"):
            rt.raise_limit(int(rt.limiter.max_limit))

    def track(self, pkey: PartitionKey, delta: int) -> None:
        """Admission accounting while the governor is on: an input item holds one
        admission permit until every envelope of its partitions has been consumed."""
        index = pkey.index
        if index < 0:
            return
        refs = self._refs
        left = refs.get(index, 0) + delta
        if left > 0:
            refs[index] = left
        else:
            refs.pop(index, None)
            self._admission.release("ok")

    async def _start_governor(self, loop: asyncio.AbstractEventLoop) -> None:
        from ._governor import ResourceGovernor
        from ._limiter import Limiter

        sources = [rt for rt in self.stages.values() if rt.kind == "source"]
        fan_out = max(1, sum(rt.conc for rt in sources))
        self._admission = Limiter(
            ADMISSION, concurrency=fan_out, clock=self.clock, on_change=self._limit_changed
        )
        sample = cluster_sampler([rt.executor for rt in self.stages.values()])
        self._governor = ResourceGovernor(
            memory_budget=self.pipe.memory_budget, clock=self.clock, sample=sample
        )
        heavy = [
            rt.limiter for rt in self.stages.values() if rt.limiter is not None and rt.ps.executor != "async"
        ]
        # before the first item: the baseline memory the governor's model starts from
        rss0 = None if sample is None else (await sample())[1]
        self._governor.attach(self._admission, heavy, rss0=rss0)
        self.tracking = True
        self._tasks.append(loop.create_task(self._governor.run(), name="asyncpipe:governor"))


def cluster_sampler(executors: list[Executor]) -> Callable[[], Any] | None:
    """When stages run on a cluster, the governor's sample: this process tree's CPU and RSS
    plus the workers' memory as the scheduler reports it (None: no cluster, use psutil)."""
    clients = {id(c): c for ex in executors if ex.remote and (c := getattr(ex, "client", None)) is not None}
    if not clients:
        return None
    from ._governor import _TreeSampler
    from .executors._dask import worker_memory

    tree = _TreeSampler()

    async def sample() -> tuple[float, int]:
        cpu, rss = await asyncio.to_thread(tree.sample)
        for client in clients.values():
            try:
                rss += await worker_memory(client)
            except Exception:  # a scheduler hiccup must not stop the run: count what we know
                _log.debug("could not read worker memory from the scheduler", exc_info=True)
        return cpu, rss

    return sample

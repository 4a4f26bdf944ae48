"""Stages with several inputs: per-partition joins (with broadcast reduce outputs) and reduces."""

from __future__ import annotations

import asyncio
from typing import Any

from ._exceptions import StageError
from ._logging import set_partition, set_task_context
from ._partition import ALL, PartitionKey
from ._stagerun import FAILED, STOP, Lazy, StageRun


class JoinRun(StageRun):
    """A map/sink stage fed by several upstreams: partitions are matched by key.

    Upstreams that produce a single partition (reduces) are broadcast: every
    partition waits for their value and receives it.
    """

    joined = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(2, self.conc))
        self.broadcast_slots = [i for i, up in enumerate(self.slots) if up in self.ps.broadcast]
        self.dispatcher: asyncio.Task[None] | None = None

    def start_workers(self, n: int) -> None:
        super().start_workers(n)
        if self.dispatcher is None:
            self.dispatcher = asyncio.get_running_loop().create_task(
                self.dispatch(), name=f"asyncpipe:{self.name}:join"
            )
            self.workers.append(self.dispatcher)

    async def upstream_done(self) -> None:
        self.open_upstreams -= 1
        if self.open_upstreams == 0:
            await self.inbox.put(STOP)

    async def dispatch(self) -> None:
        n = len(self.slots)
        per_partition = n - len(self.broadcast_slots)
        pending: dict[PartitionKey, list[Any]] = {}
        shared: dict[int, tuple[Any, Any]] = {}
        waiting: list[tuple[PartitionKey, list[Any]]] = []
        run = self.run
        inbox, put = self.inbox, self.q.put
        while True:
            env = await inbox.get()
            if env is STOP:
                break
            slot, pkey, value, key = env
            if slot in self.broadcast_slots:
                shared[slot] = (value, key)
                if len(shared) == len(self.broadcast_slots):
                    for wkey, entry in waiting:
                        await self._emit(wkey, entry, shared, put)
                    waiting.clear()
                continue
            entry = pending.get(pkey)
            if entry is None:
                entry = pending[pkey] = [[None] * n, [None] * n, 0]
            entry[0][slot], entry[1][slot] = value, key
            entry[2] += 1
            if run.tracking:
                run.track(pkey, -1)
            if entry[2] == per_partition:
                del pending[pkey]
                if len(shared) == len(self.broadcast_slots):
                    await self._emit(pkey, entry, shared, put)
                else:
                    waiting.append((pkey, entry))
        for pkey, entry in [*pending.items(), *waiting]:
            missing = [
                self.slots[i] for i in range(n) if entry[0][i] is None and i not in self.broadcast_slots
            ]
            if not missing:  # complete but a broadcast input never arrived
                missing = [self.slots[i] for i in self.broadcast_slots if i not in shared]
            self.skipped += 1
            self.fail(
                pkey,
                StageError(
                    f"Stage {self.name!r} got no {', '.join(map(repr, missing))} output "
                    f"for partition {pkey.label}; "
                    "the upstream produced nothing for it.",
                    stage=self.name,
                    partition=pkey,
                ),
                0,
                run.clock.time(),
            )
            await self.deliver(pkey, FAILED, None)
        self.closing = True
        for _ in range(self.live):
            await self.q.put(STOP)

    async def _emit(
        self, pkey: PartitionKey, entry: list[Any], shared: dict[int, tuple[Any, Any]], put: Any
    ) -> None:
        values, keys = entry[0], entry[1]
        for slot, (v, k) in shared.items():
            values[slot], keys[slot] = v, k
        if any(v is FAILED for v in values):
            self.skipped += 1
            await self.deliver(pkey, FAILED, None)
            return
        if self.run.tracking:
            self.run.track(pkey, 1)
        await put((pkey, tuple(values), tuple(keys)))

    async def worker(self) -> None:
        q, run = self.q, self.run
        set_task_context(run.run_id, self.name)
        try:
            while True:
                if run.paused:
                    await run.resume_event.wait()
                env = await q.get()
                if env is STOP:
                    break
                pkey, values, keys = env
                set_partition(pkey)
                await self.handle(pkey, values, keys)
                if run.tracking:
                    run.track(pkey, -1)
                env = values = None  # an idle worker keeps no partition alive
        finally:
            self.live -= 1
        if self.live == 0:
            await self.run.stage_closed(self)


class ReduceRun(StageRun):
    """Collects every partition of its upstreams, then calls the function once."""

    def start_workers(self, n: int) -> None:
        self.live = 1
        self.workers.append(
            asyncio.get_running_loop().create_task(self.collect(), name=f"asyncpipe:{self.name}")
        )

    async def upstream_done(self) -> None:
        self.open_upstreams -= 1
        if self.open_upstreams == 0:
            await self.q.put(STOP)

    async def collect(self) -> None:
        got: list[dict[PartitionKey, tuple[Any, Any]]] = [{} for _ in self.slots]
        run = self.run
        try:
            while True:
                env = await self.q.get()
                if env is STOP:
                    break
                slot, pkey, value, key = env
                if value is not FAILED:
                    got[slot][pkey] = (value, key)
                if run.tracking:
                    run.track(pkey, -1)
            await self.finish(got)
        finally:
            self.live = 0
        await self.run.stage_closed(self)

    async def finish(self, got: list[dict[PartitionKey, tuple[Any, Any]]]) -> None:
        ordered = [sorted(g.items(), key=lambda kv: kv[0].sort_key()) for g in got]
        keys = tuple(tuple(k for _, (_, k) in part) for part in ordered)
        flat_keys = tuple(
            f"{len(p)}:" + ",".join(str(k) for k in ks) for p, ks in zip(ordered, keys, strict=True)
        )
        values = tuple([v for _, (v, _) in part] for part in ordered)
        key = parts = None
        reason = "cache disabled"
        if self.cache_on and all(k is not None for ks in keys for k in ks):
            hit, key, reason, parts = self.cache_key(ALL, flat_keys)
            if hit:
                self.cached += 1
                self.done += 1
                self.records.append((ALL, "cached", 0.0, 0, "cache hit"))
                await self.deliver(ALL, Lazy(self, ALL, key, values), key)
                return
        try:
            resolved = await self._prepare(values)
        except Exception as exc:
            self.fail(ALL, exc, 1, self.run.clock.time())
            await self.deliver(ALL, FAILED, None)
            return
        out = await self.compute(ALL, resolved, reason)
        if out is not FAILED and key is not None:
            self.run.cache.store(self.name, key, await self.cacheable(out), parts, ALL.id)
        await self.deliver(ALL, out, key if out is not FAILED else None)

    async def _prepare(self, values: tuple[list[Any], ...]) -> tuple[Any, ...]:
        """Load/fetch every partition of every input; concatenate when ``concat=True``
        (on the cluster when this reduce runs on a remote executor)."""
        resolved: list[Any] = []
        for slot, part in enumerate(values):
            part = [await v.get() if type(v) is Lazy else v for v in part]
            fetcher = self.fetchers[slot] if self.fetchers else None
            if fetcher is not None:  # fetched concurrently: Dask merges them into one gather
                part = list(await asyncio.gather(*[_fetch(fetcher, v) for v in part]))
            resolved.append(part)
        if self.ps.stage.options.concat:
            if self.executor.remote:
                resolved = [await self.executor.submit(_concat, (part, self.name), {}) for part in resolved]
            else:
                resolved = [await asyncio.to_thread(_concat, part, self.name) for part in resolved]
        return tuple(resolved)

    async def recompute(self, pkey: PartitionKey, inputs: tuple[Any, ...], key: str) -> Any:
        out = await self.compute(ALL, await self._prepare(inputs), "entry corrupt")
        if out is FAILED:
            raise StageError(f"Stage {self.name!r} failed recomputing", stage=self.name, partition=ALL)
        self.run.cache.store(self.name, key, out, None, ALL.id)
        return out


async def _fetch(executor: Any, value: Any) -> Any:
    return await executor.fetch(value) if executor.is_ref(value) else value


def _concat(parts: list[Any], stage: str) -> Any:
    import pandas as pd

    if not parts:
        return pd.DataFrame()
    bad = next((type(p).__name__ for p in parts if not isinstance(p, pd.DataFrame | pd.Series)), None)
    if bad is not None:
        raise TypeError(
            f"reduce stage {stage!r} has concat=True but an upstream partition is a {bad}, not a DataFrame"
        )
    return pd.concat(parts, ignore_index=False)

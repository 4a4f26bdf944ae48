"""A stage's side of the cache: keys, cached inputs loaded on demand, remote values.

:class:`Lazy` stands for a cached output that nobody has loaded yet: a hit on a
downstream stage never loads its upstream outputs. :class:`CacheSide` is the part of
:class:`~asyncpipe._stagerun.StageRun` that turns inputs into values a call can use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._exceptions import CacheError, StageError
from ._partition import FAILED

if TYPE_CHECKING:
    from ._partition import PartitionKey
    from ._stagerun import StageRun

__all__ = ["CacheSide", "Lazy"]


class Lazy:
    """A cached output not loaded yet; loads on demand, recomputes if the entry is bad."""

    __slots__ = ("inputs", "key", "pkey", "rt")

    def __init__(self, rt: StageRun, pkey: PartitionKey, key: str, inputs: tuple[Any, ...]) -> None:
        self.rt, self.pkey, self.key, self.inputs = rt, pkey, key, inputs

    async def get(self) -> Any:
        try:
            return await self.rt.run.cache.load(self.rt.name, self.key)
        except CacheError:
            return await self.rt.recompute(self.pkey, self.inputs, self.key)


class CacheSide:
    """Cache keys, cached and remote inputs: mixed into :class:`~asyncpipe._stagerun.StageRun`."""

    run: Any
    name: str
    code_key: str
    opts_key: str
    slots: tuple[str, ...]
    executor: Any
    fetchers: list[Any]
    any_fetch: bool
    worker_store: Any
    compute: Any  # Attempts.compute

    def cache_key(self, pkey: PartitionKey, keys: tuple[Any, ...]) -> tuple[bool, str, str, Any]:
        from .cache import KeyParts

        parts = KeyParts(self.name, self.code_key, self.opts_key, keys)
        look = self.run.cache.lookup(parts, pkey.id)
        return look.hit, look.key, look.reason, parts

    def bind_fetchers(self) -> None:
        """Per input slot, the remote executor whose references must be fetched before calling.

        A value computed by a remote executor (Dask) stays where it is while it moves
        between stages of that same executor; any other consumer fetches it here.
        """
        ups = [self.run.stages[name] for name in self.slots]
        self.fetchers = [
            up.executor if up.executor.remote and up.executor is not self.executor else None for up in ups
        ]
        self.any_fetch = any(f is not None for f in self.fetchers)

    async def resolve(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        if any(type(v) is Lazy for v in values):
            values = tuple([await self.load(v) if type(v) is Lazy else v for v in values])
        if self.any_fetch:
            values = tuple(
                [
                    v if f is None or not f.is_ref(v) else await f.fetch(v)
                    for v, f in zip(values, self.fetchers, strict=False)
                ]
            )
        return values

    async def load(self, lazy: Lazy) -> Any:
        """A cached input: on shared storage a worker of this stage's executor reads it
        itself (the value stays on the cluster); otherwise it is loaded here."""
        if self.worker_store is not None:
            from .cache._index import stage_dirname
            from .cache._remote import load_entry

            where = (self.worker_store.location, stage_dirname(lazy.rt.name), lazy.key)
            try:
                return await self.executor.submit(load_entry, where, {})
            except Exception:  # missing or corrupt there: load (and recompute) here
                pass
        return await lazy.get()

    async def cacheable(self, value: Any) -> Any:
        """The value to write to the cache: a remote result is fetched (the client caches it)."""
        if self.executor.remote and self.executor.is_ref(value):
            return await self.executor.fetch(value)
        return value

    async def recompute(self, pkey: PartitionKey, inputs: tuple[Any, ...], key: str) -> Any:
        """A cache entry turned out unusable when loaded: compute it again."""
        values = await self.resolve(inputs)
        out = await self.compute(pkey, values, "entry corrupt")
        if out is FAILED:
            raise StageError(
                f"Stage {self.name!r} failed recomputing {pkey.label}", stage=self.name, partition=pkey
            )
        self.run.cache.store(self.name, key, out, None, pkey.id)
        return out

"""A minimal stand-in for the engine's cache protocol, for tests and the P3 benchmark.

It drives :class:`asyncpipe.cache.Cache` exactly as the engine does: code keys once per
stage (in a thread), ``open``, then per partition and stage ``lookup`` -> lazy ``load``
on a hit, or compute (in a thread) + ``store`` on a miss, with lineage keys; only the
outputs asked for are loaded; ``flush`` before the run returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from asyncpipe.cache import Cache, KeyParts, fingerprint


class _Lazy:
    def __init__(self, cache: Cache, stage: str, key: str) -> None:
        self.cache, self.stage, self.key = cache, stage, key

    async def get(self) -> Any:
        return await self.cache.load(self.stage, self.key)


async def run_chain(
    cache: Cache | None, stages: Sequence[Any], items: Sequence[Any]
) -> tuple[list[Any], dict[str, dict[str, str]]]:
    """Run a linear chain ``stages[0](item) -> stages[1](x) -> ...`` over ``items``.

    Returns (final outputs in item order, {stage: {partition_id: "hit" or miss reason}}).
    """
    report: dict[str, dict[str, str]] = {s.name: {} for s in stages}
    codes: dict[str, str] = {}
    if cache is not None:
        codes = await asyncio.to_thread(lambda: {s.name: cache.code_key(s)[0] for s in stages})
        await cache.open([s.name for s in stages])

    async def one(item: Any) -> Any:
        fp = await asyncio.to_thread(fingerprint, item)
        pid = fp[:16]
        value: Any = item
        upstream_key = fp
        for st in stages:
            if cache is None:
                value = await asyncio.to_thread(st.fn, await _resolve(value))
                continue
            parts = KeyParts(st.name, codes[st.name], "", (upstream_key,))
            look = cache.lookup(parts, pid)
            report[st.name][pid] = "hit" if look.hit else look.reason
            if look.hit:
                value = _Lazy(cache, st.name, look.key)
            else:
                value = await asyncio.to_thread(st.fn, await _resolve(value))
                cache.store(st.name, look.key, value, parts, pid)
            upstream_key = look.key
        return await _resolve(value)

    try:
        outs = await asyncio.gather(*(one(i) for i in items))
    finally:
        if cache is not None:
            await cache.flush()
    return list(outs), report


async def _resolve(value: Any) -> Any:
    return await value.get() if isinstance(value, _Lazy) else value

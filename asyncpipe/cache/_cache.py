"""The Cache facade the engine talks to: keys, lookups, loads, background writes.

A stage output's key is built from :class:`KeyParts` (stage, code key, options,
input keys) — in-pipeline data is never hashed. Lookups are O(1) with no I/O;
loads and writes run in threads; the memory tier answers repeated hits::

    >>> import asyncio, tempfile
    >>> cache = Cache(tempfile.mkdtemp())
    >>> parts = KeyParts("double", "c0de", "", ("in-1",))
    >>> async def demo():
    ...     await cache.open(["double"])
    ...     first = cache.lookup(parts, "p1")
    ...     cache.store("double", parts.key, 42, parts, "p1")
    ...     await cache.flush()
    ...     return first, cache.lookup(parts, "p1").hit, await cache.load("double", parts.key)
    >>> first, hit, value = asyncio.run(demo())
    >>> first.reason, hit, value
    ('not cached before', True, 42)
    >>> cache.close()
"""

from __future__ import annotations

import asyncio
import functools
import os
import pathlib
import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import xxhash

from .._cpuslots import slot as cpu_slot
from .._exceptions import CacheError, CacheWarning
from . import _manage
from ._codekey import code_key as _code_key
from ._codememo import MEMO as CODE_MEMO
from ._fingerprint import fingerprint as _fingerprint
from ._index import Record, StageIndex, append_log, read_stage, record_line, stage_dirname
from ._memory import MISSING, MemoryTier, estimate_size, freeze, thaw
from ._store import CorruptEntry, ParquetStoreBackend, _Pickled, choose_format, entry_id, open_store

__all__ = ["Cache", "CacheLookup", "KeyParts"]

#: Writer threads. Two keep Parquet encoding (which releases the GIL) off the
#: critical path on the 2-core target without starving the stages.
WRITE_THREADS = 2
#: Outputs up to this many bytes enter the memory tier when stored; bigger ones only
#: when a later run loads them. Holding every big frame of a cold run in memory while
#: it is written made cold P3 runs 1.7-2x slower than uncached ones here (against
#: 1.5x without, measured ad hoc): the kernel's sys time tripled with ~1 GB more resident.
ADMIT_ON_STORE = 8 << 20
#: The code memo's file in a cache location (function identity -> normalized-source hash).
CODE_MEMO_FILE = "_codekeys.json"
#: Pickled snapshots bigger than this are unpickled in a thread rather than on the loop.
_THAW_INLINE = 1 << 20


@dataclass(frozen=True)
class KeyParts:
    """What one (stage, partition) output's key is made of."""

    stage: str
    code: str
    options: str
    inputs: tuple[str, ...]

    @functools.cached_property
    def key(self) -> str:
        """xxh3_128 hex over all parts (about a microsecond)."""
        joined = "\x1f".join((self.stage, self.code, self.options, *self.inputs))
        return xxhash.xxh3_128_hexdigest(joined.encode())

    def record(self) -> Record:
        inputs = xxhash.xxh3_64_hexdigest("\x1f".join(self.inputs).encode())
        return Record(self.key, self.code, xxhash.xxh3_64_hexdigest(self.options.encode()), inputs)


@dataclass(frozen=True)
class CacheLookup:
    """Hit or miss, and why: "" on a hit, else one of the reasons in docs/caching.md."""

    hit: bool
    reason: str
    key: str


class Cache:
    """Memoizes stage outputs in ``location`` (Parquet for frames, pickle otherwise)."""

    def __init__(self, location: str | os.PathLike[str], *, memory_limit: int = 512 * 2**20) -> None:
        text = os.fspath(location)
        #: a ``file://`` location is shared storage: cluster workers read and write entries there
        self.shared = text.startswith("file://")
        if "://" in text and not self.shared:
            raise ValueError(
                f"Cache location {text!r}: only local paths and file:// URLs (a directory every "
                "worker mounts) are supported. Mount object storage as a file system to share it."
            )
        self.location = pathlib.Path(text[len("file://"):] if self.shared else text).expanduser().absolute()
        self._backend: ParquetStoreBackend = open_store(self.location)
        self._mem = MemoryTier(memory_limit)
        self._index: dict[str, StageIndex] = {}
        self._all_keys: set[str] = set()
        self._code_funcs: dict[str, dict[str, str]] = {}
        self._logged_codes: set[tuple[str, str]] = set()
        self._pending: dict[str, Future[None]] = {}
        self._deferred: list[str] = []
        self._warned: set[tuple[str, str]] = set()
        self._writer: ThreadPoolExecutor | None = None

    # -- keys ---------------------------------------------------------------------------
    def code_key(self, stage: Any) -> tuple[str, dict[str, str]]:
        """(key, {qualname: hash}) of ``stage.fn`` and its same-module helpers (blocking).

        Uses the code memo saved in this location (see :meth:`save_code_memo`).
        """
        CODE_MEMO.load(str(self.location / CODE_MEMO_FILE))
        options = getattr(stage, "options", None)
        version = getattr(options, "version", None)
        key, funcs = _code_key(getattr(stage, "fn", stage), version)
        self._code_funcs[key] = funcs
        return key, funcs

    def save_code_memo(self) -> None:
        """Blocking: save what :meth:`code_key` learnt, so the next process skips parsing."""
        CODE_MEMO.save(str(self.location / CODE_MEMO_FILE))  # errors ignored: it is a memo

    fingerprint = staticmethod(_fingerprint)

    # -- a run --------------------------------------------------------------------------
    async def open(self, stages: list[str]) -> None:
        """Read each stage's entry list and log in a thread, so lookups need no I/O."""
        self.adopt(await asyncio.to_thread(self.read_indexes, stages))

    def read_indexes(self, stages: list[str]) -> dict[str, StageIndex]:
        """Blocking half of :meth:`open`: read the indexes (call in a thread)."""
        import pyarrow.parquet  # noqa: F401  (import here, in a thread, not at the first load/store)

        return {s: read_stage(str(self.location / stage_dirname(s))) for s in stages}

    def adopt(self, loaded: dict[str, StageIndex]) -> None:
        """Loop half of :meth:`open`: use indexes read by :meth:`read_indexes`."""
        for stage, idx in loaded.items():
            old = self._index.get(stage)
            if old is not None:  # keep what this process knows but is not on disk yet
                idx.keys |= {k for k in old.keys if k in self._pending}
                idx.codes = {**old.codes, **idx.codes}
                idx.corrupt |= old.corrupt - idx.keys
            self._index[stage] = idx
            self._all_keys |= idx.keys

    def lookup(self, parts: KeyParts, partition_id: str) -> CacheLookup:
        """Hit if the key is in memory or on disk; on a miss, say why (no I/O)."""
        key = parts.key
        idx = self._stage(parts.stage)
        if key in self._mem or key in idx.keys:
            return CacheLookup(True, "", key)
        known = any(i in self._all_keys for i in parts.inputs[:8])
        reason = idx.explain(key, parts.record(), partition_id, self._code_funcs, known)
        return CacheLookup(False, reason, key)

    async def load(self, stage: str, key: str) -> Any:
        """The stored value: from memory, else from disk in a thread. CacheError if unusable."""
        frozen = self._mem.get(key)
        if frozen is not MISSING:
            return thaw(frozen) if _thaws_inline(frozen) else await asyncio.to_thread(thaw, frozen)
        pending = self._pending.get(key)
        if pending is not None:  # evicted from memory before its write finished
            await asyncio.wrap_future(pending)
        try:
            value, frozen, nbytes = await asyncio.to_thread(self._read, stage, key)
        except CorruptEntry as exc:
            self._warn(f"Cache entry for stage {stage!r} ({key}) is corrupt and was removed; {exc}")
            await asyncio.to_thread(self._remove_corrupt, stage, key)
            raise CacheError(f"Corrupt cache entry for stage {stage!r}: {exc}") from exc
        except KeyError as exc:
            self._stage(stage).keys.discard(key)
            raise CacheError(f"Cache entry for stage {stage!r} ({key}) vanished (cleared?).") from exc
        except CacheError as exc:
            self._warn(str(exc))
            raise
        self._mem.put(key, stage, frozen, nbytes)
        return value

    async def load_many(self, stage: str, keys: list[str]) -> dict[str, Any]:
        """Load several of ``stage``'s entries with few thread hops (a warm run's outputs).

        Memory hits are answered at once; the rest are read from disk one after the
        other in one thread: small entries decode faster there than in several threads
        fighting for the GIL, and big ones use Arrow's own thread pool. Keys that do not
        load cleanly (pending, corrupt, gone) are left out: :meth:`load` reports and
        recovers them one by one.
        """
        out: dict[str, Any] = {}
        todo: list[str] = []
        for key in keys:
            frozen = self._mem.get(key)
            if frozen is MISSING:
                if key not in self._pending:
                    todo.append(key)
            elif _thaws_inline(frozen):
                out[key] = thaw(frozen)
        if todo:
            for key, value, frozen, nbytes in await asyncio.to_thread(self._read_batch, stage, todo):
                self._mem.put(key, stage, frozen, nbytes)
                out[key] = value
        return out

    def store(
        self, stage: str, key: str, value: Any, parts: KeyParts | None, partition_id: str
    ) -> Future[None] | None:
        """Keep ``value`` in memory and write it to disk in the background. Never raises.

        ``parts`` may be None (a recompute after a corrupt entry): the key is then stored
        without updating the partition's record. Returns the write's future (done when
        the entry is durable), so the engine can bound the writes in flight per stage;
        None when nothing was scheduled.
        """
        try:
            frozen = freeze(value)
            fmt, problem = choose_format(frozen)
            if problem and (stage, problem) not in self._warned:
                self._warned.add((stage, problem))
                self._warn(f"Stage {stage!r} output cached as pickle, not Parquet: {problem}.")
            nbytes = estimate_size(frozen)
            if nbytes <= ADMIT_ON_STORE:
                self._mem.put(key, stage, frozen, nbytes)
            record = self._register(stage, key, parts, partition_id)
            return self._submit(key, stage, key, frozen, fmt, record, partition_id)
        except Exception as exc:
            self._warn(f"Could not cache stage {stage!r} output: {exc!r}; the run continues.")
        return None

    async def flush(self) -> None:
        """Wait until every stored value is durable on disk; re-emit writer warnings here."""
        while self._pending:
            futures = [asyncio.wrap_future(f) for f in list(self._pending.values())]
            await asyncio.gather(*futures, return_exceptions=True)
        self._emit_deferred()

    def close(self) -> None:
        """Stop the writer threads (waiting for pending writes)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
        self._emit_deferred()

    # -- management -----------------------------------------------------------------------
    def entries(self, stage: str | None = None) -> Any:
        """DataFrame of entries: stage, key, format, bytes, created, age_s."""
        return _manage.list_entries(self.location, stage)

    def info(self) -> dict[str, Any]:
        """Location, per-stage counts and bytes, totals, and the memory tier's use."""
        out = _manage.info(self.location)
        out["memory"] = {"entries": len(self._mem), "bytes": self._mem.nbytes, "limit": self._mem.limit}
        return out

    def clear(self, stage: str | None = None) -> int:
        """Remove the entries of ``stage`` (or all) on disk and in memory; return the count."""
        self._mem.clear(stage)
        for name, idx in self._index.items():
            if stage is None or name == stage:
                idx.keys.clear()
                idx.records.clear()
        return _manage.clear(self.location, stage)

    def prune(self, *, max_age: float | None = None, max_bytes: int | None = None) -> int:
        """Remove entries older than ``max_age`` s, then oldest first down to ``max_bytes``."""
        removed = _manage.prune(self.location, max_age=max_age, max_bytes=max_bytes)
        if removed:
            for stage, idx in self._index.items():
                idx.keys = read_stage(str(self.location / stage_dirname(stage))).keys
        return removed

    def __repr__(self) -> str:
        return f"Cache({str(self.location)!r}, memory={len(self._mem)} entries/{self._mem.nbytes} B)"

    def _repr_html_(self) -> str:
        import html

        inf = _manage.info(self.location)
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{v['entries']}</td><td>{_manage.human_size(v['bytes'])}</td></tr>"
            for s, v in sorted(inf["stages"].items())
        )
        return (
            f"<b>asyncpipe cache</b> at <code>{html.escape(str(self.location))}</code>: "
            f"{inf['entries']} entries, {_manage.human_size(inf['bytes'])} on disk; "
            f"{len(self._mem)} in memory ({_manage.human_size(self._mem.nbytes)})"
            f"<table><tr><th>stage</th><th>entries</th><th>size</th></tr>{rows}</table>"
        )

    # -- internals ------------------------------------------------------------------------
    def _stage(self, stage: str) -> StageIndex:
        idx = self._index.get(stage)
        if idx is None:
            idx = self._index[stage] = StageIndex()
        return idx

    def _call_id(self, stage: str, key: str) -> list[str]:
        return entry_id(stage_dirname(stage), key)

    def _read(self, stage: str, key: str) -> tuple[Any, Any, int]:
        value, nbytes = self._backend.read_entry_sized(self._call_id(stage, key))
        frozen = freeze(value)
        return value, frozen, nbytes

    def _read_batch(self, stage: str, keys: list[str]) -> list[tuple[str, Any, Any, int]]:
        out = []
        for key in keys:
            try:
                out.append((key, *self._read(stage, key)))
            except Exception:  # load() reports and recovers this entry alone
                continue
        return out

    def record(self, stage: str, key: str, parts: KeyParts | None, partition_id: str) -> None:
        """Register an entry that was written elsewhere (by a cluster worker, on shared storage)."""
        record = self._register(stage, key, parts, partition_id)
        if record is not None:  # only the log line is ours to write
            self._submit(f"record:{key}", stage, key, None, "", record, partition_id)

    def _register(self, stage: str, key: str, parts: KeyParts | None, partition_id: str) -> Record | None:
        """Put a new entry in the stage's index (and the partition's record, when known)."""
        idx = self._stage(stage)
        idx.keys.add(key)
        self._all_keys.add(key)
        idx.corrupt.discard(key)
        record = parts.record() if parts is not None else None
        if record is not None:
            idx.records[partition_id] = record
            if record.code in self._code_funcs:
                idx.codes.setdefault(record.code, self._code_funcs[record.code])
        return record

    def _submit(self, pending: str, *job: Any) -> Future[None]:
        """Run ``_write(*job)`` on a writer thread, tracked as ``pending`` until it is done."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="asyncpipe-cache")
        fut = self._writer.submit(self._write, *job)
        self._pending[pending] = fut
        fut.add_done_callback(functools.partial(self._done, pending))
        return fut

    def _write(self, stage: str, key: str, frozen: Any, fmt: str, record: Record | None, pid: str) -> None:
        try:
            size = 0
            if fmt:  # "" when the entry was written by a worker and only the log line is ours
                with cpu_slot():  # encoding burns a core: share them with CPU-bound stages
                    size = self._backend.write_entry(self._call_id(stage, key), frozen, fmt)
            if record is not None:
                lines: list[dict[str, Any]] = []
                if (stage, record.code) not in self._logged_codes and record.code in self._code_funcs:
                    self._logged_codes.add((stage, record.code))
                    lines.append({"code": record.code, "funcs": self._code_funcs[record.code]})
                lines.append(record_line(pid, record))
                append_log(str(self.location / stage_dirname(stage)), lines)
            if size and type(frozen).__module__.startswith("pandas"):
                self._mem.resize(key, size)  # the uncompressed file size, not a deep count
        except Exception as exc:
            self._stage(stage).keys.discard(key)
            self._deferred.append(f"Cache write for stage {stage!r} failed ({exc!r}); the run continues.")

    def _done(self, key: str, fut: Future[None]) -> None:
        if self._pending.get(key) is fut:
            del self._pending[key]

    def _remove_corrupt(self, stage: str, key: str) -> None:
        idx = self._stage(stage)
        idx.keys.discard(key)
        idx.corrupt.add(key)
        shutil.rmtree(os.path.join(self.location, *self._call_id(stage, key)), ignore_errors=True)
        try:  # so that the next run, too, says why it recomputes
            append_log(str(self.location / stage_dirname(stage)), [{"corrupt": key}])
        except OSError:
            pass

    def _warn(self, message: str) -> None:
        warnings.warn(message, CacheWarning, stacklevel=3)

    def _emit_deferred(self) -> None:
        while self._deferred:
            self._warn(self._deferred.pop(0))


def _thaws_inline(frozen: Any) -> bool:
    """Whether a memory-tier value is cheap to thaw on the loop (all but big pickles)."""
    return not (isinstance(frozen, _Pickled) and len(frozen.data) > _THAW_INLINE)

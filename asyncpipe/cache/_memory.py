"""The in-memory tier: a byte-bounded LRU of frozen values, safe across threads.

Values are kept *frozen* so a stage that mutates what it was handed cannot change
the cache: DataFrames as shallow copies (pandas copy-on-write makes any later write
copy the data), Arrow tables and immutable scalars as they are, anything else as
joblib pickle bytes, thawed into a fresh object on every hit::

    >>> tier = MemoryTier(limit=100)
    >>> tier.put("a", "stage", freeze([1, 2]), 40)
    >>> tier.put("b", "stage", freeze("x"), 80)   # evicts "a": 120 > 100
    >>> tier.get("a") is MISSING, thaw(tier.get("b"))
    (True, 'x')
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Final

from ._store import _Pickled

__all__ = ["MISSING", "MemoryTier", "estimate_size", "freeze", "thaw"]

MISSING: Final = object()
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), frozenset)


def freeze(value: Any) -> Any:
    """A snapshot of ``value`` that later mutations of ``value`` cannot reach (cheap for frames)."""
    if isinstance(value, _IMMUTABLE):
        return value
    mod = type(value).__module__
    if mod.startswith("pandas"):
        import pandas as pd

        if isinstance(value, pd.DataFrame | pd.Series):
            return value.copy(deep=False)  # copy-on-write (pandas >= 3): O(columns)
    elif mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(value, pa.Table):
            return value  # immutable
    if type(value) is tuple and all(isinstance(v, _IMMUTABLE) for v in value):
        return value
    return _Pickled.of(value)


def thaw(frozen: Any) -> Any:
    """A value equal to the one frozen, safe to hand to a stage."""
    if isinstance(frozen, _Pickled):
        return frozen.load()
    copy = getattr(frozen, "copy", None)
    if copy is not None and type(frozen).__module__.startswith("pandas"):
        return copy(deep=False)
    return frozen


def estimate_size(frozen: Any) -> int:
    """Bytes held by a frozen value, O(1)-ish for frames (loop-safe). Frames count 8 bytes
    a cell; the writer corrects the figure with the entry's (uncompressed) file size."""
    if isinstance(frozen, _Pickled):
        return len(frozen.data)
    if isinstance(frozen, (str, bytes)):
        return len(frozen) + 50
    mod = type(frozen).__module__
    if mod.startswith("pandas"):
        ncols = frozen.shape[1] if frozen.ndim == 2 else 1
        return 8 * len(frozen) * (ncols + 1)
    if mod.startswith("pyarrow"):
        return int(frozen.nbytes)
    return 64


class MemoryTier:
    """Byte-bounded LRU of frozen values keyed by cache key."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[str, tuple[str, Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return MISSING
            self._items.move_to_end(key)
            return item[1]

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def put(self, key: str, stage: str, frozen: Any, nbytes: int) -> None:
        if nbytes > self.limit:
            self.discard(key)
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._items[key] = (stage, frozen, nbytes)
            self._bytes += nbytes
            self._evict()

    def resize(self, key: str, nbytes: int) -> None:
        """Correct the size of an entry (the writer thread knows its file size)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._bytes += nbytes - item[2]
                self._items[key] = (item[0], item[1], nbytes)
                self._evict()

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[2]

    def clear(self, stage: str | None = None) -> None:
        with self._lock:
            for key in [k for k, v in self._items.items() if stage is None or v[0] == stage]:
                self._bytes -= self._items.pop(key)[2]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _evict(self) -> None:
        while self._bytes > self.limit and self._items:
            _, (_, _, size) = self._items.popitem(last=False)
            self._bytes -= size

"""Partition identity: which input item (and which of its sub-partitions) a value belongs to."""

from __future__ import annotations

import pickle
from typing import Any, Final

import xxhash

__all__ = ["ALL", "FAILED", "STOP", "PartitionKey", "cheap_to_fingerprint", "item_fingerprint"]


def item_fingerprint(item: Any) -> str:
    """A stable content hash of an input item, the same across runs and processes.

    Plain values (str, bytes, numbers, tuples, paths) hash by their text; anything
    else through :func:`asyncpipe.cache.fingerprint` when that module is present,
    else by pickle (stable for plain containers).
    """
    if isinstance(item, str):
        data = b"s" + item.encode("utf-8", "surrogatepass")
    elif isinstance(item, bytes):
        data = b"b" + item
    elif isinstance(item, bool | int | float | type(None)):
        data = b"n" + repr(item).encode()
    elif isinstance(item, tuple) and all(isinstance(x, str | int | float | bool | type(None)) for x in item):
        data = b"t" + repr(item).encode()
    else:
        try:
            from .cache import fingerprint
        except ImportError:  # pragma: no cover - the cache package ships with asyncpipe
            data = b"p" + pickle.dumps(item, protocol=5)
        else:
            return fingerprint(item)
    return xxhash.xxh3_128_hexdigest(data)


_SCALARS = (str, bytes, int, float, bool, type(None))
#: Items this small are fingerprinted on the event loop (microseconds); others in a thread.
_INLINE_BYTES = 1 << 20


def cheap_to_fingerprint(item: Any) -> bool:
    """True for scalars, short strings and short tuples of scalars (hash on the loop).

    >>> cheap_to_fingerprint((3, "2024-06-01")), cheap_to_fingerprint(["a", "list"])
    (True, False)
    """
    if isinstance(item, str | bytes):
        return len(item) <= _INLINE_BYTES
    if isinstance(item, _SCALARS):
        return True
    return (
        type(item) is tuple
        and len(item) <= 32
        and all(isinstance(x, _SCALARS) and not (isinstance(x, str | bytes) and len(x) > 4096) for x in item)
    )


class PartitionKey:
    """Identity of one partition: the input item's position, sub-index and item.

    - ``index``: position of the input item in the run's inputs (sorting key).
    - ``sub``: 0, or the n-th partition a generator source yielded for the item.
    - ``item``: the input item itself.
    - ``id``: a stable, filename-safe hex string derived from the item's content
      and ``sub``; the same item gives the same id in every run and process, so
      sinks key their idempotent writes on it.
    - ``label``: a short human-readable string.

    >>> key = PartitionKey(3, 0, "data/2024-01.csv")
    >>> key.label
    'data/2024-01.csv'
    >>> len(key.id)
    16
    >>> key == PartitionKey(3, 0, "data/2024-01.csv")
    True
    """

    __slots__ = ("_id", "index", "item", "sub")

    def __init__(self, index: int, sub: int, item: Any) -> None:
        self.index = index
        self.sub = sub
        self.item = item
        self._id: str | None = None

    @property
    def id(self) -> str:
        if self._id is None:
            base = item_fingerprint(self.item)
            self._id = (base if self.sub == 0 else xxhash.xxh3_64_hexdigest(f"{base}/{self.sub}".encode()))[
                :16
            ]
        return self._id

    @property
    def label(self) -> str:
        if self is ALL:
            return "*"
        text = self.item if isinstance(self.item, str) else repr(self.item)
        if len(text) > 60:
            text = text[:28] + "…" + text[-28:]
        return text if self.sub == 0 else f"{text}[{self.sub}]"

    def sort_key(self) -> tuple[int, int]:
        return (self.index, self.sub)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PartitionKey):
            return NotImplemented
        return self.index == other.index and self.sub == other.sub

    def __lt__(self, other: PartitionKey) -> bool:
        return (self.index, self.sub) < (other.index, other.sub)

    def __hash__(self) -> int:
        return hash((self.index, self.sub))

    def __repr__(self) -> str:
        return f"PartitionKey({self.index}, {self.sub}, {self.item!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartitionKey, (self.index, self.sub, self.item))


#: The single partition a reduce stage produces.
ALL: Final = PartitionKey(-1, 0, "*")

#: What flows in place of a value whose partition failed upstream (skipped downstream).
FAILED: Any = object()
#: Tells a stage's worker that no more partitions will come.
STOP: Any = object()

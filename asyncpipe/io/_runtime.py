"""Per-process runtime state of a store object: locks, caches, clients.

Store callables are pickled (process workers, Dask) and hashed (cache keys hash
a callable object's ``__dict__``). Their configuration must survive both; their
locks, connection caches and HTTP clients must not. Keeping the latter in one
:class:`Runtime` attribute that pickles to a fresh, empty instance does both.

>>> import pickle
>>> rt = Runtime()
>>> rt.cache["x"] = 1
>>> pickle.loads(pickle.dumps(rt)).cache
{}
"""

from __future__ import annotations

import threading
from typing import Any


class Runtime:
    """A lock plus a dict of per-process caches; pickles (and hashes) as empty."""

    __slots__ = ("cache", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache: dict[Any, Any] = {}

    def __reduce__(self) -> tuple[type[Runtime], tuple[()]]:
        return (Runtime, ())

    def __repr__(self) -> str:
        return "Runtime()"

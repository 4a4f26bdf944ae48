"""Memoization of stage outputs: Parquet through joblib.Memory, keyed by lineage.

- :class:`Cache` — the facade the engine uses (lookup / load / store / flush) and the
  management API (entries / info / clear / prune).
- :class:`KeyParts`, :class:`CacheLookup` — what a key is made of; hit or miss and why.
- :func:`fingerprint` — content hash of external inputs (layout-independent for frames).
- :class:`ParquetStoreBackend` — the joblib store backend, registered as ``"asyncpipe"``.

See docs/caching.md.
"""

from ._cache import Cache, CacheLookup, KeyParts
from ._codekey import code_key
from ._fingerprint import fingerprint
from ._store import CorruptEntry, ParquetStoreBackend, parquet_problem

__all__ = [
    "Cache",
    "CacheLookup",
    "CorruptEntry",
    "KeyParts",
    "ParquetStoreBackend",
    "code_key",
    "fingerprint",
    "parquet_problem",
]

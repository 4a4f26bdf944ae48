"""Memoization of stage outputs: Parquet through joblib.Memory, keyed by lineage.

- :class:`Cache` — the facade the engine uses (lookup / load / store / flush) and the
  management API (entries / info / clear / prune).
- :class:`KeyParts`, :class:`CacheLookup` — what a key is made of; hit or miss and why.
- :func:`fingerprint` — content hash of external inputs (layout-independent for frames).
- :class:`ParquetStoreBackend` — the joblib store backend, registered as ``"asyncpipe"``.

A pipeline caches by default (under ``<workdir>/cache``): a re-run computes only
what is new or changed.

>>> import tempfile
>>> import pandas as pd
>>> import asyncpipe as ap
>>> @ap.source
... def load(n):
...     return pd.DataFrame({"x": range(n)})
>>> @ap.stage
... def running_total(load):
...     return load.assign(total=load["x"].cumsum())
>>> pipe = ap.Pipeline([load, running_total], workdir=tempfile.mkdtemp())
>>> first = pipe.run_sync([3, 4])
>>> second = pipe.run_sync([3, 4, 5])
>>> second.explain("running_total")[["partition", "status"]].values.tolist()
[['3', 'cached'], ['4', 'cached'], ['5', 'ok']]
>>> ap.cache.fingerprint(pd.DataFrame({"x": [1, 2]})) == ap.cache.fingerprint(pd.DataFrame({"x": [1, 2]}))
True

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

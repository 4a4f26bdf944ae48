"""A joblib store backend that keeps DataFrames and Arrow tables as Parquet.

Registered as ``"asyncpipe"`` with :func:`joblib.memory.register_store_backend`, so
it also works under plain :class:`joblib.Memory`::

    >>> import joblib, tempfile, pandas as pd
    >>> import asyncpipe.cache
    >>> mem = joblib.Memory(tempfile.mkdtemp(), backend="asyncpipe", verbose=0)
    >>> @mem.cache
    ... def table(n):
    ...     return pd.DataFrame({"x": range(n)})
    >>> table(3).equals(table(3))
    True

Each entry is one directory ``<location>/<stage>/<key>/`` holding one file:

- ``output.parquet`` for frames that Parquet round-trips exactly, and Arrow tables;
  readable by pandas, pyarrow and DuckDB as is;
- ``output.pkl`` (joblib's pickle) for anything else.

Both formats carry an xxh3 checksum so a truncated or damaged file is detected,
never half-read: Parquet in its footer key-value metadata (covering every byte
before the footer), pickle in a 40-byte trailer after the pickle stream (which
``pickle``/``joblib.load`` ignore). Files are written to a temporary name and
renamed into place, so readers see the old entry, the new one, or none.

This module leans on joblib internals (``StoreBackendMixin``'s item layout and the
``_concurrency_safe_write`` helper): ``tests/cache/test_store_contract.py`` pins them.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import stat
from typing import Any, ClassVar

import xxhash
from joblib import numpy_pickle
from joblib._store_backends import CacheItemInfo, FileSystemStoreBackend
from joblib.memory import Memory, register_store_backend

from .._exceptions import CacheError

__all__ = [
    "PARQUET",
    "PICKLE",
    "CorruptEntry",
    "ParquetStoreBackend",
    "entry_id",
    "open_store",
    "parquet_problem",
]

PARQUET = "output.parquet"
PICKLE = "output.pkl"
_META_KEY = b"asyncpipe"
_PICKLE_MAGIC = b"\x00asyncpipe-xxh3:"  # 16 bytes, then 8 bytes length + 16 bytes digest
_TRAILER = len(_PICKLE_MAGIC) + 8 + 16
_PARQUET_UNITS = ("ms", "us", "ns")  # pyarrow reads "s" back as "ms"
_NULLABLE = frozenset(
    {"boolean", "Float32", "Float64"} | {f"{p}Int{b}" for p in ("", "U") for b in (8, 16, 32, 64)}
)


class CorruptEntry(CacheError):
    """A cache file exists but fails its checksum or cannot be decoded."""


def parquet_problem(df: Any) -> str | None:
    """Why ``df`` would not round-trip exactly through Parquet, or None if it would.

    O(columns): checks names, dtypes, index, attrs — never the values.
    """
    import pandas as pd

    cols = df.columns
    if isinstance(cols, pd.MultiIndex) or not all(type(c) is str for c in cols):
        return "column names are not all strings"
    if cols.dtype == object:
        return "column index has object dtype"
    if not cols.is_unique:
        return "duplicate column names"
    if cols.name is not None and type(cols.name) is not str:
        return "columns.name is not a string"
    if len(cols) == 0:
        return "frame has no columns"
    if not df.flags.allows_duplicate_labels:
        return "flags.allows_duplicate_labels is False"
    if df.attrs:
        try:
            if json.loads(json.dumps(df.attrs)) != df.attrs:
                return "attrs do not survive JSON"
        except (TypeError, ValueError):
            return "attrs are not JSON-serializable"
    index = df.index
    if not isinstance(index, pd.RangeIndex):
        if any(n is not None and type(n) is not str for n in index.names):
            return "index names are not strings"
        if any(n in cols for n in index.names if n is not None):
            return "an index name is also a column name"
        if getattr(index, "freq", None) is not None:
            return "index has a freq"
        levels = index.levels if isinstance(index, pd.MultiIndex) else [index]
        for level in levels:
            problem = _dtype_problem(level.dtype)
            if problem:
                return f"index: {problem}"
    for name, dtype in df.dtypes.items():
        problem = _dtype_problem(dtype)
        if problem:
            return f"column {name!r}: {problem}"
    return None


def _dtype_problem(dtype: Any) -> str | None:
    import numpy as np
    import pandas as pd

    if isinstance(dtype, np.dtype):
        if dtype.kind in "biuf" and dtype.itemsize <= 8:
            return None
        if dtype.kind in "mM" and np.datetime_data(dtype)[0] in _PARQUET_UNITS:
            return None
        return f"dtype {dtype} is not stored exactly"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return None if dtype.unit in _PARQUET_UNITS else f"dtype {dtype} is not stored exactly"
    if isinstance(dtype, pd.CategoricalDtype):
        if isinstance(dtype.categories.dtype, pd.StringDtype) and len(dtype.categories):
            return None  # (empty categories come back as object)
        return "categorical with non-string categories"
    if isinstance(dtype, pd.StringDtype | pd.PeriodDtype) or str(dtype) in _NULLABLE:
        return None
    return f"dtype {dtype} is not stored exactly"


class _HashingWriter(io.RawIOBase):
    """A write-only file wrapper that hashes and counts what goes through it."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.digest = xxhash.xxh3_128()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.digest.update(b)
        n = self._f.write(b)
        self.size += len(memoryview(b))
        return n


class ParquetStoreBackend(FileSystemStoreBackend):
    """joblib ``FileSystemStoreBackend`` writing Parquet for frames, pickle otherwise."""

    #: Parquet writer options. Cache files favour write speed over size: with dictionary
    #: encoding, compression and statistics on, a 250,000 x 10 frame took 100-300 ms to
    #: write here, without them ~40 ms (files ~1.4x larger); reads are as fast. Found with
    #: tests/benchmarks/bench_cache.py (P3 goal: a cold run <= 1.3x an uncached one).
    write_options: ClassVar[dict[str, Any]] = {
        "compression": "none",
        "use_dictionary": False,
        "write_statistics": False,
    }

    # -- location handling: user-only directories ------------------------------------
    def configure(self, location: str, verbose: int = 0, backend_options: dict | None = None) -> None:
        os.makedirs(location, mode=0o700, exist_ok=True)
        super().configure(location, verbose=verbose, backend_options=backend_options)

    def create_location(self, location: str) -> None:
        os.makedirs(location, mode=0o700, exist_ok=True)

    def location_is_private(self) -> bool:
        """True if the store root belongs to us and nobody else may write to it."""
        try:
            st = os.stat(self.location)
        except OSError:
            return False
        return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)

    # -- joblib's item API -------------------------------------------------------------
    def dump_item(self, call_id: list[str], item: Any, verbose: int = 1) -> None:
        import warnings

        from .._exceptions import CacheWarning

        try:
            fmt, problem = choose_format(item)
            if problem:
                warnings.warn(f"Cached as pickle, not Parquet: {problem}.", CacheWarning, stacklevel=2)
            self.write_entry(call_id, item, fmt)
        except Exception as exc:
            warnings.warn(f"Unable to cache to disk: {exc!r}", CacheWarning, stacklevel=2)

    def load_item(
        self, call_id: list[str], verbose: int = 1, timestamp: Any = None, metadata: Any = None
    ) -> Any:
        return self.read_entry(call_id)

    def contains_item(self, call_id: list[str]) -> bool:
        path = os.path.join(self.location, *call_id)
        return os.path.exists(os.path.join(path, PARQUET)) or os.path.exists(os.path.join(path, PICKLE))

    def get_items(self) -> list[CacheItemInfo]:
        items = []
        for dirpath, _, filenames in os.walk(self.location):
            for name in (PARQUET, PICKLE):
                if name in filenames:
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    when = datetime.datetime.fromtimestamp(st.st_mtime)
                    items.append(CacheItemInfo(dirpath, st.st_size, when))
        return items

    # -- the real work (raising versions used by asyncpipe.cache.Cache) ---------------
    def write_entry(self, call_id: list[str], value: Any, fmt: str) -> int:
        """Atomically write ``value`` as ``fmt`` (PARQUET or PICKLE); return the file size."""
        path = os.path.join(self.location, *call_id)
        self.create_location(path)
        target = os.path.join(path, fmt)
        writer = self._write_parquet if fmt == PARQUET else self._write_pickle
        self._concurrency_safe_write(value, target, writer)
        other = os.path.join(path, PICKLE if fmt == PARQUET else PARQUET)
        if os.path.exists(other):  # a previous run chose the other format for this key
            os.remove(other)
        return os.path.getsize(target)

    def read_entry(self, call_id: list[str]) -> Any:
        """Load one entry. KeyError if absent; CorruptEntry if damaged."""
        return self.read_entry_sized(call_id)[0]

    def read_entry_sized(self, call_id: list[str]) -> tuple[Any, int]:
        """(value, size of its file): the file size stands in for the value's memory
        footprint (entries are stored uncompressed), without a deep memory count."""
        path = os.path.join(self.location, *call_id)
        for fmt, reader in ((PARQUET, _read_parquet), (PICKLE, self._read_pickle)):
            filename = os.path.join(path, fmt)
            try:
                with open(filename, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            try:
                return reader(data, filename), len(data)
            except CorruptEntry:
                raise
            except Exception as exc:
                raise CorruptEntry(f"Cache entry {filename} is unreadable: {exc!r}") from exc
        raise KeyError(f"No cache entry at {path}")

    @staticmethod
    def _write_parquet(value: Any, filename: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        kind = "table" if isinstance(value, pa.Table) else "frame"
        # nthreads=1: columns are mostly zero-copy (numeric, Arrow-backed strings), and the
        # default converts them in a thread pool made for each call (~8 ms of hand-offs per
        # entry with the stages holding the GIL)
        table = value if kind == "table" else pa.Table.from_pandas(value, preserve_index=None, nthreads=1)
        # Integrity: a CRC32 per data page, written and verified natively by pyarrow (a
        # Python-level hashing file object cost ~35 ms per 20 MB entry in GIL round trips),
        # plus our footer key, which only a complete write has.
        marker = json.dumps({"kind": kind, "crc": "page"}).encode()
        meta = {**(table.schema.metadata or {}), _META_KEY: marker}
        # Dictionary columns (pandas categoricals) keep dictionary encoding: without it the
        # categories come back in order of appearance, not in their own order.
        dict_cols = [f.name for f in table.schema if pa.types.is_dictionary(f.type)]
        options = {**ParquetStoreBackend.write_options, "use_dictionary": dict_cols or False}
        # Integers delta-encoded: as fast to write as PLAIN, and far smaller for the usual
        # counts, codes and ids (P3's transform output: 27.1 -> 18.4 MiB, +0.8 ms), so
        # the kernel copies fewer bytes into the page cache (~0.6 ms per MB here).
        ints = {f.name: "DELTA_BINARY_PACKED" for f in table.schema if pa.types.is_integer(f.type)}
        if ints:
            options["column_encoding"] = ints
        pq.write_table(table.replace_schema_metadata(meta), filename, write_page_checksum=True, **options)

    @staticmethod
    def _write_pickle(value: Any, filename: str) -> None:
        with open(filename, "wb") as f:
            sink = _HashingWriter(f)
            if isinstance(value, _Pickled):
                sink.write(value.data)
            else:
                numpy_pickle.dump(value, sink)
            trailer = _PICKLE_MAGIC + sink.size.to_bytes(8, "little") + sink.digest.digest()
            f.write(trailer)

    def _read_pickle(self, data: bytes, filename: str) -> Any:
        view = memoryview(data)
        trailer = view[-_TRAILER:]
        if len(view) < _TRAILER or bytes(trailer[: len(_PICKLE_MAGIC)]) != _PICKLE_MAGIC:
            raise CorruptEntry(f"Cache entry {filename} is truncated (no checksum trailer).")
        size = int.from_bytes(trailer[len(_PICKLE_MAGIC) : len(_PICKLE_MAGIC) + 8], "little")
        body = view[:-_TRAILER]
        if size != len(body) or xxhash.xxh3_128_digest(body) != bytes(trailer[-16:]):
            raise CorruptEntry(f"Cache entry {filename} fails its checksum.")
        if not self.location_is_private():
            raise CacheError(
                f"Refusing to unpickle {filename}: the cache directory {self.location} is writable by "
                "other users. Make it private (chmod 700) or clear it."
            )
        return numpy_pickle.load(io.BytesIO(body))


class _Pickled:
    """A value already pickled (snapshotted) by joblib's pickler."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, value: Any) -> _Pickled:
        buf = io.BytesIO()
        numpy_pickle.dump(value, buf)
        return cls(buf.getvalue())

    def load(self) -> Any:
        return numpy_pickle.load(io.BytesIO(self.data))


#: Entries bigger than this (bytes) are decoded with Arrow's thread pool.
_THREADED_READ = 4 << 20


def _read_parquet(data: bytes, filename: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(data) < 12 or data[-4:] != b"PAR1":
        raise CorruptEntry(f"Cache entry {filename} is truncated (no Parquet footer).")
    pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True)
    raw = (pf.metadata.metadata or {}).get(_META_KEY)
    if raw is None:
        raise CorruptEntry(f"Cache entry {filename} has no asyncpipe marker (not written by asyncpipe).")
    meta = json.loads(raw)
    # Arrow's thread pool pays off for big entries only: for small ones its hand-offs
    # cost more than the decoding (a 6 x 80 frame: 0.46 ms with threads, 0.29 without).
    threads = len(data) > _THREADED_READ
    try:
        table = pf.read(use_threads=threads)
    except OSError as exc:  # a page CRC mismatch, a damaged page header...
        raise CorruptEntry(f"Cache entry {filename} fails its page checksums: {exc}") from exc
    schema_meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != _META_KEY}
    table = table.replace_schema_metadata(schema_meta)
    return table if meta["kind"] == "table" else table.to_pandas(use_threads=threads)


def choose_format(value: Any) -> tuple[str, str | None]:
    """(file name, reason it is not Parquet when a frame had to fall back to pickle)."""
    mod = type(value).__module__
    if mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(value, pa.Table):
            return PARQUET, None
    if mod.startswith("pandas"):
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            problem = parquet_problem(value)
            return (PICKLE, problem) if problem else (PARQUET, None)
    return PICKLE, None


register_store_backend("asyncpipe", ParquetStoreBackend)


def open_store(location: os.PathLike[str]) -> ParquetStoreBackend:
    """The store backend of a cache directory, opened through ``joblib.Memory``. Pass a
    pathlib location: joblib then adds no ``joblib/`` level under it."""
    return Memory(location, backend="asyncpipe", verbose=0).store_backend


def entry_id(stage_dir: str, key: str) -> list[str]:
    """The backend's call id of an entry: ``<stage dir>/<key>/`` under the location."""
    return [stage_dir, key]

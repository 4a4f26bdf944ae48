"""Contract between ParquetStoreBackend and joblib's internals (joblib>=1.4,<1.7).

If one of these fails after a joblib upgrade, the backend must be adapted before the
version range in pyproject.toml is widened.
"""

from __future__ import annotations

import inspect
import os

import joblib
import joblib._store_backends as sb
import joblib.memory as jm
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from packaging.version import Version

import asyncpipe.cache  # noqa: F401  (registers the backend)
from asyncpipe.cache import ParquetStoreBackend
from asyncpipe.cache._store import PARQUET, PICKLE


def test_joblib_version_in_pinned_range():
    assert Version("1.4") <= Version(joblib.__version__) < Version("1.7")


def test_internals_we_lean_on_exist_with_expected_signatures():
    assert jm._STORE_BACKENDS["asyncpipe"] is ParquetStoreBackend
    assert issubclass(ParquetStoreBackend, sb.FileSystemStoreBackend)
    mixin = sb.StoreBackendMixin
    for name, params in {
        "load_item": ["self", "call_id", "verbose", "timestamp", "metadata"],
        "dump_item": ["self", "call_id", "item", "verbose"],
        "contains_item": ["self", "call_id"],
        "_concurrency_safe_write": ["self", "to_write", "filename", "write_func"],
        "clear_path": ["self", "call_id"],
    }.items():
        assert list(inspect.signature(getattr(mixin, name)).parameters) == params, name
    assert list(inspect.signature(sb.FileSystemStoreBackend.configure).parameters)[:3] == [
        "self", "location", "verbose"]
    assert sb.CacheItemInfo._fields == ("path", "size", "last_access")


def test_memory_with_path_location_uses_it_as_store_root(tmp_path):
    mem = joblib.Memory(tmp_path, backend="asyncpipe", verbose=0)
    assert isinstance(mem.store_backend, ParquetStoreBackend)
    assert mem.store_backend.location == str(tmp_path)


def test_memory_cache_stores_frames_as_parquet_and_hits(tmp_path):
    mem = joblib.Memory(tmp_path, backend="asyncpipe", verbose=0)
    calls = []

    @mem.cache
    def make(n):
        calls.append(n)
        return pd.DataFrame({"x": range(n), "s": [str(i) for i in range(n)]})

    first = make(4)
    second = make(4)
    assert calls == [4]
    pd.testing.assert_frame_equal(first, second)
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert any(f.endswith(PARQUET) for f in files)
    assert not any(f.endswith(PICKLE) for f in files)
    pd.testing.assert_frame_equal(pd.read_parquet(next(f for f in files if f.endswith(PARQUET))), first)


def test_memory_cache_pickles_other_values(tmp_path):
    mem = joblib.Memory(tmp_path, backend="asyncpipe", verbose=0)
    f = mem.cache(lambda n: {"n": n})
    assert f(2) == {"n": 2} == f(2)
    files = [f for _, _, fs in os.walk(tmp_path) for f in fs]
    assert PICKLE in files


def test_pyarrow_verifies_page_checksums_on_read(tmp_path):
    """Cache integrity leans on pyarrow's per-page CRC32: a flipped data byte must fail the read."""
    table = pa.table({"a": list(range(10_000)), "b": [str(i) for i in range(10_000)]})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, write_page_checksum=True, compression="none", use_dictionary=False)
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the first data page
    with pytest.raises(OSError):
        pq.ParquetFile(pa.BufferReader(bytes(data)), page_checksum_verification=True).read()


@pytest.mark.parametrize("mode", [0o700])
def test_store_root_is_created_user_only(tmp_path, mode):
    root = tmp_path / "new" / "cache"
    joblib.Memory(root, backend="asyncpipe", verbose=0)
    assert root.stat().st_mode & 0o777 == mode

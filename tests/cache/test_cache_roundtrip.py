"""Values come back exactly: Parquet when it round-trips, pickle + CacheWarning otherwise."""

from __future__ import annotations

import os
import warnings

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from asyncpipe import CacheError, CacheWarning
from asyncpipe.cache import CorruptEntry, ParquetStoreBackend, parquet_problem
from asyncpipe.cache._store import PARQUET, PICKLE, choose_format


@pytest.fixture
def backend(tmp_path):
    b = ParquetStoreBackend()
    b.configure(str(tmp_path / "store"))
    return b


def _roundtrip(backend, value, key="0" * 32):
    fmt, _ = choose_format(value)
    backend.write_entry(["s", key], value, fmt)
    return fmt, backend.read_entry(["s", key])


def assert_same_frame(a, b):
    pd.testing.assert_frame_equal(
        a, b, check_exact=True, check_column_type=True, check_index_type=True, check_freq=True,
        check_flags=True,
    )
    assert a.attrs == b.attrs


_dtypes = st.sampled_from(
    ["int64", "int8", "uint32", "float64", "float32", "bool", "datetime64[ns]", "datetime64[us]",
     "datetime64[s]", "str", "object", "category", "Int64", "boolean", "timedelta64[ns]"]
)


@st.composite
def frames(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=4) | st.integers(0, 3), min_size=1, max_size=4,
                          unique=True))
    cols = []
    for name in names:
        dtype = draw(_dtypes)
        if dtype in ("str", "category"):
            elems = st.text(max_size=3)
            base = "str"
        elif dtype == "object":
            elems = st.one_of(st.text(max_size=2), st.integers(-5, 5))
            base = "object"
        elif dtype in ("Int64", "boolean"):
            elems = st.integers(-3, 3) if dtype == "Int64" else st.booleans()
            base = "object"
        elif dtype.startswith("datetime64") or dtype.startswith("timedelta64"):
            elems = st.integers(0, 10**9)
            base = "int64"
        else:
            elems = None
            base = dtype
        cols.append((name, dtype, hpd.column(name, elements=elems, dtype=base)))
    df = draw(hpd.data_frames([c for _, _, c in cols],
                              index=hpd.range_indexes(max_size=6) | hpd.indexes(dtype="int64", max_size=6)))
    for name, dtype, _ in cols:
        if dtype in ("category", "Int64", "boolean") or dtype.startswith(("datetime", "timedelta")):
            df[name] = df[name].astype(dtype)
    if draw(st.booleans()):
        df.attrs = {"source": draw(st.text(max_size=3))}
    return df


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(df=frames())
def test_generated_frames_round_trip_exactly_or_fall_back_to_pickle(backend, df):
    fmt, out = _roundtrip(backend, df)
    assert (fmt == PARQUET) == (parquet_problem(df) is None)
    assert_same_frame(df, out)


@pytest.mark.parametrize(
    "df, problem",
    [
        (pd.DataFrame({0: [1], 1: [2]}), "column names are not all strings"),
        (pd.DataFrame({"a": pd.Series(["x", 1], dtype=object)}), "object"),
        (pd.DataFrame(np.ones((1, 2)), columns=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])),
         "column names"),
        (pd.DataFrame({"t": pd.Series(pd.to_datetime(["2020-01-01"])).astype("datetime64[s]")}),
         "datetime64[s]"),
        (pd.DataFrame({"a": [1, 2]}, index=pd.date_range("2020", periods=2, freq="D")), "freq"),
        (pd.DataFrame({"c": pd.Categorical([1, 2])}), "categorical"),
        (pd.DataFrame(index=pd.RangeIndex(3)), "no columns"),
        (pd.DataFrame({"a": [1]}).set_flags(allows_duplicate_labels=False), "flags"),
    ],
)
def test_lossy_frames_are_detected_and_still_round_trip(backend, df, problem):
    assert problem in parquet_problem(df)
    fmt, out = _roundtrip(backend, df)
    assert fmt == PICKLE
    assert_same_frame(df, out)


def test_attrs_round_trip_through_parquet(backend):
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs = {"unit": "m", "n": 2}
    fmt, out = _roundtrip(backend, df)
    assert fmt == PARQUET
    assert out.attrs == {"unit": "m", "n": 2}
    df.attrs = {"t": (1, 2)}  # a tuple comes back from JSON as a list: pickle instead
    assert parquet_problem(df) == "attrs do not survive JSON"


def test_arrow_tables_round_trip(backend):
    table = pa.table({"a": pa.array([1, None], pa.int32()), "b": pa.array(["x", "y"], pa.large_string())})
    fmt, out = _roundtrip(backend, table)
    assert fmt == PARQUET and isinstance(out, pa.Table)
    assert out.equals(table)


def test_parquet_entries_open_directly_with_pandas_pyarrow_and_duckdb(backend):
    df = pd.DataFrame({"x": [1.5, 2.5], "s": ["a", "b"], "t": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    _roundtrip(backend, df)
    path = os.path.join(backend.location, "s", "0" * 32, PARQUET)
    assert_same_frame(pd.read_parquet(path), df)
    assert pq.read_table(path).num_rows == 2
    got = duckdb.sql(f"SELECT sum(x) AS x, string_agg(s, ',') AS s FROM read_parquet('{path}')").fetchall()[0]
    assert got == (4.0, "a,b")
    glob = os.path.join(backend.location, "s", "*", PARQUET)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(2,)]


def test_integer_columns_are_delta_encoded_and_read_back_everywhere(backend):
    df = pd.DataFrame({"i": np.arange(1000, dtype="int64") % 7, "u": np.arange(1000, dtype="uint32"),
                       "x": np.linspace(0, 1, 1000)})
    _roundtrip(backend, df)
    path = os.path.join(backend.location, "s", "0" * 32, PARQUET)
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {row_group.column(i).path_in_schema: row_group.column(i).encodings
                 for i in range(row_group.num_columns)}
    assert "DELTA_BINARY_PACKED" in encodings["i"] and "DELTA_BINARY_PACKED" in encodings["u"]
    assert "DELTA_BINARY_PACKED" not in encodings["x"]
    assert duckdb.sql(f"SELECT sum(i), sum(u) FROM read_parquet('{path}')").fetchall() == [
        (int(df["i"].sum()), int(df["u"].sum()))
    ]


def _damage(path, how):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[len(data) // 3] ^= 0x5A
    else:
        data = data[:-1]
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["truncate", "flip", "chop"])
@pytest.mark.parametrize("value", [pd.DataFrame({"x": np.arange(1000.0)}), {"a": list(range(1000))}])
def test_damaged_entries_are_detected(backend, value, how):
    fmt, _ = _roundtrip(backend, value)
    _damage(os.path.join(backend.location, "s", "0" * 32, fmt), how)
    with pytest.raises(CorruptEntry):
        backend.read_entry(["s", "0" * 32])


def test_pickles_are_not_loaded_from_a_directory_others_can_write(backend):
    _roundtrip(backend, {"a": 1})
    os.chmod(backend.location, 0o777)
    try:
        with pytest.raises(CacheError, match="writable by other users"):
            backend.read_entry(["s", "0" * 32])
    finally:
        os.chmod(backend.location, 0o700)


def test_dump_item_warns_instead_of_raising(backend):
    # A file where the stage directory should be: fails for root too (unlike chmod).
    with open(os.path.join(backend.location, "blocked"), "w") as f:
        f.write("not a directory")
    with pytest.warns(CacheWarning, match="Unable to cache"):
        backend.dump_item(["blocked", "1" * 32], {"a": 1})


def test_dump_item_warns_about_pickle_fallback(backend):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.dump_item(["s", "2" * 32], pd.DataFrame({0: [1]}))
    assert [w.category for w in caught] == [CacheWarning]
    assert backend.contains_item(["s", "2" * 32])


def test_categorical_categories_keep_their_order(tmp_path):
    """Found by hypothesis: without dictionary encoding, categories came back in order of appearance."""
    import pandas as pd
    import pandas.testing as pdt

    from asyncpipe.cache._store import PARQUET, ParquetStoreBackend

    df = pd.DataFrame({"c": pd.Categorical(["0", ""])})
    assert df["c"].cat.categories.tolist() == ["", "0"]
    ParquetStoreBackend._write_parquet(df, str(tmp_path / PARQUET))
    from asyncpipe.cache._store import _read_parquet

    back = _read_parquet((tmp_path / PARQUET).read_bytes(), "x")
    pdt.assert_frame_equal(back, df)

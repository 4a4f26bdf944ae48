"""Content fingerprints: stable across memory layouts, sensitive to any content change."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from asyncpipe.cache import fingerprint

_cols = [
    hpd.column("f", dtype="float64", elements=st.floats(allow_nan=False, width=64)),
    hpd.column("i", dtype="int64"),
    hpd.column("s", dtype="str", elements=st.text(max_size=4)),
    hpd.column("t", dtype="datetime64[ns]"),
]
frames = hpd.data_frames(_cols, index=hpd.range_indexes(min_size=2, max_size=20))


def relayout(df: pd.DataFrame) -> pd.DataFrame:
    """The same content with different blocks: built column by column, Fortran vs C order."""
    out = pd.DataFrame(index=df.index.copy())
    for c in df.columns:
        out[c] = df[c].to_numpy(copy=True) if df[c].dtype.kind in "fiM" else df[c].copy()
    return out


@settings(max_examples=50, deadline=None)
@given(df=frames)
def test_equal_frames_with_different_layouts_match(df):
    other = relayout(df)
    assert fingerprint(df) == fingerprint(other) == fingerprint(df.copy())
    block = np.column_stack([df["f"].to_numpy(), -df["f"].to_numpy()])
    c_order = pd.DataFrame(np.ascontiguousarray(block), columns=["a", "b"])
    f_order = pd.DataFrame(np.asfortranarray(block), columns=["a", "b"])
    split = pd.DataFrame({"a": block[:, 0].copy(), "b": block[:, 1].copy()})
    assert fingerprint(c_order) == fingerprint(f_order) == fingerprint(split)


@settings(max_examples=50, deadline=None)
@given(df=frames, data=st.data())
def test_any_content_change_changes_the_fingerprint(df, data):
    base = fingerprint(df)
    row = data.draw(st.integers(0, len(df) - 1))
    changed = df.copy()
    changed.loc[row, "i"] = int(changed.loc[row, "i"]) + 1 if changed.loc[row, "i"] < 2**62 else 0
    assert fingerprint(changed) != base, "a value"
    assert fingerprint(df.rename(columns={"f": "g"})) != base, "a column name"
    assert fingerprint(df.astype({"i": "Int64"})) != base, "a dtype"
    assert fingerprint(df.astype({"i": "float64"})) != base, "a dtype"
    assert fingerprint(df.set_axis(df.index + 1)) != base, "the index"
    assume(not df.iloc[::-1].reset_index(drop=True).equals(df))
    assert fingerprint(df.iloc[::-1].reset_index(drop=True)) != base, "row order"


def test_object_columns_distinguish_types():
    a = pd.DataFrame({"x": pd.Series([1, "2"], dtype=object)})
    b = pd.DataFrame({"x": pd.Series(["1", "2"], dtype=object)})
    assert fingerprint(a) != fingerprint(b)


def test_plain_items_and_containers():
    assert fingerprint("a") == fingerprint("a") != fingerprint(b"a")
    assert fingerprint(1) != fingerprint(1.0) != fingerprint("1")
    assert fingerprint((1, 2)) != fingerprint([1, 2])
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3).astype("int32"))


def test_paths_include_size_and_mtime(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a\n1\n")
    before = fingerprint(p)
    assert before == fingerprint(pathlib.Path(p))
    p.write_text("a\n12\n")
    assert fingerprint(p) != before


def test_custom_fingerprint_protocol():
    class Item:
        def __init__(self, v):
            self.v = v

        def asyncpipe_fingerprint(self):
            return f"item:{self.v}"

    assert fingerprint(Item(1)) == fingerprint(Item(1)) != fingerprint(Item(2))


def test_arrow_tables_ignore_chunking():
    t = pa.table({"a": [1, 2, 3, 4], "s": ["w", "x", "y", "z"]})
    rechunked = pa.concat_tables([t.slice(0, 1), t.slice(1, 3)])
    assert rechunked.column("a").num_chunks == 2
    assert fingerprint(t) == fingerprint(rechunked)
    assert fingerprint(t) != fingerprint(t.slice(1))

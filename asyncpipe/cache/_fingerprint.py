"""Content fingerprints of external inputs.

Only data that enters a pipeline from outside (the items fed to sources, frames
passed in) is hashed; everything produced inside is keyed by lineage. A
fingerprint depends on *content* (schema, index, values), never on memory
layout, so two equal frames give the same fingerprint however pandas stores them::

    >>> import pandas as pd
    >>> a = pd.DataFrame({"x": [1, 2], "y": [0.5, 1.5]})
    >>> b = pd.DataFrame({"y": [0.5, 1.5]}).assign(x=[1, 2])[["x", "y"]]
    >>> fingerprint(a) == fingerprint(b)
    True
    >>> fingerprint(a) == fingerprint(a.iloc[::-1])
    False
    >>> len(fingerprint("items/2024-01.csv"))
    32

Objects may define ``asyncpipe_fingerprint() -> str`` to say what their content
is (a built-in file source returns path + size + modification time, say).
A :class:`pathlib.Path` is fingerprinted by its path, size and modification time.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import struct
from typing import Any

import numpy as np
import xxhash

__all__ = ["fingerprint"]

_SCALARS = (int, float, complex, bool, str, bytes, type(None))


def fingerprint(value: object) -> str:
    """Return a 32-hex-digit xxh3_128 content hash of ``value``."""
    h = xxhash.xxh3_128()
    _feed(h, value)
    return h.hexdigest()


def _tag(h: Any, tag: str) -> None:
    data = tag.encode()
    h.update(struct.pack("<I", len(data)))
    h.update(data)


def _feed(h: Any, value: object) -> None:
    custom = getattr(value, "asyncpipe_fingerprint", None)
    if callable(custom) and not isinstance(value, type):
        _tag(h, "custom")
        _tag(h, str(custom()))
        return
    if isinstance(value, _SCALARS):
        _tag(h, type(value).__name__)
        _tag(h, value.hex() if isinstance(value, bytes) else repr(value))
        return
    if isinstance(value, (tuple, list)):
        _tag(h, f"{type(value).__name__}:{len(value)}")
        for v in value:
            _feed(h, v)
        return
    if isinstance(value, dict):
        _tag(h, f"dict:{len(value)}")
        for k, v in value.items():  # insertion order is part of a dict's identity here
            _feed(h, k)
            _feed(h, v)
        return
    if isinstance(value, pathlib.PurePath):
        _feed_path(h, value)
        return
    if isinstance(value, np.ndarray):
        _feed_array(h, value)
        return
    mod = type(value).__module__
    if mod.startswith("pandas"):
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            _feed_frame(h, value)
            return
        if isinstance(value, pd.Series):
            _tag(h, f"series:{value.name!r}")
            _feed_column(h, value)
            _feed_index(h, value.index)
            return
        if isinstance(value, pd.Index):
            _feed_index(h, value)
            return
    if mod.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(value, (pa.Table, pa.RecordBatch)):
            _feed_arrow_table(h, value)
            return
    # Anything else: its pickle (deterministic for plain data; joblib would do the same).
    _tag(h, f"pickle:{type(value).__module__}.{type(value).__qualname__}")
    try:
        h.update(pickle.dumps(value, protocol=5))
    except Exception:
        import joblib

        _tag(h, joblib.hash(value))


def _feed_path(h: Any, path: pathlib.PurePath) -> None:
    _tag(h, f"path:{path}")
    try:
        st = os.stat(path)
    except OSError:
        return
    _tag(h, f"{st.st_size}:{st.st_mtime_ns}")


def _feed_array(h: Any, arr: np.ndarray) -> None:
    _tag(h, f"ndarray:{arr.dtype.str}:{arr.shape}")
    if arr.dtype.hasobject:
        h.update(pickle.dumps(arr.tolist(), protocol=5))
    else:
        h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).data)


def _feed_frame(h: Any, df: Any) -> None:
    _tag(h, f"frame:{df.shape}")
    _feed_index(h, df.columns)
    for i in range(df.shape[1]):
        _feed_column(h, df.iloc[:, i])
    _feed_index(h, df.index)
    if df.attrs:
        _tag(h, repr(sorted(df.attrs.items(), key=repr)))


def _feed_index(h: Any, index: Any) -> None:
    import pandas as pd

    _tag(h, f"index:{type(index).__name__}:{list(index.names)!r}")
    if isinstance(index, pd.RangeIndex):
        _tag(h, f"{index.start}:{index.stop}:{index.step}")
        return
    if isinstance(index, pd.MultiIndex):
        for level in range(index.nlevels):
            _feed_column(h, pd.Series(index.get_level_values(level)))
        return
    if isinstance(index, pd.DatetimeIndex) and index.freq is not None:
        _tag(h, f"freq:{index.freqstr}")
    _feed_column(h, pd.Series(index, copy=False))


def _feed_column(h: Any, s: Any) -> None:
    """Hash one column's dtype and values, independently of how it is stored."""
    import pandas as pd

    dtype = s.dtype
    _tag(h, f"col:{dtype}:{len(s)}")
    if isinstance(dtype, np.dtype) and dtype.kind in "biufcmM":
        h.update(np.ascontiguousarray(s.to_numpy()).view(np.uint8).reshape(-1).data)
        return
    if isinstance(dtype, pd.CategoricalDtype):
        _feed_column(h, pd.Series(dtype.categories, copy=False))
        h.update(np.ascontiguousarray(s.cat.codes.to_numpy()).data)
        return
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        kind = pd.api.types.infer_dtype(s, skipna=False)
        _tag(h, kind)
        if kind not in ("string", "bytes"):
            # Mixed or exotic objects: hash_pandas_object would make 1 and "1" equal.
            h.update(pickle.dumps(s.tolist(), protocol=5))
            return
    # Strings, nullable and other extension dtypes: pandas' own layout-independent hashing,
    # plus the missing-value mask so that None and a missing marker stay distinct.
    hashed = pd.util.hash_pandas_object(s, index=False, categorize=False).to_numpy()
    h.update(np.ascontiguousarray(hashed).data)
    h.update(np.packbits(s.isna().to_numpy()).data)


def _feed_arrow_table(h: Any, table: Any) -> None:
    # Arrow buffers depend on chunking, slicing and on the bytes under null slots; the
    # pandas view of the same data does not. External Arrow inputs are rare enough to pay this.
    _tag(h, f"arrow:{table.schema}")
    _feed_frame(h, table.to_pandas())

"""Decode CSV, JSON, JSON lines and Parquet (files or response bodies) into DataFrames.

>>> frame = decode(b"a,b\\n1,x\\n2,y\\n", "csv")
>>> frame.to_dict("list")
{'a': [1, 2], 'b': ['x', 'y']}
>>> decode(b'{"a": 1}\\n{"a": 2}\\n', "jsonl")["a"].tolist()
[1, 2]
>>> infer_format("s3://bucket/raw/day=1/part.csv.gz"), infer_format("x.pq")
('csv', 'parquet')
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from typing import IO, Any, Final

import pandas as pd

from ._errors import fail

__all__ = ["FORMATS", "content_type_format", "decode", "infer_format", "to_frame"]

FORMATS: Final = ("csv", "json", "jsonl", "parquet")

_SUFFIXES: Final = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_SUFFIXES: Final = (".gz", ".bz2", ".zst", ".xz", ".zip")


def infer_format(path: str) -> str | None:
    """The format named by ``path``'s suffix (compression suffixes skipped), or None."""
    name = path.rsplit("/", 1)[-1].lower()
    for comp in _COMPRESSION_SUFFIXES:
        if name.endswith(comp):
            name = name[: -len(comp)]
    dot = name.rfind(".")
    return _SUFFIXES.get(name[dot:]) if dot >= 0 else None


def content_type_format(content_type: str | None) -> str | None:
    """The format named by an HTTP ``Content-Type`` header, or None."""
    if not content_type:
        return None
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind.endswith(("/csv", "/tab-separated-values")):
        return "csv"
    if kind in ("application/x-ndjson", "application/jsonl", "application/x-jsonlines"):
        return "jsonl"
    if kind.endswith("/json") or kind.endswith("+json"):
        return "json"
    if "parquet" in kind:
        return "parquet"
    return None


def check_format(fmt: str) -> str:
    """``fmt`` normalised (``ndjson`` -> ``jsonl``, ``pq`` -> ``parquet``), or a clear ValueError."""
    norm = {"ndjson": "jsonl", "jsonlines": "jsonl", "pq": "parquet", "tsv": "csv"}.get(
        fmt.lower(), fmt.lower()
    )
    if norm not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    return norm


def decode(
    data: bytes | IO[bytes],
    fmt: str,
    *,
    options: Mapping[str, Any] | None = None,
    records_key: str | None = None,
) -> pd.DataFrame:
    """Parse ``data`` (bytes or a binary file object) in format ``fmt`` into a DataFrame.

    ``options`` go to the pandas/pyarrow reader (``pd.read_csv`` keywords for CSV).
    For JSON documents, ``records_key`` names the field holding the list of records.
    """
    fmt = check_format(fmt)
    opts = dict(options or {})
    stream: IO[bytes] = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
    if fmt == "csv":
        return pd.read_csv(stream, **opts)
    if fmt == "jsonl":
        return pd.read_json(stream, lines=True, **opts)
    if fmt == "json":
        doc = json.load(stream)
        if records_key is not None:
            for part in records_key.split("."):
                doc = doc[part]
        return to_frame(doc)
    import pyarrow.parquet as pq

    return pq.read_table(stream, **opts).to_pandas()


def sink_frame(
    value: Any, *, sink: str, partition: Any, store: str, obj: str, secrets: Iterable[str] = ()
) -> pd.DataFrame:
    """:func:`to_frame`, failing with a :class:`StoreError` that names the sink and partition."""
    try:
        return to_frame(value)
    except TypeError as exc:
        fail(
            f"Sink {sink!r} got a value it cannot write for partition {partition.label}",
            store=store,
            obj=obj,
            cause=exc,
            secrets=secrets,
        )


def to_frame(value: Any) -> pd.DataFrame:
    """Turn a sink's input (DataFrame, Arrow table, records, column dict) into a DataFrame.

    >>> to_frame([{"a": 1}, {"a": 2}]).shape
    (2, 1)
    """
    if isinstance(value, pd.DataFrame):
        return value
    if hasattr(value, "to_pandas") and hasattr(value, "schema"):  # pyarrow Table / RecordBatch
        return value.to_pandas()
    if isinstance(value, pd.Series):
        return value.to_frame()
    if isinstance(value, Mapping):
        if value and all(isinstance(v, list | tuple) or hasattr(v, "__array__") for v in value.values()):
            return pd.DataFrame(dict(value))
        return pd.json_normalize(dict(value))
    if isinstance(value, list | tuple):
        if not value:
            return pd.DataFrame()
        if all(isinstance(v, Mapping) for v in value):
            return pd.json_normalize(list(value))
        return pd.DataFrame({"value": list(value)})
    raise TypeError(
        f"Cannot write a {type(value).__name__} as a table; return a pandas DataFrame, an Arrow table "
        "or a list of dicts from the upstream stage."
    )

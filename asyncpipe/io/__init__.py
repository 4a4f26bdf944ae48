"""Sources and sinks for files (fsspec), SQL databases (SQLAlchemy 2) and HTTP APIs (httpx).

Every builder returns an :class:`~asyncpipe.Stage`, so stores drop into a
pipeline like any stage function::

    import asyncpipe as ap

    pipe = ap.Pipeline([
        ap.io.read_files("s3://bucket/raw/*.csv", name="raw"),
        clean,                                              # def clean(raw): ...
        ap.io.to_parquet("s3://bucket/clean/", input="clean", name="save"),
        ap.io.to_sql("clean", "sqlite:///out.db", input="clean", name="db"),
    ])

Sinks write one object (file, or set of rows keyed by ``partition.id``) per
partition, atomically, so retries, resumes and re-runs never duplicate data.
Failures raise :class:`~asyncpipe.StoreError` naming the store and object;
:class:`StoreUnavailable` marks the retryable ones. SQLAlchemy and httpx are
imported on first use. See docs/data-stores.md.
"""

from ._errors import StoreUnavailable
from ._file_sinks import CsvSink, ParquetSink, to_csv, to_parquet
from ._files import FileChunk, FileSource, read_files
from ._formats import decode, to_frame
from ._http import HttpSource, fetch_http, parse_retry_after
from ._secrets import redact_options, redact_url
from ._sql import SqlChunk, SqlSource, read_sql
from ._sql_sink import SqlSink, to_sql

__all__ = [
    "CsvSink",
    "FileChunk",
    "FileSource",
    "HttpSource",
    "ParquetSink",
    "SqlChunk",
    "SqlSink",
    "SqlSource",
    "StoreUnavailable",
    "decode",
    "fetch_http",
    "parse_retry_after",
    "read_files",
    "read_sql",
    "redact_options",
    "redact_url",
    "to_csv",
    "to_frame",
    "to_parquet",
    "to_sql",
]

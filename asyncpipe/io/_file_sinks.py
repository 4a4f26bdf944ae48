"""File sinks over fsspec: a Parquet dataset or CSV files, one file per partition, atomically.

Each partition writes ``part-<partition.id>.parquet`` (or ``.csv``) under the
root, or one such file per hive directory (``day=2024-01-01/``) when
``partition_cols`` is given. Re-running a partition replaces its file(s) and
removes any it no longer produces, so retries, resumes and re-runs never
duplicate rows. Local writes go to a hidden temporary name and are renamed into
place; object stores (S3, GCS, Azure, memory) publish an object only when its
upload completes, so they are written in place.

>>> import asyncpipe as ap, pandas as pd
>>> from types import SimpleNamespace
>>> save = ap.io.to_parquet("memory://doc/out", input="clean", name="save")
>>> save.fn(pd.DataFrame({"x": [1, 2]}), SimpleNamespace(id="0a1b", label="p0"))
{'rows': 2, 'files': ['memory:///doc/out/part-0a1b.parquet']}
>>> pd.read_parquet("memory://doc/out")["x"].tolist()
[1, 2]
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

import pandas as pd

from .._stage import Stage, StageOptions
from ._errors import fail
from ._files import FsCache, is_unreachable
from ._formats import sink_frame
from ._secrets import collect_secrets, redact_options, redact_url

__all__ = ["CsvSink", "ParquetSink", "to_csv", "to_parquet"]

STORE: Final = "files"
_LOCAL_PROTOCOLS: Final = frozenset({"file", "local"})


class _FileSink:
    """Shared machinery: partition -> file name(s), atomic write, stale-file cleanup."""

    suffix = ""

    def __init__(
        self,
        root: str,
        *,
        partition_cols: Sequence[str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        write_options: Mapping[str, Any] | None = None,
        name: str = "",
    ) -> None:
        self.root = root.rstrip("/")
        self.partition_cols = list(partition_cols or [])
        self.storage_options = dict(storage_options or {})
        self.write_options = dict(write_options or {})
        self.name = name
        self._secrets = collect_secrets(options=self.storage_options, urls=[root])
        self._fs = FsCache(self.storage_options)

    def __call__(self, value: Any, partition: Any) -> dict[str, Any]:
        """Write ``value`` as this partition's file(s); returns ``{"rows": n, "files": [...]}``."""
        pid = str(partition.id)
        frame = sink_frame(
            value, sink=self.name, partition=partition, store=STORE, obj=self.root, secrets=self._secrets
        )
        target = f"{self.root}/part-{pid}{self.suffix}"
        try:
            fs, root = self._fs.resolve(self.root)
            written = self._write_all(fs, root, pid, frame)
        except Exception as exc:
            fail(
                f"Could not write partition {partition.label} to {redact_url(target)!r} "
                f"in sink {self.name!r}",
                store=STORE,
                obj=target,
                cause=exc,
                secrets=self._secrets,
                transient=is_unreachable(exc),
            )
        shown = [fs.unstrip_protocol(p) for p in written] if "://" in self.root else written
        return {"rows": len(frame), "files": shown}

    def _write_all(self, fs: Any, root: str, pid: str, frame: pd.DataFrame) -> list[str]:
        filename = f"part-{pid}{self.suffix}"
        if not self.partition_cols:
            path = f"{root}/{filename}"
            self._write_one(fs, path, frame)
            return [path]
        missing = [c for c in self.partition_cols if c not in frame.columns]
        if missing:
            raise KeyError(f"partition_cols {missing} are not columns of the frame ({list(frame.columns)})")
        written: list[str] = []
        if len(frame):
            groups = frame.groupby(self.partition_cols, sort=True, dropna=False, observed=True)
            for keys, group in groups:
                keys = keys if isinstance(keys, tuple) else (keys,)
                parts = [f"{col}={_hive_value(v)}" for col, v in zip(self.partition_cols, keys, strict=True)]
                path = "/".join([root, *parts, filename])
                self._write_one(fs, path, group.drop(columns=self.partition_cols))
                written.append(path)
        # Remove this partition's files from directories it no longer writes to (a re-run with new data).
        pattern = "/".join([root, *["*"] * len(self.partition_cols), filename])
        for stale in set(fs.glob(pattern)) - set(written):
            fs.rm(stale)
        return written

    def _write_one(self, fs: Any, path: str, frame: pd.DataFrame) -> None:
        data = self._encode(frame)
        parent = path.rsplit("/", 1)[0]
        if _is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with fs.open(tmp, "wb") as f:
                    f.write(data)
                fs.mv(tmp, path)  # os.replace: atomic on one filesystem
            finally:
                if fs.exists(tmp):
                    fs.rm(tmp)
        else:
            fs.pipe_file(path, data)  # one PUT: the object appears complete or not at all

    def _encode(self, frame: pd.DataFrame) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = f", storage_options={redact_options(self.storage_options)!r}" if self.storage_options else ""
        cols = f", partition_cols={self.partition_cols!r}" if self.partition_cols else ""
        return f"{type(self).__name__}({redact_url(self.root)!r}{cols}{opts})"


class ParquetSink(_FileSink):
    """The callable behind :func:`to_parquet`."""

    suffix = ".parquet"

    def _encode(self, frame: pd.DataFrame) -> bytes:
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False, **self.write_options)
        return buf.getvalue()


class CsvSink(_FileSink):
    """The callable behind :func:`to_csv`."""

    suffix = ".csv"

    def _encode(self, frame: pd.DataFrame) -> bytes:
        return frame.to_csv(index=False, **self.write_options).encode()


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return bool(_LOCAL_PROTOCOLS & set(protocols))


def _hive_value(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "__HIVE_DEFAULT_PARTITION__"
    return quote(str(value), safe="")


def _sink_stage(
    cls: type[_FileSink], root: str, input: str, name: str, kw: dict[str, Any], options: Any
) -> Stage:
    fn = cls(root, name=name, **kw)
    options.setdefault("executor", "thread")
    options.setdefault("cache", False)  # a sink's effect is the write: never skip it on a cache hit
    return Stage(fn, kind="sink", name=name, inputs={"value": input}, options=StageOptions(**options))


def to_parquet(
    root: str,
    *,
    input: str,
    name: str = "to_parquet",
    partition_cols: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    write_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Stage:
    """A sink stage writing the output of stage ``input`` as a Parquet dataset under ``root``.

    One file ``part-<partition id>.parquet`` per partition (per hive directory with
    ``partition_cols``); read it back with ``pd.read_parquet(root)`` or DuckDB
    ``read_parquet('root/**/*.parquet', hive_partitioning=true)``. ``write_options`` go to
    ``DataFrame.to_parquet`` (``compression=``...); other keywords are stage options.
    """
    kw = {
        "partition_cols": partition_cols,
        "storage_options": storage_options,
        "write_options": write_options,
    }
    return _sink_stage(ParquetSink, root, input, name, kw, options)


def to_csv(
    root: str,
    *,
    input: str,
    name: str = "to_csv",
    partition_cols: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    write_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Stage:
    """A sink stage writing the output of stage ``input`` as CSV files ``part-<id>.csv`` under ``root``."""
    kw = {
        "partition_cols": partition_cols,
        "storage_options": storage_options,
        "write_options": write_options,
    }
    return _sink_stage(CsvSink, root, input, name, kw, options)

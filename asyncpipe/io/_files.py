"""A file source over fsspec: a glob becomes one partition per file (or per chunk of a big file).

Works with every fsspec filesystem: local paths, ``memory://``, ``s3://`` (s3fs),
``gs://`` (gcsfs), ``abfs://`` (adlfs). Credentials come from
``storage_options`` or the usual environment/config files of each filesystem,
and never appear in reprs or error messages.

>>> import asyncpipe as ap, fsspec
>>> with fsspec.open("memory://doc/raw/a.csv", "w") as f:
...     _ = f.write("x,y\\n1,2\\n")
>>> raw = ap.io.read_files("memory://doc/raw/*.csv", name="raw")
>>> raw.kind, raw.fn.asyncpipe_inputs()
('source', ['memory:///doc/raw/a.csv'])
>>> raw.fn("memory:///doc/raw/a.csv").to_dict("records")
[{'x': 1, 'y': 2}]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import fsspec
import pandas as pd

from .._stage import Stage, StageOptions
from ._errors import fail
from ._formats import check_format, decode, infer_format
from ._runtime import Runtime
from ._secrets import collect_secrets, redact_options, redact_url

__all__ = ["FileChunk", "FileSource", "read_files"]

STORE: Final = "files"
#: In a path, ``{item}`` is replaced by the input item: several sources can then read
#: matching files for the same items (``orders-{item}.csv`` and ``prices-{item}.parquet``).
TEMPLATE: Final = "{item}"


class FileChunk(NamedTuple):
    """One partition of a big file: rows groups ``[start, stop)`` of a Parquet file, or the
    byte range ``[start, stop)`` of a CSV/JSON-lines file (cut at line ends)."""

    path: str
    start: int
    stop: int


def filesystem(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """``(filesystem, path)`` for ``url`` (fsspec caches instances by protocol and options)."""
    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


class FsCache:
    """One filesystem instance per protocol for a store object, shared by its threads.

    fsspec's own instance cache is bypassed by ``skip_instance_cache=True``, and creating
    an S3 filesystem costs ~0.25 s (session and credential lookup), so stores keep theirs.
    """

    def __init__(self, storage_options: Mapping[str, Any]) -> None:
        self.storage_options = dict(storage_options)
        self._rt = Runtime()

    def resolve(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        with self._rt.lock:
            fs = self._rt.cache.get(protocol)
        if fs is None:
            fs, path = filesystem(url, self.storage_options)
            with self._rt.lock:
                fs = self._rt.cache.setdefault(protocol, fs)
            return fs, path
        return fs, fs._strip_protocol(url)


def is_unreachable(exc: BaseException) -> bool:
    """True for errors a retry may cure: refused/timed-out connections, endpoint errors."""
    names = {type(e).__name__ for e in _chain(exc)}
    transient = {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "TimeoutError",
        "ServerTimeoutError",
    }
    return bool(names & transient)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


class FileSource:
    """The callable behind :func:`read_files`: item (path or :class:`FileChunk`) -> DataFrame."""

    def __init__(
        self,
        urlpath: str | list[str],
        *,
        format: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        read_options: Mapping[str, Any] | None = None,
        split_bytes: int | None = None,
        name: str = "read_files",
    ) -> None:
        self.urlpath = urlpath
        self.format = check_format(format) if format else None
        self.storage_options = dict(storage_options or {})
        self.read_options = dict(read_options or {})
        self.split_bytes = split_bytes
        self.name = name
        urls = [urlpath] if isinstance(urlpath, str) else list(urlpath)
        self._secrets = collect_secrets(options=self.storage_options, urls=urls)
        self._template = isinstance(urlpath, str) and TEMPLATE in urlpath
        self._rt = Runtime()  # CSV header lines of split files, by URL
        self._fs = FsCache(self.storage_options)

    # -- what the engine calls ------------------------------------------------------
    def asyncpipe_inputs(self) -> list[str | FileChunk]:
        """Expand the glob(s): one item per file, or per chunk of files above ``split_bytes``.

        With a ``{item}`` template the items are the values that fill it in the matching names.
        """
        if self._template:
            return self._template_items()
        items: list[str | FileChunk] = []
        patterns = [self.urlpath] if isinstance(self.urlpath, str) else list(self.urlpath)
        for pattern in patterns:
            try:
                fs, path = self._fs.resolve(pattern)
                found = fs.glob(path, detail=True) if fsspec.core.has_magic(path) else {path: fs.info(path)}
            except Exception as exc:
                self._fail(f"Could not list {redact_url(pattern)!r}", pattern, exc)
            files = sorted((p, d) for p, d in found.items() if d.get("type") != "directory")
            if not files:
                fail(
                    f"No files match {redact_url(pattern)!r} in store {self.name!r}. Check the path, the "
                    "glob pattern and the credentials.",
                    store=STORE,
                    obj=pattern,
                    cause=None,
                    secrets=self._secrets,
                )
            for path, info in files:
                url = fs.unstrip_protocol(path) if "://" in pattern else path
                items.extend(self._chunks(fs, path, url, info))
        return items

    def __call__(self, item: str | FileChunk | tuple[str, int, int]) -> pd.DataFrame:
        """Read one file, or one chunk of one, into a DataFrame."""
        chunk = FileChunk(*item) if isinstance(item, tuple) else None
        url = chunk.path if chunk else str(item)
        if self._template and chunk is None:
            url = str(self.urlpath).replace(TEMPLATE, str(item))
        fmt = self._format_of(url)
        try:
            fs, path = self._fs.resolve(url)
            if chunk is None:
                with fs.open(path, "rb", compression="infer") as f:
                    return decode(f, fmt, options=self.read_options)
            if fmt == "parquet":
                return self._read_row_groups(fs, path, chunk)
            return self._read_byte_range(fs, path, chunk, fmt)
        except Exception as exc:
            self._fail(f"Could not read {fmt} from {redact_url(url)!r}", url, exc)

    def asyncpipe_fingerprint(self, item: str | FileChunk) -> str:
        """A token that changes when the object changes (ETag, or size + mtime), for cache keys."""
        chunk = FileChunk(*item) if isinstance(item, tuple) else None
        url = chunk.path if chunk else str(item)
        if self._template and chunk is None:
            url = str(self.urlpath).replace(TEMPLATE, str(item))
        fs, path = self._fs.resolve(url)
        info = fs.info(path)
        token = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
        return f"{token or ''}:{info.get('size')}:{mtime}"

    # -- helpers --------------------------------------------------------------------
    def _template_items(self) -> list[str]:
        pattern = str(self.urlpath)
        glob = pattern.replace(TEMPLATE, "*")
        try:
            fs, path = self._fs.resolve(glob)
            found = fs.glob(path)
        except Exception as exc:
            self._fail(f"Could not list {redact_url(glob)!r}", glob, exc)
        _, tail = self._fs.resolve(pattern.replace(TEMPLATE, "\x00"))
        before, _, after = tail.partition("\x00")
        regex = re.compile(re.escape(before) + "(.+?)" + re.escape(after) + "$")
        return sorted({m.group(1) for p in found if (m := regex.match(p))})

    def _format_of(self, url: str) -> str:
        fmt = self.format or infer_format(url)
        if fmt is None:
            fail(
                f"Cannot tell the format of {redact_url(url)!r} from its name in source {self.name!r}; "
                "pass format='csv' | 'jsonl' | 'json' | 'parquet' to read_files().",
                store=STORE,
                obj=url,
                cause=None,
                secrets=self._secrets,
            )
        return fmt

    def _chunks(self, fs: Any, path: str, url: str, info: Mapping[str, Any]) -> list[str | FileChunk]:
        size = info.get("size") or 0
        fmt = self._format_of(url)
        if not self.split_bytes or size <= self.split_bytes or fmt == "json" or infer_format(url) != fmt:
            return [url]
        if url.lower().endswith((".gz", ".bz2", ".zst", ".xz", ".zip")):
            return [url]  # compressed streams cannot be split by byte range
        if fmt != "parquet":
            step = self.split_bytes
            return [FileChunk(url, start, min(start + step, size)) for start in range(0, size, step)]
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
        except Exception as exc:
            self._fail(f"Could not read the Parquet footer of {redact_url(url)!r}", url, exc)
        chunks: list[str | FileChunk] = []
        start, acc = 0, 0
        for i in range(meta.num_row_groups):
            acc += meta.row_group(i).total_byte_size
            if acc >= self.split_bytes:
                chunks.append(FileChunk(url, start, i + 1))
                start, acc = i + 1, 0
        if start < meta.num_row_groups:
            chunks.append(FileChunk(url, start, meta.num_row_groups))
        return chunks if len(chunks) > 1 else [url]

    def _read_row_groups(self, fs: Any, path: str, chunk: FileChunk) -> pd.DataFrame:
        import pyarrow.parquet as pq

        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_groups(range(chunk.start, chunk.stop), **self.read_options)
        return table.to_pandas()

    def _read_byte_range(self, fs: Any, path: str, chunk: FileChunk, fmt: str) -> pd.DataFrame:
        from fsspec.utils import read_block

        with fs.open(path, "rb") as f:
            header = self._header(chunk.path, f) if fmt == "csv" else b""
            # read_block moves both ends forward to the next line break, so chunks tile the file.
            block = read_block(f, chunk.start, chunk.stop - chunk.start, delimiter=b"\n")
        if fmt == "csv" and chunk.start == 0:
            header = b""  # the first block starts with the header line itself
        if not block.strip():
            with fs.open(path, "rb") as f:
                return decode(
                    self._header(chunk.path, f) if fmt == "csv" else b"", fmt, options=self.read_options
                )
        return decode(header + block, fmt, options=self.read_options)

    def _header(self, url: str, f: Any) -> bytes:
        with self._rt.lock:
            if url in self._rt.cache:
                return self._rt.cache[url]
        f.seek(0)
        line = f.readline()
        with self._rt.lock:
            self._rt.cache[url] = line
        return line

    def _fail(self, what: str, obj: str, exc: BaseException) -> Any:
        hint = ""
        if isinstance(exc, FileNotFoundError):
            hint = ": no such object"
        elif (
            type(exc).__name__ in {"PermissionError", "NoCredentialsError"}
            or "AccessDenied" in str(exc)
            or ("InvalidAccessKeyId" in str(exc) or "SignatureDoesNotMatch" in str(exc))
        ):
            hint = ": access denied; check the credentials in storage_options or the environment"
        fail(
            f"{what} in store {self.name!r}{hint}",
            store=STORE,
            obj=obj,
            cause=exc,
            secrets=self._secrets,
            transient=is_unreachable(exc),
        )

    def __repr__(self) -> str:
        opts = f", storage_options={redact_options(self.storage_options)!r}" if self.storage_options else ""
        pattern = self.urlpath if isinstance(self.urlpath, str) else list(self.urlpath)
        shown = redact_url(pattern) if isinstance(pattern, str) else [redact_url(p) for p in pattern]
        return f"FileSource({shown!r}, format={self.format!r}{opts})"


def read_files(
    urlpath: str | list[str],
    *,
    format: str | None = None,
    name: str = "read_files",
    storage_options: Mapping[str, Any] | None = None,
    read_options: Mapping[str, Any] | None = None,
    split_bytes: int | None = None,
    **options: Any,
) -> Stage:
    """A source stage reading every file matching ``urlpath`` (a glob or a list of globs).

    With ``{item}`` in ``urlpath`` (``"raw/orders-{item}.csv"``) each input item fills the
    template, and the default inputs are the values found by globbing it: sources that
    share items line up partition by partition, ready to be joined by a downstream stage.

    - ``format``: "csv", "jsonl", "json" or "parquet"; inferred from each file's suffix if None.
    - ``storage_options``: passed to fsspec (``key``/``secret``/``endpoint_url`` for S3...).
    - ``read_options``: passed to the reader (``pd.read_csv`` keywords, or pyarrow's ``columns=``).
    - ``split_bytes``: files larger than this become several partitions (Parquet: groups of row
      groups; CSV/JSON lines: byte ranges cut at line ends — CSV fields must not contain newlines).
    - other keywords are stage options (``concurrency``, ``retries``, ``cache``...).

    Reads run in threads (``executor="thread"``), never on the event loop.
    """
    fn = FileSource(
        urlpath,
        format=format,
        storage_options=storage_options,
        read_options=read_options,
        split_bytes=split_bytes,
        name=name,
    )
    options.setdefault("executor", "thread")
    return Stage(fn, kind="source", name=name, options=StageOptions(**options))

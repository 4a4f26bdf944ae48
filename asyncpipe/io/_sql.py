"""A SQL source over SQLAlchemy 2: a parameterized query read in chunks, one partition per chunk.

Any SQLAlchemy URL works; SQLite (``sqlite:///path.db``) is the embedded default.
Queries are always bound with parameters (``:name`` placeholders), never
string-formatted. SQLAlchemy is imported only when a SQL store is first used.

>>> import asyncpipe as ap, sqlite3, tempfile, os
>>> db = os.path.join(tempfile.mkdtemp(), "doc.db")
>>> with sqlite3.connect(db) as con:
...     _ = con.execute("CREATE TABLE t (id INTEGER, day TEXT)")
...     _ = con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "mon") for i in range(5)])
>>> rows = ap.io.read_sql("SELECT id FROM t WHERE day = :day", f"sqlite:///{db}",
...                       params={"day": "mon"}, chunksize=2, order_by="id", name="rows")
>>> items = rows.fn.asyncpipe_inputs()
>>> items[-1], len(items)
(SqlChunk(source='rows', offset=4, limit=2), 3)
>>> rows.fn(items[2])["id"].tolist()
[4]
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import pandas as pd

from .._stage import Stage, StageOptions
from ._errors import fail
from ._runtime import Runtime
from ._secrets import collect_secrets, redact_url

__all__ = ["SqlChunk", "SqlSource", "engine_for", "read_sql", "sql_failure"]

STORE: Final = "sql"
_ENGINES: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
_ENGINES_LOCK = threading.Lock()
_ORDER_RE: Final = re.compile(
    r'\s*[\w."]+(\s+(asc|desc))?(\s*,\s*[\w."]+(\s+(asc|desc))?)*\s*', re.IGNORECASE
)


def _import_sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError as exc:  # pragma: no cover - sqlalchemy is a core dependency
        raise ImportError("SQL stores need SQLAlchemy 2: pip install 'sqlalchemy>=2'") from exc
    return sqlalchemy


def engine_for(url: str, engine_options: Mapping[str, Any] | None = None) -> Any:
    """One pooled, thread-safe SQLAlchemy engine per (URL, options) in this process."""
    sa = _import_sqlalchemy()
    key = (url, tuple(sorted((k, repr(v)) for k, v in (engine_options or {}).items())))
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            opts = dict(engine_options or {})
            if url.startswith("sqlite"):
                # Wait for other writers instead of failing at once with "database is locked".
                opts.setdefault("connect_args", {}).setdefault("timeout", 30)
            else:
                opts.setdefault("pool_pre_ping", True)
            engine = sa.create_engine(_with_driver(url), **opts)
            _ENGINES[key] = engine
    return engine


def _with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` when psycopg 3 (SQLAlchemy 2.1's default
    PostgreSQL driver) is not installed but psycopg2 is."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def dispose_engines() -> None:
    """Close every cached engine's pooled connections (tests, process shutdown)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


def sql_failure(what: str, *, url: str, obj: str, exc: BaseException, secrets: frozenset[str]) -> Any:
    """Raise a StoreError for a SQLAlchemy/DBAPI error: transient if the connection failed."""
    sa = _import_sqlalchemy()
    transient = isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)
    if isinstance(exc, sa.exc.OperationalError):
        text = str(exc.orig).lower() if exc.orig is not None else str(exc).lower()
        refused = ("could not connect", "connection refused", "timeout", "server closed", "terminating")
        transient = transient or any(s in text for s in refused)
        if "password authentication failed" in text or "authentication failed" in text:
            what += ": wrong credentials"
            transient = False
        elif "no such table" in text:
            what += ": no such table"
        elif "database is locked" in text:
            transient = True
    elif isinstance(exc, sa.exc.ProgrammingError) and "does not exist" in str(exc).lower():
        what += ": missing table or column"
    fail(
        f"{what} at {redact_url(url)!r}",
        store=STORE,
        obj=obj,
        cause=exc,
        secrets=secrets,
        transient=transient,
    )


class SqlChunk(NamedTuple):
    """One partition of a query: ``limit`` rows from ``offset`` (``limit=None``: all rows)."""

    source: str
    offset: int
    limit: int | None


class SqlSource:
    """The callable behind :func:`read_sql`: item (SqlChunk or a dict of parameters) -> DataFrame."""

    def __init__(
        self,
        query: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        chunksize: int | None = None,
        order_by: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
        name: str = "read_sql",
    ) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be a positive number of rows, got {chunksize!r}")
        self.query = query.strip().rstrip(";")
        self.url = url
        self.params = dict(params or {})
        self.chunksize = chunksize
        if order_by is not None and not _ORDER_RE.fullmatch(order_by):
            raise ValueError(f"order_by must be column names (optionally ASC/DESC), got {order_by!r}")
        self.order_by = order_by
        self._rt = Runtime()  # the computed ORDER BY, per process
        self.engine_options = dict(engine_options or {})
        self.name = name
        self._secrets = collect_secrets(urls=[url], options=self.engine_options)

    def asyncpipe_inputs(self) -> list[SqlChunk]:
        """One item per chunk of ``chunksize`` rows (counted with one ``COUNT(*)``), or one item."""
        if self.chunksize is None:
            return [SqlChunk(self.name, 0, None)]
        sa = _import_sqlalchemy()
        count_sql = sa.text(f"SELECT COUNT(*) FROM ({self.query}) AS asyncpipe_q")
        try:
            with engine_for(self.url, self.engine_options).connect() as conn:
                total = int(conn.execute(count_sql, self.params).scalar_one())
        except Exception as exc:
            sql_failure(
                f"Could not count the rows of query {self.name!r}",
                url=self.url,
                obj=self._obj(),
                exc=exc,
                secrets=self._secrets,
            )
        return [SqlChunk(self.name, off, self.chunksize) for off in range(0, max(total, 1), self.chunksize)]

    def __call__(self, item: SqlChunk | Mapping[str, Any] | tuple[Any, ...]) -> pd.DataFrame:
        """Run the query (one chunk of it) and return the rows as a DataFrame."""
        sa = _import_sqlalchemy()
        params = dict(self.params)
        sql = self.query
        if isinstance(item, Mapping):
            params.update(item)  # one partition per parameter set: run(inputs=[{"day": ...}, ...])
        else:
            chunk = SqlChunk(*item)
            if chunk.limit is not None:
                sql = f"SELECT * FROM ({self.query}) AS asyncpipe_q ORDER BY {self._order()} "
                sql += "LIMIT :asyncpipe_limit OFFSET :asyncpipe_offset"
                params.update(asyncpipe_limit=chunk.limit, asyncpipe_offset=chunk.offset)
        try:
            with engine_for(self.url, self.engine_options).connect() as conn:
                result = conn.execute(sa.text(sql), params)
                columns = list(result.keys())
                rows = result.fetchall()
        except Exception as exc:
            sql_failure(
                f"Query {self.name!r} failed", url=self.url, obj=self._obj(), exc=exc, secrets=self._secrets
            )
        return pd.DataFrame.from_records(rows, columns=columns)

    def _order(self) -> str:
        if self.order_by:
            return self.order_by
        if "order" in self._rt.cache:
            return self._rt.cache["order"]
        # Without an explicit key, order by every column: chunks are then deterministic
        # (rows equal in every column are interchangeable). Pass order_by for big tables.
        sa = _import_sqlalchemy()
        with engine_for(self.url, self.engine_options).connect() as conn:
            ncols = len(
                conn.execute(sa.text(f"SELECT * FROM ({self.query}) AS q LIMIT 0"), self.params).keys()
            )
        self._rt.cache["order"] = ", ".join(str(i) for i in range(1, ncols + 1))
        return self._rt.cache["order"]

    def _obj(self) -> str:
        first = " ".join(self.query.split())
        return first if len(first) <= 80 else first[:77] + "..."

    def __repr__(self) -> str:
        chunk = f", chunksize={self.chunksize}" if self.chunksize else ""
        return f"SqlSource({self._obj()!r}, {redact_url(self.url)!r}{chunk})"


def read_sql(
    query: str,
    url: str = "sqlite:///asyncpipe.db",
    *,
    params: Mapping[str, Any] | None = None,
    chunksize: int | None = None,
    order_by: str | None = None,
    name: str = "read_sql",
    engine_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Stage:
    """A source stage reading ``query`` from the database at ``url``.

    - ``params``: bound parameters for ``:name`` placeholders (never formatted into the SQL).
    - ``chunksize``: rows per partition (``LIMIT``/``OFFSET`` over ``ORDER BY order_by``;
      without ``order_by`` every column is the sort key). None: one partition.
    - Items passed to ``run()`` may also be dicts of parameters: one partition per dict.
    - ``engine_options`` go to ``sqlalchemy.create_engine``; other keywords are stage options.
    """
    fn = SqlSource(
        query,
        url,
        params=params,
        chunksize=chunksize,
        order_by=order_by,
        engine_options=engine_options,
        name=name,
    )
    options.setdefault("executor", "thread")
    return Stage(fn, kind="source", name=name, options=StageOptions(**options))

"""SQL source and idempotent sink against SQLite files and a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from asyncpipe._exceptions import StoreError, TransientError
from asyncpipe.io import SqlChunk, SqlSink, SqlSource, StoreUnavailable, read_sql, to_sql
from asyncpipe.io._sql import engine_for


class Part:
    """Stand-in for the engine's PartitionKey with a chosen id."""

    def __init__(self, pid: str) -> None:
        self.id = self.label = pid


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request, tmp_path):
    """(url, table) for a fresh table in SQLite or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}", "sales"
    return request.getfixturevalue("pg_url"), request.getfixturevalue("pg_table")


def _frame(pid: int, n: int = 50) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": range(pid * 1000, pid * 1000 + n),
            "amount": [i * 0.5 for i in range(n)],
            "city": [f"c{i % 3}" for i in range(n)],
            "when": pd.date_range("2024-01-01", periods=n, freq="h"),
        }
    )


def _count(url: str, table: str, where: str = "") -> int:
    with engine_for(url).connect() as conn:
        return conn.execute(sa.text(f'SELECT COUNT(*) FROM "{table}" {where}')).scalar_one()


def _ids(url: str, table: str) -> list[int]:
    with engine_for(url).connect() as conn:
        return [r[0] for r in conn.execute(sa.text(f'SELECT id FROM "{table}" ORDER BY id'))]


# -- sink ------------------------------------------------------------------------------------
def test_replace_partition_is_idempotent_across_reruns(db):
    url, table = db
    sink = SqlSink(table, url, name="db")
    for _ in range(3):
        for pid in range(4):
            assert sink(_frame(pid), Part(f"p{pid:03d}")) == {"rows": 50, "table": table}
    assert _count(url, table) == 200
    assert _ids(url, table) == sorted(i for p in range(4) for i in range(p * 1000, p * 1000 + 50))
    # A re-run where a partition now has fewer rows removes the old ones.
    sink(_frame(2, n=5), Part("p002"))
    assert _count(url, table, "WHERE _partition = 'p002'") == 5
    assert _count(url, table) == 155


def test_concurrent_writers_create_the_table_once(db):
    url, table = db
    sink = SqlSink(table, url)
    errors: list[BaseException] = []

    def write(pid: int) -> None:
        try:
            sink(_frame(pid, n=20), Part(f"c{pid:03d}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert _count(url, table) == 160


def test_failure_mid_transaction_then_retry_leaves_no_duplicates(db):
    url, table = db
    sink = SqlSink(table, url)
    for pid in range(3):
        sink(_frame(pid), Part(f"r{pid}"))
    engine = engine_for(url)
    state = {"armed": True}

    def boom(conn, cursor, statement, params, context, executemany):
        if state["armed"] and statement.lstrip().upper().startswith("INSERT"):
            state["armed"] = False
            raise ConnectionResetError("injected: connection dropped mid-insert")

    sa.event.listen(engine, "after_cursor_execute", boom)
    try:
        with pytest.raises(Exception, match="injected"):  # the first attempt dies after DELETE + INSERT
            sink(_frame(1, n=80), Part("r1"))
        assert _count(url, table, "WHERE _partition = 'r1'") == 50  # rolled back: old rows intact
        sink(_frame(1, n=80), Part("r1"))  # the retry
    finally:
        sa.event.remove(engine, "after_cursor_execute", boom)
    assert _count(url, table, "WHERE _partition = 'r1'") == 80
    assert _count(url, table) == 180
    ids = _ids(url, table)
    assert len(ids) == len(set(ids))


def test_upsert_by_key(db):
    url, table = db
    sink = SqlSink(table, url, mode="upsert", key=["id"])
    sink(pd.DataFrame({"id": [1, 2], "v": ["a", "b"]}), Part("u1"))
    sink(pd.DataFrame({"id": [2, 3], "v": ["B", "c"]}), Part("u2"))
    sink(pd.DataFrame({"id": [2, 3], "v": ["B", "c"]}), Part("u2"))
    with engine_for(url).connect() as conn:
        rows = conn.execute(sa.text(f'SELECT id, v FROM "{table}" ORDER BY id')).all()
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "B"), (3, "c")]


def test_nulls_round_trip_as_null(db):
    url, table = db
    frame = pd.DataFrame({"id": [1, 2], "x": [1.5, None], "s": ["a", None]})
    SqlSink(table, url)(frame, Part("n1"))
    assert _count(url, table, "WHERE x IS NULL AND s IS NULL") == 1


def test_schema_mismatch_on_append_names_table_and_column(db):
    url, table = db
    sink = SqlSink(table, url, name="db")
    sink(pd.DataFrame({"id": [1], "v": [1.0]}), Part("s1"))
    with pytest.raises(StoreError, match="'extra'") as info:
        sink(pd.DataFrame({"id": [2], "v": [2.0], "extra": ["x"]}), Part("s2"))
    assert info.value.store == "sql" and info.value.obj == table
    with pytest.raises(StoreError, match="column 'v'"):
        sink(pd.DataFrame({"id": [3], "v": ["not a number"]}), Part("s3"))
    assert _count(url, table) == 1  # nothing half-written


def test_a_value_that_is_not_a_table_names_the_sink_and_partition(db):
    url, table = db
    sink = SqlSink(table, url, name="db")
    with pytest.raises(StoreError, match=r"Sink 'db' got a value it cannot write for partition t1") as info:
        sink(42, Part("t1"))
    assert info.value.store == "sql" and info.value.obj == table
    assert isinstance(info.value.__cause__, TypeError)


def test_to_sql_stage():
    stage = to_sql("t", "sqlite:///x.db", input="clean", name="db", retries=2)
    assert stage.kind == "sink" and stage.inputs == {"value": "clean"}
    assert stage.options.executor == "thread" and stage.options.retries == 2
    with pytest.raises(ValueError, match="key="):
        to_sql("t", input="clean", mode="upsert")


# -- source ----------------------------------------------------------------------------------
def test_source_reads_chunks_deterministically_with_bound_params(db):
    url, table = db
    sink = SqlSink(table, url)
    for pid in range(3):
        sink(_frame(pid), Part(f"q{pid}"))
    query = f'SELECT id, city FROM "{table}" WHERE city = :city'
    src = SqlSource(query, url, params={"city": "c1"}, chunksize=7, name="rows")
    items = src.asyncpipe_inputs()
    assert all(isinstance(i, SqlChunk) and i.source == "rows" for i in items)
    chunks = [src(i) for i in items]
    ids = [i for c in chunks for i in c["id"]]
    assert len(ids) == _count(url, table, "WHERE city = 'c1'") and len(set(ids)) == len(ids)
    assert [src(i)["id"].tolist() for i in items] == [c["id"].tolist() for c in chunks]  # stable
    by_key = SqlSource(query, url, params={"city": "c1"}, chunksize=7, order_by="id DESC")
    assert by_key(by_key.asyncpipe_inputs()[0])["id"].iloc[0] == max(ids)


def test_source_items_may_be_parameter_dicts(db):
    url, table = db
    SqlSink(table, url)(_frame(0, n=9), Part("d0"))
    src = SqlSource(f'SELECT * FROM "{table}" WHERE city = :city', url)
    assert len(src({"city": "c0"})) == 3
    injection = "c0' OR '1'='1"
    assert len(src({"city": injection})) == 0  # bound, never formatted into the SQL


def test_read_sql_stage_and_bad_order_by():
    stage = read_sql("SELECT 1", "sqlite://", name="one")
    assert stage.kind == "source" and stage.fn.asyncpipe_inputs() == [SqlChunk("one", 0, None)]
    with pytest.raises(ValueError, match="order_by"):
        read_sql("SELECT 1", order_by="id; DROP TABLE x")


# -- bad input -------------------------------------------------------------------------------
def test_missing_table_is_a_clear_permanent_error(db):
    url, _ = db
    src = SqlSource("SELECT * FROM no_such_table", url, name="rows")
    with pytest.raises(StoreError, match=r"no such table|missing table") as info:
        src(SqlChunk("rows", 0, None))
    assert info.value.store == "sql" and "no_such_table" in info.value.obj
    assert not isinstance(info.value, TransientError)


@pytest.mark.postgres
def test_wrong_password_is_permanent_and_not_leaked(pg_url):
    bad = sa.engine.make_url(pg_url).set(password="Wr0ng-Passw0rd").render_as_string(hide_password=False)
    src = SqlSource("SELECT 1", bad, name="rows")
    with pytest.raises(StoreError, match="wrong credentials") as info:
        src(SqlChunk("rows", 0, None))
    assert not isinstance(info.value, TransientError)
    for text in (str(info.value), str(info.value.__cause__), repr(src)):
        assert "Wr0ng-Passw0rd" not in text


def test_unreachable_database_is_transient():
    url = "postgresql://user:S3cret-pw@127.0.0.1:9/db"
    with pytest.raises(StoreUnavailable) as info:
        SqlSink("t", url, engine_options={"connect_args": {"connect_timeout": 2}})(
            pd.DataFrame({"a": [1]}), Part("x")
        )
    assert info.value.store == "sql" and "S3cret-pw" not in str(info.value)
    assert "user:***@127.0.0.1:9" in str(info.value)


# -- a real crash in the middle of a write ----------------------------------------------------
_CRASHER = textwrap.dedent(
    """
    import os, sys
    import pandas as pd, sqlalchemy as sa
    sys.path.insert(0, sys.argv[3])
    from asyncpipe.io import SqlSink
    from asyncpipe.io._sql import engine_for

    class Part:
        def __init__(self, pid): self.id = self.label = pid

    url, table, crash_at = sys.argv[1], sys.argv[2], int(sys.argv[4])
    sink = SqlSink(table, url)
    current = {"pid": None}

    def crash(conn):
        if current["pid"] == crash_at:
            os._exit(17)  # the process dies with the transaction open (rows deleted and inserted)

    sa.event.listen(engine_for(url), "commit", crash)
    for pid in range(6):
        current["pid"] = pid
        n = 40 + int(sys.argv[5])
        frame = pd.DataFrame({"id": range(pid * 1000, pid * 1000 + n), "v": [pid] * n})
        sink(frame, Part(f"k{pid}"))
    """
)


@pytest.mark.slow
def test_crash_mid_transaction_then_resume_has_no_duplicates_or_gaps(db, tmp_path):
    url, table = db
    script = tmp_path / "crasher.py"
    script.write_text(_CRASHER)
    shim = os.environ.get("ASYNCPIPE_DEV_PATH", "")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (shim, str(REPO)) if p)}

    def run(crash_at: int, extra: int) -> int:
        cmd = [sys.executable, str(script), url, table, str(REPO), str(crash_at), str(extra)]
        proc = subprocess.run(cmd, env=env, timeout=60, capture_output=True, text=True)
        assert proc.returncode in (0, 17), proc.stderr[-2000:]
        return proc.returncode

    assert run(crash_at=-1, extra=0) == 0  # a full first run: 6 x 40 rows
    assert _count(url, table) == 240
    assert run(crash_at=3, extra=10) == 17  # re-run with 50 rows each; dies committing partition 3
    assert _count(url, table, "WHERE _partition IN ('k0','k1','k2')") == 150  # done before the crash
    assert _count(url, table, "WHERE _partition = 'k3'") == 40  # rolled back to the old version
    assert run(crash_at=-1, extra=10) == 0  # the resume
    assert _count(url, table) == 300
    ids = _ids(url, table)
    assert ids == sorted(set(ids)) and len(ids) == 300

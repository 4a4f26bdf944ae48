"""Stores inside real pipelines run by the engine: files -> transform -> Parquet + SQLite, and HTTP."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

import asyncpipe as ap
import asyncpipe.io


@ap.stage
def clean(raw):
    return raw.assign(total=raw["qty"] * raw["price"])


def _inputs(tmp_path, n=4):
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(n):
        frame = pd.DataFrame({"order": range(i * 10, i * 10 + 10), "qty": range(10), "price": [1.5] * 10})
        frame.to_csv(src / f"day{i}.csv", index=False)
    return src


def test_files_to_parquet_and_sqlite_twice_without_duplicates(tmp_path):
    src = _inputs(tmp_path)
    db = f"sqlite:///{tmp_path / 'out.db'}"
    pipe = ap.Pipeline(
        [
            ap.io.read_files(str(src / "*.csv"), name="raw"),
            clean,
            ap.io.to_parquet(str(tmp_path / "lake"), input="clean", name="save"),
            ap.io.to_sql("orders", db, input="clean", name="db"),
        ],
        name="io-files",
        workdir=tmp_path / "work",
    )
    first = pipe.run_sync()
    second = pipe.run_sync()
    assert first.ok and second.ok
    status = second.table().groupby("stage")["status"].agg(lambda s: sorted(set(s)))
    assert status["raw"] == ["cached"]  # the source hit the cache
    assert status["db"] == ["ok"] and status["save"] == ["ok"]  # sinks always write
    lake = pd.read_parquet(tmp_path / "lake")
    assert sorted(lake["order"]) == list(range(40)) and len(list((tmp_path / "lake").iterdir())) == 4
    with sqlite3.connect(tmp_path / "out.db") as con:
        count, distinct, parts = con.execute(
            'SELECT COUNT(*), COUNT(DISTINCT "order"), COUNT(DISTINCT _partition) FROM orders'
        ).fetchone()
    assert (count, distinct, parts) == (40, 40, 4)


def test_malformed_file_fails_only_its_partition(tmp_path):
    src = _inputs(tmp_path, n=3)
    (src / "day1.csv").write_text('order,qty,price\n1,2,"unterminated\n')
    pipe = ap.Pipeline(
        [ap.io.read_files(str(src / "*.csv"), name="raw"), clean,
         ap.io.to_parquet(str(tmp_path / "lake"), input="clean", name="save")],
        name="io-bad", workdir=tmp_path / "work", cache=False,
    )  # fmt: skip
    result = pipe.run_sync()
    assert not result.ok
    failures = result.failures
    assert len(failures) == 1 and "day1.csv" in str(failures.iloc[0].to_dict())
    assert sorted(pd.read_parquet(tmp_path / "lake")["order"]) == list(range(0, 10)) + list(range(20, 30))


def test_http_source_retries_429_through_the_engine(api, tmp_path):
    urls = [api.url(f"/data/{i}.json?fail=1&status=429&retry_after=0&k=eng") for i in range(5)]
    pipe = ap.Pipeline(
        [ap.io.fetch_http(urls, name="api", retries=3, concurrency=4),
         ap.io.to_parquet(str(tmp_path / "lake"), input="api", name="save")],
        name="io-http", workdir=tmp_path / "work", cache=False,
    )  # fmt: skip
    result = pipe.run_sync()
    assert result.ok, result.failures
    assert sorted(pd.read_parquet(tmp_path / "lake")["id"]) == list(range(50))
    assert all(api.count(u[len(api.base) :]) == 2 for u in urls)  # one 429, then success


@pytest.mark.asyncio
async def test_http_source_on_the_running_loop_closes_its_client(api, tmp_path):
    source = ap.io.fetch_http([api.url("/data/1.csv")], name="api")
    pipe = ap.Pipeline([source], name="io-http2", workdir=tmp_path / "work", cache=False)
    result = await pipe.run()
    assert result.ok and len(result.output("api")) == 10
    assert not source.fn._clients  # the engine called aclose() at run end

"""The demo pipeline: files + loopback HTTP -> transform -> SQLite; the second run is cached."""

from __future__ import annotations

import sqlite3

import pytest

from asyncpipe._demo import main


@pytest.mark.slow
def test_demo_runs_twice_with_cache_hits_and_no_duplicates(tmp_path, capsys):
    assert main(["--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "28/35 stage partitions from the cache, 0 HTTP requests" in out
    assert main(["--dir", str(tmp_path / "demo")]) == 0  # a second invocation reuses the cache
    out = capsys.readouterr().out
    assert "first run: ok" in out and "0/35 stage partitions" not in out
    with sqlite3.connect(tmp_path / "demo" / "demo.db") as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT _partition) FROM daily_revenue").fetchone() == (
            35,
            7,
        )
    assert "sqlite3 " in out and "daily_revenue" in out

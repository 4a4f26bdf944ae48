"""Run history: records on disk, runs()/load_run(), and the ``asyncpipe runs`` command."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from pathlib import Path

import pandas as pd
import pytest

from asyncpipe import _history
from asyncpipe._clock import FakeClock
from asyncpipe._events import PartitionFailed, RunFinished, RunStarted, StageProgress
from asyncpipe._history import (
    RunNotFoundError,
    RunRecord,
    load_run,
    new_run_id,
    runs,
    save_run,
    save_snapshot,
)
from asyncpipe._history_cli import register
from asyncpipe._metrics import Metrics

T0 = 1_780_000_000.0


def record(workdir: Path, run_id: str, *, pipeline: str = "etl", status: str = "succeeded",
           started: float = T0, done: int = 10, **kw) -> Path:
    fields = dict(run_id=run_id, pipeline=pipeline, params={"n": done}, started_at=started,
                  finished_at=started + 2.5, status=status,
                  stages={"fetch": {"done": done, "failed": 0}, "store": {"done": done - 1, "failed": 1}},
                  n_failures=1, worst_loop_lag=0.004)
    fields.update(kw)
    return save_run(workdir, **fields)


def finished_metrics(status: str) -> Metrics:
    """A Metrics that saw a small run end with ``status``."""
    clock = FakeClock(wall=T0)
    m = Metrics(clock=clock, series_interval=1.0)
    m(RunStarted(run_id="20260601-000000-aaaaaa", t=clock.time(), pipeline="etl", stages=("a", "b"),
                 params={"day": "2026-06-01"}))
    for _ in range(24):
        clock.advance(0.125)
        for stage in ("a", "b"):
            m(StageProgress(run_id=m.run_id, t=clock.time(), stage=stage, started=5, finished=5, total=120,
                            durations=(0.01, 0.02, 0.03, 0.04, 0.05), limit=4))
    m(PartitionFailed(run_id=m.run_id, t=clock.time(), stage="b", partition=3, attempts=2,
                      error_type="ValueError", message="bad"))
    m(RunFinished(run_id=m.run_id, t=clock.time(), status=status, n_failures=1,
                  error="RunCancelled: stop" if status == "cancelled" else None))
    return m


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_snapshot_round_trip_keeps_the_final_state(tmp_path, status):
    m = finished_metrics(status)
    snap, series = m.snapshot(), m.series()
    folder = save_snapshot(tmp_path, snap, series)
    assert folder == tmp_path / "runs" / snap.run_id
    rec = load_run(snap.run_id, tmp_path)
    assert (rec.run_id, rec.pipeline, rec.status, rec.n_failures) == (snap.run_id, "etl", status, 1)
    assert rec.params == {"day": "2026-06-01"}
    assert rec.started_at == T0 and rec.finished_at == pytest.approx(T0 + 3.0)
    assert rec.duration == pytest.approx(3.0)
    assert rec.stages["b"]["done"] == 120 and rec.stages["a"]["total"] == 120
    assert rec.stages["a"]["latency_p50"] == pytest.approx(0.03)
    assert rec.error == snap.error
    back = rec.metrics()
    pd.testing.assert_frame_equal(back, series)
    assert str(back["time"].dt.tz) == "UTC" and str(back["limit"].dtype) == "Int64"


def test_record_fields_round_trip(tmp_path):
    folder = record(tmp_path, "20260101-120000-abcdef", params={"when": pd.Timestamp("2026-01-01")},
                    extra={"host": "ci"}, error="ValueError: x")
    assert sorted(p.name for p in folder.iterdir()) == ["run.json"]  # no series given, no temp files left
    raw = json.loads((folder / "run.json").read_text())
    assert raw["format"] == _history.FORMAT
    rec = load_run("20260101-120000-abcdef", tmp_path)
    assert rec == RunRecord(run_id="20260101-120000-abcdef", pipeline="etl",
                            params={"when": repr(pd.Timestamp("2026-01-01"))}, started_at=T0,
                            finished_at=T0 + 2.5, status="succeeded",
                            stages={"fetch": {"done": 10, "failed": 0}, "store": {"done": 9, "failed": 1}},
                            n_failures=1, worst_loop_lag=0.004, path=folder, error="ValueError: x",
                            extra={"host": "ci"})
    assert list(rec.metrics().columns) == list(_history.SERIES_COLUMNS) and rec.metrics().empty
    assert rec.failures().empty


def test_runs_lists_newest_first_with_limit_and_filter(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa", started=T0, done=5)
    record(tmp_path, "20260102-000000-bbbbbb", started=T0 + 86400, pipeline="other", status="failed")
    record(tmp_path, "20260103-000000-cccccc", started=T0 + 2 * 86400, done=7)
    df = runs(tmp_path)
    assert list(df.columns) == list(_history.RUNS_COLUMNS)
    assert list(df["run_id"]) == [
        "20260103-000000-cccccc", "20260102-000000-bbbbbb", "20260101-000000-aaaaaa"]
    assert list(df["done"]) == [6, 9, 4]  # the last stage's count
    assert df["duration"].tolist() == [2.5, 2.5, 2.5]
    assert df["started_at"].iloc[2] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert list(runs(tmp_path, limit=2)["run_id"]) == ["20260103-000000-cccccc", "20260102-000000-bbbbbb"]
    assert list(runs(tmp_path, pipeline="other")["status"]) == ["failed"]


def test_runs_of_an_empty_or_missing_workdir(tmp_path):
    df = runs(tmp_path / "nowhere")
    assert df.empty and list(df.columns) == list(_history.RUNS_COLUMNS)


def test_unfinished_and_corrupt_records_are_skipped(tmp_path, caplog):
    record(tmp_path, "20260101-000000-aaaaaa")
    (tmp_path / "runs" / "20260102-000000-bbbbbb").mkdir()  # running: no run.json yet
    bad = tmp_path / "runs" / "20260103-000000-cccccc"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="asyncpipe.history"):
        assert list(runs(tmp_path)["run_id"]) == ["20260101-000000-aaaaaa"]
    assert "unreadable run record" in caplog.text
    with pytest.raises(RunNotFoundError, match=r"no readable run\.json"):
        load_run("20260102", tmp_path)


def test_load_run_by_prefix(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa")
    record(tmp_path, "20260101-000000-aaaaaab")  # the first id is a prefix of this one
    record(tmp_path, "20260102-093000-bbbbbb")
    assert load_run("20260102", tmp_path).run_id == "20260102-093000-bbbbbb"
    assert load_run("20260101-000000-aaaaaa", tmp_path).run_id == "20260101-000000-aaaaaa"  # exact wins
    with pytest.raises(RunNotFoundError, match=r"ambiguous: 2 runs match .*Give more characters"):
        load_run("20260101", tmp_path)
    with pytest.raises(RunNotFoundError, match="No run matches '2027'"):
        load_run("2027", tmp_path)
    with pytest.raises(LookupError):
        load_run("", tmp_path)


def test_a_series_that_cannot_be_written_does_not_cost_the_record(tmp_path, caplog):
    unwritable = pd.DataFrame({"t": [0.0], "odd": [object()]})
    with caplog.at_level(logging.WARNING, logger="asyncpipe.history"):
        folder = record(tmp_path, "20260101-000000-aaaaaa", series=unwritable)
    assert "could not write the metrics series" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["run.json"]
    assert load_run("2026", tmp_path).status == "succeeded"


def test_rewriting_a_record_replaces_it_atomically(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa", status="running")
    record(tmp_path, "20260101-000000-aaaaaa", status="succeeded")
    assert load_run("2026", tmp_path).status == "succeeded"
    assert [p.name for p in (tmp_path / "runs" / "20260101-000000-aaaaaa").iterdir()] == ["run.json"]


def test_failures_are_read_from_the_engines_dead_letter_file(tmp_path):
    folder = record(tmp_path, "20260101-000000-aaaaaa")
    lines = [json.dumps({"stage": "store", "partition": "item 3", "error_type": "KeyError", "message": "'x'",
                         "attempts": 3})]
    (folder / "failures.jsonl").write_text("\n".join(lines) + "\n{torn")
    df = load_run("2026", tmp_path).failures()
    assert df[["stage", "partition", "error_type"]].to_dict("records") == [
        {"stage": "store", "partition": "item 3", "error_type": "KeyError"}]


def test_invalid_run_ids_are_rejected(tmp_path):
    for bad in ("", "../escape", ".hidden"):
        with pytest.raises(ValueError, match="invalid run id"):
            record(tmp_path, bad)


def test_new_run_ids_sort_by_start_time():
    clock = FakeClock(wall=T0)
    ids = []
    for _ in range(3):
        ids.append(new_run_id(clock))
        clock.advance(1.0)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", ids[0])
    assert ids[0].startswith("20260528-202640")  # UTC
    assert new_run_id(FakeClock(wall=T0)) != new_run_id(FakeClock(wall=T0))  # random suffix


def test_record_text_and_html(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa", pipeline="<etl>", error="ValueError: boom")
    rec = load_run("2026", tmp_path)
    text = str(rec)
    assert "run 20260101-000000-aaaaaa  pipeline <etl>  succeeded" in text
    assert "duration 2.5s" in text and "failures 1" in text and "worst loop lag 4.0ms" in text
    assert "store: done 9  failed 1" in text and "error    ValueError: boom" in text
    page = rec._repr_html_()
    assert "&lt;etl&gt;" in page and "<td>store</td>" in page and "<etl>" not in page
    assert "stalls over" not in text


def test_record_text_names_the_stall_suspects(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa",
           extra={"loop_stalls": 4, "stall_suspects": {"parse": 1, "<load>": 3}})
    rec = load_run("2026", tmp_path)
    assert "worst loop lag 4.0ms, 4 stalls over 20 ms during <load> (3), parse (1)" in str(rec)
    assert "4 stalls over 20 ms during &lt;load&gt; (3), parse (1)" in rec._repr_html_()


# -- the CLI ------------------------------------------------------------------------------------
def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="asyncpipe")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_lists_runs(tmp_path):
    record(tmp_path, "20260101-000000-aaaaaa", started=T0)
    record(tmp_path, "20260102-000000-bbbbbb", started=T0 + 86400, status="failed", pipeline="other")
    code, out, _ = cli("runs", "--workdir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "PIPELINE", "STATUS", "STARTED", "(UTC)", "DURATION", "DONE",
                                "FAILURES", "WORST", "LAG"]
    assert lines[1].split() == ["20260102-000000-bbbbbb", "other", "failed", "2026-05-29", "20:26:40", "2.5s",
                                "9", "1", "4.0ms"]
    assert lines[2].startswith("20260101-000000-aaaaaa  etl ")
    assert len(lines) == 3
    _, out, _ = cli("runs", "--workdir", str(tmp_path), "--limit", "1")
    assert len(out.splitlines()) == 2
    _, out, _ = cli("runs", "--workdir", str(tmp_path), "--pipeline", "etl")
    assert "bbbbbb" not in out and "aaaaaa" in out


def test_cli_shows_one_run_with_failures(tmp_path):
    folder = record(tmp_path, "20260101-000000-aaaaaa")
    failures = [{"stage": "store", "partition": f"item {i}", "error_type": "KeyError",
                 "message": f"'k{i}'\nmore"} for i in range(12)]
    (folder / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    code, out, _ = cli("runs", "2026", "--workdir", str(tmp_path))
    assert code == 0
    assert out.startswith("run 20260101-000000-aaaaaa  pipeline etl  succeeded\n")
    assert "  fetch: done 10  failed 0\n" in out
    assert "  failures (12, showing 10):\n    store [item 0] KeyError: 'k0'\n" in out
    assert "item 10" not in out


def test_cli_reports_unknown_runs(tmp_path):
    code, out, err = cli("runs", "nope", "--workdir", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith("asyncpipe runs: No run matches 'nope'")
    code, out, _ = cli("runs", "--workdir", str(tmp_path))
    assert (code, out) == (0, "No runs recorded yet.\n")


def test_a_real_run_leaves_a_record_with_its_series_and_failures(tmp_path):
    import asyncio

    import asyncpipe as ap

    @ap.source
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @ap.stage
    def parse(fetch: int) -> int:
        if fetch == 3:
            raise ValueError("bad record 3")
        return fetch * 2

    pipe = ap.Pipeline([fetch, parse], name="it", workdir=tmp_path, cache=False)
    result = pipe.run_sync(range(10))
    assert result.status == "failed"
    df = runs(tmp_path)
    assert df[["run_id", "pipeline", "status", "done", "n_failures"]].to_dict("records") == [
        {"run_id": result.run_id, "pipeline": "it", "status": "failed", "done": 9, "n_failures": 1}]
    rec = load_run(result.run_id, tmp_path)
    assert rec.worst_loop_lag is not None and rec.worst_loop_lag >= 0
    series = rec.metrics()
    assert list(series.columns) == list(_history.SERIES_COLUMNS)
    last = series[series["t"] == series["t"].max()].set_index("stage")
    assert (last.loc["fetch", "done"], last.loc["parse", "done"], last.loc["parse", "failed"]) == (10, 9, 1)
    fails = rec.failures()
    assert fails["stage"].tolist() == ["parse"] and fails["error_type"].tolist() == ["ValueError"]
    code, out, _ = cli("runs", result.run_id[:17], "--workdir", str(tmp_path))
    assert code == 0 and "parse [" in out and "ValueError: bad record 3" in out

"""Features the engine promises that other tests reach only indirectly: runtime limits,
replay, file-version cache keys, settings tokens and the `asyncpipe run` command."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

import asyncpipe as ap
from asyncpipe._events import LimitChanged


@pytest.mark.asyncio
@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
async def test_limits_change_mid_run_from_the_handle(cache, tmp_path):
    in_flight = peak = 0
    gate = asyncio.Event()

    async def work(i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        return i

    events = []
    # a cached stage bounds computed-but-unwritten partitions too: the bound must follow
    pipe = ap.Pipeline([ap.source(work, concurrency=1)], cache=str(tmp_path / "cache") if cache else False)
    handle = pipe.start(range(8), on_event=events.append)
    for _ in range(2000):  # until the run is going (opening the cache takes a thread hop)
        if peak:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.02)
    assert peak == 1
    handle.set_concurrency("work", 4, reason="more please")
    handle.set_rate("work", "1000/s")
    for _ in range(50):
        await asyncio.sleep(0.001)
    assert peak == 4  # new workers started without restarting the run
    assert handle.limits()["work"] == {"concurrency": 4, "rate": 1000.0}
    gate.set()
    assert (await handle).output() == list(range(8))
    changes = [(e.kind, e.new, e.reason) for e in events if isinstance(e, LimitChanged)]
    assert ("concurrency", 4, "more please") in changes
    with pytest.raises(KeyError, match="No stage 'wrok'"):
        handle._session.run.ensure_limiter("wrok")


def test_replay_recomputes_only_what_failed(tmp_path):
    broken = {3}
    calls = []

    def fetch(i):
        calls.append(i)
        if i in broken:
            raise ConnectionError(f"source {i} is down")
        return i * 2

    pipe = ap.Pipeline([ap.source(fetch)], workdir=tmp_path)
    first = pipe.run_sync(range(5))
    assert first.failures["partition"].tolist() == ["3"]
    broken.clear()  # the source came back
    calls.clear()
    second = asyncio.run(pipe.replay(first))
    assert second.ok and second.output() == [0, 2, 4, 6, 8]
    assert calls == [3]


def test_a_changed_file_is_never_a_stale_cache_hit(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for day in ("mon", "tue"):
        pd.DataFrame({"x": [1, 2]}).to_csv(raw / f"sales-{day}.csv", index=False)

    def total(sales):
        return int(sales["x"].sum())

    pipe = ap.Pipeline(
        [ap.io.read_files(str(raw / "sales-{item}.csv"), name="sales"), total], workdir=tmp_path / "work"
    )
    assert pipe.run_sync(["mon", "tue"]).output("total") == [3, 3]
    pd.DataFrame({"x": [10, 20, 30]}).to_csv(raw / "sales-tue.csv", index=False)
    again = pipe.run_sync(["mon", "tue"])
    assert again.output("total") == [3, 60]
    status = again.table().set_index(["stage", "partition"])["status"]
    assert status[("sales", "mon")] == "cached" and status[("sales", "tue")] == "ok"


def test_a_callables_settings_token_is_part_of_its_cache_key(tmp_path, monkeypatch):
    class Reader:
        """A store-like callable whose output depends on a setting outside its code."""

        __name__ = "reader"

        def asyncpipe_cache_token(self):
            import os

            return os.environ["ASYNCPIPE_TEST_DATASET"]  # e.g. which bucket or API version

        def __call__(self, item):
            return item

    def run():
        return ap.Pipeline([ap.Stage(Reader(), kind="source")], workdir=tmp_path).run_sync([1, 2])

    monkeypatch.setenv("ASYNCPIPE_TEST_DATASET", "v1")
    assert run().output() == [1, 2]
    assert set(run().explain()["why"]) == {"cache hit"}
    monkeypatch.setenv("ASYNCPIPE_TEST_DATASET", "v2")
    assert set(run().explain()["why"]) == {"options changed"}  # not a stale hit


def test_cli_run_prints_a_summary_and_fails_on_failures(tmp_path):
    (tmp_path / "jobs.py").write_text(
        textwrap.dedent(
            """
            import asyncpipe as ap

            def parse(item):
                if item == "bad":
                    raise ValueError("bad row")
                return item.upper()

            pipe = ap.Pipeline([ap.source(parse)], name="jobs", cache=False)
            """
        )
    )

    def cli(*args):
        cmd = [sys.executable, "-m", "asyncpipe.cli", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    ok = cli("run", "jobs.py:pipe", "-q", "-i", "a", "b")
    assert ok.returncode == 0, ok.stderr
    assert "run jobs: succeeded, 2 inputs, 0 failed" in ok.stdout
    failed = cli("run", "jobs.py", "-q", "-i", "a", "bad")
    assert failed.returncode == 1
    assert "1 failure(s) recorded in" in failed.stdout
    missing = cli("run", "jobs.py:nope", "-i", "a")
    assert missing.returncode != 0 and "has no 'nope'" in missing.stderr


@pytest.mark.asyncio
async def test_changing_a_limit_before_the_stages_exist_says_what_to_do():
    pipe = ap.Pipeline([ap.source(lambda i: i, name="work")], cache=False)
    handle = pipe.start(range(3))  # returns at once: the run has not built its stages yet
    with pytest.raises(RuntimeError, match=r"has not started its stages yet.*pipe.configure"):
        handle.set_concurrency("work", 4)
    assert (await handle).output() == [0, 1, 2]

"""Real faults: transient and permanent failures at scale, replay, and kill -9 resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import asyncpipe as ap
from asyncpipe import RetryPolicy

N = 2000
TRANSIENT = {i for i in range(N) if i % 10 == 3}  # 10% fail on the first attempt
PERMANENT = {i for i in range(N) if i % 100 == 7}  # 1% fail on every attempt


def test_no_item_lost_or_duplicated_under_transient_and_permanent_faults(tmp_path):
    attempts: dict[int, int] = {}
    fixed = {"on": False}

    def fetch(i):
        attempts[i] = attempts.get(i, 0) + 1
        if i in PERMANENT and not fixed["on"]:
            raise ValueError(f"record {i} is malformed")
        if i in TRANSIENT and attempts[i] == 1:
            raise ConnectionResetError(f"reset while fetching {i}")
        return i

    def square(fetch):
        return fetch * fetch

    pipe = ap.Pipeline(
        [ap.source(fetch, retries=RetryPolicy(attempts=3, backoff=0.0, jitter=0.0)), square],
        workdir=tmp_path,
    )
    result = pipe.run_sync(range(N))
    out = result.partitions("square")
    got = {k.item for k in out}
    dead = set(result.failures["partition"].astype(int))
    assert dead == PERMANENT
    assert got | dead == set(range(N)) and not got & dead  # zero lost, none twice
    assert all(v == k.item**2 for k, v in out.items())  # equals the fault-free output
    assert len(out) == N - len(PERMANENT)
    assert set(result.failures["attempts"]) == {1}  # ValueError is not retried
    assert all(attempts[i] == 2 for i in TRANSIENT - PERMANENT)
    assert len(ap.read_failures(result.run_dir)) == len(PERMANENT)

    # The source "comes back": replay recomputes only the failed partitions.
    fixed["on"] = True
    before = dict(attempts)
    replayed = pipe.run_sync(result.inputs)
    assert replayed.ok and replayed.output("square") == [i * i for i in range(N)]
    recomputed = {i for i in attempts if attempts[i] != before.get(i)}
    assert recomputed == PERMANENT
    assert set(replayed.table().query("stage == 'fetch' and status == 'ok'")["index"]) == PERMANENT


def test_bad_return_value_for_a_reduce_concat_is_a_clear_failure(tmp_path):
    def load(i):
        return i  # not a DataFrame

    @ap.reduce(concat=True)
    def total(load):
        return load

    result = ap.Pipeline([ap.source(load), total], cache=False).run_sync([1, 2])
    assert not result.ok
    row = result.failures.iloc[0]
    assert row["stage"] == "total" and "concat=True" in row["message"] and "int" in row["message"]


CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import asyncpipe as ap

    log = sys.argv[2]

    def note(stage, i):
        with open(log, "a") as fh:
            fh.write(f"{stage} {i}\\n")

    async def fetch(i):
        import asyncio
        await asyncio.sleep(0.01)
        note("fetch", i)
        return {"i": i, "v": i * 3}

    def enrich(fetch):
        time.sleep(0.005)
        note("enrich", fetch["i"])
        return {**fetch, "w": fetch["v"] + 1}

    pipe = ap.Pipeline([ap.source(fetch, concurrency=4), ap.stage(enrich, concurrency=4, executor="thread")],
                       workdir=sys.argv[1])
    result = pipe.run_sync(range(60), monitor=False)
    print(json.dumps(result.output("enrich")))
    """
)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_9_at_random_points_then_resume_matches_a_clean_run(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(CHILD)
    clean_dir, clean_log = tmp_path / "clean", tmp_path / "clean.log"
    clean = subprocess.run(
        [sys.executable, str(script), str(clean_dir), str(clean_log)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    expected = json.loads(clean.stdout)
    rng = random.Random(20261204)
    killed = 0
    for trial in range(5):
        work, log = tmp_path / f"w{trial}", tmp_path / f"t{trial}.log"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(work), str(log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = rng.randint(5, 100)  # stage calls logged before the kill
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= target:
                break
            time.sleep(0.002)
        if proc.poll() is None:  # (a fast machine may finish the job between two polls)
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        done_before = log.read_text().splitlines() if log.exists() else []
        resumed = subprocess.run(
            [sys.executable, str(script), str(work), str(log)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert json.loads(resumed.stdout) == expected, f"trial {trial}"
        after = log.read_text().splitlines()[len(done_before) :]
        recomputed = set(done_before) & set(after)
        # At most the partitions in flight when killed: per stage, `concurrency` (4)
        # computed-or-being-written (a permit is held until the output is durable).
        for stage in ("fetch", "enrich"):
            n = sum(1 for line in recomputed if line.startswith(stage))
            assert n <= 4, (trial, stage, n, target)
    assert killed >= 3, f"only {killed} of 5 trials were killed mid-run"

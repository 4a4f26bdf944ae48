"""The Dask executor on a real LocalCluster (2 worker processes, 1 thread each).

Stage functions are defined inside the tests on purpose: like notebook functions they
cannot be imported by the workers and travel by value (cloudpickle).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import psutil
import pytest

import asyncpipe as ap
from asyncpipe._exceptions import PickleWarning
from asyncpipe.executors._dask import DaskExecutor, RemoteCancelled, cluster_sample, worker_memory

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.slow]


class CountingDask(DaskExecutor):
    """A real DaskExecutor that counts the values brought back to this process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fetched = 0

    async def fetch(self, value):
        if self.is_ref(value):
            self.fetched += 1
        return await super().fetch(value)


async def _scheduler_tasks(client, prefix="", states=None):
    """Keys of the scheduler's tasks whose key starts with ``prefix`` (and in ``states``)."""

    def keys(dask_scheduler, prefix=prefix, states=states):
        return sorted(
            str(k)
            for k, t in dask_scheduler.tasks.items()
            if str(k).startswith(prefix) and (states is None or t.state in states)
        )

    return await client.run_on_scheduler(keys)


async def _poll(condition, within=10.0, step=0.02):
    """Await ``condition()`` until it is truthy or ``within`` seconds passed; its last value."""
    for _ in range(int(within / step)):
        value = await condition()
        if value:
            return value
        await asyncio.sleep(step)
    return await condition()


async def _wait_idle(client):
    """Wait until no worker thread is busy: a cancelled or timed-out task's function runs
    to its end on the worker (threads cannot be interrupted), holding its thread."""

    def executing(dask_worker):
        return len(dask_worker.state.executing) + len(dask_worker.state.long_running)

    async def idle():
        return sum((await client.run(executing)).values()) == 0

    await _poll(idle)


def _count(handle, stage, what):
    return handle.counts().get(stage, {}).get(what, 0)  # {} until the run has built its stages


async def _until_count(handle, stage, what, n):
    async def reached():
        return _count(handle, stage, what) >= n

    assert await _poll(reached), f"{stage} never reached {what}={n}"


async def _eventually_empty(client, prefix, states=None):
    """The scheduler's matching keys once they are gone (or what is left after 5 s)."""
    gc.collect()  # the engine's Run <-> StageRun cycle keeps kept futures alive until collected

    async def gone():
        return not await _scheduler_tasks(client, prefix, states)

    await _poll(gone, within=5.0)
    return await _scheduler_tasks(client, prefix, states)


def _observer(cluster):
    return distributed.Client(cluster.scheduler_address, asynchronous=True, set_as_default=False)


@pytest.mark.asyncio
async def test_mixed_local_and_dask_stages_keep_data_on_the_cluster(cluster):
    ex = CountingDask(address=cluster.scheduler_address)
    me = os.getpid()

    @ap.source
    async def numbers(n):
        return n

    @ap.stage(executor="dask")
    def squared(numbers):
        return (os.getpid(), numbers * numbers)

    @ap.stage(executor="dask")
    def tagged(squared):
        return (os.getpid(), squared[1] + 1)

    @ap.stage(executor="inline")
    def local(tagged):
        return (os.getpid(), tagged[1])

    @ap.reduce(executor="dask")
    def total(tagged):
        return (os.getpid(), sum(v for _, v in tagged))

    async def agen(i):  # an async function runs on the workers too
        await asyncio.sleep(0)
        return i

    pipe = ap.Pipeline([numbers, squared, tagged, local, total], name="mixed", cache=False)
    try:
        res = await pipe.run(range(10), executors={"dask": ex}, keep=["squared", "local", "total"])
        assert res.status == "succeeded", res.failures()
        workers = {pid for pid, _ in res.output("squared")}
        assert me not in workers and workers <= set((await ex.client.run(os.getpid)).values())
        assert [v for _, v in res.output("local")] == [i * i + 1 for i in range(10)]
        assert {pid for pid, _ in res.output("local")} == {me}
        total_pid, total_value = res.output("total")
        assert total_pid != me and total_value == sum(i * i + 1 for i in range(10))
        # Only what a local consumer or the result needed crossed back: 10 partitions into
        # 'local' and 10 kept 'squared' + 1 'total' at the end. 'squared' -> 'tagged' and
        # 'tagged' -> 'total' stayed on the cluster.
        assert ex.fetched == 21
        pipe2 = ap.Pipeline([ap.source(agen, executor="dask")], name="async-on-dask", cache=False)
        assert (await pipe2.run(range(3), executors={"dask": ex})).output() == [0, 1, 2]

        def parts(n):  # a sync generator: its parts come back as one future each
            yield from range(n)

        pipe3 = ap.Pipeline([ap.source(parts, executor="dask")], name="gen-on-dask", cache=False)
        assert (await pipe3.run([2, 3], executors={"dask": ex})).output() == [0, 1, 0, 1, 2]
    finally:
        await ex.aclose()
    # the user's cluster is untouched by aclose()
    assert cluster.scheduler_address and len(cluster.workers) == 2


@pytest.mark.asyncio
async def test_rerun_hits_the_cache_and_submits_nothing(cluster, tmp_path):
    ex = DaskExecutor(address=cluster.scheduler_address)
    calls = tmp_path / "calls"
    calls.mkdir()

    @ap.source(executor="dask")
    def load(i):
        (calls / f"{i}-{time.monotonic_ns()}").touch()  # workers share this machine's disk
        return {"i": i, "sq": i * i}

    @ap.stage(executor="dask")
    def value(load):
        return load["sq"]

    pipe = ap.Pipeline([load, value], name="cached", cache=str(tmp_path / "cache"))
    try:
        first = await pipe.run(range(6), executors={"dask": ex})
        assert first.output() == [i * i for i in range(6)]
        assert len(list(calls.iterdir())) == 6
        second = await pipe.run(range(6), executors={"dask": ex})
        assert second.output() == [i * i for i in range(6)]
        assert len(list(calls.iterdir())) == 6  # no task ran again
        assert {s.name: s.cached for s in second.stages} == {"load": 6, "value": 6}
    finally:
        await ex.aclose()


@pytest.mark.asyncio
async def test_killed_worker_mid_run_loses_and_duplicates_nothing(cluster, tmp_path):
    ex = DaskExecutor(address=cluster.scheduler_address)
    seen: list[int] = []

    @ap.source(executor="dask", concurrency=4)
    def slow(i):
        time.sleep(0.08)
        return i

    @ap.stage(executor="dask", concurrency=4)
    def doubled(slow):
        return 2 * slow

    @ap.sink
    def collect(doubled, partition):
        seen.append(partition.index)
        return doubled

    pipe = ap.Pipeline([slow, doubled, collect], name="killed", cache=False)
    try:
        await ex.start()
        pids = await ex.client.run(os.getpid)
        handle = pipe.start(range(24), executors={"dask": ex})
        await _until_count(handle, "doubled", "done", 4)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)  # the nanny restarts it; lost results are recomputed
        res = await handle
        assert res.status == "succeeded", res.failures()
        assert res.output() == [2 * i for i in range(24)]
        assert sorted(seen) == list(range(24))  # each partition reached the sink exactly once
        assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    finally:
        await ex.client.wait_for_workers(2, timeout=30)
        await ex.aclose()


def test_cancel_leaves_no_task_on_the_scheduler(cluster, tmp_path):
    # executor="dask" with a default client: the run opens (and closes) its own connection.
    @ap.source(executor="dask", concurrency=4)
    def stuck(i):
        time.sleep(2.0)
        return i

    @ap.stage(executor="dask")
    def after(stuck):
        return stuck

    pipe = ap.Pipeline([stuck, after], name="cancelme", cache=False)

    async def main(client):
        handle = pipe.start(range(8))

        async def submitted():
            return len(await _scheduler_tasks(client, "stuck-")) >= 4

        assert await _poll(submitted)
        handle.cancel()
        with pytest.raises(ap.RunCancelled):
            await handle
        return await _eventually_empty(client, "")

    async def inspect_after():
        async with _observer(cluster) as c:
            return await _eventually_empty(c, "")

    with distributed.Client(cluster.scheduler_address, set_as_default=True):

        async def run_it():
            async with _observer(cluster) as observer:
                return await main(observer)

        assert asyncio.run(run_it()) == []
    assert asyncio.run(inspect_after()) == []


def test_default_client_is_used_and_kept_outputs_come_back(cluster):
    @ap.source(executor="dask")
    def where(i):
        return (os.getpid(), i)

    with distributed.Client(cluster.scheduler_address, set_as_default=True) as client:
        worker_pids = set(client.run(os.getpid).values())
        # run_sync: a private loop in a thread; the run connects to the default client's
        # scheduler there, and closes that connection (not the user's client) at the end.
        res = ap.Pipeline([where], name="default-client", cache=False).run_sync(range(6))
        assert [i for _, i in res.output()] == list(range(6))
        assert {pid for pid, _ in res.output()} <= worker_pids
        assert client.status == "running"


@pytest.mark.asyncio
async def test_local_reduce_after_a_dask_stage_gets_every_partition(cluster):
    import pandas as pd

    @ap.source(executor="dask")
    def frame(i):
        return pd.DataFrame({"i": [i]})

    @ap.reduce(concat=True)
    def together(frame):
        return sorted(frame["i"])

    async with DaskExecutor(address=cluster.scheduler_address) as ex:
        res = await ap.Pipeline([frame, together], name="local-reduce", cache=False).run(
            range(5), executors={"dask": ex}
        )
    assert res.output() == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
async def test_user_executor_cancel_and_timeout_release_their_tasks(cluster):
    ex = DaskExecutor(address=cluster.scheduler_address)

    @ap.source(executor="dask", timeout=1.0)
    def sleepy(i):
        time.sleep(3.0 if i == 0 else 0)
        return i

    @ap.source(executor="dask", concurrency=2)
    def stuck(i):
        time.sleep(2.0)
        return i

    try:
        await _wait_idle(await ex.start())
        # two partitions for two single-thread workers: the fast one never queues behind
        # the slow one (which would make its own timeout fire on a loaded machine)
        res = await ap.Pipeline([sleepy], name="timeouts", cache=False).run(range(2), executors={"dask": ex})
        assert res.output() == [1]
        assert [f.error_type for f in res.failure_list] == ["TimeoutError"]
        # The timed-out task is gone; the results of partitions 1 and 2 stay in worker memory
        # while the result's failure traceback references the run (see the report).
        assert await _eventually_empty(ex.client, "sleepy-", states=("processing", "waiting", "queued")) == []

        handle = ap.Pipeline([stuck], name="stuck", cache=False).start(range(4), executors={"dask": ex})
        await _until_count(handle, "stuck", "running", 2)
        handle.cancel()
        with pytest.raises(ap.RunCancelled):
            await handle
        # The engine does not close executors a user passed in; aclose(cancel=True)
        # cancels what is left without touching the user's cluster.
        await ex.aclose(cancel=True)
        async with _observer(cluster) as c:
            assert await _eventually_empty(c, "stuck-") == []
    finally:
        await ex.aclose()


@pytest.mark.asyncio
async def test_retries_dead_letter_and_remote_tracebacks(cluster, tmp_path):
    ex = DaskExecutor(address=cluster.scheduler_address)
    marks = tmp_path / "marks"
    marks.mkdir()

    @ap.source(executor="dask", retries=ap.RetryPolicy(attempts=2, backoff=0.01))
    def flaky(i):
        mark = marks / str(i)
        if i % 3 == 0 and not mark.exists():
            mark.touch()
            raise ConnectionResetError(f"transient {i}")  # retryable (OSError)
        if i == 4:
            raise KeyError("permanent 4")
        return i

    try:
        res = await ap.Pipeline([flaky], name="flaky", cache=False).run(range(7), executors={"dask": ex})
        assert res.output() == [0, 1, 2, 3, 5, 6]
        (failure,) = res.failure_list
        assert failure.error_type == "KeyError" and failure.partition.index == 4 and failure.attempts == 1
        assert "permanent 4" in failure.traceback and "flaky" in failure.traceback
        retried = {r[0].index: r[3] for r in res.records["flaky"] if r[1] == "ok"}
        assert retried == {0: 2, 1: 1, 2: 1, 3: 2, 5: 1, 6: 2}
    finally:
        await ex.aclose()


@pytest.mark.asyncio
async def test_large_global_warns_and_is_sent_once(cluster):
    ex = DaskExecutor(address=cluster.scheduler_address)
    big = bytes(3 * 2**20)

    @ap.source(executor="dask")
    def uses_big(i):
        return len(big) + i

    try:
        with pytest.warns(PickleWarning, match="uses_big.*3.0 MB"):
            res = await ap.Pipeline([uses_big], name="big", cache=False).run(range(4), executors={"dask": ex})
        assert res.output() == [len(big) + i for i in range(4)]
        assert len(ex._scattered) == 1  # one scatter to all workers, not 4 copies in tasks
    finally:
        await ex.aclose()


@pytest.mark.asyncio
async def test_cluster_memory_for_the_governor(cluster):
    async with DaskExecutor(address=cluster.scheduler_address) as ex:
        mem = await worker_memory(ex.client)
        cpu, mem2, limit = await cluster_sample(ex.client)
    assert 20 * 2**20 < mem < limit and mem2 > 0 and cpu >= 0


@pytest.mark.asyncio
async def test_remote_cancellation_is_a_failure_not_a_run_cancel(cluster):
    ex = DaskExecutor(address=cluster.scheduler_address)

    @ap.source(executor="dask")
    def slowish(i):
        time.sleep(1.0)
        return i

    async def canceller():
        keys = await _poll(lambda: _scheduler_tasks(ex.client, "slowish-"))
        await ex.client.cancel([distributed.Future(k, ex.client) for k in keys], force=True)

    try:
        await ex.start()
        task = asyncio.ensure_future(canceller())
        res = await ap.Pipeline([slowish], name="rc", cache=False).run([1], executors={"dask": ex})
        await task
        assert res.status == "failed" and res.failure_list[0].error_type == RemoteCancelled.__name__
    finally:
        await ex.aclose()


def _workers_alive(before):
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            tracker = "resource_tracker" in " ".join(p.cmdline())  # multiprocessing's, lives on
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE and not tracker:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_dask_without_a_client_starts_and_closes_a_local_cluster(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    t0 = time.monotonic()

    @ap.source(executor="dask")
    def where(i):
        return (os.getpid(), i)

    res = ap.Pipeline([where], name="ondemand", cache=False).run_sync(range(4))
    assert time.monotonic() - t0 < 30
    assert [i for _, i in res.output()] == [0, 1, 2, 3]
    assert os.getpid() not in {pid for pid, _ in res.output()}
    deadline = time.monotonic() + 10
    while (left := _workers_alive(before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, "the on-demand LocalCluster's worker processes outlived the run"


def test_repr_and_bad_arguments():
    assert "not started" in repr(DaskExecutor(address="tcp://127.0.0.1:1"))
    with pytest.raises(ValueError, match="either client= or address="):
        DaskExecutor(client=object(), address="tcp://x:1")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_governor_reads_worker_memory_from_the_scheduler(cluster):
    from asyncpipe._runlimits import cluster_sampler
    from asyncpipe.executors._local import ThreadExecutor

    assert cluster_sampler([ThreadExecutor()]) is None  # no cluster: the governor uses psutil
    ex = DaskExecutor(address=cluster.scheduler_address)
    try:
        await ex.start()
        sample = cluster_sampler([ex])
        assert sample is not None
        _, rss = await sample()
        workers = await worker_memory(ex.client)
        local = psutil.Process().memory_info().rss
        assert workers > 0
        assert rss >= workers + local // 2  # this process tree plus the cluster's workers

        # and a governed run with dask stages goes through it and completes
        @ap.source(executor="dask")
        def square(i):
            return i * i

        pipe = ap.Pipeline([square], name="governed", cache=False, memory_budget=64 << 30)
        res = await pipe.run(range(6), executors={"dask": ex})
        assert res.output() == [0, 1, 4, 9, 16, 25]
    finally:
        await ex.aclose()


@pytest.mark.asyncio
async def test_shared_cache_is_written_and_read_by_the_workers(cluster, tmp_path):
    """cache="file://..." (a directory every worker mounts): dask stages write their own
    entries on the worker and read cached inputs there; no value passes through the client."""
    ex = CountingDask(address=cluster.scheduler_address)
    writers = tmp_path / "writers"
    writers.mkdir()

    @ap.source(executor="dask")
    def load(i):
        return {"i": i, "pid": os.getpid()}

    @ap.stage(executor="dask", cache=False)
    def tag(load):
        (writers / f"{load['i']}-{os.getpid()}-{time.monotonic_ns()}").touch()
        return load["i"] * 10

    location = tmp_path / "shared-cache"
    pipe = ap.Pipeline([load, tag], name="shared", cache=f"file://{location}", keep="all")
    try:
        first = await pipe.run(range(6), executors={"dask": ex})
        assert first.output("tag") == [0, 10, 20, 30, 40, 50]
        worker_pids = {v["pid"] for v in first.output("load")}
        assert os.getpid() not in worker_pids
        entries = list((location / "load").glob("*/output.*"))
        assert len(entries) == 6  # written by the workers themselves
        from asyncpipe.cache._index import read_stage

        # ... and the client logged each partition's record ("why recomputed" needs them)
        assert len(read_stage(str(location / "load")).records) == 6
        fetched_first = ex.fetched
        assert fetched_first == 12  # only the kept outputs, at the end (6 load + 6 tag)

        # warm: `load` hits; `tag` (not cached) runs on the workers, which read `load` there
        second = await pipe.run(range(6), executors={"dask": ex}, keep=["tag"])
        assert second.output("tag") == [0, 10, 20, 30, 40, 50]
        assert {s.name: s.cached for s in second.stages} == {"load": 6, "tag": 0}
        assert ex.fetched - fetched_first == 6  # the kept `tag` outputs only
        assert len(list(writers.iterdir())) == 12
    finally:
        await ex.aclose()


def test_object_storage_cache_locations_are_refused_clearly(tmp_path):
    from asyncpipe.cache import Cache

    with pytest.raises(ValueError, match="only local paths and file:// URLs"):
        Cache("s3://bucket/cache")
    assert Cache(f"file://{tmp_path}").shared and not Cache(tmp_path).shared

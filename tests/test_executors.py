"""Executors with real threads and real worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import asyncpipe as ap
from asyncpipe.executors import create_executor, executor_names, register_executor
from asyncpipe.executors._local import ThreadExecutor


def _busy(seconds: float) -> float:
    end = time.perf_counter() + seconds
    x = 0.0
    while time.perf_counter() < end:
        x += 1.0
    return x


@pytest.mark.asyncio
async def test_loop_keeps_ticking_during_a_cpu_heavy_sync_stage():
    def heavy(i):
        _busy(0.15)
        return i

    gaps = []

    async def ticker():
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = asyncio.ensure_future(ticker())
    t0 = time.perf_counter()
    result = await ap.Pipeline([ap.source(heavy, concurrency=2)], cache=False).run(range(8), monitor=False)
    elapsed = time.perf_counter() - t0
    t.cancel()
    assert result.output() == list(range(8))
    # Inline, the loop would be blocked for the whole 1.2 s of work. In threads it keeps
    # ticking; pure-Python busy threads still contend for the GIL (5 ms switch interval),
    # so single gaps can reach tens of ms, but the ticker runs throughout.
    gaps.sort()
    assert len(gaps) > elapsed / 0.06, (len(gaps), elapsed)
    assert gaps[len(gaps) // 2] < 0.04 and gaps[-1] < 0.3, gaps[-5:]


@pytest.mark.asyncio
async def test_auto_runs_cheap_functions_inline_and_slow_ones_in_threads():
    import threading

    seen = {"cheap": set(), "slow": set()}

    def cheap(i):
        seen["cheap"].add(threading.get_ident())
        return i

    def slow(cheap):
        seen["slow"].add(threading.get_ident())
        _busy(0.002)
        return cheap

    pipe = ap.Pipeline([ap.source(cheap), ap.stage(slow)], cache=False)
    await pipe.run(range(200), monitor=False)
    main = threading.get_ident()
    assert main in seen["cheap"]  # went inline after the probes
    assert main not in seen["slow"]  # too slow for the loop: stays in threads


class _Overlap:
    """A CPU-burning call (3 ms on the CPU: "auto" finds it CPU-bound) that records the
    most calls ever running at once."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.now = self.most = 0

    def __call__(self, x):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        _busy(0.003)
        with self._lock:
            self.now -= 1
        return x


@pytest.fixture
def one_cpu_slot():
    from asyncpipe import _cpuslots

    default = _cpuslots.SLOTS
    _cpuslots.configure(1)
    yield
    _cpuslots.configure(default)


@pytest.mark.asyncio
async def test_cpu_bound_auto_stages_share_the_cpu_slots(one_cpu_slot):
    crunch = _Overlap()

    def first(i):
        return crunch(i)

    def second(first):
        return crunch(first)

    pipe = ap.Pipeline([ap.source(first), ap.stage(second)], cache=False)
    result = await pipe.run(range(40), monitor=False)
    assert result.output() == list(range(40))
    # both stages have 4 threads, yet with one slot no two calls ever overlapped
    assert crunch.most == 1


@pytest.mark.asyncio
async def test_a_cpu_bound_auto_stage_with_explicit_concurrency_keeps_it(one_cpu_slot):
    """The slots and the one-thread-per-slot cap are for stages left at the default
    concurrency: an explicit ``concurrency=`` is the user's call and is honoured."""
    crunch = _Overlap()

    def work(i):
        return crunch(i)

    pipe = ap.Pipeline([ap.source(work, concurrency=3)], cache=False)
    result = await pipe.run(range(60), monitor=False)
    assert result.output() == list(range(60))
    assert crunch.most >= 2  # with one slot and a cap of one thread it would stay 1


def test_a_pipeline_inside_a_slotted_stage_does_not_deadlock(monkeypatch):
    from asyncpipe import _cpuslots

    default = _cpuslots.SLOTS
    _cpuslots.configure(1)
    monkeypatch.setattr(_cpuslots, "MAX_WAIT", 0.2)

    def inner_work(i):
        _busy(0.003)
        return i + 1

    inner = ap.Pipeline([ap.source(inner_work)], cache=False)

    def outer(i):
        _busy(0.003)  # CPU-bound: holds the only slot...
        return sum(inner.run_sync(range(3), monitor=False).output())  # ...while inner calls want one

    try:
        result = ap.Pipeline([ap.source(outer)], cache=False).run_sync(range(10), monitor=False)
    finally:
        _cpuslots.configure(default)
    assert result.output() == [6] * 10


def test_cpu_slots_reject_a_nonsense_count():
    from asyncpipe import _cpuslots

    with pytest.raises(ValueError, match="must be >= 1"):
        _cpuslots.configure(0)


@pytest.mark.asyncio
async def test_thread_and_inline_executors_are_respected():
    import threading

    where = {}

    def a(i):
        where["a"] = threading.get_ident()
        return i

    def b(a):
        where["b"] = threading.get_ident()
        return a

    await ap.Pipeline([ap.source(a, executor="thread"), ap.stage(b, executor="inline")], cache=False).run(
        range(50)
    )
    assert where["a"] != threading.get_ident() and where["b"] == threading.get_ident()


@pytest.mark.slow
def test_process_executor_runs_locally_defined_functions():
    offset = 100  # captured by the closure: cloudpickle ships it

    def work(i):
        return (os.getpid(), i + offset)

    result = ap.Pipeline([ap.source(work, executor="process", concurrency=2)], cache=False).run_sync(range(8))
    pids = {pid for pid, _ in result.output()}
    assert [v for _, v in result.output()] == list(range(100, 108))
    assert os.getpid() not in pids


@pytest.mark.slow
def test_unpicklable_argument_is_a_clear_per_partition_error():
    import threading

    def make(i):
        return threading.Lock() if i == 1 else i

    def work(make):
        return make

    result = ap.Pipeline([ap.source(make), ap.stage(work, executor="process")], cache=False).run_sync(
        range(3)
    )
    assert result.output("work") == [0, 2]
    row = result.failures.iloc[0]
    assert (row["stage"], row["partition"]) == ("work", "1")
    assert "pickle" in row["message"].lower() and "lock" in row["message"].lower()


@pytest.mark.slow
def test_large_captured_globals_warn(recwarn):
    big = b"x" * (2 << 20)

    def uses_big(i):
        return len(big) + i

    with pytest.warns(ap.PickleWarning, match="uses_big.*MB"):
        ap.Pipeline([ap.source(uses_big, executor="process")], cache=False).run_sync([1])


@pytest.mark.slow
def test_no_worker_processes_outlive_the_script(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent("""
        import os, psutil, asyncpipe as ap
        def work(i):
            return os.getpid()
        if __name__ == "__main__":
            pipe = ap.Pipeline([ap.source(work, executor="process", concurrency=2)], cache=False)
            r = pipe.run_sync(range(6))
            kids = [p.pid for p in psutil.Process().children(recursive=True)]
            print(" ".join(map(str, sorted(set(r.output()) | set(kids)))))
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    pids = [int(p) for p in out.stdout.split()]
    assert pids

    def alive():
        out = []
        for p in pids:
            try:
                if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    deadline = time.time() + 10
    while time.time() < deadline and alive():
        time.sleep(0.05)
    assert alive() == []


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_kills_process_workers_running_the_run():
    def forever(i):
        _busy(60)

    from asyncpipe.executors._process import shutdown_workers

    await asyncio.to_thread(shutdown_workers)  # start from no workers left by earlier tests
    # other loky processes of this test session (e.g. the notebook's chart helper) are not ours
    others = {
        p.pid for p in psutil.Process().children(recursive=True) if "LokyProcess" in " ".join(p.cmdline())
    }
    handle = ap.Pipeline([ap.source(forever, executor="process", concurrency=2)], cache=False).start(range(2))
    deadline = time.time() + 20

    def loky_workers():
        return [
            p
            for p in psutil.Process().children(recursive=True)
            if "LokyProcess" in " ".join(p.cmdline()) and p.pid not in others
        ]

    while time.time() < deadline and len(loky_workers()) < 2:  # noqa: ASYNC110 - polling other processes
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    workers = loky_workers()
    assert workers
    t0 = time.perf_counter()
    handle.cancel()
    with pytest.raises(ap.RunCancelled):
        await handle
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []
    assert time.perf_counter() - t0 < 6


def test_registry_is_extensible():
    class Mine(ThreadExecutor):
        name = "mine"

    register_executor("mine", Mine)
    assert "mine" in executor_names()
    assert isinstance(create_executor("mine"), Mine)
    pipe = ap.Pipeline([ap.source(lambda i: i * 3, name="x", executor="mine")], cache=False)
    assert pipe.run_sync([1, 2]).output() == [3, 6]


def test_dask_executor_missing_extra_gives_install_hint(monkeypatch):
    import asyncpipe.executors as ex

    monkeypatch.setitem(ex._REGISTRY, "dask", "asyncpipe.executors._no_such_module:X")
    with pytest.raises(ImportError, match=r"pip install 'asyncpipe\[dask\]'"):
        create_executor("dask")

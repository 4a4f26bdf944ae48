"""The scheduler: streaming, ordering, backpressure, kinds, joins and failure isolation."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

import asyncpipe as ap
from asyncpipe._events import StageProgress

pytestmark = pytest.mark.asyncio


async def run(stages, inputs, **kw):
    kw.setdefault("cache", False)
    opts = {
        k: kw.pop(k)
        for k in list(kw)
        if k in ("keep", "monitor", "on_event", "fail_fast", "params", "partition_events")
    }
    return await ap.Pipeline(stages, **kw).run(inputs, **opts)


async def test_partitions_stream_to_the_end_before_sources_finish():
    first_done = asyncio.Event()

    @ap.source
    async def fetch(i):
        if i == 1:
            # Only released once partition 0 went through every stage: with a
            # gather-everything engine this would deadlock (and time out).
            await asyncio.wait_for(first_done.wait(), 5)
        return i

    def parse(fetch):
        return fetch * 10

    @ap.sink
    def save(parse, partition):
        if partition.index == 0:
            first_done.set()
        return parse

    result = await run([fetch, parse, save], [0, 1])
    assert result.output("save") == [0, 10]


async def test_outputs_come_in_input_order_whatever_the_completion_order():
    @ap.source
    async def fetch(i):
        for _ in range(30 - i):  # later items finish first
            await asyncio.sleep(0)
        return i

    result = await run([fetch, ap.stage(lambda fetch: fetch + 1, name="inc")], range(30))
    assert result.output("inc") == list(range(1, 31))
    assert [k.index for k in result.partitions("inc")] == list(range(30))


async def test_backpressure_bounds_partitions_in_flight():
    started = 0
    finished = 0
    peak = 0

    @ap.source(concurrency=2)
    async def produce(i):
        nonlocal started, peak
        started += 1
        peak = max(peak, started - finished)
        return i

    @ap.sink(concurrency=1)
    async def slow(produce):
        nonlocal finished
        for _ in range(5):
            await asyncio.sleep(0)
        finished += 1

    await run([produce, slow], range(500))
    # queues hold 2 x concurrency each: the bound does not grow with the 500 inputs
    assert finished == 500
    assert peak <= 12, peak


async def test_reduce_gets_a_list_in_partition_order_or_one_frame():
    def load(i):
        return pd.DataFrame({"i": [i, i]})

    @ap.reduce
    def listed(load):
        return [int(df["i"].iloc[0]) for df in load]

    @ap.reduce(concat=True)
    def stacked(load):
        return stacked_type(load)

    def stacked_type(df):
        return (type(df).__name__, len(df), df["i"].tolist())

    result = await run([ap.source(load), listed, stacked], [3, 1, 2])
    assert result.output("listed") == [3, 1, 2]
    assert result.output("stacked") == ("DataFrame", 6, [3, 3, 1, 1, 2, 2])


async def test_reduce_output_is_broadcast_to_every_partition():
    def load(i):
        return i

    @ap.reduce
    def total(load):
        return sum(load)

    def share(load, total):
        return load / total

    result = await run([ap.source(load), total, share], [1, 3])
    assert result.output("share") == [0.25, 0.75]


async def test_two_sources_join_by_partition():
    async def left(i):
        await asyncio.sleep(0)
        return f"L{i}"

    def right(i):
        return f"R{i}"

    def both(left, right):
        return left + right

    result = await run([ap.source(left), ap.source(right), both], range(3))
    assert result.output("both") == ["L0R0", "L1R1", "L2R2"]


async def test_generator_source_yields_several_partitions_per_item():
    @ap.source
    async def pages(n):
        for k in range(n):
            yield f"{n}.{k}"

    result = await run([pages, ap.stage(lambda pages: pages.upper(), name="up")], [2, 1])
    parts = result.partitions("up")
    assert list(parts.values()) == ["2.0", "2.1", "1.0"]
    assert [(k.index, k.sub) for k in parts] == [(0, 0), (0, 1), (1, 0)]
    assert len({k.id for k in parts}) == 3


async def test_one_bad_partition_never_takes_the_others_down():
    def parse(item):
        if item == 3:
            raise ValueError(f"bad record {item}")
        return item

    def double(parse):
        return 2 * parse

    result = await run([ap.source(parse), double], range(6))
    assert result.output("double") == [0, 2, 4, 8, 10]
    assert result.status == "failed"
    failures = result.failures
    assert failures[["stage", "partition", "error_type", "attempts"]].values.tolist() == [
        ["parse", "3", "ValueError", 1]
    ]
    assert "bad record 3" in failures["traceback"].iloc[0]
    with pytest.raises(ap.RunFailed, match="1 partition") as err:
        result.raise_for_failures()
    assert isinstance(err.value.__cause__, ValueError)
    # persisted as it happened, in the run directory
    records = ap.read_failures(result.run_dir)
    assert [(r["stage"], r["input"]) for r in records] == [("parse", 3)]


async def test_fail_fast_stops_the_run_with_the_cause():
    def parse(item):
        raise KeyError(item)

    with pytest.raises(ap.RunFailed, match="fail_fast") as err:
        await run([ap.source(parse)], range(3), fail_fast=True)
    assert isinstance(err.value.__cause__, KeyError)


async def test_result_table_and_explain():
    result = await run([ap.source(lambda i: i, name="src")], range(2))
    table = result.table()
    assert table[["stage", "partition", "status"]].values.tolist() == [["src", "0", "ok"], ["src", "1", "ok"]]
    assert set(result.explain()["why"]) == {"cache disabled"}
    assert "src" in result._repr_html_() and "succeeded" in repr(result)


async def test_run_params_reach_stages():
    def scale(item, factor):
        return item * factor

    pipe = ap.Pipeline([ap.source(scale)], params={"factor": 1}, cache=False)
    assert (await pipe.run([1, 2])).output("scale") == [1, 2]
    assert (await pipe.run([1, 2], params={"factor": 10})).output("scale") == [10, 20]
    with pytest.raises(ap.DefinitionError, match=r"unknown parameter 'factr'\. Did you mean 'factor'"):
        await pipe.run([1], params={"factr": 3})


async def test_keep_all_keeps_intermediate_outputs():
    result = await run(
        [ap.source(lambda i: i, name="a"), ap.stage(lambda a: a + 1, name="b")], [1], keep="all"
    )
    assert result["a"] == [1] and result["b"] == [2]
    with pytest.raises(KeyError, match="keep="):
        (await run([ap.source(lambda i: i, name="a"), ap.stage(lambda a: a, name="b")], [1])).partitions("a")


async def test_events_end_with_run_finished_and_progress_adds_up():
    events = []
    await run(
        [ap.source(lambda i: i, name="a"), ap.stage(lambda a: a, name="b")], range(50), on_event=events.append
    )
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    assert events[-1].status == "succeeded"
    done = {}
    for e in events:
        if isinstance(e, StageProgress):
            done[e.stage] = done.get(e.stage, 0) + e.finished
    assert done == {"a": 50, "b": 50}


async def test_partition_events_are_opt_in_and_ordered():
    events = []
    await run([ap.source(lambda i: i, name="a")], range(3), on_event=events.append, partition_events=True)
    detail = [(type(e).__name__, e.partition.index) for e in events if hasattr(e, "partition")]
    for i in range(3):
        assert detail.index(("PartitionStarted", i)) < detail.index(("PartitionFinished", i))


async def test_no_inputs_is_a_clear_error():
    with pytest.raises(ap.AsyncpipeError, match="got no inputs"):
        await ap.Pipeline([ap.source(lambda i: i, name="a")]).run()


async def test_sources_can_list_their_own_inputs():
    class Listing:
        __name__ = "listing"

        def asyncpipe_inputs(self):
            return ["x", "y"]

        def __call__(self, item):
            return item * 2

    result = await ap.Pipeline([ap.Stage(Listing(), kind="source")], cache=False).run()
    assert result.output("listing") == ["xx", "yy"]


async def test_async_iterable_inputs():
    async def gen():
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    result = await run([ap.source(lambda i: i, name="a")], gen())
    assert result["a"] == [0, 1, 2]


async def test_cheap_inline_chain_counts_failures_and_retries_per_stage():
    """Inline stages fed one partition at a time are called directly by the upstream worker
    (no queue hop): counters, records, retries and dead-letter must be the same as queued."""
    seen = {"flaky": 0}

    def parse(fetch):
        if fetch == 5:
            raise ValueError("bad 5")
        return fetch

    def flaky(parse):
        if parse == 7 and seen["flaky"] == 0:
            seen["flaky"] += 1
            raise ConnectionResetError("once")
        return parse * 10

    pipe = ap.Pipeline(
        [
            ap.source(lambda i: i, name="fetch", executor="inline"),
            ap.stage(parse, executor="inline"),
            ap.stage(flaky, executor="inline", retries=ap.RetryPolicy(attempts=2, backoff=0, jitter=0)),
        ],
        cache=False,
    )
    result = await pipe.run(range(10), monitor=False)
    assert result.output("flaky") == [0, 10, 20, 30, 40, 60, 70, 80, 90]
    counts = {s.name: (s.done, s.failed, s.skipped) for s in result.stages}
    assert counts == {"fetch": (10, 0, 0), "parse": (9, 1, 0), "flaky": (9, 0, 1)}
    assert result.table().query("stage == 'flaky' and partition == '7'")["attempts"].tolist() == [2]
    assert result.failures["partition"].tolist() == ["5"]

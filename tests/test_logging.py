"""Logging helpers: run id, stage and partition on every record."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass

import pytest

from asyncpipe._events import (
    LimitChanged,
    PartitionFailed,
    RetryScheduled,
    RunFinished,
    RunStarted,
    StageProgress,
)
from asyncpipe._logging import (
    ContextFilter,
    EventLogger,
    RunLoggerAdapter,
    configure_logging,
    current_context,
    log_context,
    set_partition,
    set_task_context,
)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tags(self) -> list[tuple[str, str, str]]:
        return [(r.run_id, r.stage, r.partition) for r in self.records]  # type: ignore[attr-defined]


@pytest.fixture
def collect():
    handler = Collect()
    log = logging.getLogger("asyncpipe_test")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(logging.NOTSET)


@dataclass(frozen=True)
class Key:
    label: str


def test_context_tags_records_of_any_logger_below_the_handler(collect):
    user = logging.getLogger("asyncpipe_test.user_stage")  # a child logger: the filter sits on the handler
    user.info("outside")
    with log_context(run_id="r1", stage="parse", partition=Key("item 3")):
        user.info("inside")
        with log_context(stage="store"):
            user.info("nested")
        user.info("restored")
    user.info("after")
    assert collect.tags() == [("-", "-", "-"), ("r1", "parse", "item 3"), ("r1", "store", "item 3"),
                              ("r1", "parse", "item 3"), ("-", "-", "-")]


def test_context_follows_tasks_and_threads_without_mixing(collect):
    log = logging.getLogger("asyncpipe_test")

    def blocking(i: int) -> None:
        log.info("thread %d", i)

    async def stage_call(i: int) -> None:
        with log_context(stage=f"s{i}", partition=i):
            await asyncio.sleep(0)
            log.info("task %d", i)
            await asyncio.to_thread(blocking, i)

    async def main() -> None:
        with log_context(run_id="r7"):
            await asyncio.gather(*(stage_call(i) for i in range(3)))

    asyncio.run(main())
    by_msg = {r.getMessage(): (r.run_id, r.stage, r.partition) for r in collect.records}  # type: ignore[attr-defined]
    for i in range(3):
        assert by_msg[f"task {i}"] == by_msg[f"thread {i}"] == ("r7", f"s{i}", str(i))
    assert current_context() == {"run_id": "-", "stage": "-", "partition": "-"}


def test_explicit_fields_win_over_the_context(collect):
    log = RunLoggerAdapter(logging.getLogger("asyncpipe_test"), run_id="r2", stage="fetch")
    with log_context(run_id="ctx", stage="ctx", partition="ctx"):
        log.info("adapter")
        log.bind(partition=Key("p9")).warning("bound")
    assert collect.tags() == [("r2", "fetch", "-"), ("r2", "fetch", "p9")]
    with pytest.raises(TypeError, match="accepts run_id, stage, partition"):
        log.bind(user="x")


def test_event_logger_logs_the_rare_events_with_fields(collect):
    sub = EventLogger(logging.getLogger("asyncpipe_test.run"))
    sub(RunStarted(run_id="r1", t=0, pipeline="etl", stages=("a", "b"), total_inputs=10))
    sub(StageProgress(run_id="r1", t=0, stage="a", finished=5))  # progress is not logged
    sub(RetryScheduled(run_id="r1", t=0, stage="a", partition=Key("item 1"), attempt=2, delay=0.25,
                       error="TimeoutError"))
    sub(LimitChanged(run_id="r1", t=0, stage="a", kind="concurrency", old=8, new=4, reason="overloaded"))
    sub(PartitionFailed(run_id="r1", t=0, stage="b", partition=Key("item 2"), attempts=3,
                        error_type="ValueError", message="bad row", traceback="Traceback ...\nValueError"))
    sub(RunFinished(run_id="r1", t=0, status="failed", n_failures=1))
    got = [(r.levelname, r.getMessage().splitlines()[0]) for r in collect.records]
    assert got == [
        ("INFO", "run r1 of etl started: 2 stages, 10 inputs"),
        ("DEBUG", "retrying item 1 at stage a in 0.25s (attempt 2): TimeoutError"),
        ("INFO", "stage a concurrency limit 8 -> 4 (overloaded)"),
        ("WARNING", "stage b failed for item 2 after 3 attempts: ValueError: bad row"),
        ("DEBUG", "traceback:"),
        ("WARNING", "run r1 failed with 1 failures"),
    ]
    assert collect.tags() == [("r1", "-", "-"), ("r1", "a", "item 1"), ("r1", "a", "-"),
                              ("r1", "b", "item 2"), ("r1", "b", "item 2"), ("r1", "-", "-")]


def test_event_logger_success_is_info_and_debug_is_skipped_when_off(collect):
    logging.getLogger("asyncpipe_test").setLevel(logging.INFO)
    sub = EventLogger(logging.getLogger("asyncpipe_test"))
    sub(RetryScheduled(run_id="r1", t=0, stage="a", partition=1, attempt=2, delay=1.0, error="x"))
    sub(RunFinished(run_id="r1", t=0, status="succeeded"))
    got = [(r.levelname, r.getMessage()) for r in collect.records]
    assert got == [("INFO", "run r1 succeeded with 0 failures")]


def test_configure_logging_formats_the_fields():
    stream = io.StringIO()
    target = logging.getLogger("asyncpipe_test.cli")
    handler = configure_logging(logging.DEBUG, stream=stream, logger=target)
    try:
        with log_context(run_id="r3", stage="load", partition="p1"):
            target.debug("hello")
        target.info("bye")
    finally:
        target.removeHandler(handler)
        target.setLevel(logging.NOTSET)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("DEBUG   asyncpipe_test.cli [r3 load p1] hello")
    assert second.endswith("INFO    asyncpipe_test.cli [- - -] bye")


def test_task_context_for_engine_workers(collect):
    """A worker task tags itself once; per item only the partition changes (label computed lazily)."""
    log = logging.getLogger("asyncpipe_test")
    labels = []

    class Lazy:
        @property
        def label(self) -> str:
            labels.append(1)
            return "lazy"

    async def worker(stage: str) -> None:
        set_task_context("r5", stage)
        for item in (Key("a"), Lazy(), Key("b")):
            set_partition(item)
            if not isinstance(item, Lazy):
                log.info("item")

    async def main() -> None:
        await asyncio.gather(asyncio.create_task(worker("s1")), asyncio.create_task(worker("s2")))

    asyncio.run(main())
    assert sorted(collect.tags()) == [
        ("r5", "s1", "a"), ("r5", "s1", "b"), ("r5", "s2", "a"), ("r5", "s2", "b")]
    assert labels == []  # never logged, never labelled
    assert current_context() == {"run_id": "-", "stage": "-", "partition": "-"}

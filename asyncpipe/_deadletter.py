"""Dead-letter records: every partition that failed permanently, persisted as it happens."""

from __future__ import annotations

import json
import os
import threading
import traceback as tb
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._partition import PartitionKey

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DeadLetter", "Failure", "failures_frame", "read_failures"]

#: Input values larger than this (as JSON) are recorded by repr only.
MAX_INPUT_JSON = 64 * 1024


@dataclass(frozen=True)
class Failure:
    """One partition that failed permanently at one stage.

    A failed partition does not stop the run (unless ``fail_fast``): it becomes a
    ``Failure`` on ``result.failure_list`` (``result.failures`` as a DataFrame).

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def inverse(numbers):
    ...     return 1 / numbers
    >>> pipe = ap.Pipeline([numbers, inverse], cache=False, workdir=tempfile.mkdtemp())
    >>> failure = pipe.run_sync([4, 0]).failure_list[0]
    >>> failure.stage, failure.partition.item, failure.error_type, failure.attempts
    ('inverse', 0, 'ZeroDivisionError', 1)
    >>> print(failure)
    inverse[0] failed after 1 attempt(s): ZeroDivisionError: division by zero
    """

    stage: str
    partition: PartitionKey
    error: BaseException | None
    error_type: str
    message: str
    traceback: str
    attempts: int
    first_failed_at: float
    failed_at: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_exception(
        cls, stage: str, partition: PartitionKey, exc: BaseException, attempts: int, first: float, last: float
    ) -> Failure:
        return cls(
            stage=stage,
            partition=partition,
            error=exc,
            error_type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(tb.format_exception(exc)),
            attempts=attempts,
            first_failed_at=first,
            failed_at=last,
        )

    def to_json(self) -> dict[str, Any]:
        item = self.partition.item
        try:
            text = json.dumps(item)
            value: Any = item if len(text) <= MAX_INPUT_JSON else None
        except (TypeError, ValueError):
            value = None
        return {
            "stage": self.stage,
            "partition": self.partition.label,
            "partition_id": self.partition.id,
            "index": self.partition.index,
            "sub": self.partition.sub,
            "input": value,
            "input_repr": repr(item)[:2000],
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at,
            "failed_at": self.failed_at,
        }

    def __str__(self) -> str:
        return (
            f"{self.stage}[{self.partition.label}] failed after {self.attempts} attempt(s): "
            f"{self.error_type}: {self.message}"
        )


class DeadLetter:
    """Appends failures to ``<run dir>/failures.jsonl`` on a writer thread, fsynced per record.

    The loop only enqueues; a crash after :meth:`record` returns loses at most the
    records still queued (milliseconds), never a written one.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "failures.jsonl"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="asyncpipe-deadletter")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    def record(self, failure: Failure) -> None:
        self._pending.append(self._pool.submit(self._write, failure.to_json()))

    def _write(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(record, default=repr) + "\n"
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def close(self) -> None:
        """Wait for queued records (call from a thread, not the loop)."""
        self._pool.shutdown(wait=True)


def read_failures(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a run's ``failures.jsonl`` (a torn last line from a crash is skipped).

    ``path`` is the file or the run directory (``result.run_dir``); the file is
    written as failures happen, so this also works for a run that crashed.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def inverse(numbers):
    ...     return 1 / numbers
    >>> pipe = ap.Pipeline([numbers, inverse], cache=False, workdir=tempfile.mkdtemp())
    >>> result = pipe.run_sync([4, 0])
    >>> [(r["stage"], r["input"], r["error_type"]) for r in ap.read_failures(result.run_dir)]
    [('inverse', 0, 'ZeroDivisionError')]
    """
    out = []
    p = Path(path)
    if p.is_dir():
        p = p / "failures.jsonl"
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


_COLUMNS = [
    "stage",
    "partition",
    "partition_id",
    "error_type",
    "message",
    "attempts",
    "failed_at",
    "traceback",
]


def failures_frame(failures: list[Failure]) -> pd.DataFrame:
    import pandas as pd

    rows = [{k: v for k, v in f.to_json().items() if k in _COLUMNS} for f in failures]
    frame = pd.DataFrame(rows, columns=_COLUMNS)
    frame["failed_at"] = pd.to_datetime(frame["failed_at"], unit="s")
    return frame

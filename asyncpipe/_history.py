"""Run history: one record per run, persisted next to the cache, readable without a server.

Layout under the work directory (``.asyncpipe`` by default)::

    <workdir>/runs/<run_id>/run.json         the record (written last: its presence = complete)
    <workdir>/runs/<run_id>/metrics.parquet  the metrics time series (Metrics.series())
    <workdir>/runs/<run_id>/failures.jsonl   dead-letter records (written by the engine)

Run ids sort by start time (UTC), so listing a directory lists runs in order.
Every file is written to a temporary name and renamed, so a crash never leaves
a half-written record. The engine calls :func:`save_snapshot` in a thread at
the end of each run; :func:`runs` and :func:`load_run` read it back.

>>> import tempfile
>>> from asyncpipe._clock import FakeClock
>>> workdir = tempfile.mkdtemp()
>>> rid = new_run_id(FakeClock())
>>> rid[:15]
'20231114-221320'
>>> path = save_run(workdir, run_id=rid, pipeline="demo", params={"n": 3}, started_at=1.7e9,
...                 finished_at=1.7e9 + 2, status="succeeded", stages={"double": {"done": 3}},
...                 n_failures=0, worst_loop_lag=0.002)
>>> load_run(rid[:8], workdir).stages
{'double': {'done': 3}}
>>> runs(workdir)[["pipeline", "status", "done"]].to_dict("records")
[{'pipeline': 'demo', 'status': 'succeeded', 'done': 3}]
"""

from __future__ import annotations

import functools
import html
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._atomic import replace_atomically
from ._clock import Clock, SystemClock
from ._exceptions import AsyncpipeError
from ._metrics import SERIES_COLUMNS, series_frame
from ._snapshot import MetricsSnapshot, fmt_seconds, stall_text

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["RunNotFoundError", "RunRecord", "load_run", "new_run_id", "runs", "save_run", "save_snapshot"]

_log = logging.getLogger("asyncpipe.history")

DEFAULT_WORKDIR = ".asyncpipe"
RECORD = "run.json"
SERIES = "metrics.parquet"
FAILURES = "failures.jsonl"
FORMAT = 1


class RunNotFoundError(AsyncpipeError, LookupError):
    """No past run matches the requested id, or a prefix matches several.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> try:
    ...     ap.load_run("20240101", tempfile.mkdtemp())
    ... except ap.RunNotFoundError as err:
    ...     print(type(err).__name__, isinstance(err, LookupError))
    RunNotFoundError True
    """


@dataclass(frozen=True)
class RunRecord:
    """One past run, as stored in ``run.json``. ``stages`` maps stage name to its totals.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def double(numbers):
    ...     return 2 * numbers
    >>> workdir = tempfile.mkdtemp()
    >>> pipe = ap.Pipeline([numbers, double], name="doubler", cache=False, workdir=workdir)
    >>> record = ap.load_run(pipe.run_sync(range(3)).run_id, workdir)
    >>> record.pipeline, record.status, record.n_failures, record.stages["double"]["done"]
    ('doubler', 'succeeded', 0, 3)
    >>> record.failures().empty
    True
    """

    run_id: str
    pipeline: str
    params: dict[str, Any]
    started_at: float | None
    finished_at: float | None
    status: str
    stages: dict[str, dict[str, Any]]
    n_failures: int
    worst_loop_lag: float | None
    path: Path
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def metrics(self) -> pd.DataFrame:
        """The metrics time series of the run (long format, see ``Metrics.series``)."""
        import pandas as pd
        import pyarrow.parquet as pq

        file = self.path / SERIES
        if not file.exists():
            return pd.DataFrame(columns=list(SERIES_COLUMNS))
        return series_frame(pq.read_table(file))

    def failures(self) -> pd.DataFrame:
        """The dead-letter records the engine wrote for this run (empty if none)."""
        import pandas as pd

        from ._deadletter import read_failures

        return pd.DataFrame(read_failures(self.path / FAILURES))

    def __str__(self) -> str:
        lines = [
            f"run {self.run_id}  pipeline {self.pipeline or '-'}  {self.status}",
            f"  started  {_iso(self.started_at)}   finished {_iso(self.finished_at)}   "
            f"duration {fmt_seconds(self.duration)}",
            f"  failures {self.n_failures}   worst loop lag {fmt_seconds(self.worst_loop_lag)}"
            + self._stall_text(),
        ]
        if self.error:
            lines.append(f"  error    {self.error}")
        if self.params:
            lines.append("  params   " + json.dumps(self.params, default=repr, sort_keys=True))
        for name, totals in self.stages.items():
            counts = "  ".join(f"{k} {_fmt_value(v)}" for k, v in totals.items())
            lines.append(f"  {name}: {counts}")
        lines.append(f"  path     {self.path}")
        return "\n".join(lines)

    def _stall_text(self) -> str:
        """', 4 stalls over 20 ms during load (3), parse (1)' when the run recorded any."""
        stalls = self.extra.get("loop_stalls")
        return ", " + stall_text(stalls, self.extra.get("stall_suspects", {})) if stalls else ""

    def _repr_html_(self) -> str:
        e = html.escape
        keys = sorted({k for totals in self.stages.values() for k in totals})
        head = "".join(f"<th>{e(k)}</th>" for k in ["stage", *keys])
        body = "".join(
            "<tr>" + f"<td>{e(name)}</td>" + "".join(f"<td>{e(_fmt_value(t.get(k, '')))}</td>" for k in keys)
            + "</tr>" for name, t in self.stages.items())
        return (f"<div><p><b>run {e(self.run_id)}</b> ({e(self.pipeline)}) {e(self.status)}, "
                f"{self.n_failures} failures, duration {e(fmt_seconds(self.duration))}, worst loop lag "
                f"{e(fmt_seconds(self.worst_loop_lag))}{e(self._stall_text())}</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


def new_run_id(clock: Clock | None = None) -> str:
    """A sortable, unique run id: UTC start time plus 6 random hex digits (``20261204-165501-ab12cd``)."""
    t = (clock if clock is not None else SystemClock()).time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + "-" + secrets.token_hex(3)


def runs_dir(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR) -> Path:
    return Path(workdir) / "runs"


def save_run(directory: str | os.PathLike[str], *, run_id: str, pipeline: str, params: dict[str, Any],
             started_at: float | None, finished_at: float | None, status: str,
             stages: dict[str, dict[str, Any]], n_failures: int, worst_loop_lag: float | None,
             error: str | None = None, series: pd.DataFrame | pa.Table | None = None,
             extra: dict[str, Any] | None = None) -> Path:
    """Blocking: write one run record under ``<directory>/runs/<run_id>/``; returns that folder.

    The series goes first, ``run.json`` last, each through a temporary file and
    an atomic rename. A series that cannot be written is logged and skipped: it
    never costs the record.
    """
    if not run_id or os.sep in run_id or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}")
    folder = runs_dir(directory) / run_id
    folder.mkdir(parents=True, exist_ok=True)
    if series is not None:
        try:
            replace_atomically(folder / SERIES, functools.partial(_write_series, series))
        except Exception:
            _log.warning("could not write the metrics series of run %s", run_id, exc_info=True)
    record = {"format": FORMAT, "run_id": run_id, "pipeline": pipeline, "params": params,
              "started_at": started_at, "finished_at": finished_at, "status": status, "stages": stages,
              "n_failures": n_failures, "worst_loop_lag": worst_loop_lag, "error": error,
              "extra": extra or {}}
    data = json.dumps(record, indent=1, default=repr).encode("utf-8")
    replace_atomically(folder / RECORD, lambda tmp: Path(tmp).write_bytes(data))
    return folder


def save_snapshot(directory: str | os.PathLike[str], snapshot: MetricsSnapshot,
                  series: pd.DataFrame | None = None, *, finished_at: float | None = None,
                  extra: dict[str, Any] | None = None) -> Path:
    """Blocking: :func:`save_run` from a final :class:`MetricsSnapshot`.

    Take the snapshot and series on the loop, write in a thread::

        snap, series = metrics.snapshot(), metrics.series()
        await asyncio.to_thread(save_snapshot, workdir, snap, series)
    """
    stages = {s.name: {"total": s.total, "done": s.done, "failed": s.failed, "cached": s.cached,
                       "retries": s.retries, "latency_p50": s.latency_p50, "latency_p95": s.latency_p95,
                       "latency_p99": s.latency_p99} for s in snapshot.stages}
    end = finished_at if finished_at is not None else snapshot.finished_at
    if end is None and snapshot.started_at is not None:
        end = snapshot.started_at + snapshot.elapsed
    return save_run(directory, run_id=snapshot.run_id, pipeline=snapshot.pipeline, params=snapshot.params,
                    started_at=snapshot.started_at, finished_at=end, status=snapshot.status, stages=stages,
                    n_failures=snapshot.n_failures, worst_loop_lag=snapshot.worst_loop_lag,
                    error=snapshot.error, series=series, extra=extra)


def _write_series(series: pd.DataFrame | pa.Table, path: str) -> None:
    import pyarrow.parquet as pq

    if hasattr(series, "to_parquet"):
        series.to_parquet(path, index=False)
    else:
        pq.write_table(series, path)


def _read(folder: Path) -> RunRecord | None:
    try:
        raw = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        return RunRecord(run_id=raw["run_id"], pipeline=raw.get("pipeline", ""), params=raw.get("params", {}),
                         started_at=raw.get("started_at"), finished_at=raw.get("finished_at"),
                         status=raw.get("status", "unknown"), stages=raw.get("stages", {}),
                         n_failures=raw.get("n_failures", 0), worst_loop_lag=raw.get("worst_loop_lag"),
                         path=folder, error=raw.get("error"), extra=raw.get("extra", {}))
    except FileNotFoundError:
        return None  # still running, or a crashed run without a record
    except (ValueError, KeyError, TypeError):
        _log.warning("skipping unreadable run record %s", folder / RECORD, exc_info=True)
        return None


def _folders(workdir: str | os.PathLike[str]) -> list[Path]:
    """Run folders, newest first (run ids sort by start time)."""
    base = runs_dir(workdir)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name, reverse=True)


def iter_runs(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR, *, limit: int | None = None,
              pipeline: str | None = None) -> list[RunRecord]:
    """Blocking: the stored records, newest first."""
    out: list[RunRecord] = []
    for folder in _folders(workdir):
        if limit is not None and len(out) >= limit:
            break
        rec = _read(folder)
        if rec is not None and (pipeline is None or rec.pipeline == pipeline):
            out.append(rec)
    return out


RUNS_COLUMNS = ("run_id", "pipeline", "status", "started_at", "finished_at", "duration", "done", "failed",
                "n_failures", "worst_loop_lag", "path")


def runs(workdir: str | os.PathLike[str] = DEFAULT_WORKDIR, *, limit: int | None = None,
         pipeline: str | None = None) -> pd.DataFrame:
    """One row per past run, newest first.

    ``done``/``failed`` are the counts of the last stage (the pipeline's output);
    timestamps are UTC. ``pipeline=`` keeps the runs of one pipeline.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def inverse(numbers):
    ...     return 1 / numbers
    >>> workdir = tempfile.mkdtemp()
    >>> result = ap.Pipeline([numbers, inverse], name="inv", cache=False, workdir=workdir).run_sync([1, 0, 2])
    >>> ap.runs(workdir)[["pipeline", "status", "done", "failed"]].to_dict("records")
    [{'pipeline': 'inv', 'status': 'failed', 'done': 2, 'failed': 1}]
    """
    import pandas as pd

    rows = []
    for r in iter_runs(workdir, limit=limit, pipeline=pipeline):
        last = next(reversed(r.stages.values()), {}) if r.stages else {}
        rows.append((r.run_id, r.pipeline, r.status, r.started_at, r.finished_at, r.duration,
                     last.get("done"), last.get("failed"), r.n_failures, r.worst_loop_lag, str(r.path)))
    df = pd.DataFrame(rows, columns=list(RUNS_COLUMNS))
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    for col in ("done", "failed", "n_failures"):
        df[col] = df[col].astype("Int64")
    return df


def load_run(run_id: str, workdir: str | os.PathLike[str] = DEFAULT_WORKDIR) -> RunRecord:
    """The record of ``run_id``; a unique prefix is enough, like a git commit id.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> workdir = tempfile.mkdtemp()
    >>> result = ap.Pipeline([numbers], name="nums", cache=False, workdir=workdir).run_sync(range(4))
    >>> record = ap.load_run(result.run_id[:15], workdir)  # a prefix: date-time of the start
    >>> record.run_id == result.run_id, record.status, record.stages["numbers"]["done"]
    (True, 'succeeded', 4)
    """
    folders = _folders(workdir)
    exact = [p for p in folders if p.name == run_id]
    matches = exact or [p for p in folders if run_id and p.name.startswith(run_id)]
    where = runs_dir(workdir)
    if not matches:
        raise RunNotFoundError(f"No run matches {run_id!r} in {where}. List runs with `asyncpipe runs` "
                               f"or asyncpipe.runs({str(workdir)!r}).")
    if len(matches) > 1:
        shown = ", ".join(p.name for p in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise RunNotFoundError(f"Run id prefix {run_id!r} is ambiguous: {len(matches)} runs match ({shown}). "
                               "Give more characters.")
    rec = _read(matches[0])
    if rec is None:
        raise RunNotFoundError(f"Run {matches[0].name} has no readable {RECORD} in {matches[0]} "
                               "(still running, or it crashed before saving).")
    return rec


def _iso(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)

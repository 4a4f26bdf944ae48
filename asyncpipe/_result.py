"""The result of a run: outputs per stage and partition, failures, timings, metrics."""

from __future__ import annotations

import functools
import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._deadletter import Failure, failures_frame
from ._exceptions import RunFailed
from ._partition import ALL, PartitionKey

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RunResult", "StageSummary"]


@dataclass(frozen=True)
class StageSummary:
    """Per-stage totals of a run."""

    name: str
    kind: str
    done: int
    cached: int
    failed: int
    skipped: int
    seconds: float


@dataclass(frozen=True, eq=False)
class RunResult:
    """What a run produced.

    ``result["stage"]`` (same as :meth:`output`) gives a stage's output across
    partitions in input order: one DataFrame when the partitions are DataFrames,
    the single value of a reduce, else a list. :meth:`partitions` gives them per
    :class:`PartitionKey`. ``failures`` is the dead-letter table.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def inverse(numbers):
    ...     return 1 / numbers
    >>> pipe = ap.Pipeline([numbers, inverse], name="inv", cache=False, workdir=tempfile.mkdtemp())
    >>> result = pipe.run_sync([1, 0, 4])
    >>> result.status, result.ok, result["inverse"]
    ('failed', False, [1.0, 0.25])
    >>> {key.item: value for key, value in result.partitions("inverse").items()}
    {1: 1.0, 4: 0.25}
    >>> print(result.summary())
    run inv: failed, 3 inputs, 1 failed
      numbers              done=3 cached=0 failed=0
      inverse              done=2 cached=0 failed=1
    >>> result.failures[["stage", "partition", "error_type"]].to_dict("records")
    [{'stage': 'inverse', 'partition': '0', 'error_type': 'ZeroDivisionError'}]
    >>> try:
    ...     result.raise_for_failures()
    ... except ap.RunFailed as err:
    ...     print(len(err.failures), type(err.__cause__).__name__)
    1 ZeroDivisionError
    """

    run_id: str
    pipeline: str
    status: str
    started_at: float
    finished_at: float
    inputs: list[Any]
    outputs: Mapping[str, Mapping[PartitionKey, Any]]
    stages: tuple[StageSummary, ...]
    failure_list: tuple[Failure, ...] = ()
    records: Mapping[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    #: the sampled metrics as a pyarrow Table; :attr:`metrics` is its pandas view
    series_table: Any = field(default=None, repr=False)
    worst_loop_lag: float | None = None
    run_dir: str = ""
    #: how often the event loop stalled over 20 ms (``asyncpipe._snapshot.STALL_BUDGET``), and
    #: per stage, during how many of those stalls it had calls in flight in worker threads
    loop_stalls: int = 0
    stall_suspects: Mapping[str, int] = field(default_factory=dict)

    @property
    def loop_report(self) -> str:
        """One line on how responsive the event loop stayed, naming the stages that had
        calls in worker threads whenever it stalled over 20 ms; "" when the loop was not
        measured (``monitor=False``)."""
        if self.worst_loop_lag is None:
            return ""
        from ._snapshot import stall_text

        line = f"worst loop stall {self.worst_loop_lag * 1e3:.1f} ms"
        if not self.loop_stalls:
            return line
        line += ", " + stall_text(self.loop_stalls, self.stall_suspects)
        if self.stall_suspects:
            line += (
                " (stages in worker threads). A stage whose C code holds the GIL keeps the loop "
                "waiting; run it with executor='process' or 'dask' (docs: performance, P8)"
            )
        return line

    @functools.cached_property
    def metrics(self) -> pd.DataFrame | None:
        """The run's sampled metrics time series (see ``Metrics.series``), built on first use."""
        if self.series_table is None:
            return None
        from ._metrics import series_frame

        return series_frame(self.series_table)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    def partitions(self, stage: str) -> dict[PartitionKey, Any]:
        """A stage's kept outputs keyed by partition, in input order."""
        if stage not in self.outputs:
            kept = ", ".join(self.outputs) or "none"
            raise KeyError(
                f"No outputs kept for stage {stage!r} (kept: {kept}). Pass keep=[{stage!r}] "
                "(or keep='all') to run() to keep intermediate outputs."
            )
        return dict(sorted(self.outputs[stage].items(), key=lambda kv: kv[0].sort_key()))

    def output(self, stage: str | None = None) -> Any:
        """A stage's output across partitions (the only final stage when omitted)."""
        if stage is None:
            if len(self.outputs) != 1:
                raise KeyError(f"This run kept several stages ({', '.join(self.outputs)}); name one.")
            stage = next(iter(self.outputs))
        parts = self.partitions(stage)
        values = list(parts.values())
        if list(parts) == [ALL]:
            return values[0]
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            return values
        if values and all(isinstance(v, pd.DataFrame) for v in values):
            return pd.concat(values)
        return values

    def __getitem__(self, stage: str) -> Any:
        return self.output(stage)

    @property
    def failures(self) -> pd.DataFrame:
        """One row per permanently failed partition: stage, partition, error, attempts, traceback."""
        return failures_frame(list(self.failure_list))

    def table(self) -> pd.DataFrame:
        """Per stage and partition: status (ok/cached/failed), duration, attempts, cache reason."""
        import pandas as pd

        rows = [
            (stage, pkey.label, pkey.index, pkey.sub, status, dur, attempts, note)
            for stage, recs in self.records.items()
            for pkey, status, dur, attempts, note in recs
        ]
        return pd.DataFrame(
            rows, columns=["stage", "partition", "index", "sub", "status", "seconds", "attempts", "note"]
        ).sort_values(["stage", "index", "sub"], kind="stable", ignore_index=True)

    def explain(self, stage: str | None = None) -> pd.DataFrame:
        """Why each partition was recomputed or came from the cache."""
        frame = self.table()
        if stage is not None:
            frame = frame[frame["stage"] == stage]
        return frame[["stage", "partition", "status", "note"]].rename(columns={"note": "why"})

    def raise_for_failures(self) -> RunResult:
        """Raise :class:`RunFailed` if any partition failed; return self otherwise."""
        if self.failure_list:
            first = self.failure_list[0]
            err = RunFailed(
                f"{len(self.failure_list)} partition(s) failed; first: {first}. See result.failures.",
                failures=self.failure_list,
            )
            raise err from first.error
        return self

    # -- display -----------------------------------------------------------------------
    def summary(self) -> str:
        """A deterministic text summary (no timings), e.g. for notebooks run in CI."""
        lines = [
            f"run {self.pipeline}: {self.status}, {len(self.inputs)} inputs, {len(self.failure_list)} failed"
        ]
        for s in self.stages:
            lines.append(f"  {s.name:<20} done={s.done} cached={s.cached} failed={s.failed}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        report = self.loop_report
        lag = f", {report}" if report and not self.loop_stalls else ""
        head = f"<RunResult {self.pipeline!r} {self.run_id}: {self.status} in {self.duration:.2f}s{lag}>"
        tail = f"\n{report}" if self.loop_stalls else ""
        return head + "\n" + self.summary() + tail

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{s.kind}</td><td>{s.done}</td><td>{s.cached}</td>"
            f"<td>{s.failed}</td><td>{s.seconds:.3f}</td></tr>"
            for s in self.stages
        )
        fails = ""
        if self.failure_list:
            items = "".join(f"<li>{html.escape(str(f))}</li>" for f in self.failure_list[:10])
            more = f"<li>… {len(self.failure_list) - 10} more</li>" if len(self.failure_list) > 10 else ""
            summary = f"<summary>{len(self.failure_list)} failure(s)</summary>"
            fails = f"<details>{summary}<ul>{items}{more}</ul></details>"
        color = {"succeeded": "green", "failed": "#b00", "cancelled": "#a60"}.get(self.status, "black")
        report = self.loop_report
        loop = f"<p style='color:{'#a60' if self.loop_stalls else 'inherit'}'>{html.escape(report)}</p>"
        return (
            f"<div><b>{html.escape(self.pipeline)}</b> <code>{self.run_id}</code> "
            f"<span style='color:{color}'>{self.status}</span> in {self.duration:.2f}s"
            "<table><thead><tr><th>stage</th><th>kind</th><th>done</th><th>cached</th><th>failed</th>"
            f"<th>compute s</th></tr></thead><tbody>{rows}</tbody></table>{fails}"
            f"{loop if report else ''}</div>"
        )

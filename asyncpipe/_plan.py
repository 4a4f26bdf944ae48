"""The immutable plan: every stage with its wiring and resolved options, in run order."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

from ._retry import RetryPolicy
from ._stage import Stage

__all__ = ["Plan", "PlannedStage"]

#: Default concurrency per executor. Async stages wait on I/O, so many can be in flight;
#: threads and processes do real work, so about one per core (at least 4 threads,
#: since sync stages are often blocking I/O as well).
#: process: two tasks per worker process, so each worker has its next task queued while it
#: finishes one (one in flight per worker left them idle between tasks: P4 ran 4% behind
#: ProcessPoolExecutor.map). The pool itself has at most one worker per core.
DEFAULT_CONCURRENCY = {
    "async": 16,
    "thread": 4,
    "auto": 4,
    "inline": 1,
    # dask: enough futures in flight to hide scheduler round trips
    # (a 400-partition sweep: 2 -> 3.6x raw futures, 8-128 -> 1.1-1.5x)
    "dask": 64,
    "process": 2 * (os.cpu_count() or 1),
}


@dataclass(frozen=True)
class PlannedStage:
    """One stage of a :class:`Plan`, with options resolved against the pipeline's."""

    stage: Stage
    wiring: tuple[tuple[str, str], ...]  # (parameter, upstream stage), in parameter order
    item_param: str | None  # sources: the parameter that receives the input item
    wants_partition: bool
    params: tuple[str, ...]  # parameters filled from run params
    downstream: tuple[str, ...]
    broadcast: frozenset[str]  # upstream stages whose single (reduce) output is given to every partition
    executor: Any
    concurrency: Any
    rate: Any
    timeout: float | None
    retry: RetryPolicy
    cache: bool

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def kind(self) -> str:
        return self.stage.kind

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(up for _, up in self.wiring))


@dataclass(frozen=True)
class Plan:
    """Stages in topological order; what ``Pipeline.plan`` shows in a notebook.

    Built (and validated) with the pipeline, before anything runs:

    >>> import asyncpipe as ap
    >>> @ap.source
    ... def numbers(n):
    ...     return n
    >>> @ap.stage(concurrency=8, retries=2)
    ... def squared(numbers):
    ...     return numbers * numbers
    >>> plan = ap.Pipeline([numbers, squared], name="squares", cache=False).plan
    >>> plan.names, plan["squared"].upstream, plan["squared"].retry.attempts
    (('numbers', 'squared'), ('numbers',), 3)
    >>> print(plan)
    Plan 'squares': 2 stages
      source numbers (n<-inputs) executor=auto concurrency=4 retries=0 cache=off -> squared
      map    squared (numbers<-numbers) executor=auto concurrency=8 retries=2 cache=off
    """

    name: str
    stages: tuple[PlannedStage, ...]

    def __getitem__(self, name: str) -> PlannedStage:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(st.name for st in self.stages)

    def _executor_name(self, st: PlannedStage) -> str:
        ex = st.executor
        return ex if isinstance(ex, str) else getattr(ex, "name", type(ex).__name__)

    def __str__(self) -> str:
        lines = [f"Plan {self.name!r}: {len(self.stages)} stages"]
        for st in self.stages:
            ins = ", ".join(f"{p}<-{u}" for p, u in st.wiring) or (
                f"{st.item_param}<-inputs" if st.item_param else ""
            )
            lines.append(
                f"  {st.kind:<6} {st.name:<20} ({ins}) executor={self._executor_name(st)} "
                f"concurrency={st.concurrency} retries={st.retry.attempts - 1} "
                f"cache={'on' if st.cache else 'off'}"
                + (f" -> {', '.join(st.downstream)}" if st.downstream else "")
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        rows = []
        for st in self.stages:
            ins = ", ".join(f"{p} ← {u}" for p, u in st.wiring) or ("inputs" if st.item_param else "")
            cells = [
                st.kind,
                f"<b>{html.escape(st.name)}</b>",
                html.escape(ins),
                html.escape(", ".join(st.downstream)),
                html.escape(self._executor_name(st)),
                html.escape(str(st.concurrency)),
                html.escape(str(st.rate or "")),
                str(st.retry.attempts - 1),
                "on" if st.cache else "off",
            ]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = "".join(
            f"<th>{h}</th>"
            for h in (
                "kind",
                "stage",
                "inputs",
                "feeds",
                "executor",
                "concurrency",
                "rate",
                "retries",
                "cache",
            )
        )
        return (
            f"<div><b>Plan {html.escape(self.name)}</b><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

"""Pieces of the monitor panel: one stage row, the header and the errors table.

Everything here is a pure function of a metrics snapshot (plus the plan, to
estimate totals the engine does not know yet), so it is tested without a run.

>>> from asyncpipe._snapshot import StageSnapshot
>>> s = StageSnapshot("parse", 10, 4, 0, 2, 3, 0, 8.0, 0.01, 0.02, 0.03, 0.0, 0.5, 8, None, 0.5)
>>> row = StageRow("parse")
>>> row.update(s, 10, status="running", final=False)
>>> row.bar.value, row.bar.bar_style
(0.4, 'info')
>>> "4/10" in row.stats.value and "p95 20.0ms" in row.stats.value
True
"""

from __future__ import annotations

import html
from typing import Any

from .._snapshot import fmt_bytes, fmt_seconds

__all__ = ["MAX_ERRORS", "StageRow", "estimated_totals", "failures_html", "headline_html"]

#: Failures listed in the errors table (the newest first).
MAX_ERRORS = 10

_STATUS_COLORS = {"running": "#1565c0", "paused": "#a66a00", "succeeded": "#2e7d32", "failed": "#c62828",
                  "cancelled": "#a66a00", "pending": "#555"}
_FINAL_STYLE = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}


class StageRow:
    """Name, progress bar and a stats line for one stage."""

    def __init__(self, name: str) -> None:
        import ipywidgets as w

        self.name = name
        self.label = w.HTML(f"<b>{html.escape(name)}</b>", layout=w.Layout(width="140px"))
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                   layout=w.Layout(width="25%", min_width="120px"))
        self.bar.add_class("asyncpipe-progress")
        self.pct = w.HTML("0%", layout=w.Layout(width="48px"))
        self.stats = w.HTML("", layout=w.Layout(flex="1 1 auto"))
        self.widgets = (self.label, self.bar, self.pct, self.stats)
        self.widget = w.HBox(list(self.widgets))

    def update(self, s: Any, total: int | None, *, status: str, final: bool) -> None:
        ended = s.done + s.failed
        frac = min(1.0, ended / total) if total else 0.0
        if final and status == "succeeded":
            frac = 1.0  # everything that could run did (skipped partitions have no count)
        style = _FINAL_STYLE.get(status, "info") if final else ("warning" if s.failed else "info")
        if final and status == "succeeded" and s.failed:
            style = "warning"
        _set(self.bar, "value", round(frac, 3))
        _set(self.bar, "bar_style", style)
        _set(self.pct, "value", f"{frac:.0%}")
        _set(self.stats, "value", stage_stats(s, total))


def stage_stats(s: Any, total: int | None) -> str:
    """done/total, failed, cached, running, items/s, p95 and the concurrency limit."""
    parts = [f"{s.done}/{total if total else '?'} done"]
    if s.failed:
        parts.append(f"<span style='color:#c62828'>{s.failed} failed</span>")
    parts.append(f"{s.cached} cached")
    parts.append(f"{s.running} running")
    parts.append(f"{s.throughput:,.1f}/s")
    parts.append(f"p95 {fmt_seconds(s.latency_p95)}")
    parts.append(f"limit {'-' if s.limit is None else s.limit}")
    if s.rate is not None:
        parts.append(f"rate {s.rate:g}/s")
    style = "font-family:monospace;font-size:12px;white-space:nowrap"
    return f"<span style='{style}'>" + " · ".join(parts) + "</span>"


def estimated_totals(plan: Any, snap: Any) -> dict[str, int | None]:
    """Per-stage totals: the engine knows sources' totals; a map stage expects as many
    partitions as its upstream (the fewest, for joins), a reduce one."""
    known = {s.name: s.total for s in snap.stages}
    out: dict[str, int | None] = {}
    for ps in plan.stages:
        total = known.get(ps.name)
        if total is None:
            if ps.kind == "reduce":
                total = 1
            else:
                ups = [out.get(u) for u in ps.upstream if u not in ps.broadcast]
                total = min(ups) if ups and all(u is not None for u in ups) else None  # type: ignore[type-var]
        out[ps.name] = total
    return out


def headline_html(snap: Any, status: str, name: str) -> str:
    """Status, elapsed, ETA, items/s, CPU, RSS, worst loop stall and failures."""
    color = _STATUS_COLORS.get(status, "#555")
    cpu = "-" if snap.cpu_percent is None else f"{snap.cpu_percent:.0f}%"
    fails = f" · <span style='color:#c62828'>{snap.n_failures} failed</span>" if snap.n_failures else ""
    lag = snap.worst_loop_lag
    lag_text = fmt_seconds(lag)
    if lag is not None and lag > 0.1:
        lag_text = f"<span style='color:#c62828'>{lag_text}</span>"
    if snap.stall_suspects:  # the stages that held the GIL in threads, most likely first
        names = html.escape(", ".join(snap.stall_suspects))
        tip = "executor='process' or 'dask' keeps their GIL-holding work away from the event loop"
        lag_text += f" <span class='asyncpipe-stall' title=\"{tip}\">during {names}</span>"
    return (
        f"<div class='asyncpipe-header'><b>{html.escape(name)}</b> "
        f"<span class='asyncpipe-status' style='color:{color};font-weight:bold'>{status}</span>"
        f" · elapsed {fmt_seconds(snap.elapsed)} · ETA {fmt_seconds(snap.eta)}"
        f" · {snap.items_per_s:,.1f} items/s · CPU {cpu} · RSS {fmt_bytes(snap.rss_bytes)}"
        f" · worst loop stall {lag_text}{fails}</div>"
    )


def failures_html(snap: Any, limit: int = MAX_ERRORS) -> str:
    """The latest failures, newest first; each traceback folds open on click."""
    if not snap.n_failures:
        return ""
    rows = []
    for f in reversed(snap.recent_failures[-limit:]):
        label = html.escape(str(getattr(f.partition, "label", f.partition)))
        msg = html.escape(f"{f.error_type}: {f.message}")
        tb = html.escape(f.traceback or "(no traceback)")
        rows.append(
            f"<tr><td>{html.escape(f.stage)}</td><td>{label}</td><td>{f.attempts}</td>"
            f"<td><details><summary>{msg}</summary><pre style='font-size:11px'>{tb}</pre></details></td></tr>"
        )
    more = snap.n_failures - min(limit, len(snap.recent_failures))
    tail = f"<p>… and {more} more: see <code>handle.failures</code>.</p>" if more > 0 else ""
    return (
        f"<div class='asyncpipe-errors'><b style='color:#c62828'>{snap.n_failures} failure(s)</b>"
        "<table><thead><tr><th>stage</th><th>partition</th><th>attempts</th><th>error</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{tail}</div>"
    )


def _set(widget: Any, trait: str, value: Any) -> None:
    if getattr(widget, trait) != value:
        setattr(widget, trait, value)

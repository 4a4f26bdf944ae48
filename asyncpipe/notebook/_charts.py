"""Live charts for the monitor: a :class:`matplotlib.figure.Figure` rendered to PNG off the loop.

Three panels, built once and updated in place with ``set_data``:

- throughput (items/s) per stage,
- CPU % (left axis) and RSS (right axis) of the process tree,
- the concurrency limit per stage.

:meth:`LiveCharts.record` appends one point per stage from a metrics snapshot
(O(stages), on the loop). :meth:`LiveCharts.frame` copies the series (on the
loop) and :meth:`LiveCharts.render` draws them and returns PNG bytes; render is
meant to run in a worker thread (``asyncio.to_thread``). pyplot is never used:
a pyplot figure made in a background task leaks into the next cell's output.

>>> from asyncpipe._snapshot import MetricsSnapshot, StageSnapshot
>>> st = StageSnapshot("parse", 10, 4, 0, 0, 2, 0, 8.0, None, None, None, 0.0, 0.0, 4, None, 0.4)
>>> snap = MetricsSnapshot("r1", "running", 0.0, 0.5, None, 8.0, 50.0, 2**20, None, (st,), 0, ())
>>> charts = LiveCharts(["parse"])
>>> charts.record(snap)
>>> charts.render(charts.frame())[:4]
b'\\x89PNG'
>>> list(charts.lines["throughput"]["parse"].get_ydata())
[8.0]
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_POINTS", "RELAYOUT_EVERY", "LiveCharts"]

#: Points kept per series. When full, every other point is dropped and the
#: recording stride doubles, so memory and render time stay bounded for a run of
#: any length while the chart still covers the whole run.
MAX_POINTS = 400
#: Frames between two layout passes. Measured here: a 3-panel frame costs ~120 ms with
#: the constrained layout and ~60 ms without (Agg, 2 cores), and tick labels rarely
#: change width between consecutive frames.
RELAYOUT_EVERY = 8


class LiveCharts:
    """Throughput, CPU/RSS and concurrency-limit charts of one run."""

    def __init__(
        self, stages: Sequence[str], *, width: float = 10.0, height: float = 2.4, dpi: int = 72
    ) -> None:
        self.stages = list(stages)
        self._size = (width, height, dpi)
        self._t: list[float] = []
        self._thr: dict[str, list[float]] = {s: [] for s in self.stages}
        self._lim: dict[str, list[float]] = {s: [] for s in self.stages}
        self._cpu: list[float] = []
        self._rss: list[float] = []
        self._stride = 1
        self._calls = 0
        self._lock = threading.Lock()  # one render at a time; the figure is not thread-safe
        self.renders = 0
        self._built = False

    def __getattr__(self, name: str) -> Any:
        # The figure is built on first use: a monitor whose frames are drawn in the chart
        # helper process never imports matplotlib in the kernel.
        if name in ("figure", "axes", "lines", "_canvas") and not self.__dict__.get("_built", True):
            self._build()
            return self.__dict__[name]
        raise AttributeError(name)

    def _build(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._built = True
        width, height, dpi = self._size
        self.figure = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        self._canvas = FigureCanvasAgg(self.figure)
        ax_thr, ax_res, ax_lim = self.figure.subplots(1, 3)
        ax_rss = ax_res.twinx()
        self.axes = {"throughput": ax_thr, "cpu": ax_res, "rss": ax_rss, "limit": ax_lim}
        titles = ((ax_thr, "items/s per stage"), (ax_res, "CPU % / RSS MiB"), (ax_lim, "concurrency limit"))
        for ax, title in titles:
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("s", fontsize=7)
        ax_rss.tick_params(labelsize=7)
        self.lines: dict[str, dict[str, Any]] = {"throughput": {}, "limit": {}}
        for i, name in enumerate(self.stages):
            color = f"C{i % 10}"
            (self.lines["throughput"][name],) = ax_thr.plot([], [], color=color, label=name, lw=1.3,
                                                            marker="o", ms=2)
            (self.lines["limit"][name],) = ax_lim.step([], [], color=color, label=name, lw=1.3, where="post")
        (self.lines["cpu"],) = ax_res.plot([], [], color="C3", lw=1.3, marker="o", ms=2, label="CPU %")
        (self.lines["rss"],) = ax_rss.plot([], [], color="C7", lw=1.0, ls="--", label="RSS MiB")
        if self.stages:
            ax_thr.legend(fontsize=7, loc="upper left")
        ax_res.legend(handles=[self.lines["cpu"], self.lines["rss"]], fontsize=7, loc="upper left")

    # -- on the loop -------------------------------------------------------------------
    def record(self, snap: Any, *, force: bool = False) -> None:
        """Append the snapshot's point (every ``stride``-th call, or always with ``force``)."""
        self._calls += 1
        if not force and (self._calls - 1) % self._stride:
            return
        if self._t and snap.elapsed <= self._t[-1]:
            self._pop()  # a final point at the same instant replaces the periodic one
        self._t.append(snap.elapsed)
        by_name = {s.name: s for s in snap.stages}
        for name in self.stages:
            s = by_name.get(name)
            self._thr[name].append(s.throughput if s is not None else math.nan)
            lim = None if s is None else s.limit
            self._lim[name].append(math.nan if lim is None else float(lim))
        self._cpu.append(math.nan if snap.cpu_percent is None else snap.cpu_percent)
        self._rss.append(math.nan if snap.rss_bytes is None else snap.rss_bytes / 2**20)
        if len(self._t) > MAX_POINTS:
            self._thin()

    def _pop(self) -> None:
        self._t.pop()
        for series in (*self._thr.values(), *self._lim.values(), self._cpu, self._rss):
            series.pop()

    def _thin(self) -> None:
        keep = slice(None, None, 2)
        last = len(self._t) - 1
        def thin(xs: list[float]) -> list[float]:
            kept = xs[keep]
            return kept if last % 2 == 0 else [*kept, xs[-1]]
        self._t = thin(self._t)
        self._thr = {k: thin(v) for k, v in self._thr.items()}
        self._lim = {k: thin(v) for k, v in self._lim.items()}
        self._cpu, self._rss = thin(self._cpu), thin(self._rss)
        self._stride *= 2

    @property
    def n_points(self) -> int:
        return len(self._t)

    def frame(self) -> dict[str, Any]:
        """A copy of the series to render (cheap: O(points x stages), bounded by MAX_POINTS)."""
        return {
            "t": list(self._t),
            "throughput": {k: list(v) for k, v in self._thr.items()},
            "limit": {k: list(v) for k, v in self._lim.items()},
            "cpu": list(self._cpu),
            "rss": list(self._rss),
        }

    # -- in a worker thread ------------------------------------------------------------
    def render(self, frame: dict[str, Any], *, relayout: bool = False) -> bytes:
        """Update the artists from ``frame`` and return the figure as PNG bytes.

        The constrained layout (half the cost of a frame) is recomputed every
        :data:`RELAYOUT_EVERY` frames and when ``relayout`` is set (the final frame).
        """
        with self._lock:
            again = relayout or self.renders % RELAYOUT_EVERY == 0
            self.figure.set_layout_engine("constrained" if again else "none")
            t = frame["t"]
            for kind in ("throughput", "limit"):
                for name, ys in frame[kind].items():
                    self.lines[kind][name].set_data(t, ys)
            self.lines["cpu"].set_data(t, frame["cpu"])
            self.lines["rss"].set_data(t, frame["rss"])
            for key, ax in self.axes.items():
                ax.relim()
                ax.autoscale_view()
                if key in ("throughput", "cpu", "rss", "limit"):
                    _floor_at_zero(ax)
            buf = io.BytesIO()
            self._canvas.print_png(buf)
            self.renders += 1
            return buf.getvalue()


def _floor_at_zero(ax: Any) -> None:
    lo, hi = ax.get_ylim()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return
    ax.set_ylim(0.0, max(hi, 1.0), auto=True)  # auto=True: keep autoscaling for the next frame

"""Live charts on artist data under Agg; never pyplot."""

from __future__ import annotations

import sys

import pytest

from asyncpipe._snapshot import MetricsSnapshot, StageSnapshot
from asyncpipe.notebook._charts import MAX_POINTS, LiveCharts


def _snap(t: float, thr: float, limit: int | None, cpu: float | None = 50.0, rss: int | None = 2**21):
    stages = tuple(
        StageSnapshot(name, 100, 10, 0, 0, 1, 0, thr * (i + 1), None, None, None, 0.0, 0.0, limit, None, 0.1)
        for i, name in enumerate(("fetch", "parse"))
    )
    return MetricsSnapshot("r", "running", 0.0, t, None, thr, cpu, rss, None, stages, 0, ())


def test_series_reach_the_artists():
    charts = LiveCharts(["fetch", "parse"])
    for i in range(5):
        charts.record(_snap(i * 0.5, float(i), limit=4 + i))
    png = charts.render(charts.frame())
    assert png[:4] == b"\x89PNG"
    assert list(charts.lines["throughput"]["fetch"].get_xdata()) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert list(charts.lines["throughput"]["parse"].get_ydata()) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert list(charts.lines["limit"]["fetch"].get_ydata()) == [4, 5, 6, 7, 8]
    assert list(charts.lines["cpu"].get_ydata()) == [50.0] * 5
    assert list(charts.lines["rss"].get_ydata()) == [2.0] * 5
    lo, hi = charts.axes["throughput"].get_ylim()
    assert lo == 0.0 and hi >= 8.0


def test_axes_keep_autoscaling_from_frame_to_frame():
    charts = LiveCharts(["fetch", "parse"])
    charts.record(_snap(0.5, 0.5, limit=1, cpu=10.0))
    charts.render(charts.frame())
    charts.record(_snap(1.0, 50.0, limit=32, cpu=180.0))
    charts.render(charts.frame())
    assert charts.axes["throughput"].get_ylim()[1] >= 100.0
    assert charts.axes["limit"].get_ylim()[1] >= 32
    assert charts.axes["cpu"].get_ylim()[1] >= 180.0
    assert charts.axes["throughput"].get_ylim()[0] == 0.0


def test_missing_values_are_gaps_not_errors():
    charts = LiveCharts(["fetch", "parse"])
    charts.record(_snap(0.1, 1.0, limit=None, cpu=None, rss=None))
    charts.render(charts.frame())
    ys = charts.lines["limit"]["fetch"].get_ydata()
    assert ys[0] != ys[0]  # NaN


def test_points_stay_bounded_over_a_long_run():
    charts = LiveCharts(["fetch", "parse"])
    for i in range(10 * MAX_POINTS):
        charts.record(_snap(float(i), 1.0, 4))
    assert charts.n_points <= MAX_POINTS
    xs = charts.frame()["t"]
    assert xs[0] == 0.0 and xs[-1] > 0.8 * 10 * MAX_POINTS  # still covers the whole run
    assert xs == sorted(xs)


def test_final_point_at_the_same_instant_replaces_the_last():
    charts = LiveCharts(["fetch", "parse"])
    charts.record(_snap(1.0, 1.0, 4))
    charts.record(_snap(1.0, 3.0, 4), force=True)
    assert charts.frame()["throughput"]["fetch"] == [3.0]


def test_no_pyplot():
    pytest.importorskip("matplotlib")
    LiveCharts(["a"]).render(LiveCharts(["a"]).frame())
    plt = sys.modules.get("matplotlib.pyplot")
    assert plt is None or plt.get_fignums() == []

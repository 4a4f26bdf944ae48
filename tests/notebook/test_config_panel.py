"""The configure-and-schedule panel, on widget model state."""

from __future__ import annotations

import asyncio

import pytest

import asyncpipe as ap
from asyncpipe._clock import FakeClock
from asyncpipe.notebook import ConfigPanel


async def fetch(n):
    await asyncio.sleep(0)
    return n


def doubled(fetch):
    return 2 * fetch


def _pipe():
    return ap.Pipeline([fetch, doubled], name="cfg", cache=False, retries=1)


def test_form_is_generated_from_the_plan(comm_log):
    p = ConfigPanel(_pipe(), inputs=[1])
    assert list(p.stage_fields) == ["fetch", "doubled"]
    f = p.stage_fields["fetch"]
    assert f["concurrency"].value == "16" and f["retries"].value == 1 and f["executor"].value == "async"
    assert p.stage_fields["doubled"]["executor"].value == "auto"
    assert p.cache_field.value is False
    assert p.tabs.get_title(1) == "Schedule"


def test_changed_fields_configure_the_pipeline(comm_log):
    p = ConfigPanel(_pipe(), inputs=[1])
    p.stage_fields["fetch"]["concurrency"].value = "adaptive"
    p.stage_fields["fetch"]["rate"].value = "20/s"
    p.stage_fields["doubled"]["retries"].value = 3
    p.stage_fields["doubled"]["executor"].value = "thread"
    p.cache_field.value = True
    pipe = p.configured()
    assert pipe.plan["fetch"].concurrency == "adaptive" and pipe.plan["fetch"].rate == "20/s"
    assert pipe.plan["doubled"].retry.attempts == 4 and pipe.plan["doubled"].executor == "thread"
    assert pipe.plan["fetch"].retry.attempts == 2  # unchanged fields keep the pipeline's options
    assert pipe.cache is True


@pytest.mark.asyncio
async def test_run_button_starts_and_shows_the_monitor(comm_log):
    p = ConfigPanel(_pipe(), namespace={"items": [1, 2, 3]}, charts=False)
    p.inputs_field.value = "items"
    p.run_button.click()
    run = p.last_run
    assert run is not None and p.monitor_box.children == (run.monitor.widget,)
    assert (await run)["doubled"] == [2, 4, 6]
    assert "succeeded" in run.monitor.header.value


@pytest.mark.asyncio
async def test_bad_values_show_a_message_instead_of_raising(comm_log):
    p = ConfigPanel(_pipe(), inputs=[1], charts=False)
    p.stage_fields["fetch"]["concurrency"].value = "lots"
    p.run_button.click()
    assert p.last_run is None and "concurrency must be a positive integer" in p.message.value
    p.stage_fields["fetch"]["concurrency"].value = "4"
    p.inputs_field.value = "undefined_thing"
    p.namespace = {}
    p.run_button.click()
    assert "NameError" in p.message.value


@pytest.mark.asyncio
async def test_schedule_tab_shows_next_run_and_history(comm_log, monkeypatch):
    from asyncpipe.notebook import _schedule

    clock = FakeClock()
    real = _schedule.Schedule.__init__

    def with_clock(self, *a, **kw):
        kw["clock"] = clock
        real(self, *a, **kw)

    monkeypatch.setattr(_schedule.Schedule, "__init__", with_clock)
    p = ConfigPanel(_pipe(), inputs=[5], charts=False)
    p.minutes.value = 1
    p.schedule_button.click()
    await asyncio.sleep(0)
    assert "every 1 min: next run at" in p.next_run.value and p.stop_button.disabled is False
    await clock.run_for(61, step=1)
    await p.schedule.history[0].handle
    await asyncio.sleep(0)
    assert "succeeded" in p.history.value and p.schedule.history[0].run_id in p.history.value
    assert p.last_run is not None  # the scheduled run's monitor is shown
    p.stop_button.click()
    assert "stopped" in p.next_run.value and p.schedule_button.disabled is False
    p.mode.value = "cron"
    p.cron.value = "not a cron"
    p.schedule_button.click()
    assert "Invalid cron expression" in p.next_run.value

"""The %%pipeline magic through an IPython InteractiveShell (cells run as coroutines, as in ipykernel)."""

from __future__ import annotations

import asyncio

import pytest
from IPython.core.error import UsageError

from asyncpipe import RunCancelled
from asyncpipe.notebook import NotebookRun

BODY = """
import asyncio

def _bump(x):
    return x + 1

def scale(x):
    return 10 * x

async def load(n):
    await asyncio.sleep(0)
    return scale(n)

def inc(load):
    return _bump(load)
"""


@pytest.mark.asyncio
async def test_magic_binds_name_to_a_running_handle_with_options(run_cell, shell):
    shell.user_ns["N"] = 6
    line = '%%pipeline etl --inputs "range($N)" -c load=3 --retries 2 --cache off --no-charts'
    r = await run_cell(shell, line + BODY)
    assert r.error_in_exec is None and r.error_before_exec is None
    run = shell.user_ns["etl"]
    assert isinstance(run, NotebookRun)
    assert not run.done()  # the cell returned while the run goes on
    plan = run.pipeline.plan
    assert plan.names == ("load", "inc")  # helpers (_bump, and scale which load calls) are not stages
    assert plan["load"].concurrency == 3 and plan["inc"].retry.attempts == 3
    result = await run
    assert result["inc"] == [10 * n + 1 for n in range(6)]
    assert run.outputs == {"inc": [10 * n + 1 for n in range(6)]}
    assert run.status == "succeeded" and run.monitor.final
    assert "etl" not in shell.user_ns.get("load", "") and "load" not in shell.user_ns  # body stays private


@pytest.mark.asyncio
async def test_decorated_stages_and_per_stage_options(run_cell, shell):
    line = '%%pipeline p --inputs "[1, 2, 3]" --cache off --no-monitor -e thread -r add=50/s'
    r = await run_cell(shell, line + """
import asyncpipe as ap

@ap.source(concurrency=2)
def src(x):
    return x

@ap.stage
def add(src):
    return src + 100
""")
    assert r.error_in_exec is None
    run = shell.user_ns["p"]
    assert run.monitor is None
    assert run.pipeline.plan["src"].concurrency == 2
    assert run.pipeline.plan["add"].executor == "thread"
    assert run.pipeline.plan["add"].rate == "50/s"
    assert (await run)["add"] == [101, 102, 103]


@pytest.mark.asyncio
async def test_rerun_cancels_the_old_run_without_leaks(run_cell, shell):
    shell.user_ns["DELAY"] = 30.0
    cell = """%%pipeline slow --inputs 'range(8)' --cache off --rate 1000/s --no-charts
import asyncio

async def wait(n):
    await asyncio.sleep(DELAY)
    return n
"""
    await run_cell(shell, cell)
    old = shell.user_ns["slow"]
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert old.status == "running"
    shell.user_ns["DELAY"] = 0.0
    await run_cell(shell, cell)
    new = shell.user_ns["slow"]
    assert new is not old
    with pytest.raises(RunCancelled):
        await old
    assert old.status == "cancelled" and old.monitor.final
    assert "cancelled" in old.monitor.header.value
    limiter = old.handle._session.run.stages["wait"].limiter
    assert limiter is not None and limiter.in_use == 0  # no leaked permits
    assert (await new)["wait"] == list(range(8))
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith("asyncpipe") and not t.done()]
    assert leftover == []


@pytest.mark.asyncio
async def test_unchanged_rerun_hits_the_cache(run_cell, shell, tmp_path):
    cell = f"%%pipeline c --inputs 'range(5)' --workdir {tmp_path / 'wd'} --no-monitor" + BODY
    await run_cell(shell, cell)
    first = await shell.user_ns["c"]
    await run_cell(shell, cell)
    second = await shell.user_ns["c"]
    assert [s.cached for s in first.stages] == [0, 0]
    assert [s.cached for s in second.stages] == [5, 5]
    assert second["inc"] == first["inc"]


@pytest.mark.asyncio
async def test_wait_prints_a_deterministic_summary(run_cell, shell, capsys):
    r = await run_cell(shell, "%%pipeline w --inputs 'range(3)' --cache off --wait --no-charts" + BODY)
    assert r.error_in_exec is None
    out = capsys.readouterr().out
    assert "run w: succeeded, 3 inputs, 0 failed" in out
    assert "inc                  done=3 cached=0 failed=0" in out
    assert shell.user_ns["w"].done() and shell.user_ns["w"].monitor.final


def test_without_a_running_loop_the_magic_blocks(shell, capsys):
    r = shell.run_cell("%%pipeline b --inputs 'range(4)' --cache off --no-monitor" + BODY)
    assert r.error_in_exec is None
    assert shell.user_ns["b"].result()["inc"] == [1, 11, 21, 31]
    assert "run b: succeeded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%%pipeline 1bad --inputs 'range(2)'", "valid variable name"),
        ("%%pipeline x --inputs 'range(2)' --concurrency load=many", "not a valid concurrency"),
        ("%%pipeline x --inputs 'range(2)' --concurrency lod=3", "Did you mean 'load'"),
        ("%%pipeline x --inputs 'rnge(2)'", "NameError"),
        ("%%pipeline x --bogus", "unrecognized arguments"),
        ("%%pipeline x --inputs 'range(2)", "cannot parse"),
        ("%%pipeline x", "needs inputs"),
        ("%%pipeline x --inputs 'range(2)' --executor nope", "known executors"),
    ],
)
@pytest.mark.asyncio
async def test_bad_options_are_usage_errors(run_cell, shell, line, message):
    r = await run_cell(shell, line + BODY)
    assert isinstance(r.error_in_exec, UsageError), r.error_in_exec
    assert message in str(r.error_in_exec)
    assert "x" not in shell.user_ns


@pytest.mark.asyncio
async def test_bad_cell_body_points_at_the_line(run_cell, shell):
    head = "%%pipeline x --inputs 'range(2)'\ndef load(n):\n    return n\n"
    r = await run_cell(shell, head + "boom = undefined_name\n")
    assert isinstance(r.error_in_exec, NameError)
    tb = r.error_in_exec.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_lineno == 4  # the cell's own line numbering (line 1 is %%pipeline)
    r = await run_cell(shell, "%%pipeline x --inputs 'range(2)'\ndef load(n):\n    return n +\n")
    assert isinstance(r.error_in_exec, SyntaxError) and r.error_in_exec.lineno == 3
    r = await run_cell(shell, "%%pipeline x --inputs 'range(2)'\nimport os\n")
    assert isinstance(r.error_in_exec, UsageError) and "defines no stage" in str(r.error_in_exec)
    r = await run_cell(shell, head + "def b(load, nothing):\n    return 1\n")
    assert isinstance(r.error_in_exec, UsageError) and "matches no stage" in str(r.error_in_exec)


def test_help_lists_the_options(shell):
    doc = shell.find_cell_magic("pipeline").__doc__
    for option in ("--inputs", "--concurrency", "--rate", "--retries", "--executor", "--cache", "--wait",
                   "--no-monitor"):
        assert option in doc

"""Notebook front end: the ``%%pipeline`` magic, the monitor panel, the configure-and-schedule panel.

Needs the ``notebook`` extra (ipywidgets, IPython, matplotlib); ``import asyncpipe``
never imports this package. In a notebook::

    %load_ext asyncpipe

    %%pipeline etl --inputs "range(100)"
    def load(n): ...
    def clean(load): ...

From Python: ``asyncpipe.monitor(handle)`` shows the panel for a running handle,
``asyncpipe.panel(pipe)`` the configure-and-schedule form, and
:func:`schedule` / :func:`schedules` manage interval and cron schedules.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigPanel",
    "Monitor",
    "NotebookRun",
    "Schedule",
    "load_ipython_extension",
    "monitor",
    "panel",
    "schedule",
    "schedules",
    "unload_ipython_extension",
]


def _require() -> None:
    missing = []
    for mod in ("ipywidgets", "IPython", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(
            f"asyncpipe's notebook front end needs {', '.join(missing)}: "
            "pip install 'asyncpipe[notebook]'"
        )


_require()

from ._config_panel import ConfigPanel, panel  # noqa: E402
from ._handle import NotebookRun  # noqa: E402
from ._monitor import Monitor, monitor  # noqa: E402
from ._schedule import Schedule, schedule, schedules  # noqa: E402


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext asyncpipe``: register the ``%%pipeline`` cell magic."""
    from ._magic import PipelineMagics

    ipython.register_magics(PipelineMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext asyncpipe``: cancel the schedules; the magic stays until restart."""
    for sched in schedules():
        sched.cancel()

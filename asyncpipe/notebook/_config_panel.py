"""``asyncpipe.panel(pipe)``: a configure-and-run form, and a schedule tab.

The form is generated from the pipeline's plan: the inputs (a Python
expression evaluated in the notebook namespace, or the ``inputs`` given to
:func:`panel`), per-stage concurrency / rate / retries / executor, and cache
on/off. **Run** builds the configured pipeline (``pipe.configure(...)`` for
what changed) and shows its monitor below the form. The **Schedule** tab runs
the configured pipeline every N minutes or on a cron expression (see
:mod:`._schedule`) and lists the scheduled runs with their status.

>>> import asyncpipe as ap
>>> def numbers(n):
...     return n
>>> def doubled(numbers):
...     return 2 * numbers
>>> p = ConfigPanel(ap.Pipeline([numbers, doubled], cache=False), inputs=[1, 2])
>>> p.stage_fields["doubled"]["concurrency"].value = "8"
>>> p.configured().plan["doubled"].concurrency
8
"""

from __future__ import annotations

import html
from typing import Any

from ._handle import NotebookRun

__all__ = ["ConfigPanel", "panel"]


class ConfigPanel:
    """The widgets of :func:`panel`; ``widget`` is the top-level container."""

    def __init__(self, pipe: Any, inputs: Any = None, *, namespace: dict[str, Any] | None = None,
                 charts: bool = True) -> None:
        import ipywidgets as w

        from ..executors import executor_names

        self.pipe = pipe
        self.inputs = inputs
        self.namespace = namespace
        self.charts = charts
        self.last_run: NotebookRun | None = None
        self.schedule: Any = None
        self._unsubscribe_schedule: Any = None

        self.inputs_field = w.Text(
            description="inputs", placeholder="a Python expression, e.g. range(100)"
            + (" (empty: the inputs given to panel())" if inputs is not None else ""),
            layout=w.Layout(width="60%"))
        self.cache_field = w.Checkbox(value=pipe.cache is not False, description="cache")
        self.fail_fast_field = w.Checkbox(value=pipe.fail_fast, description="fail fast")
        names = executor_names()
        header = [w.HTML(f"<b>{h}</b>") for h in ("stage", "concurrency", "rate", "retries", "executor")]
        cells: list[Any] = list(header)
        self.stage_fields: dict[str, dict[str, Any]] = {}
        for ps in pipe.plan.stages:
            ex = ps.executor if isinstance(ps.executor, str) else getattr(ps.executor, "name", "custom")
            fields = {
                "concurrency": w.Text(value=str(ps.concurrency), layout=w.Layout(width="100px")),
                "rate": w.Text(value="" if ps.rate is None else str(ps.rate), placeholder="e.g. 10/s",
                               layout=w.Layout(width="100px")),
                "retries": w.BoundedIntText(value=ps.retry.attempts - 1, min=0, max=100,
                                            layout=w.Layout(width="80px")),
                "executor": w.Dropdown(options=sorted({*names, ex}), value=ex,
                                       layout=w.Layout(width="110px")),
            }
            self.stage_fields[ps.name] = fields
            cells.extend([w.HTML(html.escape(ps.name)), *fields.values()])
        self.grid = w.GridBox(cells, layout=w.Layout(grid_template_columns="repeat(5, max-content)",
                                                       grid_gap="2px 12px"))
        self.run_button = w.Button(description="Run", icon="play", button_style="primary")
        self.run_button.on_click(lambda _: self.run())
        self.message = w.HTML()
        self.monitor_box = w.VBox()
        configure = w.VBox([self.inputs_field, w.HBox([self.cache_field, self.fail_fast_field]), self.grid,
                            w.HBox([self.run_button, self.message])])

        self.mode = w.ToggleButtons(options=["every N minutes", "cron"], value="every N minutes")
        self.minutes = w.BoundedFloatText(value=60.0, min=0.01, max=10_000_000, description="minutes")
        self.cron = w.Text(value="0 * * * *", description="cron", placeholder="min hour day month weekday")
        self.schedule_button = w.Button(description="Start schedule", icon="clock-o")
        self.stop_button = w.Button(description="Stop schedule", icon="stop", disabled=True)
        self.schedule_button.on_click(lambda _: self.start_schedule())
        self.stop_button.on_click(lambda _: self.stop_schedule())
        self.next_run = w.HTML("no schedule")
        self.history = w.HTML()
        sched = w.VBox([self.mode, w.HBox([self.minutes, self.cron]),
                        w.HBox([self.schedule_button, self.stop_button]), self.next_run, self.history])

        self.tabs = w.Tab(children=[configure, sched])
        self.tabs.set_title(0, "Configure & run")
        self.tabs.set_title(1, "Schedule")
        self.widget = w.VBox([w.HTML(f"<b>{html.escape(pipe.name)}</b>"), self.tabs, self.monitor_box])
        self.widget.add_class("asyncpipe-panel")

    # -- building the configured pipeline ----------------------------------------------
    def configured(self) -> Any:
        """The pipeline with the form's options (raises ValueError/DefinitionError on bad values)."""
        pipe = self.pipe
        for ps in pipe.plan.stages:
            f = self.stage_fields[ps.name]
            changes: dict[str, Any] = {}
            conc = f["concurrency"].value.strip()
            if conc != str(ps.concurrency):
                if conc != "adaptive" and not conc.isdigit():
                    raise ValueError(
                        f"{ps.name}: concurrency must be a positive integer or 'adaptive'; got {conc!r}.")
                changes["concurrency"] = conc if conc == "adaptive" else int(conc)
            rate = f["rate"].value.strip()
            if rate != ("" if ps.rate is None else str(ps.rate)):
                changes["rate"] = None if not rate else (float(rate) if _is_number(rate) else rate)
            if f["retries"].value != ps.retry.attempts - 1:
                changes["retries"] = int(f["retries"].value)
            current = ps.executor if isinstance(ps.executor, str) else getattr(ps.executor, "name", "custom")
            if f["executor"].value != current:
                changes["executor"] = f["executor"].value
            if changes:
                pipe = pipe.configure(ps.name, **changes)
        if self.cache_field.value != (self.pipe.cache is not False):
            pipe = pipe.with_defaults(cache=self.cache_field.value)
        if self.fail_fast_field.value != self.pipe.fail_fast:
            pipe = pipe.with_defaults(fail_fast=self.fail_fast_field.value)
        return pipe

    def resolved_inputs(self) -> Any:
        expr = self.inputs_field.value.strip()
        if not expr:
            return self.inputs
        ns = self.namespace
        if ns is None:
            from IPython import get_ipython

            shell = get_ipython()
            ns = shell.user_ns if shell is not None else {}
        return eval(expr, ns)

    # -- actions -----------------------------------------------------------------------
    def run(self) -> NotebookRun | None:
        """Start the configured pipeline and show its monitor (errors go to the message line)."""
        try:
            pipe = self.configured()
            inputs = self.resolved_inputs()
            handle = pipe.start(inputs)
        except Exception as exc:
            self._error(exc)
            return None
        self.message.value = f"started run <code>{html.escape(handle.run_id)}</code>"
        return self._show(handle)

    def _show(self, handle: Any) -> NotebookRun:
        from ._monitor import Monitor

        if self.last_run is not None and self.last_run.monitor is not None:
            self.last_run.monitor.close()
        mon = Monitor(handle, charts=self.charts)
        self.monitor_box.children = (mon.widget,)
        self.last_run = NotebookRun(handle, mon)
        return self.last_run

    def start_schedule(self) -> Any:
        """Schedule the configured pipeline with the tab's interval or cron expression."""
        from ._schedule import Schedule

        self.stop_schedule()
        try:
            pipe = self.configured()
            inputs = self.resolved_inputs()
            timing = ({"every": self.minutes.value} if self.mode.value == "every N minutes"
                      else {"cron": self.cron.value.strip()})
            self.schedule = Schedule(pipe, inputs=inputs, on_start=self._show, **timing)
        except Exception as exc:
            self.next_run.value = _error_html(exc)
            return None
        self._unsubscribe_schedule = self.schedule.subscribe(self._paint_schedule)
        self.schedule_button.disabled, self.stop_button.disabled = True, False
        self._paint_schedule(self.schedule)
        return self.schedule

    def stop_schedule(self) -> None:
        if self.schedule is None:
            return
        self.schedule.cancel()
        if self._unsubscribe_schedule is not None:
            self._unsubscribe_schedule()
        self._paint_schedule(self.schedule)
        self.schedule_button.disabled, self.stop_button.disabled = False, True

    def _paint_schedule(self, sched: Any) -> None:
        nxt = sched.next_run_at
        if sched.active and nxt is not None:
            when = f"{nxt:%Y-%m-%d %H:%M:%S %Z}"
            self.next_run.value = f"{html.escape(sched.description)}: next run at <b>{when}</b>"
        else:
            self.next_run.value = f"{html.escape(sched.description)}: stopped"
        rows = "".join(
            f"<tr><td>{r.due_at:%Y-%m-%d %H:%M:%S}</td><td><code>{html.escape(r.run_id)}</code></td>"
            f"<td>{html.escape(r.status)}</td><td>{html.escape(_duration(r))}</td>"
            f"<td>{html.escape(r.error)}</td></tr>"
            for r in reversed(sched.history[-20:])
        )
        self.history.value = (
            "<table><thead><tr><th>due</th><th>run</th><th>status</th><th>took</th><th>note</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>" if rows else "<i>no scheduled runs yet</i>"
        )

    def _error(self, exc: BaseException) -> None:
        self.message.value = _error_html(exc)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        data = dict(self.widget._repr_mimebundle_() or {})
        data["text/plain"] = repr(self)
        return data

    def __repr__(self) -> str:
        return f"<ConfigPanel {self.pipe.name!r}: {', '.join(self.pipe.plan.names)}>"


def _error_html(exc: BaseException) -> str:
    return f"<span style='color:#c62828'>{html.escape(f'{type(exc).__name__}: {exc}')}</span>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _duration(rec: Any) -> str:
    if rec.started_at is None or rec.finished_at is None:
        return ""
    return f"{rec.finished_at - rec.started_at:.1f}s"


def panel(pipe: Any, inputs: Any = None, *, display: bool = True, charts: bool = True) -> ConfigPanel:
    """Show a form to configure, run and schedule ``pipe``; returns the :class:`ConfigPanel`.

    In a notebook, ``ap.panel(pipe)`` displays the form. Headless (``display=False``)
    the widgets can be filled in and read back, as a user would:

    >>> import asyncpipe as ap
    >>> def numbers(n):
    ...     return n
    >>> def doubled(numbers):
    ...     return 2 * numbers
    >>> p = ap.panel(ap.Pipeline([numbers, doubled], cache=False), inputs=range(3), display=False)
    >>> sorted(p.stage_fields["doubled"])
    ['concurrency', 'executor', 'rate', 'retries']
    >>> p.stage_fields["doubled"]["rate"].value = "10/s"
    >>> p.stage_fields["doubled"]["retries"].value = 2
    >>> planned = p.configured().plan["doubled"]
    >>> planned.rate, planned.retry.attempts
    ('10/s', 3)
    """
    p = ConfigPanel(pipe, inputs, charts=charts)
    if display:
        from IPython.display import display as show

        show(p)
    return p

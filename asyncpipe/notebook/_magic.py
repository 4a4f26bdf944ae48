"""``%%pipeline NAME [options]``: define stage functions in a cell and run them in the background.

The cell body is ordinary Python. Its top-level functions become the stages,
wired by parameter name, except *helpers*: functions whose name starts with
``_`` and functions the body itself calls or references (``clean_row(...)``
inside a stage makes ``clean_row`` a helper). Imports, constants and helpers
defined in the body are visible to the stages; the body sees the notebook's
variables as they were when the cell ran, and defines nothing in the notebook
namespace except ``NAME``, bound to the run handle
(:class:`~asyncpipe.notebook.NotebookRun`).

The run starts as a task on the kernel's loop and the cell returns at once,
showing the monitor. Re-running the cell while ``NAME`` is still running
cancels the old run first. ``--wait`` blocks until the run ends (on a private
loop in a worker thread, so it also works where no loop runs) and prints the
deterministic :meth:`~asyncpipe.RunResult.summary` — for CI and nbval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import hashlib
import linecache
import shlex
import sys
import types
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .._exceptions import AsyncpipeError, DefinitionError, RunCancelled
from .._stage import Stage
from ._handle import NotebookRun

__all__ = ["PipelineMagics", "build_pipeline", "find_stages"]

_PER_STAGE = ("concurrency", "rate", "retries", "executor", "timeout")


@magics_class
class PipelineMagics(Magics):
    """The ``%%pipeline`` cell magic (registered by ``%load_ext asyncpipe``)."""

    @magic_arguments()
    @argument("name", help="Variable the run handle is bound to; also the pipeline's name.")
    @argument("-i", "--inputs", metavar="EXPR",
              help="Python expression for the input items, evaluated in the notebook namespace "
                   "(plus the cell's definitions); $var expands first. E.g. --inputs 'range(100)'.")
    @argument("-c", "--concurrency", action="append", metavar="[STAGE=]N",
              help="Partitions in flight: an int or 'adaptive'; STAGE=... sets one stage. Repeatable.")
    @argument("-r", "--rate", action="append", metavar="[STAGE=]RATE",
              help="Token-bucket rate such as 10/s or 30/min. Repeatable.")
    @argument("--retries", action="append", metavar="[STAGE=]N", help="Attempts after the first. Repeatable.")
    @argument("-e", "--executor", action="append", metavar="[STAGE=]NAME",
              help="async, thread, process, inline, dask... Repeatable.")
    @argument("--timeout", action="append", metavar="[STAGE=]SECONDS",
              help="Timeout per attempt. Repeatable.")
    @argument("--cache", metavar="on|off|DIR", default="on", help="Memoize stage outputs (default on).")
    @argument("--workdir", metavar="DIR", default=".asyncpipe", help="Where cache and run records live.")
    @argument("-p", "--params", metavar="EXPR", help="A dict expression of run parameters.")
    @argument("--keep", metavar="STAGES", help="Comma-separated stages whose outputs to keep, or 'all'.")
    @argument("--fail-fast", action="store_true", help="Stop at the first permanent failure.")
    @argument("--wait", action="store_true",
              help="Block until the run ends and print a deterministic text summary (CI, nbval).")
    @argument("--no-monitor", action="store_true", help="Do not display the monitor panel.")
    @argument("--no-charts", action="store_true", help="Monitor without the live charts.")
    @cell_magic
    def pipeline(self, line: str, cell: str) -> None:
        """Define stage functions in the cell body and run them as pipeline NAME.

        Example::

            %%pipeline etl --inputs urls --concurrency fetch=16 --retries 2
            async def fetch(url):
                ...
            def parse(fetch):
                ...

        The cell returns at once; ``await etl`` (in a later cell) gives the RunResult.
        """
        __tracebackhide__ = True
        args = _parse(self.pipeline.parser, line)
        name = args.name
        if not name.isidentifier():
            raise UsageError(f"%%pipeline NAME must be a valid variable name; got {name!r}.")
        ns = self.shell.user_ns
        old = ns.get(name)
        if (isinstance(old, NotebookRun) or type(old).__name__ == "RunHandle") and not old.done():
            old.cancel()
        glb = self._exec_body(name, cell)
        stages = find_stages(glb, _cell_filename(name, cell))
        if not stages:
            raise UsageError(
                "The %%pipeline cell defines no stage functions. Define top-level functions wired by "
                "parameter name, e.g. 'def load(path): ...' and 'def clean(load): ...' "
                "(names starting with '_' are helpers)."
            )
        pipe = build_pipeline(name, stages, args, glb)
        inputs = _evaluate(args.inputs, glb, "--inputs") if args.inputs else None
        if inputs is None and not any(hasattr(ps.stage.fn, "asyncpipe_inputs") for ps in pipe.plan.stages):
            raise UsageError(f"Pipeline {name!r} needs inputs: add --inputs EXPR, e.g. --inputs 'range(10)'.")
        run_options: dict[str, Any] = {}
        if args.params:
            run_options["params"] = _evaluate(args.params, glb, "--params")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if args.wait or loop is None:
            run = run_blocking(pipe, inputs, run_options, monitor=not args.no_monitor,
                               charts=not args.no_charts)
            ns[name] = run
            error = run.handle.task.exception() if not run.handle.task.cancelled() else None
            sys.stdout.write(run.summary() + "\n")
            if error is not None:
                raise error
            return
        try:
            handle = pipe.start(inputs, **run_options)
        except (DefinitionError, AsyncpipeError, TypeError) as exc:
            raise UsageError(str(exc)) from None
        monitor = None
        if not args.no_monitor:
            from ._monitor import Monitor

            monitor = Monitor(handle, charts=not args.no_charts)
            monitor.show()
        ns[name] = NotebookRun(handle, monitor)

    def _exec_body(self, name: str, cell: str) -> dict[str, Any]:
        __tracebackhide__ = True
        source = self.shell.transform_cell(cell)
        filename = _cell_filename(name, cell)
        # One leading newline, so line numbers in tracebacks match the cell (line 1 is the magic).
        text = "\n" + source
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        code = compile(text, filename, "exec")
        glb = dict(self.shell.user_ns)
        exec(code, glb)
        glb["__asyncpipe_code__"] = code
        return glb


def _parse(parser: Any, line: str) -> Any:
    """POSIX shell quoting (``--inputs "range(10)"``), then the magic's argparse parser."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%%pipeline: cannot parse the options {line!r}: {exc}") from None
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits after printing --help
        raise UsageError(f"%%pipeline: {exc}") from None


def _cell_filename(name: str, cell: str) -> str:
    digest = hashlib.sha1(cell.encode()).hexdigest()[:10]
    return f"<%%pipeline {name} {digest}>"


def _global_loads(code: types.CodeType) -> set[str]:
    names = set()
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
            names.add(ins.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_loads(const)
    return names


def find_stages(glb: dict[str, Any], filename: str) -> list[Any]:
    """The stage functions a cell body defined, in definition order (helpers left out)."""
    candidates: dict[str, Any] = {}
    for key, value in glb.items():
        fn = value.fn if isinstance(value, Stage) else value
        code = getattr(fn, "__code__", None)
        if code is None or code.co_filename != filename:
            continue
        if key.startswith("_") and not isinstance(value, Stage):
            continue
        candidates[key] = value
    module_code = glb.get("__asyncpipe_code__")
    referenced: set[str] = set()
    if module_code is not None:
        for ins in dis.get_instructions(module_code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
                referenced.add(ins.argval)
    for value in candidates.values():
        fn = value.fn if isinstance(value, Stage) else value
        referenced |= _global_loads(fn.__code__)
    stages = [v for k, v in candidates.items() if isinstance(v, Stage) or k not in referenced]
    return sorted(stages, key=lambda v: (v.fn if isinstance(v, Stage) else v).__code__.co_firstlineno)


def _split(values: list[str] | None, option: str) -> tuple[Any, dict[str, str]]:
    default: Any = None
    per_stage: dict[str, str] = {}
    for value in values or []:
        stage, sep, rest = value.partition("=")
        if sep and stage.isidentifier():
            per_stage[stage] = rest
        else:
            default = value
    return default, per_stage


def _convert(option: str, value: str) -> Any:
    try:
        if option == "concurrency":
            return value if value == "adaptive" else int(value)
        if option == "retries":
            return int(value)
        if option == "timeout":
            return float(value)
        if option == "rate":
            return float(value) if value.replace(".", "", 1).isdigit() else value
    except ValueError:
        raise UsageError(f"--{option} got {value!r}, which is not a valid {option}.") from None
    return value


def build_pipeline(name: str, stages: list[Any], args: Any, glb: dict[str, Any]) -> Any:
    """The :class:`~asyncpipe.Pipeline` the magic's options describe."""
    from .._pipeline import Pipeline

    defaults: dict[str, Any] = {}
    per_stage: dict[str, dict[str, Any]] = {}
    for option in _PER_STAGE:
        default, stage_values = _split(getattr(args, option), option)
        if default is not None:
            defaults[option] = _convert(option, default)
        for stage, value in stage_values.items():
            per_stage.setdefault(stage, {})[option] = _convert(option, value)
    cache: Any = {"on": True, "true": True, "off": False, "false": False}.get(args.cache.lower(), args.cache)
    keep: Any = None
    if args.keep:
        keep = "all" if args.keep == "all" else [k.strip() for k in args.keep.split(",") if k.strip()]
    try:
        pipe = Pipeline(stages, name=name, cache=cache, workdir=args.workdir, fail_fast=args.fail_fast,
                        keep=keep, **defaults)
        for stage, options in per_stage.items():
            pipe = pipe.configure(stage, **options)
    except DefinitionError as exc:
        raise UsageError(f"%%pipeline {name}: {exc}") from None
    return pipe


def _evaluate(expr: str, glb: dict[str, Any], option: str) -> Any:
    try:
        return eval(expr, glb)
    except Exception as exc:
        raise UsageError(f"{option} {expr!r} failed: {type(exc).__name__}: {exc}") from None


def run_blocking(pipe: Any, inputs: Any, run_options: dict[str, Any], *, monitor: bool = True,
                 charts: bool = True) -> NotebookRun:
    """Run to completion on a private loop in a worker thread; return the finished handle.

    Never patches the caller's loop (a running kernel loop cannot be re-entered);
    Ctrl-C / kernel interrupt cancels the run.
    """
    from .._runner import call_on_private_loop

    async def main() -> Any:
        handle = pipe.start(inputs, **run_options)
        try:
            await handle
        except asyncio.CancelledError:  # interrupted: the run goes down with the cell
            handle.cancel()
            with contextlib.suppress(BaseException):
                await handle
            raise
        except BaseException:  # the outcome is read from handle.task
            pass
        return handle

    try:
        handle = call_on_private_loop(main, name=pipe.name)
    except KeyboardInterrupt:
        raise RunCancelled(f"Run of {pipe.name!r} was interrupted.") from None
    except Exception as err:
        raise UsageError(f"Pipeline {pipe.name!r} could not start: {err}") from None
    mon = None
    if monitor and handle.metrics is not None:
        from ._monitor import Monitor

        mon = Monitor(handle, charts=charts)
        mon.show()
    return NotebookRun(handle, mon)

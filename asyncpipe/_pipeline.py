"""Pipeline: stages wired by parameter name, validated when built."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._exceptions import DefinitionError
from ._plan import DEFAULT_CONCURRENCY, Plan, PlannedStage
from ._retry import RetryPolicy
from ._stage import DEFAULT, RESERVED_PARAMS, Stage, StageOptions

if TYPE_CHECKING:
    from ._handle import RunHandle
    from ._result import RunResult

__all__ = ["Pipeline"]

_PIPELINE_DEFAULTS: dict[str, Any] = {
    "executor": DEFAULT,
    "concurrency": DEFAULT,
    "rate": None,
    "timeout": None,
    "retries": 0,
    "cache": True,
}


class Pipeline:
    """Stages wired by parameter name into a DAG that partitions stream through.

    >>> import tempfile
    >>> import asyncpipe as ap
    >>> @ap.source
    ... async def numbers(n):
    ...     return n
    >>> @ap.stage
    ... def squared(numbers):
    ...     return numbers * numbers
    >>> pipe = ap.Pipeline([numbers, squared], name="squares", cache=False, workdir=tempfile.mkdtemp())
    >>> result = pipe.run_sync(range(4))
    >>> result.output("squared")
    [0, 1, 4, 9]

    Pipeline-wide options (``executor``, ``concurrency``, ``rate``, ``timeout``,
    ``retries``, ``cache``) are defaults that stage options override. ``cache`` is
    True (memoize under ``workdir``/cache), False, or a directory/URL. ``params``
    fill stage parameters that no stage provides. ``fail_fast`` stops the run at the
    first permanent failure instead of isolating it. ``memory_budget`` (bytes) turns
    on the resource governor. ``keep`` names the stages whose outputs the result
    holds (default: the final stages).
    """

    def __init__(
        self,
        stages: Iterable[Stage | Callable[..., Any]],
        *,
        name: str = "pipeline",
        executor: Any = DEFAULT,
        concurrency: Any = DEFAULT,
        rate: Any = None,
        timeout: float | None = None,
        retries: int | RetryPolicy | None = 0,
        cache: bool | str | os.PathLike[str] = True,
        workdir: str | os.PathLike[str] = ".asyncpipe",
        params: Mapping[str, Any] | None = None,
        fail_fast: bool = False,
        memory_budget: int | None = None,
        keep: Iterable[str] | str | None = None,
    ) -> None:
        self.name = name
        self.workdir = os.fspath(workdir)
        self.params = dict(params or {})
        self.fail_fast = fail_fast
        self.memory_budget = memory_budget
        self.cache = cache
        self.defaults = {
            "executor": executor,
            "concurrency": concurrency,
            "rate": rate,
            "timeout": timeout,
            "retries": retries,
            "cache": cache is not False,
        }
        self._stages = _as_stages(stages)
        self.keep = _check_keep(keep, self._stages)
        self.plan = _build_plan(name, self._stages, self.defaults, self.params)

    # -- definition helpers ----------------------------------------------------------
    @property
    def stages(self) -> dict[str, Stage]:
        return {s.name: s for s in self._stages}

    def configure(self, stage: str, **options: Any) -> Pipeline:
        """A new pipeline with ``stage``'s options changed (e.g. ``concurrency=32``)."""
        if stage not in self.stages:
            raise DefinitionError(
                f"No stage {stage!r} in pipeline {self.name!r}.{_did_you_mean(stage, self.stages)}"
            )
        stages = [s.with_options(**options) if s.name == stage else s for s in self._stages]
        return self._copy(stages=stages)

    def with_defaults(self, **options: Any) -> Pipeline:
        """A new pipeline with pipeline-wide options changed (same names as the constructor)."""
        return self._copy(**options)

    def _copy(self, **changes: Any) -> Pipeline:
        kwargs: dict[str, Any] = {
            "stages": self._stages,
            "name": self.name,
            "workdir": self.workdir,
            "params": self.params,
            "fail_fast": self.fail_fast,
            "memory_budget": self.memory_budget,
            "keep": self.keep,
            **{k: v for k, v in self.defaults.items() if k != "cache"},
            "cache": self.cache,
        }
        kwargs.update(changes)
        return Pipeline(kwargs.pop("stages"), **kwargs)

    # -- running ---------------------------------------------------------------------
    async def run(self, inputs: Iterable[Any] | None = None, **options: Any) -> RunResult:
        """Run to completion on the running loop and return the :class:`RunResult`.

        Options: ``params``, ``cache``, ``fail_fast``, ``keep``, ``freeze_gc``, ``on_event``
        (callback), ``progress`` (terminal progress), ``monitor`` (metrics and
        resource sampling, default True), ``clock``.
        """
        if not all(m in sys.modules for m in _ENGINE_MODULES):
            # The first run in a process imports the engine, metrics and psutil: ~50 ms
            # of module code, in a thread so that the loop keeps turning meanwhile.
            await asyncio.to_thread(_load_engine)
        from ._runner import run_pipeline

        return await run_pipeline(self, inputs, **options)

    def start(self, inputs: Iterable[Any] | None = None, **options: Any) -> RunHandle:
        """Start a run as a task on the *running* loop and return its handle at once."""
        from ._runner import start_pipeline

        return start_pipeline(self, inputs, **options)

    def run_sync(self, inputs: Iterable[Any] | None = None, **options: Any) -> RunResult:
        """Blocking run for synchronous code: a private loop on a worker thread.

        Works in a script and inside a running loop (a sync notebook cell) alike;
        Ctrl-C / kernel interrupt cancels the run.
        """
        from ._runner import run_pipeline_sync

        return run_pipeline_sync(self, inputs, **options)

    async def replay(self, result: RunResult, **options: Any) -> RunResult:
        """Run again over the same inputs: failed partitions recompute, the rest hit the cache."""
        return await self.run(result.inputs, **options)

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {' -> '.join(self.plan.names)}>"

    def _repr_html_(self) -> str:
        return self.plan._repr_html_()


#: What every run imports; the first run loads them in a thread.
_ENGINE_MODULES = tuple(f"{__package__}.{m}" for m in ("_runner", "_metrics", "_sampler"))


def _load_engine() -> None:
    """Import what every run needs (blocking: call in a thread)."""
    for name in _ENGINE_MODULES:
        importlib.import_module(name)


# -- building the plan ------------------------------------------------------------------


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_keep(keep: Iterable[str] | str | None, stages: list[Stage]) -> tuple[str, ...] | str | None:
    if keep is None or keep == "all":
        return keep
    names = (keep,) if isinstance(keep, str) else tuple(keep)
    known = {s.name for s in stages}
    for n in names:
        if n not in known:
            raise DefinitionError(f"keep names unknown stage {n!r}.{_did_you_mean(n, known)}")
    return names


def _wired_params(st: Stage) -> list[inspect.Parameter]:
    return [
        p
        for p in st.signature.parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def _as_stages(items: Iterable[Stage | Callable[..., Any]]) -> list[Stage]:
    items = list(items)
    if not items:
        raise DefinitionError("A pipeline needs at least one stage; got none.")
    names: set[str] = set()
    for it in items:
        if not callable(it):
            raise DefinitionError(
                f"Pipeline stages must be functions; got {it!r} ({type(it).__name__}). "
                "Pass the function itself, not the result of calling it."
            )
        names.add(it.name if isinstance(it, Stage) else getattr(it, "__name__", ""))
    stages: list[Stage] = []
    for it in items:
        if isinstance(it, Stage):
            stages.append(it)
            continue
        st = Stage(it)
        wired = {p.name for p in _wired_params(st)} & (names - {st.name})
        stages.append(replace(st, kind="map" if wired else "source"))
    seen: dict[str, Stage] = {}
    for st in stages:
        if st.name in seen:
            raise DefinitionError(
                f"Two stages are named {st.name!r}. Stage names must be unique: rename one, "
                "or pass name='...' to its decorator.",
                stage=st.name,
            )
        seen[st.name] = st
    return stages


def _wiring(
    st: Stage, names: set[str], params: Mapping[str, Any]
) -> tuple[list[tuple[str, str]], str | None, bool, list[str]]:
    sig_params = _wired_params(st)
    pnames = [p.name for p in sig_params]
    for param, up in st.inputs.items():
        if param not in pnames and not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in st.signature.parameters.values()
        ):
            raise DefinitionError(
                f"Stage {st.name!r} wires parameter {param!r}, which its function does not have "
                f"(parameters: {', '.join(pnames) or 'none'}).",
                stage=st.name,
            )
        if up not in names:
            raise DefinitionError(
                f"Stage {st.name!r} needs input {up!r}, which no stage provides.{_did_you_mean(up, names)}",
                stage=st.name,
            )
    wiring: list[tuple[str, str]] = []
    item_param: str | None = None
    wants_partition = False
    run_params: list[str] = []
    unmatched: list[str] = []
    for i, p in enumerate(sig_params):
        if p.name in st.inputs:
            wiring.append((p.name, st.inputs[p.name]))
        elif st.kind == "source" and i == 0:
            item_param = p.name
        elif p.name in names and p.name != st.name:
            wiring.append((p.name, p.name))
        elif p.name in RESERVED_PARAMS:
            wants_partition = True
        elif p.name in params:
            run_params.append(p.name)
        elif p.default is inspect.Parameter.empty:
            unmatched.append(p.name)
    if unmatched and (wiring or st.kind == "source"):
        name = unmatched[0]
        raise DefinitionError(
            f"Parameter {name!r} of stage {st.name!r} matches no stage.{_did_you_mean(name, names)} "
            f"Name it after the stage it should receive, wire it with inputs={{{name!r}: 'stage'}}, "
            "give it a default, or pass it in params={...}.",
            stage=st.name,
        )
    if st.kind == "source":
        if item_param is None:
            raise DefinitionError(
                f"Source {st.name!r} must take the input item as its first parameter, e.g. "
                f"def {st.name}(item): ...",
                stage=st.name,
            )
        if wiring:
            raise DefinitionError(
                f"Source {st.name!r} takes input from stage {wiring[0][1]!r}; sources only read input items. "
                "Declare it with @stage to transform another stage's output.",
                stage=st.name,
            )
    elif not wiring:
        raise DefinitionError(
            f"{st.kind.capitalize()} stage {st.name!r} takes no input from another stage "
            f"(parameters: {', '.join(pnames) or 'none'}). Name a parameter after an upstream stage, "
            "or declare it with @source if it reads input items.",
            stage=st.name,
        )
    return wiring, item_param, wants_partition, run_params


def _toposort(stages: list[Stage], edges: dict[str, list[str]]) -> list[Stage]:
    by_name = {s.name: s for s in stages}
    state: dict[str, int] = {}
    order: list[Stage] = []

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise DefinitionError(
                f"The stages form a cycle: {' -> '.join(cycle)}. A stage cannot depend on its own output.",
                stage=name,
            )
        state[name] = 1
        for up in edges[name]:
            visit(up, [*path, name])
        state[name] = 2
        order.append(by_name[name])

    for s in stages:
        visit(s.name, [])
    return order


def _resolve(st: Stage, defaults: Mapping[str, Any]) -> StageOptions:
    if st.kind == "sink" and st.options.cache is DEFAULT:
        # Sinks always write (idempotently): a deleted table is rewritten by the next run.
        st = st.with_options(cache=False)
    opts = st.options.merged(defaults)
    executor = opts.executor
    if executor is DEFAULT:
        executor = "async" if st.is_async else "auto"
    if isinstance(executor, str):
        from .executors import executor_names

        if executor not in executor_names():
            raise DefinitionError(
                f"Stage {st.name!r} asks for executor {executor!r}; known executors: "
                f"{', '.join(executor_names())}.{_did_you_mean(executor, executor_names())}",
                stage=st.name,
            )
        if executor == "async" and not st.is_async:
            raise DefinitionError(
                f"Stage {st.name!r} is a plain function; executor='async' needs an async def. "
                "Use 'thread', 'process' or 'inline' for sync functions.",
                stage=st.name,
            )
    conc = opts.concurrency
    if conc is DEFAULT:
        conc = DEFAULT_CONCURRENCY.get(executor, os.cpu_count() or 2) if isinstance(executor, str) else 4
    elif isinstance(conc, bool) or (isinstance(conc, int) and conc < 1):
        raise DefinitionError(
            f"Stage {st.name!r}: concurrency={conc!r} must be a positive integer or 'adaptive'."
        )
    return replace(opts, executor=executor, concurrency=conc)


def _build_plan(
    name: str, stages: list[Stage], defaults: Mapping[str, Any], params: Mapping[str, Any]
) -> Plan:
    names = {s.name for s in stages}
    wirings = {s.name: _wiring(s, names, params) for s in stages}
    edges = {n: [up for _, up in w[0]] for n, w in wirings.items()}
    order = _toposort(stages, edges)
    downstream: dict[str, list[str]] = {n: [] for n in names}
    for n, ups in edges.items():
        for up in dict.fromkeys(ups):
            downstream[up].append(n)
    kinds = {s.name: s.kind for s in stages}
    # which stages yield one partition in total (a reduce, or anything fed only by one)
    single: dict[str, bool] = {}
    for st in order:
        ups = edges[st.name]
        single[st.name] = st.kind == "reduce" or (bool(ups) and all(single[u] for u in ups))
    for st in order:
        for up in edges[st.name]:
            if kinds[up] == "sink":
                raise DefinitionError(
                    f"Stage {st.name!r} consumes sink {up!r}; sinks are terminal. Declare {up!r} with @stage "
                    "if its output should feed other stages.",
                    stage=st.name,
                )
        per_partition = [u for u in dict.fromkeys(edges[st.name]) if not single[u]]
        sources = {s for u in per_partition for s in _roots(u, edges)}
        gens = [s for s in sources if next(x for x in stages if x.name == s).is_generator]
        if len(sources) > 1 and gens:
            raise DefinitionError(
                f"Stage {st.name!r} joins partitions of sources {', '.join(sorted(sources))}, "
                f"but {gens[0]!r} "
                "yields a varying number of partitions per item, so partitions cannot be matched. "
                "Join after a reduce, or make the source return one partition per item.",
                stage=st.name,
            )
    planned = []
    for st in order:
        wiring, item_param, wants_partition, run_params = wirings[st.name]
        opts = _resolve(st, defaults)
        planned.append(
            PlannedStage(
                stage=st,
                wiring=tuple(wiring),
                item_param=item_param,
                wants_partition=wants_partition,
                params=tuple(run_params),
                downstream=tuple(downstream[st.name]),
                broadcast=_broadcast(st, wiring, single),
                executor=opts.executor,
                concurrency=opts.concurrency,
                rate=opts.rate,
                timeout=opts.timeout,
                retry=RetryPolicy.coerce(opts.retries),
                cache=bool(opts.cache),
            )
        )
    return Plan(name=name, stages=tuple(planned))


def _broadcast(st: Stage, wiring: list[tuple[str, str]], single: dict[str, bool]) -> frozenset[str]:
    """Single-partition upstreams (reduces) whose value every partition of ``st`` receives."""
    ups = [u for _, u in wiring]
    if st.kind == "reduce" or all(single[u] for u in ups):
        return frozenset()
    return frozenset(u for u in ups if single[u])


def _roots(name: str, edges: dict[str, list[str]]) -> set[str]:
    ups = edges[name]
    if not ups:
        return {name}
    return {r for u in ups for r in _roots(u, edges)}

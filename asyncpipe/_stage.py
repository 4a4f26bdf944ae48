"""Stages: plain functions with options.

A stage is a function plus keyword-only options. Decorating never changes what
calling the function does, so a stage can be unit-tested without the engine::

    >>> import asyncpipe as ap
    >>> @ap.stage(concurrency=4)
    ... def double(numbers):
    ...     return numbers * 2
    >>> double(21)
    42
    >>> double.kind, double.name
    ('map', 'double')

Kinds:

- ``source``: called once per input item; returns one partition, or (async
  generator) yields several.
- ``map`` (:func:`stage`): called once per partition of its upstream stages.
- ``reduce``: called once with every partition of its upstream (a list in
  partition order, or one concatenated DataFrame with ``concat=True``).
- ``sink``: consumes partitions for side effects (writes); its return value is
  recorded, and its per-partition writes must be idempotent.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal, TypeVar, overload

from ._exceptions import DefinitionError

__all__ = ["DEFAULT", "Stage", "StageOptions", "reduce", "sink", "source", "stage"]

Kind = Literal["source", "map", "reduce", "sink"]
KINDS: Final = ("source", "map", "reduce", "sink")

#: Parameter names the engine fills itself rather than from an upstream stage.
RESERVED_PARAMS: Final = frozenset({"partition"})


class _Default:
    """Sentinel: inherit the pipeline's setting (``None`` means "off")."""

    _instance: _Default | None = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT: Final = _Default()


@dataclass(frozen=True)
class StageOptions:
    """Per-stage options. ``DEFAULT`` inherits the pipeline's value.

    - ``executor``: "async" (coroutines), "thread", "process", "inline", "dask", or
      an :class:`~asyncpipe.executors.Executor`. Sync functions default to "auto":
      a thread, or inline on the loop once measured cheap (see docs/concepts.md).
    - ``concurrency``: max partitions in flight in this stage (int), or "adaptive"
      / an :class:`~asyncpipe.Adaptive` controller.
    - ``rate``: a token-bucket rate such as "100/s" or "30/min", or None.
    - ``timeout``: seconds per attempt, or None.
    - ``retries``: attempts after the first, or a :class:`~asyncpipe.RetryPolicy`.
    - ``cache``: memoize outputs (True/False).
    - ``version``: a string that replaces code hashing in cache keys.
    - ``concat``: reduce only; pass one concatenated DataFrame instead of a list.
    """

    executor: Any = DEFAULT
    concurrency: Any = DEFAULT
    rate: Any = DEFAULT
    timeout: Any = DEFAULT
    retries: Any = DEFAULT
    cache: Any = DEFAULT
    version: str | None = None
    concat: bool = False

    def merged(self, defaults: Mapping[str, Any]) -> StageOptions:
        """Fill every ``DEFAULT`` from ``defaults`` (keys are option names)."""
        updates = {
            f.name: defaults[f.name]
            for f in fields(self)
            if getattr(self, f.name) is DEFAULT and f.name in defaults
        }
        return replace(self, **updates)

    def set_options(self) -> dict[str, Any]:
        """The options given explicitly (not left at their defaults)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}


_OPTION_NAMES: Final = frozenset(f.name for f in fields(StageOptions))


@dataclass(frozen=True, eq=False)
class Stage:
    """A function with a kind, a name, explicit input wiring and options.

    Calling a ``Stage`` calls the function unchanged. The decorators (:func:`stage`,
    :func:`source`, :func:`reduce`, :func:`sink`) build one; build it directly to
    wrap a function you cannot decorate:

    >>> import asyncpipe as ap
    >>> st = ap.Stage(int, kind="map", name="parse", inputs={"x": "lines"})
    >>> st.name, st.kind, st.inputs, st("42")
    ('parse', 'map', {'x': 'lines'}, 42)
    >>> slow = st.with_options(executor="thread", timeout=5.0)
    >>> slow.options.executor, slow.options.timeout, st.options.timeout is ap.DEFAULT
    ('thread', 5.0, True)
    """

    fn: Callable[..., Any]
    kind: Kind = "map"
    name: str = ""
    inputs: Mapping[str, str] = field(default_factory=dict)
    options: StageOptions = field(default_factory=StageOptions)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise DefinitionError(
                f"A stage must be a function; got {self.fn!r} of type {type(self.fn).__name__}. "
                "Pass the function itself, not the result of calling it.",
            )
        if self.kind not in KINDS:
            raise DefinitionError(f"Unknown stage kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if not self.name:
            object.__setattr__(self, "name", _name_of(self.fn))
        object.__setattr__(self, "inputs", dict(self.inputs))
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(self.fn, attr):
                object.__setattr__(self, attr, getattr(self.fn, attr))
        object.__setattr__(self, "__wrapped__", self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self.fn, obj)

    # -- introspection used by Pipeline ------------------------------------------------
    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fn)

    @property
    def is_async(self) -> bool:
        fn = inspect.unwrap(self.fn)
        return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

    @property
    def is_generator(self) -> bool:
        fn = inspect.unwrap(self.fn)
        return inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn)

    def with_options(self, **options: Any) -> Stage:
        """A copy with some options replaced (``name``, ``inputs`` and ``kind`` too)."""
        top = {k: options.pop(k) for k in ("name", "inputs", "kind") if k in options}
        _check_option_names(options, self.name)
        return replace(self, options=replace(self.options, **options), **top)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.set_options().items())
        return f"<{self.kind} stage {self.name!r}{', ' + opts if opts else ''}>"


def _name_of(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        raise DefinitionError("A lambda has no usable name; give the stage one: stage(fn, name='...').")
    return name


def _check_option_names(options: Mapping[str, Any], where: str) -> None:
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        import difflib

        bad = sorted(unknown)[0]
        close = difflib.get_close_matches(bad, sorted(_OPTION_NAMES), n=1)
        hint = (
            f" Did you mean {close[0]!r}?" if close else f" Options are: {', '.join(sorted(_OPTION_NAMES))}."
        )
        raise DefinitionError(f"Unknown option {bad!r} for stage {where!r}.{hint}", stage=where)


F = TypeVar("F", bound=Callable[..., Any])


def _decorator(kind: Kind) -> Any:
    @overload
    def deco(fn: Callable[..., Any], /) -> Stage: ...
    @overload
    def deco(
        *, name: str = "", inputs: Mapping[str, str] | None = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Stage]: ...

    def deco(
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str = "",
        inputs: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Any:
        def build(f: Callable[..., Any]) -> Stage:
            base = f.fn if isinstance(f, Stage) else f
            _check_option_names(options, name or getattr(base, "__name__", repr(base)))
            prior = f.options if isinstance(f, Stage) else StageOptions()
            return Stage(
                base,
                kind=kind,
                name=name or (f.name if isinstance(f, Stage) else ""),
                inputs=inputs if inputs is not None else (f.inputs if isinstance(f, Stage) else {}),
                options=replace(prior, **options),
            )

        return build if fn is None else build(fn)

    deco.__name__ = {"map": "stage"}.get(kind, kind)
    return deco


stage = _decorator("map")
stage.__doc__ = """Declare a per-partition (map) stage; works bare or with keyword options.

Parameters named like an upstream stage receive that stage's output for the same
partition; ``inputs={"param": "stage_name"}`` wires explicitly. A parameter named
``partition`` receives the :class:`~asyncpipe.PartitionKey`.

>>> import asyncpipe as ap
>>> @ap.stage
... def squared(numbers):
...     return numbers * numbers
>>> squared(3)  # still the plain function: unit-test it without an engine
9
>>> @ap.stage(concurrency=8, retries=2, inputs={"values": "numbers"})
... def halved(values):
...     return values / 2
>>> halved.kind, halved.inputs, halved.options.concurrency, halved.options.retries
('map', {'values': 'numbers'}, 8, 2)
"""
source = _decorator("source")
source.__doc__ = """Declare a source stage: called once per input item.

The first parameter receives the item. Return one partition, or write an async
generator (or generator) to yield several partitions per item.

>>> import asyncpipe as ap
>>> @ap.source
... async def numbers(n):
...     return list(range(n))
>>> numbers.kind
'source'
"""
reduce = _decorator("reduce")
reduce.__doc__ = """Declare a reduce stage: called once with all partitions of its upstream.

It receives a list in partition order, or with ``concat=True`` one DataFrame
made by concatenating the partitions.

>>> import asyncpipe as ap
>>> @ap.reduce
... def total(numbers):
...     return sum(sum(p) for p in numbers)
>>> total([[1, 2], [3]])
6
"""
sink = _decorator("sink")
sink.__doc__ = """Declare a sink stage: consumes each partition for its side effects.

Sinks must be idempotent per partition (re-runs, retries and resumes may call
them again for the same partition): write one object per partition, atomically.

>>> import json, os, tempfile
>>> import asyncpipe as ap
>>> out = tempfile.mkdtemp()
>>> @ap.source
... def numbers(n):
...     return n
>>> @ap.sink
... def save(numbers, partition):
...     path = os.path.join(out, f"{partition.id}.json")  # the same name on every re-run
...     with open(path + ".tmp", "w") as f:
...         json.dump(numbers, f)
...     os.replace(path + ".tmp", path)  # atomic
>>> result = ap.Pipeline([numbers, save], cache=False, workdir=tempfile.mkdtemp()).run_sync([1, 2, 3])
>>> result.ok, len(os.listdir(out))
(True, 3)
"""

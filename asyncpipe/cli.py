"""The ``asyncpipe`` command line: run pipelines, the demo, and manage the cache and run history.

::

    asyncpipe demo                         # a real pipeline on embedded defaults
    asyncpipe run jobs.py:pipe -i data/*.csv --progress
    asyncpipe runs [RUN_ID]                # past runs
    asyncpipe cache ls|info|clear|prune    # the memoization cache
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["load_target", "main"]


def load_target(target: str) -> Any:
    """Load ``path/to/file.py:NAME`` or ``package.module:NAME`` (NAME defaults to ``pipe``)."""
    spec, _, attr = target.partition(":")
    attr = attr or "pipe"
    if spec.endswith(".py") or Path(spec).is_file():
        path = Path(spec).resolve()
        if not path.is_file():
            raise SystemExit(f"asyncpipe: no such file {spec!r}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        sys.path.insert(0, str(path.parent))
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(spec)
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise SystemExit(f"asyncpipe: {spec!r} has no {attr!r}; it defines: {', '.join(names)}") from None


def _parse_param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param takes NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def _cmd_run(args: argparse.Namespace) -> int:
    from ._pipeline import Pipeline

    pipe = load_target(args.target)
    if not isinstance(pipe, Pipeline):
        raise SystemExit(f"asyncpipe: {args.target!r} is a {type(pipe).__name__}, not an asyncpipe.Pipeline")
    if args.concurrency is not None:
        pipe = pipe.with_defaults(concurrency=args.concurrency)
    inputs = args.inputs or None
    options: dict[str, Any] = {"progress": not args.quiet}
    if args.no_cache:
        options["cache"] = False
    if args.param:
        options["params"] = dict(args.param)
    result = pipe.run_sync(inputs, **options)
    print(result.summary())
    if result.failure_list:
        print(f"{len(result.failure_list)} failure(s) recorded in {result.run_dir}/failures.jsonl")
    return 0 if result.ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import main as demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncpipe", description="Async data pipelines, memoized as Parquet."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run a pipeline defined in a file or module")
    run.add_argument("target", help="path/to/file.py:NAME or package.module:NAME (NAME defaults to 'pipe')")
    run.add_argument("-i", "--inputs", nargs="*", help="input items (default: the sources list their own)")
    run.add_argument("-c", "--concurrency", type=int, help="pipeline-wide default concurrency")
    run.add_argument("-p", "--param", action="append", type=_parse_param, help="run parameter NAME=VALUE")
    run.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="run the demo pipeline (local files + loopback HTTP -> SQLite)")
    demo.add_argument(
        "--dir", default="asyncpipe-demo", help="where the demo writes its data (default: %(default)s)"
    )
    demo.add_argument("--fresh", action="store_true", help="delete the demo directory first")
    demo.set_defaults(func=_cmd_demo)

    from ._history_cli import register as register_runs
    from .cache._cli import register as register_cache

    register_runs(sub)
    register_cache(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ._logging import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

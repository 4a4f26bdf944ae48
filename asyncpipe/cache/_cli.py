"""``asyncpipe cache ls|info|clear|prune``: look at and tidy a cache directory.

The main CLI calls :func:`register` with its subparsers::

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="asyncpipe")
    >>> register(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["cache", "prune", "--max-age", "7d", "--max-size", "2GiB"])
    >>> args.max_age, args.max_size
    (604800.0, 2147483648)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from . import _manage

__all__ = ["DEFAULT_DIR", "main", "parse_age", "parse_size", "register"]

#: Project-local default, next to the notebook: ``Pipeline(cache=True)`` uses the same.
DEFAULT_DIR = ".asyncpipe/cache"

#: Exit code when the reader closed stdout early: 128 + SIGPIPE, what a shell reports
#: for a tool that SIGPIPE killed (``ls | head``).
EXIT_BROKEN_PIPE = 141

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_AGE_UNITS = {"": 1, "s": 1, "min": 60, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """``"500MB"`` -> 500000000; ``"2GiB"`` -> 2147483648."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500MB or 2GiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_age(text: str) -> float:
    """``"90min"`` -> 5400.0; ``"7d"`` -> 604800.0; a bare number is seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _AGE_UNITS:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (try 3600, 90min, 12h or 7d)")
    return float(m.group(1)) * _AGE_UNITS[m.group(2).lower()]


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def register(subparsers: Any) -> None:
    """Add the ``cache`` subcommand to an argparse subparsers object."""
    cache = subparsers.add_parser("cache", help="list, inspect, clear or prune cached stage outputs")
    cache.set_defaults(func=main)
    sub = cache.add_subparsers(dest="cache_command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--dir", default=DEFAULT_DIR, help=f"cache directory (default {DEFAULT_DIR})")
        return p

    ls = add("ls", "list entries per stage with size and age")
    ls.add_argument("stage", nargs="?", help="only this stage")
    add("info", "per-stage entry counts and sizes")
    clear = add("clear", "remove the entries of one stage, or everything")
    clear.add_argument("stage", nargs="?", help="only this stage (default: all)")
    prune = add("prune", "remove entries older than an age and/or beyond a total size")
    prune.add_argument("--max-age", type=parse_age, help="e.g. 3600, 90min, 12h, 7d")
    prune.add_argument("--max-size", type=parse_size, help="e.g. 500MB, 2GiB")


def main(args: argparse.Namespace) -> int:
    """Run one ``cache`` subcommand; return the exit code.

    A reader that stops early (``asyncpipe cache ls | head``) ends the command quietly
    with :data:`EXIT_BROKEN_PIPE`, like a Unix tool killed by SIGPIPE, not with a traceback.
    """
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _discard_stdout() -> None:
    """Point stdout at devnull, so the interpreter's final flush cannot fail again
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a file-like without a descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _run(args: argparse.Namespace) -> int:
    root = args.dir
    if args.cache_command == "ls":
        df = _manage.list_entries(root, args.stage)
        if df.empty:
            _say(f"no cache entries in {root}")
            return 0
        _say(f"{'stage':<24} {'key':<32} {'format':<8} {'size':>10} {'age':>9}")
        for r in df.itertuples(index=False):
            size, age = _manage.human_size(r.bytes), _manage.human_age(r.age_s)
            _say(f"{r.stage:<24} {r.key:<32} {r.format:<8} {size:>10} {age:>9}")
        return 0
    if args.cache_command == "info":
        inf = _manage.info(root)
        _say(f"cache at {inf['location']}: {inf['entries']} entries, {_manage.human_size(inf['bytes'])}")
        for stage, s in sorted(inf["stages"].items()):
            _say(f"  {stage:<24} {s['entries']:>6} entries {_manage.human_size(s['bytes']):>10}")
        return 0
    if args.cache_command == "clear":
        n = _manage.clear(root, args.stage)
        _say(f"removed {n} entries" + (f" of stage {args.stage!r}" if args.stage else ""))
        return 0
    if args.max_age is None and args.max_size is None:
        _say("nothing to do: give --max-age and/or --max-size")
        return 2
    n = _manage.prune(root, max_age=args.max_age, max_bytes=args.max_size)
    _say(f"pruned {n} entries")
    return 0

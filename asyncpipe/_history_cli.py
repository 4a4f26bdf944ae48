"""The ``asyncpipe runs`` command: list past runs, or show one.

The CLI module calls :func:`register` with its subparsers; the command's
handler is stored as ``func`` and returns an exit code::

    asyncpipe runs                      # newest 20 runs
    asyncpipe runs --all --pipeline etl
    asyncpipe runs 20261204-1655        # one run (unique prefix), its stages and failures

>>> import argparse, io, tempfile
>>> parser = argparse.ArgumentParser(prog="asyncpipe")
>>> _ = register(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["runs", "--workdir", tempfile.mkdtemp()])
>>> out = io.StringIO()
>>> args.func(args, out=out)
0
>>> out.getvalue()
'No runs recorded yet.\\n'
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from ._history import DEFAULT_WORKDIR, RunNotFoundError, iter_runs, load_run
from ._snapshot import fmt_seconds

__all__ = ["register"]

#: Failures shown by ``asyncpipe runs RUN_ID`` (the rest are in failures.jsonl).
SHOW_FAILURES = 10


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``runs`` command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser("runs", help="list past runs, or show one",
                              description="List past runs (newest first), or show one run.")
    p.add_argument("run_id", nargs="?", help="a run id or a unique prefix of one")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help=f"the asyncpipe work directory (default: {DEFAULT_WORKDIR})")
    p.add_argument("--limit", type=int, default=20, help="runs to list (default: 20)")
    p.add_argument("--all", action="store_true", help="list every run")
    p.add_argument("--pipeline", help="only runs of this pipeline")
    p.set_defaults(func=run_command)
    return p


def run_command(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Handle ``asyncpipe runs``; returns the process exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if args.run_id:
        try:
            rec = load_run(args.run_id, args.workdir)
        except RunNotFoundError as exc:
            err.write(f"asyncpipe runs: {exc}\n")
            return 1
        out.write(str(rec) + "\n")
        failures = rec.failures()
        if len(failures):
            out.write(f"  failures ({len(failures)}, showing {min(len(failures), SHOW_FAILURES)}):\n")
            for row in failures.head(SHOW_FAILURES).to_dict("records"):
                out.write("    " + _failure_line(row) + "\n")
        return 0
    records = iter_runs(args.workdir, limit=None if args.all else args.limit, pipeline=args.pipeline)
    if not records:
        out.write("No runs recorded yet.\n")
        return 0
    rows = [("RUN ID", "PIPELINE", "STATUS", "STARTED (UTC)", "DURATION", "DONE", "FAILURES", "WORST LAG")]
    for r in records:
        last = next(reversed(r.stages.values()), {}) if r.stages else {}
        started = "-" if r.started_at is None else _utc(r.started_at)
        rows.append((r.run_id, r.pipeline or "-", r.status, started, fmt_seconds(r.duration),
                     str(last.get("done", "-")), str(r.n_failures), fmt_seconds(r.worst_loop_lag)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return 0


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _failure_line(row: dict[str, Any]) -> str:
    stage = row.get("stage", "?")
    part = row.get("partition", row.get("label", row.get("partition_id", "?")))
    kind = row.get("error_type", row.get("type", "error"))
    msg = str(row.get("message", row.get("error", ""))).splitlines()
    return f"{stage} [{part}] {kind}: {msg[0] if msg else ''}"

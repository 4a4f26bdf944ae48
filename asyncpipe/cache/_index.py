"""What the cache knows about a stage without touching disk on the event loop.

Per stage directory there is an append-only log ``_runs.jsonl`` recording, for each
partition, the parts of the key last stored (code, options and inputs hashes), and
for each code key the per-function hashes. :meth:`Cache.open` reads it in a thread
together with the list of entry directories; lookups then need no I/O, and a miss
can be explained by comparing with the last record::

    >>> idx = StageIndex(seen_before=True)
    >>> idx.records["p1"] = Record("k1", "c1", "o1", "i1")
    >>> idx.explain("k2", Record("k2", "c1", "o2", "i1"), "p1", {}, False)
    'options changed'
    >>> idx.explain("k3", Record("k3", "c1", "o1", "i1"), "p2", {}, False)
    'new input'
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .._atomic import replace_atomically

__all__ = ["LOG_NAME", "Record", "StageIndex", "append_log", "read_stage", "stage_dirname", "stage_name"]

LOG_NAME = "_runs.jsonl"
KEY_RE = re.compile(r"^[0-9a-f]{32}$")
_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
_COMPACT_AT = 4  # rewrite the log when it holds 4x more lines than live records (and > 1000)


def stage_dirname(stage: str) -> str:
    """A file-name-safe, reversible directory name for a stage."""
    if _SAFE.match(stage) and stage != LOG_NAME:
        return stage
    return "%" + urllib.parse.quote(stage, safe="").replace(".", "%2E")


def stage_name(dirname: str) -> str:
    return urllib.parse.unquote(dirname[1:]) if dirname.startswith("%") else dirname


@dataclass(frozen=True)
class Record:
    """The parts of the key last stored for one (stage, partition)."""

    key: str
    code: str
    options: str
    inputs: str


@dataclass
class StageIndex:
    """Keys on disk for a stage, the last record per partition, and code hashes."""

    keys: set[str] = field(default_factory=set)
    records: dict[str, Record] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    #: The stage had records when the run opened the cache (else every miss is "not cached before").
    seen_before: bool = False

    def explain(
        self,
        key: str,
        now: Record,
        partition_id: str,
        code_funcs: dict[str, dict[str, str]],
        upstream_known: bool,
    ) -> str:
        """Why ``key`` is not cached, compared with the last record for the partition."""
        if key in self.corrupt:
            return "entry corrupt"
        prev = self.records.get(partition_id)
        if prev is None:
            return "new input" if self.seen_before else "not cached before"
        if prev.code != now.code:
            old = self.codes.get(prev.code)
            new = code_funcs.get(now.code)
            if old is None or new is None:
                return "code changed"
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            return "code changed: " + ", ".join(changed)
        if prev.options != now.options:
            return "options changed"
        if prev.inputs != now.inputs:
            return "upstream changed" if upstream_known else "new input"
        return "not cached before"  # same parts: the entry was cleared or pruned


def read_stage(stage_path: str) -> StageIndex:
    """Read a stage directory's entries and log (blocking: call in a thread)."""
    idx = StageIndex()
    try:
        names = os.listdir(stage_path)
    except FileNotFoundError:
        return idx
    idx.keys = {n for n in names if KEY_RE.match(n)}
    log = os.path.join(stage_path, LOG_NAME)
    lines = 0
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                _apply(idx, line)
    except FileNotFoundError:
        return idx
    idx.corrupt -= idx.keys  # recomputed since
    idx.seen_before = bool(idx.records)
    if lines > 1000 and lines > _COMPACT_AT * (len(idx.records) + len(idx.codes)):
        _compact(log, idx)
    return idx


def _apply(idx: StageIndex, line: str) -> None:
    try:
        rec: dict[str, Any] = json.loads(line)
    except ValueError:
        return  # a torn last line from a crashed writer: ignore it
    if "p" in rec:
        idx.records[rec["p"]] = Record(rec["k"], rec["c"], rec["o"], rec["i"])
    elif "code" in rec:
        idx.codes[rec["code"]] = rec["funcs"]
    elif "corrupt" in rec:
        idx.corrupt.add(rec["corrupt"])


def record_line(partition_id: str, rec: Record) -> dict[str, str]:
    return {"p": partition_id, "k": rec.key, "c": rec.code, "o": rec.options, "i": rec.inputs}


def append_log(stage_path: str, entries: list[dict[str, Any]]) -> None:
    """Append JSON lines with one ``write`` on an O_APPEND descriptor (atomic between processes)."""
    data = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries).encode()
    fd = os.open(os.path.join(stage_path, LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _compact(log: str, idx: StageIndex) -> None:
    lines = [{"code": c, "funcs": f} for c, f in idx.codes.items()]
    lines += [record_line(p, r) for p, r in idx.records.items()]
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)

    try:
        replace_atomically(log, write)
    except OSError:
        pass  # compaction is an optimisation only

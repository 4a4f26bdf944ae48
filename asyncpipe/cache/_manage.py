"""List, size, clear and prune cache entries on disk (blocking; management only).

Used by :class:`~asyncpipe.cache.Cache` and the ``asyncpipe cache`` CLI::

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> list_entries(root).columns.tolist()
    ['stage', 'key', 'format', 'bytes', 'created', 'age_s']
    >>> prune(root, max_age=3600.0)
    0
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from ._index import KEY_RE, LOG_NAME, stage_dirname, stage_name
from ._store import PARQUET, PICKLE

__all__ = ["clear", "human_age", "human_size", "info", "list_entries", "prune"]

COLUMNS = ["stage", "key", "format", "bytes", "created", "age_s"]


def _scan(root: str, stage: str | None = None) -> list[dict[str, Any]]:
    now = time.time()
    rows: list[dict[str, Any]] = []
    try:
        stage_dirs = [stage_dirname(stage)] if stage is not None else sorted(os.listdir(root))
    except FileNotFoundError:
        return rows
    for sdir in stage_dirs:
        spath = os.path.join(root, sdir)
        try:
            keys = sorted(k for k in os.listdir(spath) if KEY_RE.match(k))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for key in keys:
            for fmt, fname in (("parquet", PARQUET), ("pickle", PICKLE)):
                try:
                    st = os.stat(os.path.join(spath, key, fname))
                except OSError:
                    continue
                rows.append(
                    {
                        "stage": stage_name(sdir),
                        "key": key,
                        "format": fmt,
                        "bytes": st.st_size,
                        "created": st.st_mtime,
                        "age_s": max(0.0, now - st.st_mtime),
                        "path": os.path.join(spath, key),
                    }
                )
                break
    return rows


def list_entries(root: str | os.PathLike[str], stage: str | None = None) -> Any:
    """A DataFrame with one row per entry: stage, key, format, bytes, created, age_s."""
    import pandas as pd

    rows = _scan(os.fspath(root), stage)
    df = pd.DataFrame(rows, columns=[*COLUMNS, "path"]).drop(columns="path")
    df["created"] = pd.to_datetime(df["created"], unit="s", utc=True)
    return df.astype({"bytes": "int64", "age_s": "float64"})


def info(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Location, per-stage entry counts and bytes, and totals."""
    rows = _scan(os.fspath(root))
    stages: dict[str, dict[str, int]] = {}
    for r in rows:
        s = stages.setdefault(r["stage"], {"entries": 0, "bytes": 0})
        s["entries"] += 1
        s["bytes"] += r["bytes"]
    return {
        "location": os.fspath(root),
        "stages": stages,
        "entries": len(rows),
        "bytes": sum(r["bytes"] for r in rows),
    }


def clear(root: str | os.PathLike[str], stage: str | None = None) -> int:
    """Remove every entry (of one stage, or all); return how many entries were removed."""
    root = os.fspath(root)
    rows = _scan(root, stage)
    for r in rows:
        shutil.rmtree(r["path"], ignore_errors=True)
    stage_dirs = [stage_dirname(stage)] if stage is not None else {stage_dirname(r["stage"]) for r in rows}
    for sdir in stage_dirs:
        try:
            os.remove(os.path.join(root, sdir, LOG_NAME))
        except OSError:
            pass
    return len(rows)


def prune(
    root: str | os.PathLike[str], *, max_age: float | None = None, max_bytes: int | None = None
) -> int:
    """Remove entries older than ``max_age`` seconds, then the oldest until ``max_bytes`` remain."""
    rows = sorted(_scan(os.fspath(root)), key=lambda r: r["created"])
    doomed = [r for r in rows if max_age is not None and r["age_s"] > max_age]
    kept = [r for r in rows if r not in doomed]
    if max_bytes is not None:
        total = sum(r["bytes"] for r in kept)
        for r in kept:
            if total <= max_bytes:
                break
            doomed.append(r)
            total -= r["bytes"]
    for r in doomed:
        shutil.rmtree(r["path"], ignore_errors=True)
    return len(doomed)


def human_size(n: float) -> str:
    """``human_size(1536)`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_age(seconds: float) -> str:
    """``human_age(5400)`` -> ``'1.5 h'``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"

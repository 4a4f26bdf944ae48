"""The code memo: function identity -> (normalized-source hash, global names).

Normalizing a function's source for its code key (:mod:`asyncpipe.cache._codekey`)
costs 0.3-1.5 ms; its identity ~20 µs. The memo remembers the result per identity, in
the process and, through :class:`asyncpipe.cache.Cache`, in ``<cache>/_codekeys.json``::

    >>> memo = CodeMemo()
    >>> memo.put("ident", "0123abcd", {"helper"})
    >>> memo.get("ident")
    ('0123abcd', ('helper',))
"""

from __future__ import annotations

import contextlib
import json

from .._atomic import replace_atomically

__all__ = ["MEMO", "CodeMemo"]


class CodeMemo:
    """Function identity -> (normalized-source hash, global names), per process and on disk.

    :class:`asyncpipe.cache.Cache` loads it from ``<cache>/_codekeys.json`` before
    hashing a run's stages and saves it when something was added, so a fresh process
    (a script, a restarted kernel) does not parse unchanged code again.
    """

    #: entries kept on disk (most recently added last)
    LIMIT = 2048

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._loaded: set[str] = set()
        self.dirty = False

    def get(self, ident: str) -> tuple[str, tuple[str, ...]] | None:
        return self._items.get(ident)

    def put(self, ident: str, digest: str, names: set[str]) -> None:
        self._items[ident] = (digest, tuple(sorted(names)))
        self.dirty = True

    def load(self, path: str) -> None:
        """Merge the memo saved at ``path`` (once per path; a damaged file is ignored)."""
        if path in self._loaded:
            return
        self._loaded.add(path)
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            for ident, (digest, names) in saved.items():
                self._items.setdefault(ident, (digest, tuple(names)))
        except (OSError, ValueError, TypeError):
            return

    def save(self, path: str) -> None:
        """Write the memo to ``path`` atomically if it changed (errors ignored: it is a memo)."""
        if not self.dirty:
            return
        items = list(self._items.items())[-self.LIMIT :]
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({k: [d, list(n)] for k, (d, n) in items}, f, separators=(",", ":"))

        with contextlib.suppress(OSError):
            replace_atomically(path, write)
            self.dirty = False


#: The process-wide memo (guarded by the GIL: dict operations are atomic).
MEMO = CodeMemo()

"""Atomic file replacement: write a private temporary file beside the target, then rename.

Readers see the old file or the new one, never a torn one, and two writers (threads or
processes) never share a temporary file.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
>>> replace_atomically(target, lambda tmp: pathlib.Path(tmp).write_text("hello"))
>>> target.read_text()
'hello'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_atomically"]


def replace_atomically(target: str | os.PathLike[str], write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a new user-only (0600) file in ``target``'s folder, then rename
    it to ``target``. On any error the temporary file is removed and the error re-raised."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="." + target.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""replace_atomically: readers see the old file or the new one, and nothing is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from asyncpipe._atomic import replace_atomically


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")

    def write(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, write)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_the_new_file_is_user_only_and_temporaries_are_distinct(tmp_path: Path) -> None:
    target = tmp_path / "memo.json"
    seen: list[str] = []

    def write(tmp: str) -> None:
        seen.append(tmp)
        Path(tmp).write_text(str(len(seen)))

    replace_atomically(target, write)
    replace_atomically(target, write)
    assert target.read_text() == "2"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert seen[0] != seen[1]
    assert all(Path(t).parent == tmp_path for t in seen)


def test_the_code_memo_ignores_a_failed_save_and_tries_again_later(tmp_path: Path) -> None:
    from asyncpipe.cache._codememo import CodeMemo

    memo = CodeMemo()
    memo.put("mod:f", "abc", {"helper"})
    memo.save(str(tmp_path / "missing-folder" / "_codekeys.json"))  # OSError: swallowed
    assert memo.dirty  # still to be saved
    assert list(tmp_path.iterdir()) == []  # nothing half-written anywhere
    memo.save(str(tmp_path / "_codekeys.json"))
    assert not memo.dirty
    fresh = CodeMemo()
    fresh.load(str(tmp_path / "_codekeys.json"))
    assert fresh.get("mod:f") == ("abc", ("helper",))

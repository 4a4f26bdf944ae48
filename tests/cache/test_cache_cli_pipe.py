"""``asyncpipe cache ls | head``: a reader that closes the pipe early ends the command quietly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from asyncpipe.cache._cli import EXIT_BROKEN_PIPE, main


def test_ls_into_a_closed_pipe_exits_quietly(tmp_path, subprocess_env):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes (`| head` that has its lines)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "asyncpipe.cli", "cache", "ls", "--dir", str(tmp_path / "cache")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=subprocess_env,
            timeout=60, check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored ... stdout"
    assert proc.returncode == EXIT_BROKEN_PIPE == 141


class _ClosedPipe:
    """A stdout whose reader went away, without a file descriptor (as under a notebook or pytest)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_main_returns_the_broken_pipe_code_without_a_descriptor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    args = argparse.Namespace(dir=str(tmp_path / "cache"), cache_command="ls", stage=None)
    assert main(args) == EXIT_BROKEN_PIPE

"""Fixtures for the notebook front end: an IPython shell and a recording comm.

Widgets are tested on model state, without a kernel. ``comm.create_comm`` is
replaced by a comm that records every message a widget would send, so tests can
count the traffic the panel generates.
"""

from __future__ import annotations

import os
from typing import ClassVar

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


class RecordingComm:
    """Stands in for the kernel comm; counts messages instead of sending them."""

    log: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, *args, **kwargs):
        from comm import DummyComm

        self._inner = DummyComm(*args, **kwargs)
        self.comm_id = self._inner.comm_id
        self.kernel = object()

    def on_msg(self, callback):
        self._inner.on_msg(callback)

    def on_close(self, callback):
        self._inner.on_close(callback)

    def send(self, data=None, metadata=None, buffers=None):
        RecordingComm.log.append(("send", data or {}))

    def close(self, data=None, metadata=None, buffers=None, deleting=False):
        RecordingComm.log.append(("close", {}))

    def open(self, *args, **kwargs):
        pass


@pytest.fixture
def comm_log(monkeypatch):
    import comm

    RecordingComm.log = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    return RecordingComm.log


@pytest.fixture
def shell(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "asyncpipe.notebook")
    yield sh
    for key in [k for k in sh.user_ns if not k.startswith("_")]:
        sh.user_ns.pop(key, None)
    InteractiveShell.clear_instance()


async def _run_cell(sh, source: str):
    return await sh.run_cell_async(source, transformed_cell=sh.transform_cell(source))


@pytest.fixture
def run_cell():
    """``await run_cell(shell, source)``: run a cell the way ipykernel does, as a coroutine on the loop."""
    return _run_cell

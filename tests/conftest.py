"""Shared fixtures: every test runs in its own working directory so caches and run records never leak."""

from __future__ import annotations

import time

import pytest

# Benchmarks are scripts (python tests/benchmarks/run.py), not tests: never collect them.
collect_ignore_glob = ["benchmarks/*"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def gil_holder():
    """A function of one argument that keeps the GIL for ~100 ms in one C call: ``sum`` over
    a range never returns to the interpreter's loop, so no other thread runs meanwhile.
    Sized on this machine (slower machines only hold it longer)."""
    n = 1_000_000
    t0 = time.perf_counter()
    sum(range(n))
    per_item = (time.perf_counter() - t0) / n
    size = max(n, int(0.1 / per_item))

    def hold(i):
        return sum(range(size)) + i

    return hold

"""Shared fixtures: every test runs in its own working directory so caches and run records never leak."""

from __future__ import annotations

import pytest

# Benchmarks are scripts (python tests/benchmarks/run.py), not tests: never collect them.
collect_ignore_glob = ["benchmarks/*"]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path

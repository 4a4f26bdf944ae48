from __future__ import annotations

import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: this checkout and the cache test helpers importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def python() -> str:
    return sys.executable

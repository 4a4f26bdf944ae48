"""Every docstring example in the package runs (examples are documentation that must not rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import asyncpipe

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(asyncpipe.__path__, prefix="asyncpipe.")
    if not m.name.endswith("__main__")
)


def test_modules_were_found():
    assert "asyncpipe._pipeline" in MODULES and len(MODULES) > 20


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"

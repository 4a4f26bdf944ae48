"""The public facade: complete, sorted, light to import."""

from __future__ import annotations

import subprocess
import sys

import asyncpipe


def test_all_is_sorted_and_every_name_resolves():
    assert asyncpipe.__all__ == sorted(asyncpipe.__all__)
    for name in asyncpipe.__all__:
        assert getattr(asyncpipe, name) is not None, name


def test_public_classes_and_functions_have_docstrings():
    missing = [
        n
        for n in asyncpipe.__all__
        if callable(getattr(asyncpipe, n)) and not (getattr(asyncpipe, n).__doc__ or "").strip()
    ]
    assert missing == []


def test_import_pulls_in_no_front_end_or_heavy_optional_library():
    code = (
        "import sys, asyncpipe\n"
        "p = asyncpipe.Pipeline([asyncpipe.source(lambda i: i, name='a')], cache=False)\n"
        "heavy = {'IPython', 'ipywidgets', 'matplotlib', 'dask', 'distributed', 'sqlalchemy', 'httpx'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Pipline'"):
        asyncpipe.Pipline  # noqa: B018

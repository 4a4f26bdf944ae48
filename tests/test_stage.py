import asyncio

import pytest

import asyncpipe as ap


def test_decorated_function_still_runs_directly():
    @ap.stage(concurrency=3, retries=2)
    def double(x):
        """Doubles."""
        return 2 * x

    assert double(4) == 8
    assert double.kind == "map"
    assert double.name == "double"
    assert double.__doc__ == "Doubles."
    assert double.options.concurrency == 3


def test_async_source_runs_directly():
    @ap.source
    async def fetch(url):
        return url.upper()

    assert asyncio.run(fetch("a")) == "A"
    assert fetch.kind == "source" and fetch.is_async


def test_bare_and_called_decorators_are_equivalent():
    def f(x):
        return x

    assert ap.stage(f).kind == ap.stage()(f).kind == "map"
    assert ap.reduce(concat=True)(f).options.concat is True


def test_unknown_option_suggests_the_right_one():
    with pytest.raises(ap.DefinitionError, match="Did you mean 'concurrency'"):
        ap.stage(concurency=3)(lambda x: x)


def test_lambda_needs_a_name():
    with pytest.raises(ap.DefinitionError, match="lambda has no usable name"):
        ap.Stage(lambda x: x)
    assert ap.Stage(lambda x: x, name="ident").name == "ident"


def test_non_callable_is_rejected_with_a_hint():
    with pytest.raises(ap.DefinitionError, match="not the result of calling it"):
        ap.Stage(42)  # type: ignore[arg-type]


def test_with_options_copies():
    s = ap.stage(lambda x: x, name="s")
    t = s.with_options(concurrency=7, name="t")
    assert (s.name, s.options.concurrency) == ("s", ap.DEFAULT)
    assert (t.name, t.options.concurrency) == ("t", 7)
    assert "concurrency=7" in repr(t)


def test_default_sentinel_is_falsy_and_singleton():
    assert not ap.DEFAULT
    assert repr(ap.DEFAULT) == "DEFAULT"
    from asyncpipe._stage import _Default

    assert _Default() is ap.DEFAULT

"""The HTTP source against a loopback aiohttp server with latency and injected 429/500/503."""

from __future__ import annotations

import asyncio
import pickle
import time

import pytest

from asyncpipe._exceptions import Overloaded, RateLimited, StoreError, TransientError
from asyncpipe.io import HttpSource, StoreUnavailable, fetch_http, parse_retry_after


@pytest.mark.asyncio
@pytest.mark.parametrize("ext", ["json", "jsonl", "csv", "parquet"])
async def test_decodes_each_format_from_content_type(api, ext):
    source = HttpSource(name="api")
    try:
        frame = await source(api.url(f"/data/3.{ext}"))
    finally:
        await source.aclose()
    assert frame["id"].tolist() == list(range(30, 40))
    assert frame["value"].iloc[1] == 0.5


@pytest.mark.asyncio
async def test_many_urls_fetch_concurrently_over_one_client(api):
    source = HttpSource(name="api")
    urls = [api.url(f"/data/{i}.json?delay=0.2&batch=conc") for i in range(20)]
    api.in_flight["max"] = 0
    start = time.perf_counter()
    try:
        frames = await asyncio.gather(*(source(u) for u in urls))
        assert len(source._clients) == 1  # one shared client for the loop
    finally:
        await source.aclose()
    elapsed = time.perf_counter() - start
    assert [f["id"].iloc[0] for f in frames] == [i * 10 for i in range(20)]
    assert api.in_flight["max"] >= 10  # really concurrent, not one at a time
    assert elapsed < 2.0  # 20 x 0.2 s sequentially would be 4 s
    assert not source._clients  # aclose dropped it


@pytest.mark.asyncio
async def test_429_is_rate_limited_with_retry_after_then_succeeds(api):
    source = HttpSource(name="api")
    url = api.url("/data/1.json?fail=2&status=429&retry_after=3&k=rl")
    try:
        for _ in range(2):
            with pytest.raises(RateLimited) as info:
                await source(url)
            assert info.value.retry_after == 3.0
        frame = await source(url)  # the engine's retry would get here
    finally:
        await source.aclose()
    assert len(frame) == 10 and api.count("/data/1.json?fail=2&status=429&retry_after=3&k=rl") == 3


@pytest.mark.asyncio
async def test_503_is_overloaded_and_500_transient(api):
    source = HttpSource(name="api")
    try:
        with pytest.raises(Overloaded) as over:
            await source(
                api.url("/data/2.json?fail=1&status=503&retry_after=Wed,%2021%20Oct%202015%2007:28:00%20GMT")
            )
        assert not isinstance(over.value, RateLimited)
        assert over.value.retry_after == 0.0  # a date in the past: retry now
        with pytest.raises(TransientError) as err:
            await source(api.url("/data/4.json?fail=1&status=500"))
        assert not isinstance(err.value, Overloaded) and err.value.retry_after is None
        assert "HTTP 500" in str(err.value)
    finally:
        await source.aclose()


@pytest.mark.asyncio
async def test_4xx_is_a_permanent_store_error_without_the_token(api):
    source = HttpSource(name="api", headers={"Authorization": "Bearer wrong-token-value"})
    try:
        with pytest.raises(StoreError) as info:
            await source(api.url("/data/5.json?api_key=key-in-url-123"))
    finally:
        await source.aclose()
    err = info.value
    assert not isinstance(err, TransientError)
    assert err.store == "http" and "HTTP 401" in str(err) and "credentials" in str(err)
    for text in (str(err), err.obj, repr(source)):
        assert "wrong-token-value" not in text and "key-in-url-123" not in text
    assert "api_key=***" in err.obj


@pytest.mark.asyncio
async def test_malformed_body_and_unreachable_host(api):
    source = HttpSource(name="api", timeout=2)
    try:
        with pytest.raises(StoreError, match="decode the json body") as bad:
            await source(api.url("/data/x.bad"))
        assert bad.value.__cause__ is not None
        with pytest.raises(StoreUnavailable) as down:
            await source("http://127.0.0.1:9/data/1.json")
        assert isinstance(down.value, TransientError) and down.value.obj == "http://127.0.0.1:9/data/1.json"
    finally:
        await source.aclose()


def test_one_client_per_loop_and_pickles_without_clients(api):
    source = HttpSource(name="api")

    async def use() -> int:
        await source(api.url("/data/7.csv"))
        client = source._client()
        await source.aclose()
        return id(client)

    first, second = asyncio.run(use()), asyncio.run(use())
    assert first != second  # a fresh client for each loop, each closed by aclose
    clone = pickle.loads(pickle.dumps(source))
    assert clone.name == "api" and not clone._clients


def test_fetch_http_stage_is_async_with_options():
    stage = fetch_http(["http://x/a.json"], format="json", name="api", concurrency=8, retries=4)
    assert stage.kind == "source" and stage.is_async
    assert stage.options.concurrency == 8 and stage.options.retries == 4
    assert list(stage.signature.parameters) == ["url"]
    with pytest.raises(ValueError, match="no URLs"):
        fetch_http(name="api2").fn.asyncpipe_inputs()


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-5") == 0.0


@pytest.mark.asyncio
async def test_url_template_is_filled_with_the_item(api):
    source = HttpSource(api.url("/data/{item}.csv"), name="api")
    try:
        assert (await source("6"))["id"].iloc[0] == 60
    finally:
        await source.aclose()
    with pytest.raises(ValueError, match="items"):
        source.asyncpipe_inputs()
    assert "{item}" in repr(source)

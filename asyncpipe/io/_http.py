"""An async HTTP source over httpx: one partition per URL, decoded to a DataFrame.

Responses map onto the engine's retry and rate-control machinery:

==========================  ==================================================
HTTP 429                    :class:`~asyncpipe.RateLimited` (``retry_after`` from Retry-After)
HTTP 503                    :class:`~asyncpipe.Overloaded` (``retry_after`` from Retry-After)
other 5xx, 408              :class:`~asyncpipe.TransientError`
other 4xx                   :class:`~asyncpipe.StoreError` (permanent)
connection error, timeout   :class:`StoreUnavailable` (a StoreError that is retried)
==========================  ==================================================

One ``httpx.AsyncClient`` is shared per event loop and closed by ``aclose()``
(the engine calls it at the end of a run). Big bodies are decoded in a thread.

>>> import asyncpipe as ap
>>> api = ap.io.fetch_http(["https://example.com/a.json"], format="json", name="api")
>>> api.kind, api.fn.asyncpipe_inputs()
('source', ['https://example.com/a.json'])
>>> parse_retry_after("7"), parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0)
(7.0, 10.0)
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final

import pandas as pd

from .._exceptions import Overloaded, RateLimited, TransientError
from .._stage import Stage, StageOptions
from ._errors import fail
from ._formats import check_format, content_type_format, decode, infer_format
from ._runtime import Runtime
from ._secrets import collect_secrets, redact_options, redact_url, scrub, scrub_exception

__all__ = ["HttpSource", "fetch_http", "parse_retry_after"]

STORE: Final = "http"
#: Bodies above this size are decoded with asyncio.to_thread; below it a thread round
#: trip (~150 us, see DESIGN.md) costs more than parsing on the loop.
INLINE_DECODE_BYTES: Final = 64 * 1024


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class HttpSource:
    """The callable behind :func:`fetch_http`: ``await source(url) -> DataFrame``."""

    def __init__(
        self,
        urls: Iterable[str] | str | None = None,
        *,
        format: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 30.0,
        records_key: str | None = None,
        read_options: Mapping[str, Any] | None = None,
        client_options: Mapping[str, Any] | None = None,
        name: str = "fetch_http",
    ) -> None:
        #: A URL containing ``{item}``: each input item fills it in (``.../fx/{item}.json``).
        self.template = urls if isinstance(urls, str) and "{item}" in urls else None
        if isinstance(urls, str) and not self.template:
            urls = [urls]
        self.urls = list(urls) if urls is not None and not self.template else None
        self.format = check_format(format) if format else None
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.records_key = records_key
        self.read_options = dict(read_options or {})
        self.client_options = dict(client_options or {})
        self.name = name
        self._secrets = collect_secrets(
            headers=self.headers, urls=self.urls or (), options=self.client_options
        )
        self._rt = Runtime()  # one httpx.AsyncClient per event loop

    @property
    def __wrapped__(self) -> Any:
        # An instance with an ``async __call__`` is not a coroutine function to inspect; this
        # makes inspect.unwrap (Stage.is_async, inspect.signature) see the async method.
        return self.__call__

    @property
    def _clients(self) -> weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]:
        return self._rt.cache.setdefault("clients", weakref.WeakKeyDictionary())

    def asyncpipe_inputs(self) -> list[str]:
        """The URLs given to :func:`fetch_http` (or pass them to ``run()``)."""
        if self.urls is None or self.template:
            raise ValueError(
                f"HTTP source {self.name!r} has no URLs: pass them (or, with a URL "
                "template, the items) to run()."
            )
        return list(self.urls)

    async def __call__(self, url: str) -> pd.DataFrame:
        """Fetch ``url`` (or the template filled with this item) and decode the body to a DataFrame."""
        import httpx

        if self.template:
            url = self.template.replace("{item}", str(url))
        shown = redact_url(str(url))
        try:
            response = await self._client().get(url)
        except httpx.HTTPError as exc:  # connect/read errors and timeouts
            scrub_exception(exc, self._secrets)
            fail(
                f"Could not fetch {shown!r} in source {self.name!r}",
                store=STORE,
                obj=shown,
                cause=exc,
                secrets=self._secrets,
                transient=True,
            )
        self._raise_for_status(response, shown)
        body = response.content
        fmt = (
            self.format
            or content_type_format(response.headers.get("content-type"))
            or infer_format(httpx.URL(url).path)
        )
        if fmt is None:
            fail(
                f"Cannot tell the format of {shown!r} (Content-Type "
                f"{response.headers.get('content-type')!r}); pass format=... to fetch_http()",
                store=STORE,
                obj=shown,
                cause=None,
            )
        try:
            if len(body) > INLINE_DECODE_BYTES:
                return await asyncio.to_thread(self._decode, body, fmt)
            return self._decode(body, fmt)
        except Exception as exc:
            fail(
                f"Could not decode the {fmt} body of {shown!r} in source {self.name!r}",
                store=STORE,
                obj=shown,
                cause=exc,
                secrets=self._secrets,
            )

    def _decode(self, body: bytes, fmt: str) -> pd.DataFrame:
        return decode(body, fmt, options=self.read_options, records_key=self.records_key)

    def _raise_for_status(self, response: Any, shown: str) -> None:
        status = response.status_code
        if status < 400:
            return
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        what = f"HTTP {status} from {shown!r} in source {self.name!r}"
        if status == 429:
            raise RateLimited(f"{what}: too many requests", retry_after=retry_after)
        if status == 503:
            raise Overloaded(f"{what}: service unavailable", retry_after=retry_after)
        if status >= 500 or status == 408:
            raise TransientError(what, retry_after=retry_after)
        snippet = scrub(response.text[:200].strip(), self._secrets)
        hint = {401: ": check the credentials", 403: ": access denied", 404: ": not found"}.get(status, "")
        fail(
            f"{what}{hint}" + (f" — {snippet!r}" if snippet else ""),
            store=STORE,
            obj=shown,
            cause=None,
            secrets=self._secrets,
        )

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        with self._rt.lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                options = {"timeout": self.timeout, "follow_redirects": True, **self.client_options}
                client = httpx.AsyncClient(headers=self.headers, **options)
                self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (clients of other, closed loops are dropped)."""
        loop = asyncio.get_running_loop()
        with self._rt.lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def __repr__(self) -> str:
        headers = f", headers={redact_options(self.headers)!r}" if self.headers else ""
        n = (
            repr(redact_url(self.template))
            if self.template
            else ("run() inputs" if self.urls is None else f"{len(self.urls)} URLs")
        )
        return f"HttpSource({n}, format={self.format!r}{headers})"


def fetch_http(
    urls: Iterable[str] | str | None = None,
    *,
    format: str | None = None,
    name: str = "fetch_http",
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 30.0,
    records_key: str | None = None,
    read_options: Mapping[str, Any] | None = None,
    client_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Stage:
    """An async source stage fetching each URL (the items) and decoding the body to a DataFrame.

    ``urls`` may be a template such as ``"https://api/x/{item}.json"``: the items passed to
    ``run()`` (or shared with another source) fill it in.

    - ``format``: "json", "jsonl", "csv" or "parquet"; else from Content-Type, then the URL suffix.
    - ``headers``: sent with every request (put tokens here, not in URLs: URLs become labels).
    - ``records_key``: for JSON documents, the (dotted) field holding the list of records.
    - ``client_options`` go to ``httpx.AsyncClient`` (``auth=``, ``limits=``, ``verify=``...).
    - other keywords are stage options: ``concurrency="adaptive"``, ``rate="50/s"``, ``retries=5``...
    """
    fn = HttpSource(
        urls,
        format=format,
        headers=headers,
        timeout=timeout,
        records_key=records_key,
        read_options=read_options,
        client_options=client_options,
        name=name,
    )
    return Stage(fn, kind="source", name=name, options=StageOptions(**options))

"""Keep credentials out of reprs, error messages, events and logs.

Stores receive secrets in three shapes: fsspec ``storage_options`` (``key``,
``secret``, ``token``...), passwords inside URLs (``postgresql://u:pw@host/db``)
and HTTP headers or query parameters (``Authorization``, ``?api_key=``). The
helpers here mask all three, and :func:`scrub_exception` rewrites the messages
of an exception chain so that a traceback printed later cannot leak them.

>>> redact_url("postgresql://ann:hunter2@db:5432/sales")
'postgresql://ann:***@db:5432/sales'
>>> redact_url("https://api.example.com/v1?page=2&api_key=abc123")
'https://api.example.com/v1?page=2&api_key=***'
>>> redact_options({"key": "AKIA123", "secret": "s3cr3t", "anon": False})
{'key': '***', 'secret': '***', 'anon': False}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["collect_secrets", "redact_options", "redact_url", "scrub", "scrub_exception"]

MASK: Final = "***"

#: Option, header and query-parameter names whose values are credentials. Matched
#: case-insensitively as substrings, so ``aws_secret_access_key`` and
#: ``X-Api-Key`` are caught too.
_SECRET_WORDS: Final = (
    "secret",
    "password",
    "passwd",
    "token",
    "key",
    "credential",
    "authorization",
    "auth",
    "signature",
    "sas",
    "session",
)
#: Names that contain a secret word but are not secret (``key`` is also fsspec's access key id,
#: which is treated as secret; these are the harmless look-alikes).
_NOT_SECRET: Final = frozenset({"anon", "use_ssl", "requester_pays", "version_aware", "key_column"})
_MIN_SCRUB_LEN: Final = 4  # shorter values would mangle ordinary words in messages
_URL_RE: Final = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


def is_secret_name(name: str) -> bool:
    """True if an option, header or parameter called ``name`` holds a credential."""
    low = name.lower()
    return low not in _NOT_SECRET and any(word in low for word in _SECRET_WORDS)


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``options`` with every credential-like value masked (recursively)."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out[name] = redact_options(value)
        elif is_secret_name(str(name)) and value not in (None, "", False):
            out[name] = MASK
        else:
            out[name] = value
    return out


def redact_url(url: str) -> str:
    """``url`` with its password and credential-like query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if sep else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in pairs):
            query = urlencode([(k, MASK if is_secret_name(k) else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def collect_secrets(
    *,
    options: Mapping[str, Any] | None = None,
    urls: Iterable[str] = (),
    headers: Mapping[str, Any] | None = None,
) -> frozenset[str]:
    """The literal secret strings to scrub from any text that leaves a store."""
    found: set[str] = set()

    def walk(mapping: Mapping[str, Any]) -> None:
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                walk(value)
            elif is_secret_name(str(name)) and isinstance(value, str):
                found.add(value)
                if name.lower() == "authorization" and " " in value:
                    found.add(value.split(" ", 1)[1])  # the bare token after "Bearer "

    walk(options or {})
    walk(headers or {})
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        if parts.password:
            found.add(parts.password)
        found.update(v for k, v in parse_qsl(parts.query) if is_secret_name(k))
    return frozenset(s for s in found if len(s) >= _MIN_SCRUB_LEN)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URLs redacted and every literal secret replaced by ``***``."""
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def scrub_exception(exc: BaseException, secrets: Iterable[str] = ()) -> None:
    """Rewrite, in place, the messages of ``exc`` and its causes that contain a secret.

    A chained cause is printed in tracebacks and logs, so masking only the
    message of the error we raise is not enough.
    """
    secrets = tuple(secrets)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            text = str(current)
        except Exception:
            text = ""
        clean = scrub(text, secrets)
        if clean != text:
            try:
                current.args = (clean,)
            except Exception:
                pass
        current = current.__cause__ or current.__context__

"""Worker-process side of the process executor. Imports nothing heavy.

Functions arrive cloudpickled, tagged with a digest; each worker unpickles a
function once and keeps it, so globals a notebook function drags along cross the
pipe once per worker instead of once per task.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

_FUNCTIONS: dict[str, Any] = {}


class NeedFunction(Exception):
    """This worker has not seen the function yet: send its payload."""


def call(digest: str, payload: bytes | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    fn = _FUNCTIONS.get(digest)
    if fn is None:
        if payload is None:
            raise NeedFunction(digest)
        import cloudpickle

        fn = _FUNCTIONS[digest] = cloudpickle.loads(payload)
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable

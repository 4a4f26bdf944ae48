"""The executor interface."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar


class Executor:
    """Runs stage calls somewhere: on the loop, in threads, in processes, on a cluster.

    An executor is created per run (or passed in by the user, who then owns it) and
    closed with :meth:`aclose` when the run ends or is cancelled.

    ``inline`` executors are called synchronously by the engine (no await) so a
    cheap function costs a plain call. ``remote`` executors (Dask) may return
    references that stay where they were computed; the engine hands those to the
    same executor's next stage unresolved and calls :meth:`fetch` only when a
    local stage, a sink or the result needs the value.
    """

    name: ClassVar[str] = "executor"
    inline: ClassVar[bool] = False
    remote: ClassVar[bool] = False

    async def start(self) -> None:
        """Called once per run before the first partition (start clusters, connect)."""

    def prepare(self, fn: Callable[..., Any], stage: str, concurrency: int) -> None:
        """Called once per stage before the run starts (size pools, ship functions)."""

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(*args, **kwargs)`` and return its result (or a remote reference)."""
        raise NotImplementedError

    def is_ref(self, value: Any) -> bool:
        """True when ``value`` is a remote reference this executor produced."""
        return False

    async def fetch(self, value: Any) -> Any:
        """Bring a remote reference's value into this process."""
        return value

    async def aclose(self, *, cancel: bool = False) -> None:
        """Release pools and workers; ``cancel`` abandons work still running."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

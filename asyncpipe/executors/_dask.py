"""Dask executor: stages run on a ``distributed`` cluster through the asynchronous client.

``executor="dask"`` (per stage, or as the pipeline default) runs a stage's calls as
tasks on a Dask cluster. The client is the asynchronous one, living on the same
event loop as the run, so nothing ever blocks the notebook kernel.

Where the cluster comes from, in order:

1. ``DaskExecutor(client=...)``: an asynchronous client on the running loop is used
   as is; any other client (the usual synchronous ``Client()`` of a notebook) lends
   its scheduler address and the executor opens its own asynchronous connection;
2. ``DaskExecutor(address="tcp://...")``: a connection to that scheduler;
3. nothing: the current default client, if the session made one (Dask's own
   convention), else a ``LocalCluster`` (worker processes) started on demand and
   closed when the executor is closed (at the end of the run that created it).
   ``n_workers=`` or other ``LocalCluster`` keywords always start a fresh cluster.

Data stays where it was computed: :meth:`DaskExecutor.submit` waits until the task
is done (so errors, retries, timeouts and progress work as for any executor) but
returns the ``distributed.Future``; a following dask stage receives the future and
Dask resolves it on the workers. The engine calls :meth:`DaskExecutor.fetch` only
when a local stage, a sink, the cache or the result needs the value.

>>> ex = DaskExecutor(n_workers=2, threads_per_worker=1)
>>> ex
<DaskExecutor LocalCluster(n_workers=2) (not started)>
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import operator
import uuid
import warnings
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

import cloudpickle

from .._exceptions import AsyncpipeError, PickleWarning
from ._base import Executor

try:
    import distributed
    from distributed import Client, Future
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("The 'dask' executor needs dask.distributed: pip install 'asyncpipe[dask]'") from exc

__all__ = ["DaskExecutor", "RemoteCancelled", "cluster_sample", "worker_memory"]

_log = logging.getLogger("asyncpipe.executors")

#: A pickled stage function above this size drags globals along. Warn, and scatter it to
#: every worker once instead of inside every task (measured with the process pool: a
#: 25 MB global sent per task cut a 2-core speedup from 1.8x to 1.14x).
LARGE_FUNCTION_BYTES = 1 << 20


class RemoteCancelled(AsyncpipeError):
    """A task was cancelled on the cluster by someone else than this run (e.g. ``client.cancel``)."""


class DaskExecutor(Executor):
    """Runs stage calls as tasks on a Dask cluster; see the module docstring.

    ``client``: a ``distributed.Client`` (never closed here). ``address``: a scheduler
    address. ``n_workers`` and ``**cluster_kwargs``: options for a ``LocalCluster``
    started on demand (``processes=True`` unless given).

    Pass an instance to keep one cluster across runs::

        ex = DaskExecutor(address="tcp://scheduler:8786")
        await pipe.run(items, executors={"dask": ex})
        await ex.aclose()
    """

    name: ClassVar[str] = "dask"
    remote: ClassVar[bool] = True

    def __init__(
        self,
        client: Client | None = None,
        *,
        address: str | None = None,
        n_workers: int | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        if client is not None and address is not None:
            raise ValueError("Pass either client= or address=, not both.")
        self._user_client = client
        self._address = address
        self._cluster_kwargs = dict(cluster_kwargs)
        if n_workers is not None:
            self._cluster_kwargs["n_workers"] = n_workers
        self._client: Client | None = None
        self._own_client = False
        self._cluster: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._stages: dict[int, str] = {}
        self._large: dict[int, Callable[..., Any]] = {}
        self._scattered: dict[int, Future] = {}
        self._live: weakref.WeakSet[Future] = weakref.WeakSet()
        self._late: dict[Any, Any] = {}

    # -- connection -------------------------------------------------------------------
    @property
    def client(self) -> Client | None:
        """The asynchronous client in use (None until the first task was submitted)."""
        return self._client

    @property
    def dashboard_link(self) -> str | None:
        return None if self._client is None else self._client.dashboard_link

    async def start(self) -> Client:
        """Connect (or start the ``LocalCluster``) now rather than on the first task."""
        client = self._client
        if client is not None and self._loop is asyncio.get_running_loop():
            return client
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        async with self._lock[1]:
            if self._client is None or self._loop is not asyncio.get_running_loop():
                await self._connect()
        assert self._client is not None
        return self._client

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        user = self._user_client
        if user is None and self._address is None and not self._cluster_kwargs:
            user = _default_client()
        if user is not None and user.asynchronous and _loop_of(user) is loop:
            self._client, self._own_client = user, False
        elif user is not None or self._address is not None:
            address = self._address or user.scheduler.address  # type: ignore[union-attr]
            self._client = await Client(address, asynchronous=True, set_as_default=False)
            self._own_client = True
        else:
            from distributed import LocalCluster

            # A free dashboard port rather than Dask's fixed 8787: a second cluster on the machine
            # would make distributed warn (and leak the socket it failed to bind).
            kwargs = {"processes": True, "dashboard_address": ":0", **self._cluster_kwargs}
            self._cluster = await LocalCluster(asynchronous=True, **kwargs)
            self._client = await Client(self._cluster, asynchronous=True, set_as_default=False)
            _log.info("started a Dask LocalCluster, dashboard at %s", self._client.dashboard_link)
            self._own_client = True
        self._loop = loop
        self._scattered.clear()

    # -- the executor contract ----------------------------------------------------------
    def prepare(self, fn: Callable[..., Any], stage: str, concurrency: int) -> None:
        self._stages[id(fn)] = stage
        try:
            size = len(cloudpickle.dumps(fn))
        except Exception as exc:
            raise AsyncpipeError(
                f"Stage {stage!r} cannot be pickled for Dask workers: {exc}. Functions must be "
                "picklable (cloudpickle handles notebook functions; open clients, locks and files are not)."
            ) from exc
        if size > LARGE_FUNCTION_BYTES:
            warnings.warn(
                f"Stage {stage!r} pickles to {size / 2**20:.1f} MB for Dask workers, most likely large "
                "globals it references. It is sent to each worker once, but every worker holds a copy: "
                "load big data inside the function or pass it as an input.",
                PickleWarning,
                stacklevel=2,
            )
            self._large[id(fn)] = fn

    async def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            client = await self.start()
        stage = self._stages.get(id(fn)) or getattr(fn, "__name__", "task")
        target: Any = fn
        if id(fn) in self._large:
            target = self._scattered.get(id(fn))
            if target is None:
                target = self._scattered[id(fn)] = await client.scatter(fn, broadcast=True, hash=False)
        fut = client.submit(_apply, target, args, kwargs, key=f"{stage}-{uuid.uuid4().hex}", pure=False)
        self._live.add(fut)
        try:
            await _settled(fut)
        except asyncio.CancelledError:
            # A timeout or a cancelled run: drop the task so nothing is left on the cluster.
            fut.release()
            raise
        status = fut.status
        if status == "error":
            try:
                await fut  # raises the remote exception with its traceback
            finally:
                fut.release()
        if status != "finished":
            fut.release()
            raise RemoteCancelled(f"Dask task {fut.key} of stage {stage!r} was {status} on the cluster.")
        if _is_list_of(fn):
            return await self._split(client, fut, stage)
        return fut

    async def _split(self, client: Client, fut: Future, stage: str) -> list[Future]:
        """A generator stage's list of parts, as one future per part (the parts stay remote)."""
        n = await client.submit(len, fut, key=f"{stage}-len-{uuid.uuid4().hex}", pure=False)
        parts = [
            client.submit(operator.getitem, fut, i, key=f"{stage}-part-{uuid.uuid4().hex}", pure=False)
            for i in range(n)
        ]
        self._live.update(parts)
        return parts

    def is_ref(self, value: Any) -> bool:
        return isinstance(value, Future)

    async def fetch(self, value: Any) -> Any:
        if not isinstance(value, Future):
            return value
        if value.key in self._late:
            return self._late[value.key]
        # Concurrent gathers on one client are merged into one request by distributed.
        return await value

    async def aclose(self, *, cancel: bool = False) -> None:
        """Cancel (``cancel=True``) what this executor submitted, and close what it opened.

        A cluster or connection this executor opened is closed; values still referenced
        by the run are brought back first (unless cancelling), so fetching them
        afterwards works. A user's client and cluster are never closed; the executor
        reconnects if it is used again.
        """
        client = self._client
        if client is None or self._loop is not asyncio.get_running_loop():
            return
        live = [f for f in list(self._live) if f.key not in self._late]
        if cancel and live:
            await client.cancel(live, force=True)
        if not self._own_client:
            return
        if not cancel and live:
            # Closing our connection releases every future it made, but the engine may still
            # fetch kept outputs after closing executors: bring those values back first.
            done = [f for f in live if f.status == "finished"]
            values = await client.gather(done, errors="skip")
            self._late.update(zip([f.key for f in done], values, strict=False))
        self._client = None
        self._scattered.clear()
        await client.close()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.close()

    async def __aenter__(self) -> DaskExecutor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        if self._client is not None:
            where = self._client.scheduler.address if self._client.scheduler else "?"
            return f"<DaskExecutor {where}{' (LocalCluster)' if self._cluster is not None else ''}>"
        if self._user_client is not None:
            return f"<DaskExecutor client={self._user_client!r} (not started)>"
        if self._address is not None:
            return f"<DaskExecutor {self._address} (not started)>"
        if self._cluster_kwargs:
            n = self._cluster_kwargs.get("n_workers")
            return f"<DaskExecutor LocalCluster(n_workers={n}) (not started)>"
        return "<DaskExecutor default client or LocalCluster (not started)>"


# -- worker side -------------------------------------------------------------------------
def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Runs on a worker: call the stage function (futures in args are already values).

    Wrapping keeps stage keyword names (``key``, ``workers``, ...) out of
    ``client.submit``'s own keywords. A coroutine function runs to completion here.
    """
    out = fn(*args, **kwargs)
    if inspect.isawaitable(out):
        out = asyncio.run(_await(out))
    return out


async def _await(aw: Any) -> Any:
    return await aw


# -- helpers -----------------------------------------------------------------------------
async def _settled(fut: Future) -> None:
    """Wait until ``fut`` is finished, erred or cancelled, without moving its data.

    ``distributed.wait`` would do, but it picks the *default* client, which may be a
    synchronous one on another thread; this waits on the future's own state instead.
    """
    await fut._state.wait()


def _is_list_of(fn: Any) -> bool:
    return getattr(type(fn), "asyncpipe_list_of", False) is True


def _default_client() -> Client | None:
    try:
        return distributed.default_client()
    except ValueError:
        return None


def _loop_of(client: Client) -> asyncio.AbstractEventLoop | None:
    return getattr(client.loop, "asyncio_loop", None)


# -- cluster resources (for the resource governor) -----------------------------------------
async def _workers(client: Client) -> dict[str, Any]:
    info = await client.scheduler.identity(n_workers=-1)
    return dict(info.get("workers", {}))


async def worker_memory(client: Client) -> int:
    """Resident memory (bytes) of all the cluster's workers, as the scheduler last heard it.

    One scheduler round trip; the governor can poll it instead of psutil when stages
    run on a cluster.
    """
    return int(sum(w.get("metrics", {}).get("memory", 0) for w in (await _workers(client)).values()))


async def cluster_sample(client: Client) -> tuple[float, int, int]:
    """``(cpu_percent, memory_bytes, memory_limit_bytes)`` summed over the workers.

    ``cpu_percent`` is in psutil units (100 = one busy core), like the governor's
    own samples.
    """
    workers = (await _workers(client)).values()
    cpu = sum(float(w.get("metrics", {}).get("cpu", 0.0)) for w in workers)
    mem = sum(int(w.get("metrics", {}).get("memory", 0)) for w in workers)
    limit = sum(int(w.get("memory_limit") or 0) for w in workers)
    return cpu, mem, limit

"""Real servers for the store tests: moto S3 on loopback, an aiohttp API with faults, PostgreSQL.

PostgreSQL: the URL comes from ``ASYNCPIPE_TEST_PG_URL`` (set by ``eval "$(.ci/postgres.sh)"``);
if that is unset, a throwaway server is initialised in a temp dir with ``initdb`` and
started on a free port. Tests needing it skip only if neither works.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest


@dataclass(frozen=True)
class Part:
    """Stand-in for the engine's PartitionKey: what a sink reads from ``partition``."""

    id: str
    label: str = ""
    index: int = 0
    sub: int = 0
    item: object = None


@pytest.fixture
def part():
    return lambda pid, label=None: Part(id=pid, label=label or f"p-{pid}")


# -- S3 (moto server mode) -------------------------------------------------------------------
@dataclass
class S3:
    endpoint: str
    key: str
    secret: str

    def options(self, **extra):
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            "use_listings_cache": False,
            "skip_instance_cache": True,
            **extra,
        }


@pytest.fixture(scope="session")
def s3():
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin", "region_name": "us-east-1"}
    iam = boto3.client("iam", endpoint_url=endpoint, **admin)
    iam.create_user(UserName="pipeline")
    iam.put_user_policy(
        UserName="pipeline",
        PolicyName="all-s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    creds = iam.create_access_key(UserName="pipeline")["AccessKey"]
    s3c = boto3.client("s3", endpoint_url=endpoint, **admin)
    s3c.create_bucket(Bucket="lake")
    yield S3(endpoint, creds["AccessKeyId"], creds["SecretAccessKey"])
    server.stop()


@pytest.fixture
def s3_auth(s3):
    """Make the S3 server check credentials (unknown keys get InvalidAccessKeyId) for one test.

    Checking costs ~100 ms per request in moto, so it is off for the other tests. The server
    runs in this process and its /moto-api/reset-auth endpoint fails in moto 5.2: set it here.
    """
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    yield s3
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


# -- HTTP API on loopback with latency and injected faults ------------------------------------
class Api:
    def __init__(self, base: str, hits: Counter, lock: threading.Lock) -> None:
        self.base, self.hits, self._lock = base, hits, lock

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits[path]


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(n * 10, n * 10 + 10), "value": [float(i) / 2 for i in range(10)]})


@pytest.fixture(scope="session")
def api():
    from aiohttp import web

    hits: Counter = Counter()
    lock = threading.Lock()
    in_flight = {"now": 0, "max": 0}

    async def data(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        key = request.path_qs
        with lock:
            hits[key] += 1
            count = hits[key]
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            delay = float(request.query.get("delay", "0"))
            if delay:
                await asyncio.sleep(delay)
            fail = int(request.query.get("fail", "0"))
            if count <= fail:
                status = int(request.query.get("status", "500"))
                headers = {}
                if "retry_after" in request.query:
                    headers["Retry-After"] = request.query["retry_after"]
                return web.Response(status=status, text="injected failure", headers=headers)
            if request.headers.get("Authorization", "") == "Bearer wrong-token-value":
                return web.Response(status=401, text="bad token")
            stem, _, ext = name.partition(".")
            frame = _frame(int(stem) if stem.isdigit() else 0)
            if ext == "json":
                return web.json_response(frame.to_dict("records"))
            if ext == "jsonl":
                body = frame.to_json(orient="records", lines=True)
                return web.Response(text=body, content_type="application/x-ndjson")
            if ext == "csv":
                return web.Response(text=frame.to_csv(index=False), content_type="text/csv")
            if ext == "parquet":
                buf = io.BytesIO()
                frame.to_parquet(buf)
                return web.Response(body=buf.getvalue(), content_type="application/vnd.apache.parquet")
            if ext == "bad":
                return web.Response(text='{"id": 1, "value": ', content_type="application/json")
            return web.Response(status=404, text="no such data")
        finally:
            with lock:
                in_flight["now"] -= 1

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/data/{name}", data)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    server = Api(f"http://127.0.0.1:{state['port']}", hits, lock)
    server.in_flight = in_flight
    yield server
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


# -- PostgreSQL ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    roots = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((str(r / name) for r in roots if (r / name).exists()), None)


def _start_temp_postgres(tmp: Path) -> tuple[str, callable]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("initdb/pg_ctl not found (apt-get install postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(tmp, "postgres")
    data, pwfile = tmp / "data", tmp / "pw"
    pwfile.write_text("pg-test-pw\n")
    if as_user:
        shutil.chown(pwfile, "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=60)  # noqa: E731
    run(initdb, "-D", str(data), "-U", "tester", "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8")
    port = _free_port()
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(pg_ctl, "-D", str(data), "-l", str(tmp / "log"), "-o", opts, "-w", "-t", "30", "start")
    url = f"postgresql://tester:pg-test-pw@127.0.0.1:{port}/postgres"
    return url, lambda: run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")


@pytest.fixture(scope="session")
def pg_url():
    url = os.environ.get("ASYNCPIPE_TEST_PG_URL")
    stop = None
    if not url:
        # Not under pytest's tmp dir: it is private to root, and the server runs as 'postgres'.
        tmp = Path(tempfile.mkdtemp(prefix="asyncpipe-pg-"))
        try:
            url, stop = _start_temp_postgres(tmp)
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            detail = getattr(exc, "stderr", b"") or b""
            exc = f"{exc} {detail.decode(errors='replace')[-300:]}".strip()
            pytest.skip(
                'PostgreSQL tests need a server: set ASYNCPIPE_TEST_PG_URL (eval "$(.ci/postgres.sh)") '
                f"or install postgresql so the tests can start one ({exc})"
            )
    yield url
    if stop is not None:
        from asyncpipe.io._sql import dispose_engines

        dispose_engines()
        stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_table(pg_url):
    """A fresh table name in the PostgreSQL database, dropped afterwards."""
    import sqlalchemy as sa

    from asyncpipe.io._sql import engine_for

    name = f"t_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    yield name
    with engine_for(pg_url).begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))


@pytest.fixture(autouse=True)
def _dispose_sql_engines():
    yield
    from asyncpipe.io._sql import dispose_engines

    dispose_engines()

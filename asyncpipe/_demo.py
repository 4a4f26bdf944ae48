"""``asyncpipe demo``: a real pipeline on embedded defaults, nothing to install or configure.

Three sources line up by day: local CSV files (orders), local Parquet files
(prices) and a loopback HTTP API (exchange rates) that the demo serves itself.
A transform joins them per day, memoized, and a SQLite sink writes the result
idempotently. The pipeline runs twice: the second run is answered by the cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAYS = [f"2024-03-{d:02d}" for d in range(1, 8)]
PRODUCTS = ["apple", "bread", "cheese", "dates", "eggs"]
API_LATENCY_S = 0.05  # makes the concurrency of the HTTP source visible


def _write_inputs(raw: Path) -> None:
    """Deterministic demo data; written once, so re-runs see the same inputs."""
    raw.mkdir(parents=True, exist_ok=True)
    for i, day in enumerate(DAYS):
        rng = np.random.default_rng(i)
        orders = raw / f"orders-{day}.csv"
        if not orders.exists():
            n = 2_000
            pd.DataFrame(
                {
                    "order_id": np.arange(i * n, (i + 1) * n),
                    "product": rng.choice(PRODUCTS, n),
                    "qty": rng.integers(1, 6, n),
                }
            ).to_csv(orders, index=False)
        prices = raw / f"prices-{day}.parquet"
        if not prices.exists():
            pd.DataFrame(
                {"product": PRODUCTS, "price_usd": rng.uniform(0.5, 9.0, len(PRODUCTS)).round(2)}
            ).to_parquet(prices)


class _RatesApi(BaseHTTPRequestHandler):
    """GET /fx/<day>.json -> [{"currency": "EUR", "rate": ...}], after a little latency."""

    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        time.sleep(API_LATENCY_S)
        day = self.path.rsplit("/", 1)[-1].removesuffix(".json")
        if day not in DAYS:
            self.send_error(404, "no rates for that day")
            return
        body = json.dumps([{"currency": "EUR", "rate": round(0.9 + DAYS.index(day) / 100, 4)}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _enrich(orders: pd.DataFrame, prices: pd.DataFrame, fx: pd.DataFrame) -> pd.DataFrame:
    """Join one day's orders with that day's prices and EUR rate; revenue per product."""
    rate = float(fx["rate"].iloc[0])
    joined = orders.merge(prices, on="product", how="left")
    joined["revenue_eur"] = joined["qty"] * joined["price_usd"] * rate
    out = joined.groupby("product", as_index=False).agg(
        orders=("order_id", "count"), revenue_eur=("revenue_eur", "sum")
    )
    out["revenue_eur"] = out["revenue_eur"].round(2)
    return out


def _parse(argv: Any) -> argparse.Namespace:
    if isinstance(argv, argparse.Namespace):
        return argv
    parser = argparse.ArgumentParser(prog="asyncpipe demo")
    parser.add_argument("--dir", default="asyncpipe-demo")
    parser.add_argument("--fresh", action="store_true")
    return parser.parse_args(list(argv or []))


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Run the demo; returns the process exit code."""
    import asyncpipe as ap
    import asyncpipe.io as io

    args = _parse(argv)
    root = Path(args.dir).resolve()
    if getattr(args, "fresh", False) and root.exists():
        shutil.rmtree(root)
    raw = root / "raw"
    _write_inputs(raw)
    db = root / "demo.db"

    server = ThreadingHTTPServer(("127.0.0.1", 0), _RatesApi)
    thread = threading.Thread(target=server.serve_forever, name="asyncpipe-demo-api", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        orders = io.read_files(str(raw / "orders-{item}.csv"), name="orders")
        pipe = ap.Pipeline(
            [
                orders,
                io.read_files(str(raw / "prices-{item}.parquet"), name="prices"),
                io.fetch_http(base + "/fx/{item}.json", name="fx", format="json", retries=3, concurrency=8),
                ap.stage(_enrich, name="enrich"),
                io.to_sql("daily_revenue", f"sqlite:///{db}", input="enrich", name="db"),
            ],
            name="demo",
            workdir=root / ".asyncpipe",
        )
        days = orders.fn.asyncpipe_inputs()
        print(
            f"asyncpipe demo: {len(days)} days of orders (CSV) + prices (Parquet) + EUR rates (HTTP {base})"
        )
        for attempt in ("first run", "second run (same inputs: expect cache hits)"):
            before = _RatesApi.hits
            result = ap.Pipeline.run_sync(pipe, days)
            table = result.table()
            cached = int((table["status"] == "cached").sum())
            print(f"\n{attempt}: {'ok' if result.ok else 'FAILED'} in {result.duration:.2f}s, "
                  f"{cached}/{len(table)} stage partitions from the cache, "
                  f"{_RatesApi.hits - before} HTTP requests")  # fmt: skip
            print(result.summary())
            if not result.ok:
                print(result.failures.to_string())
                return 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

    import sqlite3

    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT COUNT(*), COUNT(DISTINCT _partition) FROM daily_revenue").fetchone()
    print(
        f"\nOutput: {db} — table daily_revenue, {rows[0]} rows from {rows[1]} days "
        "(re-runs replace a day's rows, never duplicate them)."
    )
    print("Open it with:")
    print(f'  sqlite3 {db} "SELECT * FROM daily_revenue LIMIT 5"')
    print(
        f"  python -c \"import pandas as pd; print(pd.read_sql('SELECT * FROM daily_revenue', 'sqlite:///{db}'))\""
    )
    print(f"Inputs are in {raw}; the cache and run history in {root / '.asyncpipe'}.")
    return 0

"""Child process for the cache tests: run a stage module's chain once and print a JSON report.

usage: python _cache_runner.py CACHE_DIR MODULE_PATH N_ITEMS
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys

from _cache_driver import run_chain

from asyncpipe import stage
from asyncpipe.cache import Cache, fingerprint


def main() -> None:
    cache_dir, module_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spec = importlib.util.spec_from_file_location("stages_under_test", module_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    stages = [stage(getattr(mod, name)) for name in mod.CHAIN]
    cache = Cache(cache_dir)
    outs, report = asyncio.run(run_chain(cache, stages, list(range(n))))
    cache.close()
    json.dump({"report": report, "result": fingerprint(outs)}, sys.stdout)


if __name__ == "__main__":
    main()

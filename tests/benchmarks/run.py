"""Run the benchmarks: ``python tests/benchmarks/run.py [--quick] [--json PATH] [NAME ...]``.

Each ``bench_*.py`` beside this file exposes ``run(quick: bool) -> list[dict]``. NAME filters
results by prefix (``P1``, ``P6b-memory``...). Prints a table and writes JSON:
``{"results": [{"name", "metric", "value", "baseline_name", "baseline_value", "ratio", "goal", "met"}]}``.
Exit status 1 when a goal is not met.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Which bench module produces which figure ids, so a filter skips modules it doesn't need.
PREFIXES = {
    "bench_core": ("P1", "P2", "P4", "P5"),
    "bench_cache": ("P3",),
    "bench_ratecontrol": ("P6",),
    "bench_monitoring": ("P7",),
    "bench_loopstall": ("P8",),
    "bench_dask": ("P9",),
}


def _load(path: Path):
    sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # so process pools can pickle its functions by reference
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: all benchmarks in ~2 minutes")
    parser.add_argument("--json", default="benchmark-results.json", help="where to write the JSON results")
    parser.add_argument("names", nargs="*", help="figure-id prefixes to run (default: all)")
    args = parser.parse_args(argv)
    results = []
    os.environ["ASYNCPIPE_BENCH_NAMES"] = ",".join(args.names)
    for path in sorted(HERE.glob("bench_*.py")):
        prefixes = PREFIXES.get(path.stem, ())
        if (
            args.names
            and prefixes
            and not any(p.startswith(n) or n.startswith(p) for n in args.names for p in prefixes)
        ):
            continue
        t0 = time.perf_counter()
        try:
            module = _load(path)
            found = module.run(args.quick)
        except Exception as exc:  # a broken bench is reported, the others still run
            print(f"{path.stem}: FAILED to run: {type(exc).__name__}: {exc}", file=sys.stderr)
            found = [
                {
                    "name": f"{path.stem}-error",
                    "metric": "error",
                    "value": None,
                    "baseline_name": None,
                    "baseline_value": None,
                    "ratio": None,
                    "goal": str(exc)[:200],
                    "met": False,
                }
            ]
        found = [r for r in found if not args.names or any(r["name"].startswith(n) for n in args.names)]
        results.extend(found)
        print(f"# {path.stem}: {len(found)} figures in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    width = max((len(r["name"]) for r in results), default=10)
    head = f"{'name':<{width}}  {'value':>12}  {'baseline':>12}  {'ratio':>8}  {'goal':<10} met"
    print(head + "  metric / baseline")
    for r in results:
        val = "-" if r["value"] is None else f"{r['value']:.4g}"
        base = "-" if r["baseline_value"] is None else f"{r['baseline_value']:.4g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        met = "yes" if r["met"] else "NO "
        print(
            f"{r['name']:<{width}}  {val:>12}  {base:>12}  {ratio:>8}  {r['goal']:<10} {met}"
            f"  {r['metric']} / {r['baseline_name'] or '-'}"
        )
    missed = [r for r in results if not r["met"] and r.get("note")]
    for r in missed:  # a missed goal comes with what the bench measured about why
        print(f"note on {r['name']}: {r['note']}")
    payload = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "quick": args.quick,
        "results": results,
    }
    Path(args.json).write_text(json.dumps(payload, indent=1))
    return 0 if all(r["met"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

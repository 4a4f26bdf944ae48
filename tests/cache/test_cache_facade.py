"""The Cache facade: lookups without I/O, memory tier, background writes, reasons, management."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from asyncpipe import CacheError, CacheWarning
from asyncpipe.cache import Cache, KeyParts
from asyncpipe.cache._cli import main as cli_main  # noqa: F401  (importable without the main CLI)


def parts(stage="s", code="c", options="", inputs=("in",)):
    return KeyParts(stage, code, options, tuple(inputs))


def frame(n=100):
    return pd.DataFrame({"x": np.arange(n), "s": [f"v{i}" for i in range(n)]})


def run(coro):
    return asyncio.run(coro)


def test_key_depends_on_every_part_and_is_cheap():
    base = parts()
    keys = {base.key, parts(stage="t").key, parts(code="d").key, parts(options="o").key,
            parts(inputs=("other",)).key, parts(inputs=("in", "more")).key}
    assert len(keys) == 6 and all(len(k) == 32 for k in keys)
    assert parts().key == base.key


def test_store_then_hit_from_memory_without_disk(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        await cache.open(["s"])
        p = parts()
        cache.store("s", p.key, frame(), p, "p1")
        assert cache.lookup(p, "p1").hit
        await cache.flush()
        # remove the file behind the cache's back: the memory tier still answers
        for root, _, files in os.walk(tmp_path / "s" / p.key):
            for f in files:
                os.remove(os.path.join(root, f))
        out = await cache.load("s", p.key)
        cache.close()
        return out

    pd.testing.assert_frame_equal(run(go()), frame())


def test_mutating_a_returned_value_does_not_change_the_cache(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        p, q = parts(), parts(inputs=("x",))
        df, obj = frame(), {"a": [1, 2]}
        cache.store("s", p.key, df, p, "p1")
        cache.store("s", q.key, obj, q, "p2")
        df.loc[0, "x"] = -1  # the stage's caller mutates what it returned
        obj["a"].append(3)
        got = await cache.load("s", p.key)
        got.loc[1, "x"] = -2
        got_obj = await cache.load("s", q.key)
        got_obj["a"].append(4)
        again, again_obj = await cache.load("s", p.key), await cache.load("s", q.key)
        await cache.flush()
        fresh = Cache(tmp_path)
        await fresh.open(["s"])
        disk = await fresh.load("s", p.key)
        cache.close()
        return again, again_obj, disk

    again, again_obj, disk = run(go())
    pd.testing.assert_frame_equal(again, frame())
    pd.testing.assert_frame_equal(disk, frame())
    assert again_obj == {"a": [1, 2]}


def test_memory_tier_is_bounded_and_falls_back_to_disk(tmp_path):
    async def go():
        cache = Cache(tmp_path, memory_limit=50_000)
        keys = []
        for i in range(5):
            p = parts(inputs=(str(i),))
            cache.store("s", p.key, frame(1000), p, f"p{i}")
            keys.append(p.key)
        await cache.flush()
        assert cache.info()["memory"]["bytes"] <= 50_000
        outs = [await cache.load("s", k) for k in keys]
        cache.close()
        return outs

    for out in run(go()):
        pd.testing.assert_frame_equal(out, frame(1000))


def test_big_outputs_enter_the_memory_tier_when_loaded_not_when_stored(tmp_path, monkeypatch):
    from asyncpipe.cache import _cache

    monkeypatch.setattr(_cache, "ADMIT_ON_STORE", 5_000)

    async def go():
        cache = Cache(tmp_path)
        await cache.open(["s"])
        small, big = parts(inputs=("small",)), parts(inputs=("big",))
        cache.store("s", small.key, frame(10), small, "p1")
        cache.store("s", big.key, frame(1000), big, "p2")  # ~16 kB by the O(1) estimate
        stored = len(cache._mem)
        await cache.flush()
        hit = cache.lookup(big, "p2").hit
        loaded = await cache.load("s", big.key)
        after_load = len(cache._mem)
        cache.close()
        return stored, hit, loaded, after_load

    stored, hit, loaded, after_load = run(go())
    assert stored == 1  # only the small one was kept in memory when stored
    assert hit  # the big one is a hit all the same (on disk)
    pd.testing.assert_frame_equal(loaded, frame(1000))
    assert after_load == 2  # and is kept in memory once a run has loaded it


def test_warm_open_in_a_new_instance_hits_and_explains_misses(tmp_path):
    async def go():
        c1 = Cache(tmp_path)
        await c1.open(["s"])
        p = parts()
        c1.store("s", p.key, 1, p, "p1")
        await c1.flush()
        c1.close()
        c2 = Cache(tmp_path)
        await c2.open(["s", "t"])
        return [
            c2.lookup(p, "p1"),
            c2.lookup(parts(options="new"), "p1"),
            c2.lookup(parts(code="other"), "p1"),
            c2.lookup(parts(inputs=("changed",)), "p1"),
            c2.lookup(parts(inputs=("brand-new",)), "p2"),
            c2.lookup(parts(stage="t"), "p1"),
        ]

    hit, opt, code, inp, new, never = run(go())
    assert hit.hit and hit.reason == ""
    assert (opt.hit, opt.reason) == (False, "options changed")
    assert code.reason.startswith("code changed")
    assert inp.reason == "new input"
    assert new.reason == "new input"
    assert never.reason == "not cached before"


def test_upstream_change_and_code_change_name_the_function(tmp_path):
    def f1(x):
        return x + 1

    def f2(x):
        return x + 2

    def stage_of(fn):
        return type("S", (), {"fn": staticmethod(fn), "options": None})()

    async def go():
        cache = Cache(tmp_path)
        code1, _ = cache.code_key(stage_of(f1))
        await cache.open(["up", "down"])
        up1 = parts("up", code1, "", ("item",))
        down1 = parts("down", code1, "", (up1.key,))
        cache.store("up", up1.key, 1, up1, "p")
        cache.store("down", down1.key, 2, down1, "p")
        await cache.flush()
        fresh = Cache(tmp_path)  # the next run, with f2 as the stage's code
        code2, _ = fresh.code_key(stage_of(f2))
        await fresh.open(["up", "down"])
        up2 = parts("up", code2, "", ("item",))
        r_code = fresh.lookup(up2, "p").reason
        fresh.store("up", up2.key, 1, up2, "p")
        r_up = fresh.lookup(parts("down", code1, "", (up2.key,)), "p").reason
        await fresh.flush()
        cache.close()
        fresh.close()
        return r_code, r_up

    r_code, r_up = run(go())
    assert r_code.startswith("code changed: ") and "f1" in r_code and "f2" in r_code
    assert r_up == "upstream changed"


def test_corrupt_entry_warns_removes_and_raises_cache_error(tmp_path):
    async def go():
        c1 = Cache(tmp_path)
        p = parts()
        c1.store("s", p.key, frame(), p, "p1")
        await c1.flush()
        c1.close()
        path = tmp_path / "s" / p.key / "output.parquet"
        path.write_bytes(path.read_bytes()[:-20])
        c2 = Cache(tmp_path)
        await c2.open(["s"])
        assert c2.lookup(p, "p1").hit
        with pytest.warns(CacheWarning, match="corrupt"), pytest.raises(CacheError):
            await c2.load("s", p.key)
        look = c2.lookup(p, "p1")
        assert not path.exists()
        return look

    look = run(go())
    assert (look.hit, look.reason) == (False, "entry corrupt")


def test_load_many_reads_from_memory_and_disk_and_leaves_bad_entries_to_load(tmp_path):
    async def go():
        c1 = Cache(tmp_path)
        keys = []
        for i in range(6):
            p = parts(inputs=(str(i),))
            c1.store("s", p.key, frame(10 + i), p, f"p{i}")
            keys.append(p.key)
        await c1.flush()
        c1.close()
        bad = tmp_path / "s" / keys[2] / "output.parquet"
        bad.write_bytes(bad.read_bytes()[:-20])
        c2 = Cache(tmp_path)
        await c2.open(["s"])
        from_memory = frame(99)
        c2.store("s", keys[5], from_memory, None, "p5")  # in memory now: no disk read needed
        await c2.flush()
        got = await c2.load_many("s", [*keys, "0" * 32])
        in_memory_after = c2.info()["memory"]["entries"]
        c2.close()
        return keys, got, in_memory_after

    keys, got, in_memory_after = run(go())
    assert set(got) == {keys[i] for i in (0, 1, 3, 4, 5)}  # the truncated and the unknown key left out
    for i in (0, 1, 3, 4):
        pd.testing.assert_frame_equal(got[keys[i]], frame(10 + i))
    pd.testing.assert_frame_equal(got[keys[5]], frame(99))
    assert in_memory_after == 5  # what was read from disk is now in the memory tier


def test_a_failing_write_warns_at_flush_and_the_run_continues(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        (tmp_path / "s").write_text("a file where the stage directory goes")
        p = parts()
        cache.store("s", p.key, 1, p, "p1")  # returns at once, never raises
        with pytest.warns(CacheWarning, match="failed"):
            await cache.flush()
        value = await cache.load("s", p.key)  # still served from memory
        cache.close()
        return value

    assert run(go()) == 1


def test_unpicklable_value_warns_and_does_not_raise(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        p = parts()
        with pytest.warns(CacheWarning, match="Could not cache"):
            cache.store("s", p.key, lambda: None, p, "p1")
        assert not cache.lookup(p, "p1").hit
        await cache.flush()
        cache.close()

    run(go())


def test_frames_parquet_cannot_hold_fall_back_with_one_warning_per_stage(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(3):
                p = parts(inputs=(str(i),))
                cache.store("s", p.key, pd.DataFrame({0: [i]}), p, f"p{i}")
            await cache.flush()
        cache.close()
        return caught

    caught = run(go())
    assert len(caught) == 1 and issubclass(caught[0].category, CacheWarning)
    assert set(Cache(tmp_path).entries()["format"]) == {"pickle"}


def test_entries_info_clear_and_prune(tmp_path):
    async def go():
        cache = Cache(tmp_path)
        for stage in ("a", "b"):
            for i in range(3):
                p = parts(stage, inputs=(str(i),))
                cache.store(stage, p.key, frame(10), p, f"p{i}")
        await cache.flush()
        cache.close()
        return cache

    cache = run(go())
    df = cache.entries()
    assert list(df.columns) == ["stage", "key", "format", "bytes", "created", "age_s"]
    assert len(df) == 6 and set(df["format"]) == {"parquet"} and (df["bytes"] > 0).all()
    assert len(cache.entries("a")) == 3
    info = cache.info()
    assert info["stages"]["a"]["entries"] == 3 and info["entries"] == 6
    assert "asyncpipe cache" in cache._repr_html_() and "Cache(" in repr(cache)
    assert cache.clear("a") == 3
    assert set(cache.entries()["stage"]) == {"b"}
    assert not cache.lookup(parts("a", inputs=("0",)), "p0").hit
    old = os.path.join(tmp_path, "b", df[df.stage == "b"]["key"].iloc[0], "output.parquet")
    os.utime(old, (1, 1))
    assert cache.prune(max_age=3600) == 1
    assert cache.prune(max_bytes=0) == 2
    assert cache.entries().empty


def test_directory_is_private(tmp_path):
    Cache(tmp_path / "cache")
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_cli_ls_info_clear_prune(tmp_path, subprocess_env):
    async def go():
        cache = Cache(tmp_path / "c")
        for i in range(2):
            p = parts("load", inputs=(str(i),))
            cache.store("load", p.key, frame(10), p, f"p{i}")
        await cache.flush()
        cache.close()

    run(go())
    code = ("import argparse, sys\nfrom asyncpipe.cache._cli import register\n"
            "p = argparse.ArgumentParser(prog='asyncpipe'); register(p.add_subparsers(dest='command'))\n"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")

    def cli(*args):
        r = subprocess.run([sys.executable, "-c", code, "cache", *args, "--dir", str(tmp_path / "c")],
                           capture_output=True, text=True, env=subprocess_env, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = cli("ls")
    assert out.count("load ") == 2 and "parquet" in out and ("B" in out)
    assert "2 entries" in cli("info")
    assert "pruned 0" in cli("prune", "--max-age", "1d")
    assert "removed 2 entries of stage 'load'" in cli("clear", "load")
    assert "no cache entries" in cli("ls")

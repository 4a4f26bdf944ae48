"""Code keys ignore comments, docstrings, formatting and line shifts; follow same-module helpers."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from asyncpipe import stage
from asyncpipe.cache import Cache, code_key

BASE = '''
import math

SCALE = 3

def helper(x):
    return x * SCALE

def unrelated(x):
    return x - 1

def f(x):
    """Stage docstring."""
    # a comment
    return [helper(i) for i in range(x)] + [math.pi]
'''


def load(tmp_path, source, name="mod"):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(source))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_of(tmp_path, source, name="mod"):
    return code_key(load(tmp_path, source, name).f)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("# a comment", "# another comment\n    # and more"),
        lambda s: s.replace('"""Stage docstring."""', '"""Changed docs."""'),
        lambda s: "\n\n\n# header\n" + s,
        lambda s: s.replace("return x * SCALE", "return (x *\n            SCALE)  # wrapped"),
        lambda s: s.replace("def f(x):", "@some_decorator(concurrency=4)\ndef f(x):").replace(
            "import math", "import math\nsome_decorator = lambda **k: (lambda fn: fn)"),
        lambda s: s.replace("return x - 1", "return x - 2"),  # a function f does not call
    ],
    ids=["comment", "docstring", "line-shift", "formatting", "decorator", "unrelated-function"],
)
def test_cosmetic_edits_keep_the_key(tmp_path, edit):
    assert key_of(tmp_path, BASE)[0] == key_of(tmp_path, edit(BASE), "mod2")[0]


@pytest.mark.parametrize(
    "edit, changed",
    [
        (lambda s: s.replace("+ [math.pi]", "+ [math.e]"), ["f"]),
        (lambda s: s.replace("return x * SCALE", "return x * SCALE + 1"), ["helper"]),
        (lambda s: s.replace("SCALE = 3", "SCALE = 4"), ["global SCALE"]),
    ],
    ids=["own-code", "helper", "constant"],
)
def test_real_edits_change_the_key_and_name_the_function(tmp_path, edit, changed):
    before_key, before = key_of(tmp_path, BASE)
    after_key, after = key_of(tmp_path, edit(BASE), "mod2")
    assert before_key != after_key
    assert sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k)) == changed


def test_helpers_are_followed_recursively_and_through_classes(tmp_path):
    src = BASE + textwrap.dedent('''
        def deep(x):
            return helper(x)

        class Box:
            def get(self):
                return deep(1)

        def g(x):
            return Box().get()
        ''')
    parts = code_key(load(tmp_path, src).g)[1]
    assert {"g", "Box", "deep", "helper", "global SCALE"} <= set(parts)
    assert "unrelated" not in parts


def test_version_overrides_code_hashing(tmp_path):
    mod = load(tmp_path, BASE)
    k1, parts = code_key(mod.f, version="v1")
    assert parts == {"version": "v1"}
    assert code_key(load(tmp_path, BASE.replace("math.pi", "math.e"), "m2").f, version="v1")[0] == k1
    assert code_key(mod.f, version="v2")[0] != k1


def test_cache_code_key_reads_stage_fn_and_version(tmp_path):
    mod = load(tmp_path, BASE)
    cache = Cache(tmp_path / "c")
    plain = stage(mod.f)
    versioned = stage(version="2024-06")(mod.f)
    assert cache.code_key(plain)[0] == code_key(mod.f)[0]
    assert cache.code_key(versioned)[1] == {"version": "2024-06"}


def test_functions_without_source_fall_back_to_bytecode():
    ns1: dict = {}
    ns2: dict = {}
    exec(compile("def f(x):\n    return x + 1\n", "<nosource>", "exec"), ns1)
    exec(compile("\n\ndef f(x):\n    return x + 2\n", "<nosource>", "exec"), ns2)
    k1, p1 = code_key(ns1["f"])
    assert list(p1) == ["f"]
    assert k1 != code_key(ns2["f"])[0]


def test_functions_defined_in_ipython_cells():
    IPython = pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        shell.run_cell("K = 2\ndef helper(x):\n    return x * K\n", store_history=True)
        shell.run_cell("def f(x):\n    # doubles\n    return helper(x)\n", store_history=True)
        key1, parts = code_key(shell.user_ns["f"])
        assert set(parts) == {"f", "helper", "global K"}
        shell.run_cell("def helper(x):\n    return x * K + 1\n", store_history=True)
        key2, parts2 = code_key(shell.user_ns["f"])
        assert key2 != key1 and parts2["f"] == parts["f"] and parts2["helper"] != parts["helper"]
        shell.run_cell("\n\ndef f(x):\n    return helper(x)  # moved\n", store_history=True)
        assert code_key(shell.user_ns["f"])[0] == key2
        assert IPython
    finally:
        InteractiveShell.clear_instance()


def test_parameters_named_like_other_stages_are_not_followed(tmp_path):
    src = '''
def load(i):
    return i

def transform(load):
    x = load
    return [load for load in range(x)]
'''
    mod = load(tmp_path, src)
    assert set(code_key(mod.transform)[1]) == {"transform"}


WITH_CLASS = BASE + textwrap.dedent('''
    class Box:
        def get(self):
            return helper(1)

    def g(x):
        return Box().get()
    ''')


@pytest.mark.parametrize(("source", "stage", "part"), [(BASE, "f", "f"), (WITH_CLASS, "g", "Box")],
                         ids=["function", "class-methods"])
def test_code_memo_gives_the_same_keys_and_skips_parsing_in_a_fresh_memo(
    tmp_path, monkeypatch, source, stage, part
):
    from asyncpipe.cache import _codekey
    from asyncpipe.cache._codememo import CodeMemo

    fn = getattr(load(tmp_path, source), stage)
    monkeypatch.setattr(_codekey, "MEMO", CodeMemo())
    fresh = code_key(fn)
    assert part in fresh[1]
    memo_file = str(tmp_path / "memo.json")
    _codekey.MEMO.save(memo_file)

    # a new process's memo, loaded from disk: the same key without parsing any source
    monkeypatch.setattr(_codekey, "MEMO", CodeMemo())
    _codekey.MEMO.load(memo_file)

    def no_parsing(obj):
        raise AssertionError(f"parsed {obj.__qualname__} although the memo knows it")

    monkeypatch.setattr(_codekey, "_normalize", no_parsing)
    assert code_key(fn) == fresh


def test_code_memo_misses_on_a_real_edit_and_survives_a_damaged_file(tmp_path, monkeypatch):
    from asyncpipe.cache import _codekey
    from asyncpipe.cache._codememo import CodeMemo

    memo_file = tmp_path / "memo.json"
    memo_file.write_text("{not json")
    monkeypatch.setattr(_codekey, "MEMO", CodeMemo())
    _codekey.MEMO.load(str(memo_file))  # ignored, not raised
    before = code_key(load(tmp_path, BASE, "a").f)
    # the same file name and line numbers, a different constant: a different key
    after = code_key(load(tmp_path, BASE.replace("math.pi]", "math.e]"), "a").f)
    assert before[0] != after[0] and before[1]["f"] != after[1]["f"]
    # and a changed default value is a real change too, though the body is the same
    d1 = code_key(load(tmp_path, "def g(x=1):\n    return x\n", "b").g)
    d2 = code_key(load(tmp_path, "def g(x=2):\n    return x\n", "b").g)
    assert d1[0] != d2[0]


def test_cache_saves_the_code_memo_in_its_location(tmp_path):
    import asyncpipe as ap

    module = load(tmp_path, BASE)
    pipe = ap.Pipeline([ap.source(module.f)], name="memo", cache=Cache(tmp_path / "c"),
                       workdir=str(tmp_path / "w"))
    assert pipe.run_sync([2]).ok
    memo = tmp_path / "c" / "_codekeys.json"
    assert memo.exists() and (memo.stat().st_mode & 0o077) == 0
    assert pipe.run_sync([2]).explain()["status"].tolist() == ["cached"]

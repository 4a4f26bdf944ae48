"""Normalized code hashing for cache keys.

A stage's code key covers its function and, recursively, the module-level helper
functions (and classes) it refers to that live in the same module — in a notebook,
every cell of the kernel — plus simple module-level constants it reads. Source is
parsed with :mod:`ast`, so comments, docstrings, formatting, decorators and line
shifts do not change the key; a real edit does::

    >>> import textwrap
    >>> ns: dict = {}
    >>> exec(compile("def f(x):\\n    return x + 1\\n", "<doc>", "exec"), ns)
    >>> key, parts = code_key(ns["f"])
    >>> sorted(parts), len(key)
    (['f'], 32)

When no source is available (``exec`` of a string, as above, has none) the
bytecode, constants and names are hashed instead.
"""

from __future__ import annotations

import ast
import dis
import functools
import inspect
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

import xxhash

from ._codememo import MEMO

__all__ = ["code_key", "function_hashes"]

_CONST_TYPES = (int, float, complex, bool, str, bytes, type(None))


def code_key(fn: Callable[..., Any], version: str | None = None) -> tuple[str, dict[str, str]]:
    """Return ``(key, {qualname: hash})`` for ``fn`` and the same-module code it uses.

    ``version`` replaces code hashing entirely (the dict is then ``{"version": version}``).
    """
    parts = {"version": version} if version is not None else function_hashes(fn)
    h = xxhash.xxh3_128()
    for name in sorted(parts):
        h.update(f"{name}\0{parts[name]}\n".encode())
    return h.hexdigest(), parts


def function_hashes(fn: Callable[..., Any]) -> dict[str, str]:
    """Hash ``fn`` and, recursively, the same-module helpers and constants it refers to."""
    out: dict[str, str] = {}
    _visit(_unwrap(fn), None, out, set())
    return out


def _unwrap(obj: Any) -> Any:
    inner = getattr(obj, "fn", None)  # an asyncpipe Stage wraps its function
    if inner is not None and callable(inner) and type(obj).__name__ == "Stage":
        obj = inner
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    return inspect.unwrap(obj) if callable(obj) else obj


def _visit(obj: Any, home_module: str | None, out: dict[str, str], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, functools.partial):
        out[f"partial({_qualname(obj.func)})"] = _hash_data((obj.args, sorted(obj.keywords.items())))
        _visit(_unwrap(obj.func), home_module, out, seen)
        return
    if not isinstance(obj, (types.FunctionType, type)):
        # A callable object (a built-in source, say): its class code plus its state.
        cls = type(obj)
        out[f"{_qualname(cls)}()"] = _hash_data(getattr(obj, "__dict__", repr(obj)))
        if cls.__module__ == home_module or home_module is None:
            _visit(cls, cls.__module__, out, seen)
        return
    module = obj.__module__
    if isinstance(obj, type):
        out[_qualname(obj)], names, globalns = _class_hash(obj)
    else:
        out[_qualname(obj)], names = _function_hash(obj)
        globalns = obj.__globals__
    for name in sorted(names):
        if name not in globalns:
            continue
        value = globalns[name]
        if isinstance(value, _CONST_TYPES) or (
            isinstance(value, (tuple, frozenset)) and all(isinstance(v, _CONST_TYPES) for v in value)
        ):
            out[f"global {name}"] = xxhash.xxh3_64_hexdigest(repr(value).encode())
            continue
        target = _unwrap(value)
        if isinstance(target, (types.FunctionType, type)) and getattr(target, "__module__", None) == module:
            _visit(target, module, out, seen)


def _function_hash(fn: types.FunctionType) -> tuple[str, set[str]]:
    """(hash of the normalized source, global names read), memoized by code identity.

    Parsing and normalizing the source costs 0.3-1.5 ms per function; the identity
    (bytecode, constants, names, line table, defaults, annotations) ~20 µs. Two
    functions with the same identity have the same normalized source up to what
    normalization drops anyway, so the memo never changes a key.
    """
    ident = _code_identity(fn)
    hit = MEMO.get(ident)
    if hit is not None:
        return hit[0], set(hit[1])
    normalized, names, _ = _normalize(fn)
    digest = xxhash.xxh3_64_hexdigest(normalized)
    MEMO.put(ident, digest, names)
    return digest, names


def _code_identity(fn: types.FunctionType) -> str:
    h = xxhash.xxh3_128()
    _feed_code(h, fn.__code__)
    extras = (fn.__module__, fn.__defaults__, fn.__kwdefaults__, getattr(fn, "__annotations__", None))
    h.update(repr(extras).encode())
    return h.hexdigest()


def _feed_code(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(code.co_linetable)
    h.update(code.co_exceptiontable)
    h.update(
        repr(
            (code.co_filename, code.co_qualname, code.co_firstlineno, code.co_flags, code.co_argcount,
             code.co_posonlyargcount, code.co_kwonlyargcount, code.co_names, code.co_varnames,
             code.co_freevars, code.co_cellvars)
        ).encode()
    )
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _feed_code(h, const)
        else:
            h.update(repr(const).encode())


def _qualname(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__


def _normalize(obj: types.FunctionType) -> tuple[bytes, set[str], dict[str, Any]]:
    """(normalized text, global names referred to, the globals to resolve them in)."""
    # Globals from the bytecode: parameters and locals that share a global's name
    # (a stage parameter named after its upstream stage, say) are not followed.
    names = _code_names(obj.__code__)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return _bytecode_text(obj.__code__), names, obj.__globals__
    node = tree.body[0] if len(tree.body) == 1 else tree
    _strip(node, top=True)
    return ast.dump(node, annotate_fields=False, include_attributes=False).encode(), names, obj.__globals__


def _class_hash(cls: type) -> tuple[str, set[str], dict[str, Any]]:
    """A class by its methods (whose source is findable even where the class's is not,
    e.g. in IPython cells on Python 3.11; each through the memo of :func:`_function_hash`),
    its bases and its plain attributes: (hash, global names read, globals to resolve them)."""
    h = xxhash.xxh3_64()
    h.update(repr([b.__qualname__ for b in cls.__bases__]).encode())
    names: set[str] = set()
    module = sys.modules.get(cls.__module__)
    globalns: dict[str, Any] = vars(module) if module is not None else {}
    for attr, value in sorted(vars(cls).items()):
        fn = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
        if isinstance(fn, types.FunctionType):
            digest, fn_names = _function_hash(fn)
            h.update(f"{attr}:{digest}".encode())
            names |= fn_names
            globalns = fn.__globals__
        elif isinstance(value, _CONST_TYPES) and not attr.startswith("__"):
            h.update(f"{attr}={value!r}".encode())
    return h.hexdigest(), names, globalns


def _strip(node: ast.AST, *, top: bool) -> None:
    """Drop what does not change behaviour: docstrings, and the stage's own decorators."""
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = child.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                child.body = body[1:] or [ast.Pass()]
    if top and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        # Decorators carry scheduling options (@stage(concurrency=4)); output-affecting
        # options reach the key separately.
        node.decorator_list = []


def _bytecode_text(code: types.CodeType) -> bytes:
    h = xxhash.xxh3_128()
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            h.update(_bytecode_text(const))
        else:
            h.update(repr(const).encode())
    return h.hexdigest().encode()


def _code_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the code nested in it) reads as globals."""
    names = {
        ins.argval
        for ins in dis.get_instructions(code)
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str)
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _hash_data(value: Any) -> str:
    from ._fingerprint import fingerprint

    return fingerprint(value)

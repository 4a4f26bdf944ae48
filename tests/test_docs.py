"""The documentation: the site builds strictly, environment.yml matches pyproject.toml, and every
public symbol has a docstring with an example and a place in the API reference."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import asyncpipe

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# -- 1. the site builds in strict mode ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    config = str(DOCS / "mkdocs.yml")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(site)]
    proc = subprocess.run(
        cmd,
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=280,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    # the pages exist, the API reference was generated, and the notebooks were rendered (not copied)
    for page in ("index.html", "concepts/index.html", "failures/index.html", "reference/core/index.html"):
        assert (site / page).is_file(), page
    core = (site / "reference/core/index.html").read_text(encoding="utf-8")
    assert 'id="asyncpipe.Pipeline"' in core and 'id="asyncpipe.RetryPolicy"' in core
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = site / "notebooks" / nb.stem / "index.html"
        assert html.is_file(), f"{nb.name} was not rendered into the site"
    # nothing fetched from the network at view time: no Google Fonts
    assert "fonts.googleapis.com" not in (site / "index.html").read_text(encoding="utf-8")


def test_every_docs_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")

    class _Loader(yaml.SafeLoader):
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # !!python/name: tags
    config = yaml.load((DOCS / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def pages(nav):
        for entry in nav:
            if isinstance(entry, str):
                yield entry
            elif isinstance(entry, dict):
                for value in entry.values():
                    yield from ([value] if isinstance(value, str) else pages(value))

    in_nav = set(pages(config["nav"]))
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk - in_nav == set(), "pages missing from the nav in docs/mkdocs.yml"
    assert {p for p in in_nav if not p.startswith("notebooks/")} - on_disk == set(), "nav names missing pages"


# -- 2. environment.yml mirrors pyproject.toml -------------------------------------------------

#: PyPI name -> conda-forge name(s) where they differ.
CONDA_NAMES = {"xxhash": ["python-xxhash"], "dask": ["dask", "distributed"]}
#: The extras environment.yml installs besides the core dependencies.
ENV_EXTRAS = ("notebook", "sql", "cloud", "dask")


def _conda_dependencies(text: str) -> list[str]:
    """The plain conda specs of environment.yml (not the nested ``pip:`` list)."""
    try:
        import yaml
    except ImportError:
        specs, in_deps = [], False
        for line in text.splitlines():
            if re.match(r"^dependencies:\s*$", line):
                in_deps = True
            elif in_deps and re.match(r"^\S", line):
                break
            elif in_deps and (m := re.match(r"^  - (.+?)\s*(#.*)?$", line)) and not m.group(1).endswith(":"):
                specs.append(m.group(1).strip())
        return specs
    deps = yaml.safe_load(text)["dependencies"]
    return [d for d in deps if isinstance(d, str)]


def _split_conda(spec: str) -> tuple[str, SpecifierSet]:
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    assert m, spec
    return m.group(1).lower(), SpecifierSet(m.group(2).replace(" ", ""))


def _expected_from_pyproject() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ENV_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    expected: dict[str, SpecifierSet] = {"python": SpecifierSet(project["requires-python"])}
    for req in reqs:
        name = req.name.lower()
        for conda in CONDA_NAMES.get(name, [name]):
            expected[conda] = req.specifier
    return expected


def test_environment_yml_lists_the_same_packages_and_bounds_as_pyproject():
    actual = dict(_split_conda(s) for s in _conda_dependencies((ROOT / "environment.yml").read_text("utf-8")))
    actual.pop("pip", None)
    expected = _expected_from_pyproject()
    assert sorted(set(expected) - set(actual)) == [], "in pyproject.toml but not in environment.yml"
    assert sorted(set(actual) - set(expected)) == [], "in environment.yml but not in pyproject.toml"
    differ = {n: (str(actual[n]), str(expected[n])) for n in expected if actual[n] != expected[n]}
    assert differ == {}, "version bounds differ (environment.yml, pyproject.toml)"


def test_environment_yml_installs_the_package_itself():
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+- pip:\s*$", text, re.M) and re.search(r"^\s+- -e \.\s*$", text, re.M)


def test_the_line_parser_reads_what_yaml_reads():
    # the fallback used when PyYAML is missing gives the same specs as PyYAML
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "environment.yml").read_text(encoding="utf-8")
    import builtins

    real_import = builtins.__import__

    def no_yaml(name, *args, **kwargs):
        if name == "yaml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    builtins.__import__ = no_yaml
    try:
        fallback = _conda_dependencies(text)
    finally:
        builtins.__import__ = real_import
    assert fallback == [d for d in yaml.safe_load(text)["dependencies"] if isinstance(d, str)]


# -- 3. every public symbol: a docstring with an example, and a reference entry ----------------

#: Constants documented in prose on docs/reference/index.md: instances, not definitions.
CONSTANTS = {"ALL", "DEFAULT", "__version__"}

#: Public symbols whose docstrings have no example yet (owners: see the helper's report).
#: Strict xfail: adding an example makes the test XPASS and fail, so remove the name here.
PENDING_EXAMPLES: set[str] = set()

PUBLIC = sorted(n for n in asyncpipe.__all__ if n not in CONSTANTS)


def _has_example(doc: str | None) -> bool:
    """A doctest (``>>>``), a reST literal block (``::`` then an indented block) or a fenced block."""
    if not doc:
        return False
    return ">>>" in doc or "```" in doc or bool(re.search(r"::\s*\n\s*\n?[ \t]+\S", doc))


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="no example yet")) if n in PENDING_EXAMPLES
     else n for n in PUBLIC],
)
def test_public_symbol_has_a_docstring_with_an_example(name):
    obj = getattr(asyncpipe, name)
    assert isinstance(obj, types.ModuleType) or callable(obj), f"{name} is data: add it to CONSTANTS"
    assert _has_example(inspect.getdoc(obj)), f"asyncpipe.{name} needs a docstring with an example"


def test_example_detector():
    assert _has_example(">>> 1 + 1\n2")
    assert _has_example("Use it like this::\n\n    pipe.run(x)\n")
    assert _has_example("```python\nx\n```")
    assert not _has_example("Just words. Nothing: to run.")
    assert not _has_example(None)


def _reference_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "reference").glob("*.md")))


def test_every_public_symbol_is_in_the_api_reference():
    directives = set(re.findall(r"^::: (\S+)", _reference_text(), re.M))
    missing = [n for n in PUBLIC if f"asyncpipe.{n}" not in directives]
    assert missing == [], "add '::: asyncpipe.NAME' to a page in docs/reference/"


def test_reference_pages_name_only_objects_that_exist():
    import importlib

    for target in re.findall(r"^::: (\S+)", _reference_text(), re.M):
        module, _, attr = target.rpartition(".")
        try:
            obj = importlib.import_module(target)
        except ImportError:
            obj = getattr(importlib.import_module(module), attr, None)
        assert obj is not None, target

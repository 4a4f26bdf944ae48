"""mkdocs hooks that let the whole site live under ``docs/`` (config included).

mkdocs refuses a ``docs_dir`` equal to the folder holding ``mkdocs.yml``; the
repository layout is fixed (``docs/`` holds the pages *and* ``docs/mkdocs.yml``),
so ``mkdocs.yml`` declares an existing child folder to pass validation and
:func:`on_config` points ``docs_dir`` back at ``docs/`` before any file is read.
:func:`on_files` adds the tutorial notebooks from ``notebooks/`` (outside
``docs/``) under their repository path, ``notebooks/<name>.ipynb``; mkdocs-jupyter renders them with the
outputs they were saved with (nbval executes them in CI; the docs build never does).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
NOTEBOOKS = REPO / "notebooks"


def tutorial_pages() -> list[str]:
    """Site paths of the tutorial notebooks, in file-name order (``01-...``, ``02-...``)."""
    return [f"notebooks/{path.name}" for path in sorted(NOTEBOOKS.glob("*.ipynb"))]


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.docs_dir = str(DOCS)
    # The nav's "Tutorials" section lists every notebook, so adding one needs no edit here
    # (each page's title is the notebook's first heading).
    for entry in config.nav or []:
        if isinstance(entry, dict) and "Tutorials" in entry:
            entry["Tutorials"] = tutorial_pages()
    return config


@event_priority(100)  # before mkdocs-jupyter wraps every .ipynb file
def on_files(files: Files, config: MkDocsConfig) -> Files:
    # A real File rooted at the repository (not File.generated, whose src_dir is None:
    # mkdocs-jupyter reads the notebook through abs_src_path = src_dir / src_uri).
    for page in tutorial_pages():
        files.append(File(page, str(REPO), config.site_dir, config.use_directory_urls))
    return files

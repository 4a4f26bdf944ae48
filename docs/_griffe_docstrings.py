"""Griffe extension for the API reference: render asyncpipe's reST-flavoured docstrings as Markdown.

The package's docstrings are written for ``help()`` and doctest: ``>>>`` examples,
``::`` literal blocks and ``:class:`` roles. Markdown would turn ``>>>`` into nested
block quotes and ``[1, 2]`` outputs into reference links, so before mkdocstrings
renders a docstring this extension

- fences every run of doctest lines (``>>>``/``...`` and their output) as ``pycon``,
- turns a ``::``-introduced indented block into a fenced block (``python`` if it parses),
- turns ``:role:`~pkg.mod.Name``` into ```Name``` (``:role:`pkg.Name``` keeps the path),
- and picks up docstrings given by assignment (``stage.__doc__ = "..."``), which static
  analysis does not see on its own.

Only the text handed to the renderer changes; the package's docstrings stay as they are.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|exc|data|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_python(code: str) -> bool:
    """Highlight a literal block as Python only if it parses (notebook magics and trees don't)."""
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def to_markdown(text: str) -> str:
    """Rewrite one docstring (already dedented by griffe) as Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    fence: str | None = None
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if fence is not None:  # inside a fence the author wrote: copy verbatim
            out.append(line)
            if stripped.startswith(fence):
                fence = None
            i += 1
            continue
        if stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            out.append(line)
            i += 1
            continue
        if stripped.startswith(">>>"):
            pad = " " * _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(pad):] if lines[i].startswith(pad) else lines[i].strip())
                i += 1
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(_ROLE.sub(_role, head) + ":")
                    out.append("")
                block_indent = _indent(lines[j])
                block: list[str] = []
                k = j
                while k < len(lines) and (not lines[k].strip() or _indent(lines[k]) >= block_indent):
                    block.append(lines[k][block_indent:])
                    k += 1
                while block and not block[-1].strip():
                    block.pop()
                pad = " " * base
                lang = "python" if _is_python("\n".join(block)) else "text"
                out += [f"{pad}```{lang}", *(pad + b if b else "" for b in block), f"{pad}```", ""]
                i = k
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class MarkdownDocstrings(griffe.Extension):
    """Rewrite docstrings to Markdown; attach ``X.__doc__ = "..."`` docstrings to ``X``."""

    def on_object(self, *, obj: griffe.Object, loader: Any = None, **kwargs: Any) -> None:
        if obj.is_module and not obj.is_alias:
            self._assigned_docstrings(obj)  # type: ignore[arg-type]
        if obj.docstring is not None and not getattr(obj.docstring, "_asyncpipe_md", False):
            obj.docstring.value = to_markdown(obj.docstring.value)
            obj.docstring._asyncpipe_md = True  # type: ignore[attr-defined]

    @staticmethod
    def _assigned_docstrings(module: griffe.Module) -> None:
        if module.filepath is None or isinstance(module.filepath, list):
            return
        try:
            tree = ast.parse(module.filepath.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            return
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target = node.targets[0]
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "__doc__"
                and isinstance(target.value, ast.Name)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                member = module.members.get(target.value.id)
                if member is not None and not member.is_alias and member.docstring is None:
                    import inspect

                    text = to_markdown(inspect.cleandoc(node.value.value))
                    member.docstring = griffe.Docstring(text, lineno=node.lineno, parent=member)
                    member.docstring._asyncpipe_md = True  # type: ignore[attr-defined]

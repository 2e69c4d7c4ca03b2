"""Render rxvoice's docstrings in mkdocstrings: marble diagrams, reST tables, roles.

rxvoice's docstrings are Google style with a few reST constructs that read well
in ``help()`` and in an editor, but not as Markdown. This griffe extension
(``extensions:`` in ``mkdocs.yml``) rewrites each docstring of a loaded
package before mkdocstrings parses it:

- ``.. marble::`` blocks (the operators' diagrams) become fenced ``text``
  code blocks titled by their ``:alt:`` option;
- reST literal blocks (a paragraph ending in ``::``) become fenced code
  blocks, ``python`` when the block parses as Python;
- reST simple tables (``====  ====`` borders) become Markdown tables;
- the ``Example:`` section title becomes ``Examples:``, the one griffe
  parses as doctest examples;
- roles (``:class:`~rxvoice.events.PcmChunk```, ``:meth:`start```...) become
  optional cross-references: a link when the target is on the site, plain
  code otherwise, so a reference to something undocumented never breaks
  ``mkdocs build --strict``.

Fenced code blocks already in a docstring are left alone. The conversion is
idempotent: its output has none of the constructs it converts.
"""

from __future__ import annotations

import ast
import html
import itertools
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import griffe

__all__ = ["RstDocstrings", "to_markdown"]

Resolver = Callable[[str], str | None]

_MARBLE = re.compile(r"^(?P<indent>\s*)\.\. marble::\s*(?P<arg>.*?)\s*$")
_OPTION = re.compile(r"^:(?P<name>[\w-]+):\s*(?P<value>.*?)\s*$")
_BORDER = re.compile(r"^(?P<indent>\s*)=+( +=+)+\s*$")
_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|attr|mod|data|exc|obj|const|type):`(?P<body>[^`]+)`"
)
_EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_LITERAL = re.compile(r"``.+?``")
_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


def to_markdown(text: str, resolve: Resolver | None = None) -> str:
    """Rewrite a docstring's reST constructs as Markdown.

    Args:
        text: The docstring, cleaned (as ``inspect.cleandoc`` leaves it).
        resolve: Turns a role's target into the identifier of its
            documentation (``None``: no link). Without it, roles become code.

    Returns:
        The docstring in Markdown.
    """
    lines = text.splitlines()
    out: list[str] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        opening = _FENCE.match(stripped)
        if fence is not None:
            # Closed by a run of the same character, at least as long, and nothing else.
            out.append(line)
            if opening and opening[1][0] == fence[0] and len(opening[1]) >= len(fence):
                fence = None if not opening[2] else fence
            i += 1
        elif opening:
            fence = opening[1]
            out.append(line)
            i += 1
        elif _MARBLE.match(line):
            i = _marble(lines, i, out)
        elif stripped == "Example:":
            # Google style's singular title; griffe reads only "Examples:" as the section.
            out.append(line.replace("Example:", "Examples:"))
            i += 1
        elif _BORDER.match(line):
            i = _table(lines, i, out, resolve)
        elif stripped.endswith("::") and not stripped.startswith(".."):
            i = _literal(lines, i, out, resolve)
        else:
            out.append(_roles(line, resolve))
            i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _block(lines: list[str], start: int, indent: int) -> int:
    """The end of the block after ``start``: lines blank or indented deeper than ``indent``."""
    end = start
    j = start
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > indent):
        j += 1
        if lines[j - 1].strip():
            end = j
    return end


def _fenced(out: list[str], indent: str, info: str, body: list[str]) -> None:
    text = textwrap.dedent("\n".join(body)).strip("\n")
    # A fence longer than any backtick run inside, so the body cannot close it.
    ticks = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`{3,}", text))])
    if out and out[-1].strip():
        out.append("")
    out.append(f"{indent}{ticks}{info}")
    out.extend(f"{indent}{row}" if row.strip() else "" for row in text.split("\n"))
    out.append(f"{indent}{ticks}")


def _marble(lines: list[str], i: int, out: list[str]) -> int:
    match = _MARBLE.match(lines[i])
    assert match is not None
    indent = match["indent"]
    end = _block(lines, i + 1, len(indent))
    body = lines[i + 1 : end]
    options: dict[str, str] = {}
    while body and (option := _OPTION.match(body[0].strip())):
        options[option["name"]] = option["value"]
        body.pop(0)
    title = options.get("alt") or match["arg"]
    info = f' title="{html.escape(title)}"' if title else ""
    _fenced(out, indent, f"text{info}", body)
    return end


def _literal(lines: list[str], i: int, out: list[str], resolve: Resolver | None) -> int:
    line = lines[i]
    end = _block(lines, i + 1, _indent(line))
    body = lines[i + 1 : end]
    if not any(row.strip() for row in body):
        out.append(_roles(line, resolve))  # "::" with nothing under it: leave the text
        return i + 1
    before = line.rstrip()[:-2]
    if before.strip():
        # reST: "Text::" reads "Text:", "Text ::" reads "Text".
        intro = before.rstrip() if before[-1].isspace() else f"{before}:"
        out.append(_roles(intro, resolve))
    code = textwrap.dedent("\n".join(body))
    _fenced(out, " " * _indent(line), "python" if _is_python(code) else "text", body)
    return end


def _is_python(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def _table(lines: list[str], i: int, out: list[str], resolve: Resolver | None) -> int:
    match = _BORDER.match(lines[i])
    assert match is not None
    indent = match["indent"]
    columns = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[i])]
    borders = [i]
    j = i + 1
    while j < len(lines):
        if _BORDER.match(lines[j]):
            borders.append(j)
            # A header has a second border inside the table; the last one is followed by a
            # blank line (or nothing), and there are never more than three.
            if len(borders) == 3 or j + 1 == len(lines) or not lines[j + 1].strip():
                break
        elif not lines[j].strip():
            break  # a blank line before the closing border: not a table this reads
        j += 1
    if len(borders) < 2 or borders[-1] != j:
        out.append(_roles(lines[i], resolve))  # not a table after all: leave it
        return i + 1
    sections = [lines[a + 1 : b] for a, b in itertools.pairwise(borders)]
    rows = [_rows(section, columns) for section in sections]
    header, body = (rows[0], rows[1]) if len(rows) == 2 else (rows[0][:1], rows[0][1:])
    if out and out[-1].strip():
        out.append("")
    for n, row in enumerate([*header, *body]):
        cells = [_escape_pipes(_roles(cell, resolve)) for cell in row]
        out.append(f"{indent}| {' | '.join(cells)} |")
        if n == len(header) - 1:
            out.append(f"{indent}|{'---|' * len(columns)}")
    return j + 1


def _rows(section: list[str], columns: list[tuple[int, int]]) -> list[list[str]]:
    rows: list[list[str]] = []
    for line in section:
        cells = [
            line[start : columns[k + 1][0] if k + 1 < len(columns) else None].strip()
            for k, (start, _) in enumerate(columns)
        ]
        if rows and not cells[0]:  # a continuation line of the row above
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _escape_pipes(cell: str) -> str:
    # Pipes inside code spans stay (the tables extension leaves them); others are escaped.
    parts: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(cell):
        parts.append(cell[last : span.start()].replace("|", r"\|"))
        parts.append(span[0])
        last = span.end()
    parts.append(cell[last:].replace("|", r"\|"))
    return "".join(parts)


def _roles(line: str, resolve: Resolver | None) -> str:
    # A role written inside a literal (``:class:`x` ``) is an example of the syntax: keep it.
    literals = [span.span() for span in _LITERAL.finditer(line)]

    def replace(match: re.Match[str]) -> str:
        if any(start <= match.start() < end for start, end in literals):
            return match[0]
        body = match["body"].strip()
        explicit = _EXPLICIT_TITLE.match(body)
        target = explicit["target"] if explicit else body
        link = not target.startswith("!")
        target = target.lstrip("!")
        short = target.startswith("~")
        target = target.lstrip("~")
        if explicit:
            title = explicit["title"]
        else:
            title = target.rsplit(".", 1)[-1] if short else target
            if match["role"] in ("func", "meth"):
                title += "()"
        code = f"<code>{html.escape(title)}</code>"
        identifier = resolve(target) if resolve is not None and link else None
        if identifier is None:
            return code
        return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'

    return _ROLE.sub(replace, line)


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)  # type: ignore[arg-type]


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring of a loaded package with :func:`to_markdown`."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Convert the docstrings once the package is loaded (names can then be resolved)."""
        for obj in _objects(pkg):
            if obj.docstring is not None:
                resolve = _resolver(obj, loader.modules_collection)
                obj.docstring.value = to_markdown(obj.docstring.value, resolve)


def _resolver(obj: griffe.Object, collection: griffe.ModulesCollection) -> Resolver:
    """Resolve a role's target as Python would from ``obj``'s scope, then to its definition."""

    def resolve(target: str) -> str | None:
        head, _, rest = target.lstrip(".").partition(".")
        try:
            base = obj.resolve(head)
        except griffe.NameResolutionError:
            base = head  # an absolute path (rxvoice..., reactivex...) or a built-in
        path = f"{base}.{rest}" if rest else base
        try:
            found = collection.get_member(path)
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path  # outside the loaded packages: a link only if the site has it
        try:
            return str(found.final_target.path) if found.is_alias else str(found.path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return path

    return resolve

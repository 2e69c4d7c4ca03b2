"""The docs site's docstring extension (docs/_ext/rst_docstrings.py).

`make test` builds the site with `mkdocs build --strict`; these tests pin what the
extension does to the docstrings, so a diagram cannot silently render as prose.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType

import griffe
import pytest

import rxvoice.operators

ROOT = Path(__file__).resolve().parent.parent


def _load_extension() -> ModuleType:
    path = ROOT / "docs" / "_ext" / "rst_docstrings.py"
    spec = importlib.util.spec_from_file_location("rst_docstrings", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext = _load_extension()


@pytest.mark.parametrize("name", rxvoice.operators.__all__)
def test_every_operator_has_a_marble_diagram_rendered_as_a_titled_code_block(name: str):
    docstring = inspect.cleandoc(getattr(rxvoice.operators, name).__doc__ or "")
    assert ".. marble::" in docstring, f"{name} has no marble diagram"
    diagram = re.search(r"\.\. marble::\n\s+:alt: (\S+)\n\n((?:    .*\n)+)", docstring + "\n")
    assert diagram is not None and diagram[1] == name
    markdown = ext.to_markdown(docstring)
    assert ".. marble::" not in markdown and ":alt:" not in markdown
    body = inspect.cleandoc(diagram[2])
    assert f'```text title="{name}"\n{body}\n```' in markdown


def test_literal_blocks_become_fenced_code():
    text = "Use it so::\n\n    x = f(1)\n\nA tree ::\n\n    a\n    └── b\n\n::\n\n    raw text\n"
    assert ext.to_markdown(text) == (
        "Use it so:\n\n```python\nx = f(1)\n```\n\n"
        "A tree\n\n```text\na\n└── b\n```\n\n```text\nraw text\n```\n"
    )


def test_simple_tables_become_markdown_tables():
    text = (
        "Before.\n\n"
        "====  =======\n"
        "code  meaning\n"
        "====  =======\n"
        "``|`` a pipe,\n"
        "      continued\n"
        "4017  a|b\n"
        "====  =======\n\n"
        "After."
    )
    assert ext.to_markdown(text) == (
        "Before.\n\n"
        "| code | meaning |\n|---|---|\n"
        "| ``|`` | a pipe, continued |\n"
        "| 4017 | a\\|b |\n\n"
        "After."
    )


def test_a_border_line_that_is_not_a_table_is_left_alone():
    text = "==  ==\nno closing border\n\nmore"
    assert ext.to_markdown(text) == text


def test_roles_become_optional_links_or_code():
    def resolve(target: str) -> str | None:
        return {"PcmChunk": "rxvoice.events.PcmChunk"}.get(target)

    text = "A :class:`PcmChunk`, a :meth:`~rxvoice.Connection.connect` and :mod:`!os`."
    assert ext.to_markdown(text, resolve) == (
        'A <autoref identifier="rxvoice.events.PcmChunk" optional><code>PcmChunk</code>'
        "</autoref>, a <code>connect()</code> and <code>os</code>."
    )
    literal = "Write ``:class:`PcmChunk` `` for a link."
    assert ext.to_markdown(literal, resolve) == literal


def test_fenced_code_and_examples():
    text = "Example:\n    >>> 1\n\n```text\n.. marble::\n:class:`x`\n```"
    assert ext.to_markdown(text) == "Examples:\n    >>> 1\n\n```text\n.. marble::\n:class:`x`\n```"
    nested = "````md\n```python\n```\n:class:`x`\n````\n:class:`y`"
    assert ext.to_markdown(nested) == nested.replace(":class:`y`", "<code>y</code>")


def test_conversion_is_idempotent_on_every_docstring():
    package = griffe.load("rxvoice", search_paths=[ROOT], resolve_aliases=False)
    seen = 0
    stack: list[griffe.Object | griffe.Alias] = [package]
    while stack:
        obj = stack.pop()
        if obj.is_alias:
            continue
        stack.extend(obj.members.values())
        if obj.docstring is not None:
            once = ext.to_markdown(obj.docstring.value)
            assert ext.to_markdown(once) == once, obj.path
            assert ".. marble::" not in once and not re.search(r":(class|meth|func):`", once)
            seen += 1
    assert seen > 300


def test_griffe_extension_resolves_roles_to_where_things_are_defined():
    package = griffe.load(
        "rxvoice",
        search_paths=[ROOT],
        extensions=griffe.load_extensions(ext.RstDocstrings),
    )
    marbles = package["testing.marbles"]
    module_doc = marbles.docstring.value
    assert 'identifier="rxvoice.testing.marbles.voice_marbles"' in module_doc
    assert 'identifier="rxvoice.errors.UsageError" optional><code>UsageError</code>' in module_doc
    start = marbles["VoiceMarbles.start"].docstring.value
    assert 'identifier="rxvoice.testing.marbles.SUBSCRIBED"' in start
    group_by_user = package["operators.group_by_user"].docstring.value
    # rxvoice.Connection is a lazy alias; the link goes to the class's own page.
    assert 'identifier="rxvoice.connection.Connection.on_client_disconnect"' in group_by_user

"""The utterances-to-a-transcriber recipe of docs/recording.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).parents[2] / "docs" / "recording.md"
MARKER = "<!-- recipe: tests/integration/test_recording_docs.py runs this block -->"


def recipe() -> str:
    text = DOC.read_text()
    block = text.split(MARKER, 1)[1].split("```python\n", 1)[1]
    return block.split("\n```", 1)[0]


async def test_the_transcriber_recipe_transcribes_the_sandbox_speakers() -> None:
    namespace: dict[str, Any] = {"__name__": "recipe"}
    exec(compile(recipe(), str(DOC), "exec"), namespace)  # our own docs
    lines: list[str] = []
    await namespace["main"](seconds=4.0, say=lines.append)
    assert lines, "no utterance in 4 s of conversation"
    pattern = re.compile(r"\[ *(\d+\.\d\d) - *(\d+\.\d\d)\] \d+: \((\d+\.\d) s of speech\)")
    for line in lines:
        match = pattern.fullmatch(line)
        assert match is not None, line
        start, end, seconds = (float(g) for g in match.groups())
        assert 0 <= start < end and abs((end - start) - seconds) <= 0.06

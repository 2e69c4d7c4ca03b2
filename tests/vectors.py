"""Loads the captured vectors in tests/data (hex strings become bytes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"


def _unhex(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unhex(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            return value
    return value


def load(name: str) -> dict[str, Any]:
    """Return the ``vectors`` of ``tests/data/<name>.json`` with hex decoded to bytes."""
    raw = json.loads((DATA / f"{name}.json").read_text())
    return _unhex(raw["vectors"])  # type: ignore[no-any-return]


RTP = load("rtp-discordjs")
DAVE = load("dave-davey")

"""The many-guilds example runs end to end: bots, NATS, workers, a WAV per utterance."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


async def test_the_many_guilds_example_runs(tmp_path: Path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "many_guilds" / "run.py"),
        "--seconds=2",
        f"--out={tmp_path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 100)
    text = output.decode()
    assert process.returncode == 0, text
    assert text.count("[ok ]") == 4  # two guilds, two speakers each, at their own pitch
    assert len(list(tmp_path.glob("*/*/*.wav"))) >= 4

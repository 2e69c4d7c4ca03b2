"""The README's first example, run as a user would run it, against the sandbox."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox

README = Path(__file__).resolve().parent.parent / "README.md"

# Points the example at the sandbox: the only change is where rxvoice.connect
# connects (a user testing their own bot does the same) and a shorter recording.
RUNNER = """
import functools, os, sys
import rxvoice

rxvoice.connect = functools.partial(
    rxvoice.connect, gateway_url=os.environ["SANDBOX_GATEWAY"], ca_file=os.environ["SANDBOX_CA"]
)
code = open(sys.argv[1]).read()
assert "asyncio.sleep(60)" in code
code = code.replace("asyncio.sleep(60)", "asyncio.sleep(3)")
exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
"""


def first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match is not None
    return match.group(1)


async def test_the_readme_example_records_every_speaker(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(first_python_block())
    async with Sandbox(speakers=2) as sb:
        env = {
            **os.environ,
            "DISCORD_TOKEN": sb.bot_token,
            "GUILD_ID": sb.guild_id,
            "CHANNEL_ID": sb.channel_id,
            "SANDBOX_GATEWAY": sb.gateway_url,
            "SANDBOX_CA": str(sb.ca_file),
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUNNER,
            str(example),
            cwd=tmp_path,  # a fresh folder: out/ does not exist yet
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        speakers = list(sb.speakers)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr, stderr.decode()
    assert b"speaking" in stdout  # the on_speaking line of the example
    for speaker in speakers:
        pcm, rate = read_wav(tmp_path / "out" / f"{speaker.user_id}.wav")
        assert rate == 48_000 and pcm.shape[0] >= 25 * 960
        assert dominant_frequency(pcm) == pytest.approx(speaker.frequency, abs=10)

"""``python -m rxvoice record`` as a user runs it: a subprocess against the sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from rxvoice.audio.dsp import dbfs
from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox

pytestmark = pytest.mark.sandbox(speakers=2)


async def start_record(
    sandbox: Sandbox, *options: str, token: str | None = None
) -> asyncio.subprocess.Process:
    env = {**os.environ, "DISCORD_TOKEN": token or sandbox.bot_token}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rxvoice",
        "record",
        "--guild",
        sandbox.guild_id,
        "--channel",
        sandbox.channel_id,
        "--gateway-url",
        sandbox.gateway_url,
        "--ca-file",
        sandbox.ca_file,
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def read_until(process: asyncio.subprocess.Process, needle: str, count: int = 1) -> str:
    """Read stdout lines until ``count`` of them contain ``needle``; return what was read."""
    assert process.stdout is not None
    seen, text = 0, ""
    async with asyncio.timeout(20):
        while seen < count:
            line = (await process.stdout.readline()).decode()
            assert line, f"the recorder ended early: {text}"
            text += line
            seen += needle in line
    return text


def loud_blocks(pcm: np.ndarray) -> set[int]:  # type: ignore[type-arg]
    return {i for i in range(pcm.shape[0] // 960) if dbfs(pcm[i * 960 : (i + 1) * 960]) > -30}


async def test_ctrl_c_stops_the_recording_with_valid_aligned_files(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    out = tmp_path / "new" / "folder"
    process = await start_record(sandbox, "--out", str(out))
    # Not a terminal: one status line per second; two of them: two seconds recorded.
    await read_until(process, "speaking:", count=2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr.decode()
    assert "3 files in" in stdout.decode()

    speakers = {s.user_id: s.frequency for s in sandbox.speakers}
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{u}.wav" for u in speakers] + ["mix.wav"])
    files = {p.stem: read_wav(p)[0] for p in out.iterdir()}
    assert len({pcm.shape for pcm in files.values()}) == 1  # one timeline
    mix = loud_blocks(files["mix"])
    for user_id, frequency in speakers.items():
        pcm = files[user_id]
        assert dominant_frequency(pcm) == pytest.approx(frequency, abs=10)
        # Where a user is loud in their file, the mix is loud at the same place.
        mine = loud_blocks(pcm)
        assert len(mine) > 25 and len(mine & mix) >= 0.9 * len(mine)


async def test_seconds_users_and_files_that_were_there(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "mix.wav").write_bytes(b"an older recording")
    ada, ben = sandbox.speakers
    process = await start_record(
        sandbox, "--seconds", "1.5", "--users", f"{ada.user_id}=Ada", "--out", str(tmp_path)
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"Ada-{ada.user_id}.wav",
        "mix-2.wav",
        "mix.wav",
    ]
    assert (tmp_path / "mix.wav").read_bytes() == b"an older recording"
    pcm, _ = read_wav(tmp_path / f"Ada-{ada.user_id}.wav")
    assert pcm.shape[0] >= 1.4 * 48_000
    assert f"{ben.user_id}.wav" not in stdout.decode()


async def test_a_refused_token_is_one_line_and_exit_1(sandbox: Sandbox, tmp_path: Path) -> None:
    process = await start_record(sandbox, "--out", str(tmp_path), token="not-a-token")
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert stderr.decode().count("\n") == 1 and stderr.decode().startswith("rxvoice record: error:")
    assert list(tmp_path.iterdir()) == []

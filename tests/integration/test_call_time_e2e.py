"""Call time against the sandbox: utterances at the right times, the README's recording."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rxvoice import operators as vops
from rxvoice.events import Utterance
from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox, Speaker

from .conftest import Join
from .helpers import Recorder

TOLERANCE = 0.05  # loopback delivery, decoding and a loaded machine


async def test_utterances_cut_the_speakers_talk_spurts_at_their_call_times(
    sandbox: Sandbox, join: Join
) -> None:
    ada = await sandbox.add_speaker(300.0, talk=False)
    ben = await sandbox.add_speaker(450.0, talk=False)
    conn = await join()
    await sandbox.wait_for(lambda: (d := sandbox.dave()) is not None and len(d.members) == 3)
    cut = Recorder(conn.on_audio_frame.pipe(vops.decode_opus(), vops.utterances(post_roll=0.0)))
    loop = asyncio.get_running_loop()
    spurts: list[tuple[str, float, float]] = []

    async def say(speaker: Speaker, frames: int) -> None:
        began = loop.time()
        await speaker.talk(frames)
        spurts.append((speaker.user_id, began, began + frames * 0.02))
        await speaker.pause()  # five silence frames, as clients do

    # Ada talks, pauses 0.6 s (her RTP timestamp stops meanwhile), talks
    # again while Ben starts: the utterances must sit where the audio was heard.
    await say(ada, 25)
    await asyncio.sleep(0.6)  # a pause in the script, not a wait for an event
    await asyncio.gather(say(ada, 30), say(ben, 20))
    await cut.wait_for(lambda items: len(items) >= 3)

    heard: list[Utterance] = cut.items
    assert sorted(u.user_id or "" for u in heard) == sorted([ada.user_id] * 2 + [ben.user_id])
    for user_id, began, ended in spurts:
        u = min((u for u in heard if u.user_id == user_id), key=lambda u: abs(u.start - began))
        assert u.start == pytest.approx(began, abs=TOLERANCE)
        assert u.end == pytest.approx(ended, abs=TOLERANCE)
        assert u.sample_rate == 16_000 and u.pcm.shape[1] == 1
    second = max((u for u in heard if u.user_id == ada.user_id), key=lambda u: u.start)
    assert dominant_frequency(second.pcm[:, 0], 16_000) == pytest.approx(300, abs=10)


@pytest.mark.sandbox(speakers=3)
async def test_the_readme_quick_start_records_every_speaker(
    sandbox: Sandbox, join: Join, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a fresh folder: out/ does not exist
    conn = await join(connect=False)
    frames = Recorder(conn.on_audio_frame)
    # The README's shape, as is: no on_error, a relative folder to create.
    conn.on_audio_frame.pipe(
        vops.decode_opus(),
        vops.write_wav("out/{user_id}.wav"),
    ).subscribe()
    await conn.connect()
    speakers = {s.user_id for s in sandbox.speakers}
    await frames.wait_for(
        lambda fs: all(sum(f.user_id == s for f in fs) >= 25 for s in speakers), timeout=20
    )
    await conn.close()
    for speaker in sandbox.speakers:
        pcm, rate = read_wav(tmp_path / "out" / f"{speaker.user_id}.wav")
        assert rate == 48_000 and pcm.shape[0] >= 25 * 960
        assert dominant_frequency(pcm) == pytest.approx(speaker.frequency, abs=10)

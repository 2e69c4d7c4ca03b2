"""Sandbox speakers → rxvoice.Connection → operators → WAV files that hold what they said."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reactivex import GroupedObservable, Observable
from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler

from rxvoice import operators as vops
from rxvoice.events import AudioFrame
from rxvoice.testing.packets import dominant_frequency, read_wav
from rxvoice.testing.sandbox import Sandbox

from .conftest import Join
from .helpers import Recorder

FRAMES = 50  # one second of talk per speaker


def band_energy(pcm: np.ndarray, frequency: float) -> float:  # type: ignore[type-arg]
    """Share of the spectrum's energy within 20 Hz of ``frequency``."""
    x = pcm.astype(np.float64).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / 48_000)
    return float(spectrum[np.abs(freqs - frequency) < 20].sum() / spectrum.sum())


async def test_speakers_to_per_user_and_mixed_wav_files(
    sandbox: Sandbox, join: Join, tmp_path: Path
) -> None:
    alice = await sandbox.add_speaker(440.0, talk=False)
    bob = await sandbox.add_speaker(700.0, talk=False)
    conn = await join()
    await sandbox.wait_for(lambda: (d := sandbox.dave()) is not None and len(d.members) == 3)
    # The mix's 20 ms ticks run on the event loop.
    scheduler = AsyncIOScheduler(asyncio.get_running_loop())

    def record(user: GroupedObservable[str | None, AudioFrame]) -> Observable[Path]:
        return user.pipe(vops.decode_opus(), vops.write_wav(str(tmp_path / "{user_id}.wav")))

    # Per user: a group each, ended (file closed) when the user leaves.
    per_user: Observable[Any] = conn.on_audio_frame.pipe(
        vops.group_by_user(conn.on_client_disconnect), ops.flat_map(record)
    )
    mixed: Observable[Any] = conn.on_audio_frame.pipe(
        vops.decode_opus(), vops.mix(scheduler=scheduler), vops.write_wav(tmp_path / "mix.wav")
    )
    files = Recorder(per_user)
    mix_file = Recorder(mixed)
    frames = Recorder(conn.on_audio_frame)

    await asyncio.gather(alice.talk(FRAMES), bob.talk(FRAMES))
    speakers = {alice.user_id, bob.user_id}
    await frames.wait_for(lambda fs: sum(f.user_id in speakers for f in fs) >= 2 * FRAMES)

    # Alice leaves: her group completes and her file is written at once.
    await alice.leave()
    await files.wait_for(lambda paths: tmp_path / f"{alice.user_id}.wav" in paths)
    assert tmp_path / f"{bob.user_id}.wav" not in files.items

    await conn.close()  # completes the streams: the other files close
    await files.wait_for(lambda _: files.completed)
    await mix_file.wait_for(lambda _: mix_file.completed)
    assert sorted(files.items) == sorted(tmp_path / f"{s}.wav" for s in speakers)
    assert mix_file.items == [tmp_path / "mix.wav"]

    for speaker in (alice, bob):
        pcm, rate = read_wav(tmp_path / f"{speaker.user_id}.wav")
        assert rate == 48_000 and pcm.shape == (FRAMES * 960, 2)
        assert dominant_frequency(pcm) == pytest.approx(speaker.frequency, abs=5)
        assert band_energy(pcm, speaker.frequency) > 0.9
    mix, rate = read_wav(tmp_path / "mix.wav")
    assert rate == 48_000 and mix.shape[0] >= FRAMES * 960
    shares = [band_energy(mix, s.frequency) for s in (alice, bob)]
    assert all(share > 0.3 for share in shares) and sum(shares) > 0.9

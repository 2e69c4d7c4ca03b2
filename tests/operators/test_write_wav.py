"""write_wav: per-user and mix files, finalised on completion, error and dispose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reactivex.subject import Subject

from rxvoice import operators as vops
from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.testing.marbles import values, voice_marbles
from rxvoice.testing.packets import dominant_frequency, read_wav


def test_one_file_per_user_holds_exactly_their_audio(tmp_path: Path):
    with voice_marbles() as m:
        source = m.hot("-0-b0-1-b1-2-b2-|").pipe(vops.decode_opus())
        decoded: list[PcmChunk] = []
        pipeline = source.pipe(
            vops.write_wav(str(tmp_path / "{user_id}-{ssrc}.wav")),
        )
        source.subscribe(decoded.append)
        result = m.start(pipeline, describe=False)
    paths = values(result)
    assert sorted(p.name for p in paths) == ["1001-1.wav", "1002-2.wav"]
    assert result[-1].time == 260  # emitted on completion
    for path, user, tone in (
        (tmp_path / "1001-1.wav", "1001", 440),
        (tmp_path / "1002-2.wav", "1002", 660),
    ):
        pcm, rate = read_wav(path)
        assert rate == 48_000 and pcm.shape == (3 * 960, 2)
        expected = np.concatenate([c.pcm for c in decoded if c.user_id == user])
        assert np.array_equal(pcm, expected)
        assert dominant_frequency(pcm) == pytest.approx(tone, abs=25)


def test_the_mix_goes_to_one_plain_path(tmp_path: Path):
    target = tmp_path / "mix.wav"
    with voice_marbles() as m:
        pipeline = m.hot("-(0,b0)-(1,b1)-|").pipe(
            vops.decode_opus(), vops.mix(), vops.to_mono(), vops.write_wav(target)
        )
        assert values(m.start(pipeline, describe=False)) == [target]
    pcm, rate = read_wav(target)
    assert rate == 48_000 and pcm.shape[1] == 1 and pcm.shape[0] % 960 == 0


def test_a_function_chooses_the_path_and_its_errors_end_the_pipeline(tmp_path: Path):
    boom = RuntimeError("boom")

    def path_of(user_id: str | None) -> Path:
        if user_id == "1002":
            raise boom
        return tmp_path / f"u{user_id}.wav"

    with voice_marbles(payload="silence") as m:
        result = m.start(m.hot("-0-b0-1-|").pipe(vops.decode_opus(), vops.write_wav(path_of)))
        assert result == m.exp("---#", error=boom)
    pcm, _ = read_wav(tmp_path / "u1001.wav")  # closed and readable after the error
    assert pcm.shape == (960, 2)


def test_two_streams_on_one_plain_path_is_a_usage_error(tmp_path: Path):
    with voice_marbles(payload="silence") as m:
        result = m.start(
            m.hot("-0-b0-|").pipe(vops.decode_opus(), vops.write_wav(tmp_path / "x.wav"))
        )
    assert result[-1].value.kind == "E" and isinstance(result[-1].value.exception, UsageError)


def test_disposing_finalises_the_files(tmp_path: Path):
    subject: Subject[PcmChunk] = Subject()
    target = tmp_path / "{user_id}.wav"
    subscription = subject.pipe(vops.write_wav(str(target))).subscribe()
    for n in range(3):
        subject.on_next(PcmChunk("7", 7, n * 960, np.full((960, 2), n, np.int16)))
    subscription.dispose()
    pcm, _ = read_wav(tmp_path / "7.wav")
    assert pcm.shape == (2880, 2) and pcm[-1, 0] == 2


def test_a_format_change_is_an_error(tmp_path: Path):
    subject: Subject[PcmChunk] = Subject()
    errors: list[Exception] = []
    subject.pipe(vops.write_wav(tmp_path / "a.wav")).subscribe(on_error=errors.append)
    subject.on_next(PcmChunk("7", 7, 0, np.zeros((960, 2), np.int16)))
    subject.on_next(PcmChunk("7", 7, 960, np.zeros((320, 2), np.int16), 16_000))
    assert len(errors) == 1 and isinstance(errors[0], UsageError)


def test_a_failure_to_finish_a_file_is_an_error_not_a_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import wave

    def full_disk(self: wave.Wave_write) -> None:
        self._file = None  # type: ignore[attr-defined]  # as the real close() does, finally
        raise OSError(28, "No space left on device")

    with voice_marbles(payload="silence") as m:
        pipeline = m.hot("-0-b0-|").pipe(
            vops.decode_opus(), vops.write_wav(str(tmp_path / "{user_id}.wav"))
        )
        monkeypatch.setattr(wave.Wave_write, "close", full_disk)
        result = m.start(pipeline, describe=False)
    assert result[-1].value.kind == "E"
    assert "No space left" in str(result[-1].value.exception)


def test_a_returning_user_gets_a_second_file_with_the_documented_pattern(tmp_path: Path):
    import itertools

    from reactivex import operators as ops

    from rxvoice.events import ClientDisconnect

    visits = itertools.count(1)

    def record(user):  # as in docs/operators.md
        name = tmp_path / f"{user.key}-{next(visits)}.wav"
        return user.pipe(vops.decode_opus(), vops.write_wav(name))

    with voice_marbles(payload="silence") as m:
        frames = m.hot("-0-1-2-3-4-5-|")
        leaves = m.hot("------L-------", {"L": ClientDisconnect("1001")})
        pipeline = frames.pipe(vops.group_by_user(leaves), ops.flat_map(record))
        paths = values(m.start(pipeline, describe=False))
    assert [p.name for p in paths] == ["1001-1.wav", "1001-2.wav"]
    assert read_wav(paths[0])[0].shape == (3 * 960, 2)  # frames 0-2 before the leave
    assert read_wav(paths[1])[0].shape == (3 * 960, 2)  # frames 3-5 after

"""write_timeline: per-user WAVs on the call timeline, never replacing a file; write_wav folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import reactivex
from reactivex import operators as ops
from reactivex.subject import Subject

from rxvoice import operators as vops
from rxvoice.events import PcmChunk
from rxvoice.operators._timeline import file_stem
from rxvoice.streams import EventStream
from rxvoice.testing.marbles import values, voice_marbles
from rxvoice.testing.packets import dominant_frequency, read_wav


def level_chunk(user: str | None, time: float, level: int, samples: int = 960) -> PcmChunk:
    return PcmChunk(
        user, None if user is None else 1, 0, np.full((samples, 2), level, np.int16), time=time
    )


def test_files_are_placed_on_the_call_timeline_and_padded_to_one_length(tmp_path: Path):
    lookup = {
        "a": level_chunk("1001", 10.00, 5),
        "A": level_chunk("1001", 10.02, 6),
        "b": level_chunk("1002", 10.10, 7),  # joins 100 ms in
        "c": level_chunk("1001", 10.50, 8),  # a new talk spurt after a pause
    }
    with voice_marbles() as m:
        source = m.hot("-a-A-b-c-|", lookup)
        paths = values(m.start(source.pipe(vops.write_timeline(tmp_path)), describe=False))
    assert sorted(p.name for p in paths) == ["1001.wav", "1002.wav"]
    a, rate = read_wav(tmp_path / "1001.wav")
    b, _ = read_wav(tmp_path / "1002.wav")
    assert rate == 48_000 and a.shape == b.shape == (round(0.52 * 48_000), 2)
    # Sample k was heard at 10.0 + k / 48000.
    assert a[0, 0] == 5 and a[960, 0] == 6 and a[1920:24_000].max() == 0 and a[24_000, 0] == 8
    assert b[:4800].max() == 0 and b[4800, 0] == 7 and b[5760:].max() == 0


def test_start_labels_the_mix_and_overlaps(tmp_path: Path):
    lookup = {
        "a": level_chunk("1001", 4.00, 1),  # before start: dropped
        "b": level_chunk("1001", 5.01, 2),  # half before start
        "o": level_chunk("1001", 5.02, 3),  # overlaps b's second half by 10 ms
        "m": level_chunk(None, 5.00, 9),
        "x": level_chunk("1003", 5.00, 4),
    }
    labels = {"1001": "Ada Lovelace", "1003": "../../etc"}
    with voice_marbles() as m:
        source = m.hot("-a-b-m-o-x-|", lookup)
        sink = vops.write_timeline(tmp_path / "rec", start=5.0, labels=labels)
        paths = values(m.start(source.pipe(sink), describe=False))
    assert sorted(p.name for p in paths) == ["Ada_Lovelace-1001.wav", "etc-1003.wav", "mix.wav"]
    ada, _ = read_wav(tmp_path / "rec" / "Ada_Lovelace-1001.wav")
    assert ada[:480].max() == 0 and ada[480, 0] == 2 and ada[1439, 0] == 2 and ada[1440, 0] == 3
    assert ada.shape[0] == 480 + 960 + 480  # b, then o's part after b
    mix, _ = read_wav(tmp_path / "rec" / "mix.wav")
    assert mix.shape == ada.shape and mix[0, 0] == 9


def test_file_stems():
    def stem(user: str | None, ssrc: int | None, labels=None) -> str:  # type: ignore[no-untyped-def]
        return file_stem(PcmChunk(user, ssrc, 0, np.zeros((1, 1), np.int16)), labels)

    assert stem("1", 5) == "1" and stem(None, None) == "mix" and stem(None, 7) == "ssrc-7"
    assert stem("1", 5, {"1": "Zoë 🎤"}) == "Zoë-1"
    assert stem("1", 5, lambda user: None) == "1"
    assert stem("1", 5, {"1": "x" * 100}) == "x" * 40 + "-1"


def test_existing_files_are_never_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    mine = tmp_path / "1001.wav"
    mine.write_bytes(b"my song")
    (tmp_path / "1001-2.wav").write_bytes(b"my other song")
    lookup = {"a": level_chunk("1001", 1.0, 3)}
    with caplog.at_level(logging.WARNING, "rxvoice.operators"), voice_marbles() as m:
        sink = vops.write_timeline(tmp_path)
        [path] = values(m.start(m.hot("-a-|", lookup).pipe(sink), describe=False))
    assert path.name == "1001-3.wav" and read_wav(path)[0][0, 0] == 3
    assert mine.read_bytes() == b"my song"
    assert (tmp_path / "1001-2.wav").read_bytes() == b"my other song"
    assert "1001.wav exists and is kept: writing 1001-3.wav instead" in caplog.text


def test_a_decoded_call_and_its_mix_line_up(tmp_path: Path):
    # a talks, then b after a pause; the files (and the mix through the same
    # sink) all start at a's first frame and have one length.
    with voice_marbles() as m:
        pcm = m.hot("-0(1)(2)(3)--------(b0)(b1)(b2)-|").pipe(vops.decode_opus(), ops.share())
        both = reactivex.merge(pcm, pcm.pipe(vops.mix()))
        m.start(both.pipe(vops.write_timeline(tmp_path)))
    a, _ = read_wav(tmp_path / "1001.wav")
    b, _ = read_wav(tmp_path / "1002.wav")
    mix, _ = read_wav(tmp_path / "mix.wav")
    assert a.shape == b.shape == mix.shape
    assert dominant_frequency(a[: 4 * 960]) == pytest.approx(440, abs=25)
    assert np.abs(b[: 12 * 960]).max() == 0 and np.abs(b[12 * 960 : 15 * 960]).max() > 1000
    # Each user's audio sits at the same samples in the mix (which has nothing
    # else there).
    assert np.array_equal(mix[12 * 960 : 15 * 960], b[12 * 960 : 15 * 960])
    assert np.array_equal(mix[: 4 * 960], a[: 4 * 960])


def test_write_wav_creates_its_folder(tmp_path: Path):
    with voice_marbles(payload="silence") as m:
        sink = vops.write_wav(str(tmp_path / "new" / "deeper" / "{user_id}.wav"))
        [path] = values(m.start(m.hot("-0-1-|").pipe(vops.decode_opus(), sink), describe=False))
    assert path == tmp_path / "new" / "deeper" / "1001.wav" and read_wav(path)[0].shape[0] == 1920


def test_a_sink_that_cannot_write_errors_its_pipeline(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")  # a file where the folder should be
    errors: list[Exception] = []
    subject: Subject[PcmChunk] = Subject()
    for sink in (vops.write_wav(str(blocker / "{user_id}.wav")), vops.write_timeline(blocker)):
        subject.pipe(sink).subscribe(on_error=errors.append)
    subject.on_next(level_chunk("1", 0.0, 1))
    assert len(errors) == 2 and all(isinstance(e, OSError) for e in errors)


def test_the_stream_says_what_happened_to_a_subscriber(caplog: pytest.LogCaptureFixture):
    stream: EventStream[PcmChunk] = EventStream()
    got: list[PcmChunk] = []
    stream.pipe(vops.write_wav("/dev/null/x/{user_id}.wav")).subscribe()  # no on_error
    stream.subscribe(got.append)

    def broken(_: PcmChunk) -> None:
        raise RuntimeError("a bug in a callback")

    stream.subscribe(broken)
    with caplog.at_level(logging.ERROR, "rxvoice.streams"):
        stream.on_next(level_chunk("1", 0.0, 1))
        stream.on_next(level_chunk("1", 0.02, 1))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("a subscriber's pipeline ended with this error")
    assert "unsubscribed" in messages[0] and "on_error" in messages[0]
    assert (
        messages[1:]
        == ["a subscriber raised in on_next; it stays subscribed and gets the next values"] * 2
    )
    assert len(got) == 2 and len(stream.observers) == 2


def test_an_abandoned_sink_still_leaves_a_readable_file(tmp_path: Path):
    import gc

    subject: Subject[PcmChunk] = Subject()
    subject.pipe(vops.write_wav(tmp_path / "x.wav")).subscribe()
    subject.on_next(level_chunk("1", 0.0, 7))
    del subject  # never completed nor disposed
    gc.collect()
    pcm, _ = read_wav(tmp_path / "x.wav")
    assert pcm.shape == (960, 2) and pcm[0, 0] == 7

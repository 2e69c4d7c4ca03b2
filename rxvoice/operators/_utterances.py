"""The ``utterances`` operator: each user's speech cut into utterances, with pre-roll."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from reactivex import Observable, abc

from rxvoice.audio.dsp import VoiceActivityDetector, dbfs, resample, to_mono
from rxvoice.audio.opus import FRAME_DURATION, SAMPLES_PER_FRAME
from rxvoice.errors import UsageError
from rxvoice.events import AudioGap, PcmChunk, Utterance
from rxvoice.operators._common import RTP_RATE, PcmArray
from rxvoice.operators._vad import frames_of, per_speaker
from rxvoice.protocol.seq import ts_add, ts_diff


class _Frame(NamedTuple):
    number: int  # the detector's frame index
    time: float  # call time of its first sample
    end: float  # call time just after it
    chunk: PcmChunk | None  # None: a missing packet (a gap marker)


class UtteranceCutter:
    """Cuts one user's chunks into utterances (no reactivex, no timers).

    A :class:`~rxvoice.audio.dsp.VoiceActivityDetector` fed one chunk at a
    time says when speech starts (after ``start_frames`` loud chunks; the
    utterance then begins ``pre_roll`` seconds before the first of them, from
    the chunks kept meanwhile) and stops (after ``hangover_frames`` quiet
    ones; the utterance ends ``post_roll`` seconds after the last loud chunk,
    or with the audio received). Concealed chunks and gap markers count as
    quiet, but concealed audio is kept. Audio is placed by call time
    (:attr:`~rxvoice.events.PcmChunk.time`), so a stretch with no packets is
    silence and sample ``k`` of an utterance was heard at ``start + k / rate``.
    Speech longer than ``max_duration`` is split there: the part is emitted
    with ``continues=True`` and the next one starts where it ends.
    Utterances of one user never overlap.

    Args:
        user_id: Whose chunks these are.
        threshold_dbfs: Level separating speech from background.
        start_frames: Loud chunks in a row that start speech.
        hangover_frames: Quiet chunks in a row that end it.
        pre_roll: Seconds of audio kept before the first loud chunk.
        post_roll: Seconds kept after the last loud chunk (at most what was
            received before speech was declared over).
        max_duration: The longest utterance, in seconds.
        sample_rate: The rate of the utterances (``None``: the chunks').
        mono: Average the channels into one.

    Raises:
        UsageError: If an argument is out of range.
    """

    __slots__ = (
        "_detector",
        "_end_time",
        "_end_ts",
        "_floor",
        "_format",
        "_history",
        "_last_loud_end",
        "_max_duration",
        "_mono",
        "_parts",
        "_post_roll",
        "_pre_roll",
        "_rate",
        "_ssrc",
        "_start",
        "user_id",
    )

    def __init__(
        self,
        user_id: str | None,
        *,
        threshold_dbfs: float = -45.0,
        start_frames: int = 2,
        hangover_frames: int = 15,
        pre_roll: float = 0.2,
        post_roll: float = 0.2,
        max_duration: float = 30.0,
        sample_rate: int | None = 16_000,
        mono: bool = True,
    ) -> None:
        check_utterance_arguments(pre_roll, post_roll, max_duration, sample_rate)
        self._detector = VoiceActivityDetector(
            threshold_dbfs=threshold_dbfs,
            start_frames=start_frames,
            hangover_frames=hangover_frames,
        )
        self.user_id = user_id
        self._pre_roll = pre_roll
        self._post_roll = post_roll
        self._max_duration = max_duration
        self._rate = sample_rate
        self._mono = mono
        self._format: tuple[int, int] | None = None  # (rate, channels) of the chunks
        self._history: deque[_Frame] = deque()  # recent frames while not speaking
        self._parts: list[PcmChunk] = []  # the audio of the utterance in progress
        self._start: float | None = None  # its start; None while not speaking
        self._ssrc: int | None = None
        self._floor = -math.inf  # the end of the last utterance emitted
        self._end_ts = 0  # RTP timestamp just after the last frame fed
        self._end_time = 0.0  # its call time
        self._last_loud_end = 0.0

    @property
    def speaking(self) -> bool:
        """Whether an utterance is in progress."""
        return self._start is not None

    def push(self, item: PcmChunk | AudioGap) -> list[Utterance]:
        """Take the next chunk (or gap marker) of the user.

        Returns:
            The utterances this completes (usually none; one when speech
            stops or reaches ``max_duration``).

        Raises:
            UsageError: If the chunk's rate or channel count differs from the
                user's earlier chunks.
        """
        out: list[Utterance] = []
        if isinstance(item, AudioGap):
            for k in range(frames_of(item, self._detector.hangover_frames)):
                ts = ts_add(item.timestamp, k * SAMPLES_PER_FRAME)
                time = self._end_time + ts_diff(ts, self._end_ts) / RTP_RATE
                self._end_ts = ts_add(ts, SAMPLES_PER_FRAME)
                self._feed(None, time, time + FRAME_DURATION, out)
            return out
        layout = (item.sample_rate, item.channels)
        if self._format is None:
            self._format = layout
        elif layout != self._format:
            raise UsageError(
                f"utterances: a chunk of {layout[0]} Hz x {layout[1]} among "
                f"{self._format[0]} Hz x {self._format[1]} chunks of the same user"
            )
        self._end_ts = ts_add(item.timestamp, item.samples * RTP_RATE // item.sample_rate)
        self._feed(item, item.time, item.time + item.duration, out)
        return out

    def silence(self) -> list[Utterance]:
        """The user stopped sending while speaking: end the utterance now."""
        return self.flush()

    def flush(self) -> list[Utterance]:
        """End the utterance in progress, if any, with the audio received."""
        if self._start is None:
            return []
        utterance = self._cut(min(self._last_loud_end + self._post_roll, self._end_time))
        self._stop()
        return [utterance]

    # -- internals ---------------------------------------------------------

    def _feed(self, chunk: PcmChunk | None, time: float, end: float, out: list[Utterance]) -> None:
        detector = self._detector
        frame = _Frame(detector.frames, time, end, chunk)
        self._end_time = end
        # Concealed audio is a guess for a missing packet: quiet, but kept.
        level = dbfs(chunk.pcm) if chunk is not None and not chunk.concealed else -math.inf
        change = detector.update_level(level)
        if level >= detector.threshold_dbfs:
            self._last_loud_end = end
        if self._start is None:
            history = self._history
            history.append(frame)
            # Keep the onset's frames and the pre-roll before them.
            horizon = time - self._pre_roll - detector.start_frames * (end - time)
            while len(history) > detector.start_frames and history[0].end < horizon:
                history.popleft()
            if change is not None and change.speaking:
                self._begin(change.frame)
        elif chunk is not None:
            self._parts.append(chunk)
        if change is not None and not change.speaking:
            out.extend(self.flush())
            return
        start = self._start
        while start is not None and self._end_time - start >= self._max_duration:
            cut = start + self._max_duration
            out.append(self._cut(cut, continues=True))
            self._parts = [c for c in self._parts if c.time + c.duration > cut]
            start = self._start = cut

    def _begin(self, onset_index: int) -> None:
        onset = next(f for f in self._history if f.number == onset_index)
        # Pre-roll from the audio there is: not before the user's first frame kept.
        self._start = max(onset.time - self._pre_roll, self._history[0].time, self._floor)
        self._parts = [f.chunk for f in self._history if f.chunk is not None]
        self._ssrc = onset.chunk.ssrc if onset.chunk is not None else None
        self._history.clear()

    def _stop(self) -> None:
        self._start = None
        self._parts = []
        self._detector.reset()

    def _cut(self, end: float, *, continues: bool = False) -> Utterance:
        """The utterance in progress from its start to ``end``, placed by call time."""
        start = self._start
        assert start is not None and self._format is not None
        rate, channels = self._format
        length = max(0, round((end - start) * rate))
        pcm: PcmArray = np.zeros((length, channels), np.int16)
        for chunk in self._parts:
            offset = round((chunk.time - start) * rate)
            audio = chunk.pcm.reshape(chunk.samples, channels)
            first, last = max(0, -offset), min(chunk.samples, length - offset)
            if first < last:
                pcm[offset + first : offset + last] = audio[first:last]
        if self._mono and channels > 1:
            pcm = to_mono(pcm).reshape(-1, 1)
        out_rate = self._rate or rate
        if out_rate != rate:
            pcm = resample(pcm, rate, out_rate)
        self._floor = end
        return Utterance(
            self.user_id,
            self._ssrc,
            start,
            start + pcm.shape[0] / out_rate,
            pcm,
            out_rate,
            continues,
        )


def check_utterance_arguments(
    pre_roll: float, post_roll: float, max_duration: float, sample_rate: int | None
) -> None:
    """Raise :class:`UsageError` for an out-of-range argument of ``utterances``."""
    if pre_roll < 0 or post_roll < 0:
        raise UsageError("pre_roll and post_roll must not be negative")
    if not max_duration > pre_roll + FRAME_DURATION:
        raise UsageError(f"max_duration must be longer than pre_roll + 20 ms, got {max_duration}")
    if sample_rate is not None and sample_rate < 1:
        raise UsageError(f"sample_rate must be positive, got {sample_rate}")


def utterances_(
    threshold_dbfs: float,
    start_frames: int,
    hangover_frames: int,
    pre_roll: float,
    post_roll: float,
    max_duration: float,
    sample_rate: int | None,
    mono: bool,
    silence_timeout: float | None,
    scheduler: abc.SchedulerBase | None,
) -> Callable[[Observable[PcmChunk | AudioGap]], Observable[Utterance]]:
    check_utterance_arguments(pre_roll, post_roll, max_duration, sample_rate)
    VoiceActivityDetector(start_frames=start_frames, hangover_frames=hangover_frames)
    timeout = hangover_frames * FRAME_DURATION if silence_timeout is None else silence_timeout

    def new(item: PcmChunk | AudioGap) -> UtteranceCutter:
        return UtteranceCutter(
            item.user_id,
            threshold_dbfs=threshold_dbfs,
            start_frames=start_frames,
            hangover_frames=hangover_frames,
            pre_roll=pre_roll,
            post_roll=post_roll,
            max_duration=max_duration,
            sample_rate=sample_rate,
            mono=mono,
        )

    return per_speaker(new, timeout, scheduler)


__all__ = ["UtteranceCutter", "utterances_"]

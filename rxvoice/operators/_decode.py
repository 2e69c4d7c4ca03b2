"""The ``decode_opus`` operator: per-SSRC Opus decoding with concealment and FEC."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from rxvoice.audio.opus import OpusDecoder, packet_has_fec
from rxvoice.errors import MalformedPacket
from rxvoice.events import AudioFrame, AudioGap, DiagnosticKind, PcmChunk
from rxvoice.operators._common import RTP_RATE, DiagnosticCallback, IdleStreams, Reporter
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.protocol.seq import seq_add, seq_diff, ts_add, ts_diff

NEW_SPURT_LATENESS = 0.1
"""Seconds a packet may arrive later than its RTP timestamp predicts, after the
sender's end-of-speech silence frames, before it counts as the start of a new
talk spurt and the call time is re-anchored on its arrival. Senders do not
advance the timestamp while quiet, so a pause shows as lateness; network jitter
below this does not move the clock."""

STALL_LIMIT = 1.0
"""Seconds of lateness that re-anchor the call time even when the packet before
was speech. Senders end each spurt with five silence frames (protocol.md §3.6),
so lateness in the middle of speech is a hiccup on our side (an event loop
stalled, a burst read late), not a pause: placing those packets by timestamp
keeps the spurt whole. Past this much, the sender must have paused with its
silence frames lost."""


class CallClock:
    """The call time of one SSRC's audio, from arrival and RTP timestamps.

    Anchored on the arrival of the first packet of each talk spurt; within a
    spurt, a timestamp ``ts`` was heard ``ts_diff(ts, anchor_ts) / 48000``
    seconds after the anchor, so times are smooth whatever the jitter. A packet
    that follows the sender's silence frames and arrives more than
    :data:`NEW_SPURT_LATENESS` later than that (the sender paused: its
    timestamp stopped while the wall clock did not), or any packet more than
    :data:`STALL_LIMIT` late, re-anchors.
    """

    __slots__ = ("_at", "_quiet", "_ts")

    def __init__(self) -> None:
        self._at: float | None = None
        self._ts = 0
        self._quiet = False  # the packet before was a silence frame

    def anchor(self, received_at: float, timestamp: int) -> None:
        """Start a new talk spurt (or a new stream) at this packet."""
        self._at, self._ts = received_at, timestamp

    def follow(self, received_at: float, timestamp: int, silent: bool = False) -> None:
        """Take the next packet in order: re-anchor if it starts a new spurt.

        Args:
            received_at: When it arrived.
            timestamp: Its RTP timestamp.
            silent: It is a silence frame (the end of a spurt, protocol.md §3.6).
        """
        if self._at is None:
            self.anchor(received_at, timestamp)
        else:
            late = received_at - self.time_of(timestamp)
            if late > STALL_LIMIT or (self._quiet and late > NEW_SPURT_LATENESS):
                self.anchor(received_at, timestamp)
        self._quiet = silent

    def time_of(self, timestamp: int) -> float:
        """The call time of the sample at ``timestamp`` (0.0 before any packet)."""
        if self._at is None:
            return 0.0
        return self._at + ts_diff(timestamp, self._ts) / RTP_RATE


class SsrcDecoder:
    """Decodes one SSRC's frames in order, filling losses (no reactivex, no threads).

    Args:
        decoder: A fresh Opus decoder for this stream.
        fec: Recover a single lost frame from the next packet's FEC data.
        max_conceal: The most frames synthesised for one loss; longer losses
            are left silent (the mixer fills them).
        max_gap: Sequence jumps larger than this (either way) restart the
            stream: the decoder is reset and nothing is concealed.
        report: Where survivable problems go.
    """

    __slots__ = ("_clock", "_decoder", "_fec", "_max_conceal", "_max_gap", "_next", "_report")

    def __init__(
        self,
        decoder: OpusDecoder,
        *,
        fec: bool,
        max_conceal: int,
        max_gap: int,
        report: Reporter,
    ) -> None:
        self._decoder = decoder
        self._fec = fec
        self._max_conceal = max_conceal
        self._max_gap = max_gap
        self._report = report
        self._next: int | None = None  # the sequence number expected next
        self._clock = CallClock()

    def feed(self, frame: AudioFrame) -> list[PcmChunk]:
        """Decode ``frame``, first filling any frames missing before it.

        Returns:
            The chunks in time order: concealed or FEC-recovered ones for a
            loss, then the frame's own (concealed if it is corrupted). Empty
            for a duplicate or late frame, which is dropped and counted.
        """
        seq = frame.sequence
        missing = 0
        if self._next is not None:
            d = seq_diff(seq, self._next)
            if frame.resynced or d > self._max_gap or d < -self._max_gap:
                # The sender restarted (a jitter buffer says so; without one, a
                # jump beyond max_gap tells): fresh state.
                self._decoder.reset()
                self._report(DiagnosticKind.DECODER_RESET, f"sequence jumped to {seq}", frame.ssrc)
                self._clock.anchor(frame.received_at, frame.timestamp)
            elif d < 0:
                late = f"sequence {seq} after {self._next - 1}"
                self._report(DiagnosticKind.LATE_PACKET, late, frame.ssrc)
                return []
            else:
                missing = d
        # Before filling a loss: concealed chunks take the time of the audio
        # they replace, counted back from this packet's.
        self._clock.follow(frame.received_at, frame.timestamp, frame.opus == SILENCE_FRAME)
        self._next = seq_add(seq, 1)
        out: list[PcmChunk] = []
        if missing:
            self._fill(frame, missing, out)
        opus = frame.opus
        try:
            pcm = self._decoder.decode(opus)
        except MalformedPacket as exc:
            self._report(DiagnosticKind.CORRUPT_PACKET, str(exc), frame.ssrc, frame.user_id)
            out.append(self._chunk(frame, frame.timestamp, self._decoder.conceal(), concealed=True))
        else:
            out.append(self._chunk(frame, frame.timestamp, pcm))
        return out

    def _fill(self, frame: AudioFrame, missing: int, out: list[PcmChunk]) -> None:
        decoder = self._decoder
        step = decoder.frame_samples * RTP_RATE // decoder.sample_rate
        fill = min(missing, self._max_conceal)
        fec = self._fec and fill > 0 and packet_has_fec(frame.opus)
        # Timestamps counted back from the packet that ended the loss. With
        # FEC the last filled frame is the one right before this packet (what
        # its FEC data describes), even when a long loss is only partly filled.
        first_ts = ts_add(frame.timestamp, -missing * step)
        for k in range(fill - 1 if fec else fill):
            out.append(
                self._chunk(frame, ts_add(first_ts, k * step), decoder.conceal(), concealed=True)
            )
        if fec:
            ts = ts_add(frame.timestamp, -step)
            try:
                out.append(self._chunk(frame, ts, decoder.decode_fec(frame.opus), recovered=True))
            except MalformedPacket:
                out.append(self._chunk(frame, ts, decoder.conceal(), concealed=True))

    def _chunk(
        self,
        frame: AudioFrame,
        timestamp: int,
        pcm: Any,
        *,
        concealed: bool = False,
        recovered: bool = False,
    ) -> PcmChunk:
        chunk = _new(PcmChunk)  # PcmChunk(...) by its slots: see _SLOTS
        _set_user_id(chunk, frame.user_id)
        _set_ssrc(chunk, frame.ssrc)
        _set_timestamp(chunk, timestamp)
        _set_pcm(chunk, pcm)
        _set_sample_rate(chunk, self._decoder.sample_rate)
        _set_concealed(chunk, concealed)
        _set_recovered(chunk, recovered)
        _set_time(chunk, self._clock.time_of(timestamp))
        return chunk


# _SLOTS: every decoded frame makes a chunk, and PcmChunk's frozen __init__
# costs an object.__setattr__ per field, twice as slow as filling the slots.
_new = object.__new__
(
    _set_user_id,
    _set_ssrc,
    _set_timestamp,
    _set_pcm,
    _set_sample_rate,
    _set_concealed,
    _set_recovered,
    _set_time,
) = (
    PcmChunk.__dict__[name].__set__
    for name in (
        "user_id",
        "ssrc",
        "timestamp",
        "pcm",
        "sample_rate",
        "concealed",
        "recovered",
        "time",
    )
)


def decode_opus_(
    sample_rate: int,
    channels: int,
    fec: bool,
    max_conceal: int,
    max_gap: int,
    decode_on: abc.SchedulerBase | None,
    stats: Counter[str] | None,
    on_diagnostic: DiagnosticCallback | None,
) -> Callable[[Observable[AudioFrame | AudioGap]], Observable[PcmChunk]]:
    OpusDecoder(sample_rate, channels).close()  # bad arguments or no libopus: raise now

    def operator(source: Observable[AudioFrame | AudioGap]) -> Observable[PcmChunk]:
        def subscribe(
            observer: abc.ObserverBase[PcmChunk],
            scheduler_: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            report = Reporter(stats, on_diagnostic)
            lock = threading.RLock()
            decoders: dict[int, SsrcDecoder] = {}
            idle: IdleStreams[int] = IdleStreams()
            # Off-loop mode: one queue and at most one running drain per SSRC,
            # which keeps each user's order while users decode in parallel.
            queues: dict[int, deque[AudioFrame]] = {}
            draining: set[int] = set()
            source_done = False
            stopped = False

            def decoder_for(frame: AudioFrame) -> SsrcDecoder:
                # One decoder per SSRC: a user's new SSRC (a reconnect) gets its
                # own, and late frames of the old one still decode with theirs.
                # A decoder is freed a minute after its SSRC's last frame.
                ssrc = frame.ssrc
                if idle.touch(ssrc, frame.received_at):
                    decoders.pop(ssrc, None)  # back after a quiet minute: start afresh
                for gone in idle.expired(frame.received_at):
                    decoders.pop(gone, None)
                state = decoders.get(ssrc)
                if state is None:
                    state = decoders[ssrc] = SsrcDecoder(
                        OpusDecoder(sample_rate, channels),
                        fec=fec,
                        max_conceal=max_conceal,
                        max_gap=max_gap,
                        report=report,
                    )
                return state

            def fail(error: Exception) -> None:
                nonlocal stopped
                if not stopped:
                    stopped = True
                    observer.on_error(error)

            def decode_now(frame: AudioFrame) -> None:
                # Synchronous mode: called with the lock held.
                try:
                    chunks = decoder_for(frame).feed(frame)
                except Exception as error:  # a diagnostic callback raised
                    fail(error)
                    return
                for chunk in chunks:
                    observer.on_next(chunk)

            def drain(_: abc.SchedulerBase, ssrc: Any) -> None:
                while True:
                    with lock:
                        queue = queues.get(ssrc)
                        if stopped or not queue:
                            draining.discard(ssrc)
                            queues.pop(ssrc, None)
                            finish_if_idle()
                            return
                        frame = queue.popleft()
                        state = decoder_for(frame)
                    try:
                        chunks = state.feed(frame)  # off the lock: users decode in parallel
                    except Exception as error:
                        with lock:
                            fail(error)
                        continue
                    with lock:
                        if stopped:
                            continue
                        for chunk in chunks:
                            observer.on_next(chunk)

            def finish_if_idle() -> None:
                nonlocal stopped
                if source_done and not draining and not stopped:
                    stopped = True
                    observer.on_completed()

            def on_next(item: AudioFrame | AudioGap) -> None:
                if not isinstance(item, AudioFrame):
                    return  # the next frame's sequence number tells the loss too
                with lock:
                    if stopped:
                        return
                    if decode_on is None:
                        decode_now(item)
                        return
                    ssrc = item.ssrc
                    queues.setdefault(ssrc, deque()).append(item)
                    if ssrc not in draining:
                        draining.add(ssrc)
                        decode_on.schedule(drain, ssrc)

            def on_error(error: Exception) -> None:
                with lock:
                    fail(error)

            def on_completed() -> None:
                nonlocal source_done
                with lock:
                    source_done = True
                    finish_if_idle()

            def release() -> None:
                nonlocal stopped
                with lock:
                    stopped = True
                    decoders.clear()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler_)
            return CompositeDisposable(subscription, Disposable(release))

        return Observable(subscribe)

    return operator


__all__ = ["NEW_SPURT_LATENESS", "STALL_LIMIT", "CallClock", "SsrcDecoder", "decode_opus_"]

"""The values that rxvoice's observables emit.

All are frozen, slotted dataclasses: cheap to create on the hot path, safe to
share between subscribers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rxvoice.protocol.rtp import RtpHeader, build_header

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "AudioFrame",
    "AudioGap",
    "AudioLevel",
    "ClientConnect",
    "ClientDisconnect",
    "ConnectionState",
    "DaveEpochTransition",
    "Diagnostic",
    "DiagnosticKind",
    "Disconnected",
    "PcmChunk",
    "SpeakingEvent",
    "SpeakingFlags",
    "Utterance",
    "VoiceActivityChange",
]


class SpeakingFlags(enum.IntFlag):
    """Speaking flags of op 5 (Microphone 1, Soundshare 2, Priority 4)."""

    NONE = 0
    MICROPHONE = 1
    SOUNDSHARE = 2
    PRIORITY = 4


class ConnectionState(enum.Enum):
    """Where a :class:`rxvoice.Connection` is in its life."""

    IDLE = "idle"
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    DISCOVERING = "discovering"
    SELECTING_PROTOCOL = "selecting_protocol"
    READY = "ready"
    RESUMING = "resuming"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One received audio packet with every encryption layer removed.

    The receiver parses the RTP header once and keeps its fields; :attr:`frame`
    (the reference API's shape: header and Opus in one buffer) is built on
    first use and kept.

    Attributes:
        user_id: The sending user, or ``None`` when the SSRC is not mapped yet.
        ssrc: The RTP synchronisation source of the sender.
        sequence: The RTP sequence number (16-bit).
        timestamp: The RTP timestamp (32-bit, 48 kHz units).
        opus: The Opus payload, both encryption layers removed. Never ciphertext.
        received_at: When the packet arrived, in the receiving scheduler's
            time base (seconds).
        marker: The RTP marker bit (set on the first packet of a talk spurt).
        resynced: ``True`` on the first frame a jitter buffer released after a
            sequence discontinuity (the sender restarted): state that depends
            on continuity, such as an Opus decoder, should be reset.
    """

    user_id: str | None
    ssrc: int
    sequence: int
    timestamp: int
    opus: bytes = field(repr=False)
    received_at: float = 0.0
    marker: bool = False
    resynced: bool = False
    # Built on first use (unset until then: nothing to store per frame on the hot path).
    _frame: bytes = field(init=False, repr=False, compare=False)

    @property
    def frame(self) -> bytes:
        """The decrypted RTP packet: a 12-byte header (no CSRCs, no extension), then the Opus."""
        try:
            return self._frame
        except AttributeError:
            header = build_header(self.sequence, self.timestamp, self.ssrc, marker=self.marker)
            frame = header + self.opus
            object.__setattr__(self, "_frame", frame)  # a cache, not a state change
            return frame

    @classmethod
    def from_packet(
        cls, packet: bytes, *, user_id: str | None = None, received_at: float = 0.0
    ) -> AudioFrame:
        """Build a frame from a plain RTP packet (the layout of :attr:`frame`).

        Args:
            packet: An RTP header followed by the Opus payload (CSRCs or an
                extension preamble, if any, are skipped).
            user_id: The sending user, when known.
            received_at: When the packet arrived.

        Returns:
            The frame.

        Raises:
            MalformedPacket: ``packet`` does not start with a valid RTP header.
        """
        header = RtpHeader.parse(packet)
        return cls(
            user_id,
            header.ssrc,
            header.sequence,
            header.timestamp,
            bytes(packet[header.size :]),
            received_at,
            header.marker,
        )


@dataclass(frozen=True, slots=True)
class AudioGap:
    """Packets that a jitter buffer gave up waiting for: a hole in a user's stream.

    A recording can mark the hole (``timestamp`` says where, ``count`` how
    long); a decoder conceals it. :attr:`rxvoice.Connection.on_audio_gap`
    emits them, and ``conn.stats.frames_lost`` / ``frames_lost_to_dave`` add
    them up.

    Attributes:
        user_id: The sending user, or ``None`` when unknown.
        ssrc: The RTP synchronisation source.
        sequence: The first missing sequence number.
        count: How many consecutive packets are missing.
        timestamp: The expected RTP timestamp of the first missing packet.
        dave_lost: How many of the missing packets did arrive but could not
            be DAVE-decrypted in time (around a DAVE transition, say); the
            rest were lost on the network or arrived too late.
    """

    user_id: str | None
    ssrc: int
    sequence: int
    count: int
    timestamp: int
    dave_lost: int = 0


@dataclass(frozen=True, slots=True)
class SpeakingEvent:
    """A user's speaking state changed (voice gateway op 5)."""

    user_id: str
    ssrc: int
    flags: SpeakingFlags


@dataclass(frozen=True, slots=True)
class ClientConnect:
    """A user joined the voice channel (op 11, one event per user)."""

    user_id: str


@dataclass(frozen=True, slots=True)
class ClientDisconnect:
    """A user left the voice channel (op 13)."""

    user_id: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The voice WebSocket closed.

    Attributes:
        code: The close code, or ``None`` when the connection dropped without one.
        will_reconnect: Whether rxvoice will resume or reconnect by itself.
        reason: A human-readable explanation of the code and the policy.
    """

    code: int | None
    will_reconnect: bool
    reason: str


@dataclass(frozen=True, slots=True)
class DaveEpochTransition:
    """The DAVE group moved to a new epoch or protocol version.

    Attributes:
        epoch: The MLS epoch now in use (0 when DAVE is off).
        protocol_version: The DAVE protocol version (0 = transport encryption only).
        transition_id: The gateway's transition id (0 = immediate).
        members: User ids in the MLS group after the transition.
        privacy_code: The voice privacy code users can compare, when known.
    """

    epoch: int
    protocol_version: int
    transition_id: int
    members: tuple[str, ...] = ()
    privacy_code: str | None = None


class DiagnosticKind(enum.StrEnum):
    """What a :class:`Diagnostic` reports (a ``str``: compares equal to its value)."""

    MALFORMED_MESSAGE = "malformed_message"
    """A voice-gateway frame that could not be parsed (counted, skipped)."""
    UNEXPECTED_MESSAGE = "unexpected_message"
    """A well-formed message at the wrong time or with an unusable value."""
    UDP_SETUP_FAILED = "udp_setup_failed"
    """The UDP socket or IP discovery failed (the connection retries)."""
    NO_KEYS = "no_keys"
    """A datagram arrived before the session description brought the keys."""
    MALFORMED_PACKET = "malformed_packet"
    """An RTP datagram too malformed to be read (truncated, bad lengths)."""
    UNDECRYPTABLE_PACKET = "undecryptable_packet"
    """An RTP datagram failed transport authentication (wrong key, corrupt, forged)."""
    REPLAYED_PACKET = "replayed_packet"
    """An authentic RTP packet received before (a network duplicate or a
    replay), or older than the replay window: dropped before DAVE."""
    DAVE_DECRYPT_FAILED = "dave_decrypt_failed"
    """A frame's end-to-end (DAVE) layer could not be removed."""
    LATE_PACKET = "late_packet"
    """A frame arrived after the decoder had moved past it (dropped)."""
    DECODER_RESET = "decoder_reset"
    """A stream restarted at a sequence discontinuity; its decoder was reset."""
    CORRUPT_PACKET = "corrupt_packet"
    """An Opus packet libopus refused (concealed instead)."""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """A problem the connection survived (counted, logged, then carried on).

    Floods are summarised: the receive path reports the first problem of a
    kind at once, and the rest of that second in one diagnostic whose
    :attr:`count` says how many it stands for (``conn.stats`` counts each one).

    Attributes:
        kind: What happened; a :class:`DiagnosticKind` (equal to its string,
            e.g. ``"undecryptable_packet"``).
        detail: A human-readable description (never contains secrets).
        ssrc: The SSRC concerned, when there is one.
        user_id: The user concerned, when known.
        count: How many occurrences this diagnostic reports (more than 1 for a
            rate-limited summary).
    """

    kind: DiagnosticKind
    detail: str
    ssrc: int | None = None
    user_id: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True, eq=False)
class PcmChunk:
    """Decoded audio of one user (or of the mix), as the operators pass it on.

    Equality is identity: comparing the audio of two chunks is
    ``numpy.array_equal(a.pcm, b.pcm)``.

    Attributes:
        user_id: The speaking user; ``None`` for the mix (or an unmapped SSRC).
        ssrc: The RTP synchronisation source; ``None`` for the mix.
        timestamp: The RTP timestamp of the first sample, in 48 kHz units
            (32-bit, wraps) whatever :attr:`sample_rate` is; for the mix,
            ``tick * 960``.
        pcm: int16 samples shaped ``(samples, channels)``.
        sample_rate: Samples per second per channel of :attr:`pcm`.
        concealed: The audio was synthesised by packet-loss concealment for a
            missing packet (or replaced a corrupted one), not decoded.
        recovered: The audio was rebuilt from the in-band FEC data of the
            packet after a lost one.
        time: The **call time** of the first sample: seconds on the clock of
            :attr:`AudioFrame.received_at` (the connection's event-loop clock;
            the scheduler's clock in virtual time) at which it was heard.
            :func:`rxvoice.operators.decode_opus` anchors it on the arrival
            of the first packet of each talk spurt and advances it by RTP
            timestamp within the spurt, so it is smooth and, unlike the RTP
            timestamp (which stops while a user is quiet), comparable between
            users and across pauses. For the mix, the call time of the audio
            in the tick. ``0.0`` for a chunk built without one.
    """

    user_id: str | None
    ssrc: int | None
    timestamp: int
    pcm: npt.NDArray[np.int16] = field(repr=False)
    sample_rate: int = 48_000
    concealed: bool = False
    recovered: bool = False
    time: float = 0.0

    @property
    def samples(self) -> int:
        """Samples per channel."""
        return int(self.pcm.shape[0])

    @property
    def channels(self) -> int:
        """The channel count."""
        return int(self.pcm.shape[1]) if self.pcm.ndim == 2 else 1

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate


@dataclass(frozen=True, slots=True)
class AudioLevel:
    """The loudness of one :class:`PcmChunk`.

    Attributes:
        user_id: The user (``None`` for the mix).
        ssrc: The SSRC (``None`` for the mix).
        timestamp: The chunk's RTP timestamp (48 kHz units).
        rms: Root-mean-square level in sample units (0 to 32768).
        dbfs: The same in dBFS (0 = full-scale square wave; ``-inf`` or the
            chosen floor for digital silence).
        time: The chunk's call time (see :attr:`PcmChunk.time`).
    """

    user_id: str | None
    ssrc: int | None
    timestamp: int
    rms: float
    dbfs: float
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class VoiceActivityChange:
    """A user started or stopped speaking, judged from their audio.

    Attributes:
        user_id: The user (``None`` for the mix).
        ssrc: The SSRC the judgement was made on (``None`` for the mix).
        speaking: ``True`` when speech started, ``False`` when it stopped.
        timestamp: The RTP timestamp (48 kHz units) where it happened: the
            first loud chunk of the onset, or the end of the speech.
        time: The call time where it happened (see :attr:`PcmChunk.time`):
            when the onset's first loud sample, or the end of the speech, was heard.
    """

    user_id: str | None
    ssrc: int | None
    speaking: bool
    timestamp: int
    time: float = 0.0


@dataclass(frozen=True, slots=True, eq=False)
class Utterance:
    """One stretch of a user's speech, cut by :func:`rxvoice.operators.utterances`.

    Equality is identity (compare audio with ``numpy.array_equal``).

    Attributes:
        user_id: The speaker (``None`` for an SSRC not mapped to a user).
        ssrc: The SSRC of the utterance's first chunk.
        start: The call time of the first sample (pre-roll included), in
            seconds on the clock of :attr:`PcmChunk.time`.
        end: The call time just after the last sample; ``end - start`` is
            :attr:`duration`.
        pcm: int16 samples shaped ``(samples, channels)``, on the call's
            timeline: a stretch the user sent nothing for (a lost packet
            that could not be concealed) is silence, so sample ``k`` was
            heard at ``start + k / sample_rate``.
        sample_rate: Samples per second of :attr:`pcm`.
        continues: The speech went on past the operator's ``max_duration``:
            the user's next utterance starts where this one ends.
    """

    user_id: str | None
    ssrc: int | None
    start: float
    end: float
    pcm: npt.NDArray[np.int16] = field(repr=False)
    sample_rate: int
    continues: bool = False

    @property
    def samples(self) -> int:
        """Samples per channel."""
        return int(self.pcm.shape[0])

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples / self.sample_rate

"""The receive path of a voice connection, without I/O: datagrams in, frames out.

:class:`VoiceReceiver` does every step between the UDP socket and the
application's streams, once, in the style of aioquic's ``QuicConnection``: the
caller hands it datagrams with the current time (:meth:`VoiceReceiver.receive`),
asks when to call again (:meth:`VoiceReceiver.next_deadline`) and calls
:meth:`VoiceReceiver.poll` then. Every call returns a :class:`Received`: the
frames in arrival order, the frames and gap markers in sequence order, and the
problems it survived. Nothing raises on bad input; a bad datagram is counted
(:class:`ReceiverStats`) and reported.

The steps, in order:

1. **classify**: RTCP, keepalives and other non-RTP datagrams are counted and dropped.
2. **transport open**: the session's :class:`~rxvoice.protocol.crypto.TransportCipher`
   removes the AEAD layer, RTP padding and the header-extension body
   (:meth:`~rxvoice.protocol.crypto.TransportCipher.try_open`: a bad packet
   costs no exception object); a non-Opus payload type is counted and dropped.
   Then the **replay window**: an authentic packet whose transport nonce was
   seen before for its SSRC (a network duplicate, or a replay), or that is
   older than the window (``REPLAY_WINDOW`` nonces, as SRTP does with its
   packet index), is dropped here, before DAVE could count it as a failure and
   before a jitter buffer could take an old sequence for a sender restart.
3. **attribution**: the SSRC is looked up in :attr:`VoiceReceiver.ssrcs` (op 5
   fills it through :meth:`VoiceReceiver.map`). Packets of an SSRC not mapped
   yet are held, bounded in count and age (``hold_time``); when their
   mapping comes they go on in order, when they expire they go on without a
   user (see step 4).
4. **DAVE**: the :class:`~rxvoice.protocol.dave.DaveManager` removes the
   end-to-end layer with the sender's key. A DAVE frame that fails may have
   been sealed with keys of a commit not processed yet: it is kept
   (``retry_window`` seconds, ``retry_limit`` frames in all) and tried again
   once the manager's keys change (:attr:`DaveManager.generation`); what still
   fails then, or ages out, counts as a DAVE failure, by the cause the manager
   gave when it arrived (:class:`~rxvoice.protocol.dave.DaveFailure`: before
   we joined the group, around a transition, or a real failure). A frame of an
   unattributed SSRC is only opened when no key is needed (silence, plain
   frames in a call without DAVE): ciphertext is never passed on.
5. **jitter buffer**: one :class:`~rxvoice.protocol.jitter.JitterBuffer` per
   SSRC puts frames back in sequence order with :class:`~rxvoice.events.AudioGap`
   markers for losses (``dave_lost`` says how many of the missing frames
   arrived but failed DAVE); the first frame after a sender restart carries
   ``resynced=True``. The buffer of an SSRC quiet for ``forget_after``
   seconds is flushed and forgotten (SSRCs churn in a long call).

Problems are counted one by one in :class:`ReceiverStats`, but reported
(:class:`~rxvoice.events.Diagnostic`, and a debug log line) at most once per
kind and SSRC per ``diagnostic_interval``: the first at once, the rest in one
summary whose ``count`` says how many, so a flood of bad datagrams costs a
counter increment each.

Operators use parts of it: ``decrypt`` steps 1-4 (no hold, its own
``user_of``), ``jitter_buffer`` step 5 (:meth:`VoiceReceiver.push`).
"""

from __future__ import annotations

import logging
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

from rxvoice.events import AudioFrame, AudioGap, Diagnostic, DiagnosticKind
from rxvoice.protocol.crypto import NONCE_SUFFIX_SIZE, OpenFailure
from rxvoice.protocol.dave import DaveFailure
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.jitter import (
    DEFAULT_CAPACITY,
    DEFAULT_LATENCY,
    JitterBuffer,
    JitterPacket,
    Release,
)
from rxvoice.protocol.rtp import (
    OPUS_PAYLOAD_TYPE,
    RTP_HEADER_SIZE,
    RTP_VERSION,
    DatagramKind,
    classify,
)
from rxvoice.protocol.seq import SEQ_MOD
from rxvoice.protocol.ssrcmap import SsrcMap

if TYPE_CHECKING:
    from rxvoice.protocol.crypto import TransportCipher
    from rxvoice.protocol.dave import DaveManager

__all__ = [
    "DIAGNOSTIC_INTERVAL",
    "IDLE_FORGET",
    "REPLAY_WINDOW",
    "RETRY_LIMIT",
    "RETRY_WINDOW",
    "IdleStreams",
    "Received",
    "ReceiverStats",
    "VoiceReceiver",
]

logger = logging.getLogger(__name__)

RETRY_WINDOW = 2.0
"""Seconds a frame that failed DAVE decryption waits for new keys before it counts as failed."""

RETRY_LIMIT = 256
"""The most frames waiting for new DAVE keys at once; the oldest fails beyond it."""

IDLE_FORGET = 60.0
"""Seconds without a packet after which an SSRC's state (jitter buffer, decoder) is forgotten."""

REPLAY_WINDOW = 2048
"""Transport nonces remembered per SSRC (the SFU counts nonces per recipient, so
this spans all senders: 0.4 s of 100 speakers, 40 s of one); an older packet is
dropped as stale."""

DIAGNOSTIC_INTERVAL = 1.0
"""Seconds over which problems of one kind (and SSRC) are reported once, then summarised."""

_MAX_WINDOWS = 4096  # SSRCs with a replay window at once (SSRCs only come from authentic packets)
_DAVE_LOST_MARKS = 256  # sequences remembered per SSRC as lost to DAVE, until a gap covers them
_U32 = 0xFFFF_FFFF
_HALF = 1 << 31
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_NONCE_AT = struct.Struct(">I").unpack_from
# The fixed header after byte 0: M/PT, sequence, timestamp, SSRC.
_FIELDS_AT = struct.Struct(">BHII").unpack_from

_K = TypeVar("_K")


class IdleStreams(Generic[_K]):
    """Tells which streams have been quiet for a while, so their state can go.

    SSRCs churn (every reconnect brings a new one; users leave): a long-lived
    receiver must not keep a jitter buffer or an Opus decoder for each one it
    ever saw. A forgotten stream that comes back simply starts afresh.

    Args:
        after: Seconds of silence before a stream counts as gone; streams are
            swept at most once per ``after``, so the cost per item is O(1).
    """

    __slots__ = ("_after", "_next_sweep", "_seen")

    def __init__(self, after: float = IDLE_FORGET) -> None:
        self._after = after
        self._seen: dict[_K, float] = {}
        self._next_sweep = float("-inf")

    def touch(self, key: _K, now: float) -> bool:
        """Note that ``key`` was active at ``now``.

        Returns:
            Whether ``key`` comes back after a quiet spell longer than
            ``after`` (its state should start afresh, swept or not).
        """
        seen = self._seen.get(key)
        self._seen[key] = now
        return seen is not None and now - seen > self._after

    def expired(self, now: float) -> list[_K]:
        """Return (and stop tracking) the streams quiet for more than ``after`` seconds."""
        if self._next_sweep - self._after <= now < self._next_sweep:
            return []  # swept less than ``after`` ago (a clock gone back sweeps too)
        self._next_sweep = now + self._after
        horizon = now - self._after
        gone = [key for key, seen in self._seen.items() if seen < horizon]
        for key in gone:
            del self._seen[key]
        return gone

    def forget(self, key: _K) -> None:
        """Stop tracking ``key``."""
        self._seen.pop(key, None)


@dataclass(slots=True)
class ReceiverStats:
    """What a receiver counted (a :class:`rxvoice.ConnectionStats` adds the rest).

    Every datagram lands in exactly one of: ``rtcp_received``,
    ``other_datagrams``, ``malformed_packets``, ``undecryptable_packets``,
    ``replayed_packets``, ``stale_packets``, or a frame (passed on, held, or
    counted by one of the ``dave_*`` counters).

    Attributes:
        packets_received: RTP datagrams (RTCP, keepalives and others excluded).
        packets_decrypted: RTP packets with an Opus payload that passed
            transport decryption (replays included).
        rtcp_received: RTCP datagrams (counted, not interpreted).
        other_datagrams: Keepalive echoes, unknown datagrams and RTP packets
            of another payload type.
        malformed_packets: RTP-looking datagrams too malformed to be read:
            truncated, too short for the tag and nonce, bad CSRC, extension or
            padding lengths.
        undecryptable_packets: RTP packets that failed transport
            authentication: a wrong key, corruption, forgery.
        replayed_packets: Authentic packets received before (network
            duplicates and replays cannot be told apart): dropped before DAVE.
        stale_packets: Authentic packets older than the replay window
            (:data:`REPLAY_WINDOW` nonces): very late, or replayed.
        dave_failures: Frames of a known sender whose DAVE layer could not be
            removed in a settled group (after the retry): real failures, not
            expected in a healthy call.
        dave_failures_before_join: Frames that failed because we were not in
            the DAVE group yet when they arrived (sealed before we joined:
            expected, a handful at a join or after a re-initialisation).
        dave_failures_in_transition: Frames that failed around a DAVE
            transition (keys switching, a downgrade): expected in small numbers.
        dave_retried: Frames that failed DAVE decryption first and opened
            once new keys arrived.
        unmapped_expired: Packets whose SSRC got no user within the hold; they
            go on without a user, except DAVE frames, which need the sender's
            key and are dropped.
        frames_lost: Frames the jitter buffers gave up on (the sum of the
            :class:`~rxvoice.events.AudioGap` counts): network loss, frames
            too late, and frames lost to DAVE.
        frames_lost_to_dave: Of :attr:`frames_lost`, frames that arrived but
            could not be DAVE-decrypted in time (``AudioGap.dave_lost``).
    """

    packets_received: int = 0
    packets_decrypted: int = 0
    rtcp_received: int = 0
    other_datagrams: int = 0
    malformed_packets: int = 0
    undecryptable_packets: int = 0
    replayed_packets: int = 0
    stale_packets: int = 0
    dave_failures: int = 0
    dave_failures_before_join: int = 0
    dave_failures_in_transition: int = 0
    dave_retried: int = 0
    unmapped_expired: int = 0
    frames_lost: int = 0
    frames_lost_to_dave: int = 0


@dataclass(slots=True)
class Received:
    """What one call of a :class:`VoiceReceiver` produced.

    Attributes:
        raw: Decrypted frames in arrival order (for ``on_raw_audio_frame``).
        ordered: Frames and gap markers in sequence order per SSRC, as the
            jitter buffers released them (empty without reordering).
        diagnostics: Problems survived (only when :attr:`VoiceReceiver.diagnose`),
            rate-limited (see the module docstring).
    """

    raw: list[AudioFrame] = field(default_factory=list)
    ordered: list[AudioFrame | AudioGap] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


# A transport-decrypted packet, as the receiver keeps it between steps (a tuple
# costs a fraction of an object per packet): ssrc, sequence, timestamp, marker,
# payload (Opus or a DAVE frame).
_Packet = tuple[int, int, int, bool, bytes]
# A held packet: when it arrived, and the packet.
_Held = tuple[float, _Packet]
# A frame waiting for new DAVE keys: when it arrived, its sender, the packet,
# and why it failed when it arrived.
_Retry = tuple[float, str, _Packet, DaveFailure]

# AudioFrame's slots, filled directly (as RtpHeader.parse does): its frozen
# __init__ costs an object.__setattr__ per field, twice as slow, for every frame.
_new = object.__new__
_set_user_id = AudioFrame.__dict__["user_id"].__set__
_set_ssrc = AudioFrame.__dict__["ssrc"].__set__
_set_sequence = AudioFrame.__dict__["sequence"].__set__
_set_timestamp = AudioFrame.__dict__["timestamp"].__set__
_set_opus = AudioFrame.__dict__["opus"].__set__
_set_received_at = AudioFrame.__dict__["received_at"].__set__
_set_marker = AudioFrame.__dict__["marker"].__set__
_set_resynced = AudioFrame.__dict__["resynced"].__set__


def _audio_frame(
    user_id: str | None,
    ssrc: int,
    sequence: int,
    timestamp: int,
    opus: bytes,
    received_at: float,
    marker: bool,
) -> AudioFrame:
    """``AudioFrame(user_id, ssrc, sequence, timestamp, opus, received_at, marker)``, faster."""
    frame = _new(AudioFrame)
    _set_user_id(frame, user_id)
    _set_ssrc(frame, ssrc)
    _set_sequence(frame, sequence)
    _set_timestamp(frame, timestamp)
    _set_opus(frame, opus)
    _set_received_at(frame, received_at)
    _set_marker(frame, marker)
    _set_resynced(frame, False)
    return frame


_MALFORMED = "malformed RTP packet (truncated, or bad lengths)"
_UNDECRYPTABLE = "transport authentication failed (wrong key, corrupted or forged)"
_REPLAYED = "packet received before (a duplicate or a replay): dropped"
_STALE = "packet older than the replay window: dropped"
_NO_SENDER = "DAVE frame of an SSRC no op 5 mapped: no sender key, dropped"
_DAVE_DETAIL = {
    DaveFailure.FAILED: "frame could not be DAVE-decrypted",
    DaveFailure.NOT_IN_GROUP: "frame could not be DAVE-decrypted (sealed before we joined)",
    DaveFailure.TRANSITION: "frame could not be DAVE-decrypted (lost to a DAVE transition)",
}


class _Tally:
    """One reported problem's window: what came after the first report, to summarise."""

    __slots__ = ("detail", "end", "kind", "ssrc", "suppressed", "user")

    def __init__(
        self, end: float, kind: DiagnosticKind, detail: str, ssrc: int | None, user: str | None
    ) -> None:
        self.end, self.suppressed = end, 0
        self.kind, self.detail, self.ssrc, self.user = kind, detail, ssrc, user


class VoiceReceiver:
    """Every receive step of one voice session: see the module docstring.

    Nothing raises on input (only a raising ``user_of`` callback propagates).

    Args:
        cipher: The transport cipher; ``None`` until the session description
            (datagrams before it are reported as ``no_keys``).
        dave: The DAVE session; ``None`` for transport encryption only.
        user_of: Attribute SSRCs with this function instead of :attr:`ssrcs`
            (an application's own map): nothing is held then, and an unknown
            SSRC's frame goes on without a user.
        reorder: Run the jitter buffers (step 5); without it only
            :attr:`Received.raw` is filled.
        latency: Seconds a jitter buffer waits for a missing packet (the
            minimum when adaptive).
        capacity: Packets a jitter buffer holds at most per SSRC.
        max_latency: Enables adaptive jitter latency up to this many seconds.
        hold_time: Seconds packets of an unmapped SSRC are held (0: not held).
        hold_limit: Packets held at most per unmapped SSRC.
        max_unmapped: Unmapped SSRCs held at most at once.
        retry_window: See :data:`RETRY_WINDOW`.
        retry_limit: See :data:`RETRY_LIMIT`.
        forget_after: Seconds without a packet before an SSRC's jitter buffer
            is forgotten.
        stats: Where to count (e.g. a Connection's cumulative stats); a new
            :class:`ReceiverStats` by default.
        counts: Also count every event by name (a diagnostic's kind, or
            ``not_rtp_<kind>``, ``not_opus``), as the operators' ``stats`` do.
        diagnostic_interval: See :data:`DIAGNOSTIC_INTERVAL`.

    Raises:
        UsageError: A jitter-buffer argument is out of range.
    """

    def __init__(
        self,
        cipher: TransportCipher | None = None,
        dave: DaveManager | None = None,
        *,
        user_of: Callable[[int], str | None] | None = None,
        reorder: bool = True,
        latency: float = DEFAULT_LATENCY,
        capacity: int = DEFAULT_CAPACITY,
        max_latency: float | None = None,
        hold_time: float = 1.0,
        hold_limit: int = 50,
        max_unmapped: int = 64,
        retry_window: float = RETRY_WINDOW,
        retry_limit: int = RETRY_LIMIT,
        forget_after: float = IDLE_FORGET,
        stats: ReceiverStats | None = None,
        counts: Counter[str] | None = None,
        diagnostic_interval: float = DIAGNOSTIC_INTERVAL,
    ) -> None:
        self.cipher = cipher
        self.dave = dave
        self.ssrcs: SsrcMap[_Held] = SsrcMap(
            hold_time=hold_time, hold_limit=hold_limit, max_unmapped=max_unmapped
        )
        self._user_of = user_of if user_of is not None else self.ssrcs.user_of
        self._hold = user_of is None and hold_time > 0
        self.reorder = reorder
        self._latency, self._capacity, self._max_latency = latency, capacity, max_latency
        if reorder:
            self._new_jitter()  # a bad argument raises UsageError now
        self.jitters: dict[int, JitterBuffer[AudioFrame]] = {}
        # SSRCs whose buffer may hold something (a subset of the jitters' keys).
        self._waiting: set[int] = set()
        self._idle: IdleStreams[int] = IdleStreams(forget_after)
        # Replay windows per SSRC: [highest nonce, bitmap of the nonces seen
        # below it, bit i for highest - i], as SRTP keeps them.
        self._windows: dict[int, list[int]] = {}
        self.retry_window, self.retry_limit = retry_window, retry_limit
        self._retry: deque[_Retry] = deque()
        self._generation = dave.generation if dave is not None else 0
        # Sequences per SSRC whose frame failed DAVE, until a gap marker covers them.
        self._dave_lost: dict[int, dict[int, None]] = {}
        self.stats = stats if stats is not None else ReceiverStats()
        self.counts = counts
        self.diagnose = True
        """Build :class:`Diagnostic` values (a caller with nobody to tell may turn it off)."""
        self.keep_raw = True
        """Fill :attr:`Received.raw` (a caller with nobody to pass it to may turn it off)."""
        self.diagnostic_interval = diagnostic_interval
        self._tallies: dict[object, _Tally] = {}
        self._summary_due = float("inf")  # the earliest window with something to summarise
        self._now = 0.0
        self._out = Received()

    # -- input ----------------------------------------------------------------------

    def set_keys(self, cipher: TransportCipher | None, dave: DaveManager | None) -> None:
        """Use new keys (a session description, or a session that replaced another).

        Frames waiting for a DAVE retry belonged to the old keys and are
        dropped; a new transport key starts new replay windows.
        """
        if dave is not self.dave:
            self._retry.clear()
            self._generation = dave.generation if dave is not None else 0
        if cipher is not self.cipher:
            self._windows.clear()
        self.cipher, self.dave = cipher, dave

    def receive(self, datagrams: Iterable[bytes], now: float) -> Received:
        """Take received datagrams (oldest first) through every step.

        Args:
            datagrams: What the socket delivered, oldest first.
            now: The current time in seconds (monotonic; the frames' ``received_at``).

        Returns:
            What can be passed on now.
        """
        out = self._start(now)
        self._check_keys(now)
        cipher = self.cipher
        open_payload = cipher.open_payload if cipher is not None else None
        stats = self.stats
        user_of = self._user_of
        hold = self._hold
        windows = self._windows
        for datagram in datagrams:
            # classify()'s test for RTP, inline: every datagram takes it.
            if not (
                len(datagram) > RTP_HEADER_SIZE
                and datagram[0] >> 6 == RTP_VERSION
                and not 200 <= datagram[1] <= 206
            ):
                self._not_rtp(datagram)
                continue
            stats.packets_received += 1
            if open_payload is None:
                self._problem(DiagnosticKind.NO_KEYS, "datagram before the session description")
                continue
            payload = open_payload(datagram)
            if type(payload) is not bytes:
                if payload is OpenFailure.UNDECRYPTABLE:
                    stats.undecryptable_packets += 1
                    self._problem(DiagnosticKind.UNDECRYPTABLE_PACKET, _UNDECRYPTABLE)
                else:
                    stats.malformed_packets += 1
                    self._problem(DiagnosticKind.MALFORMED_PACKET, _MALFORMED)
                continue
            # The one parse of the header: the lengths were checked by open_payload.
            b1, sequence, timestamp, ssrc = _FIELDS_AT(datagram, 1)
            if b1 & 0x7F != OPUS_PAYLOAD_TYPE:
                stats.other_datagrams += 1
                if self.counts is not None:
                    self.counts["not_opus"] += 1
                continue
            stats.packets_decrypted += 1
            # The replay window (see the module docstring), inline: it runs for every packet.
            nonce = _NONCE_AT(datagram, len(datagram) - NONCE_SUFFIX_SIZE)[0]
            window = windows.get(ssrc)
            if window is None:
                if len(windows) >= _MAX_WINDOWS:
                    del windows[next(iter(windows))]
                windows[ssrc] = [nonce, 1]
            else:
                ahead = (nonce - window[0]) & _U32
                if 0 < ahead < _HALF:
                    window[0] = nonce
                    bits = window[1]
                    window[1] = ((bits << ahead) | 1) & _WINDOW_MASK if ahead < REPLAY_WINDOW else 1
                else:
                    back = -ahead & _U32  # 0: the highest nonce itself
                    if back >= REPLAY_WINDOW:
                        stats.stale_packets += 1
                        self._problem(DiagnosticKind.REPLAYED_PACKET, _STALE, ssrc)
                        continue
                    bit = 1 << back
                    if window[1] & bit:
                        stats.replayed_packets += 1
                        self._problem(DiagnosticKind.REPLAYED_PACKET, _REPLAYED, ssrc)
                        continue
                    window[1] |= bit
            packet = (ssrc, sequence, timestamp, b1 > 0x7F, payload)
            user = user_of(ssrc)
            if user is None and hold:
                self.ssrcs.hold(ssrc, (now, packet), now)
                continue
            self._deliver(user, packet, now, now)
        if self._retry:
            self._expire_retries(now)
        return out

    def _not_rtp(self, datagram: bytes) -> None:
        """Count a datagram that is not RTP (RTCP, a keepalive echo, something else)."""
        kind = classify(datagram)
        if kind is DatagramKind.RTCP:
            self.stats.rtcp_received += 1
        else:
            self.stats.other_datagrams += 1
        if self.counts is not None:
            self.counts[f"not_rtp_{kind.value}"] += 1

    def push(self, frame: AudioFrame, now: float) -> Received:
        """Take an already decrypted frame into its SSRC's jitter buffer (step 5 only).

        Args:
            frame: The frame; its ``user_id``, when set, attributes its SSRC.
            now: The current time in seconds.

        Returns:
            What the jitter buffer releases (in :attr:`Received.ordered`).
        """
        out = self._start(now)
        user = frame.user_id
        if user is not None and self._user_of(frame.ssrc) != user:
            self.ssrcs.map(frame.ssrc, user)
        if self.reorder:
            self._reorder(frame, now)
        return out

    def map(self, ssrc: int, user_id: str, now: float) -> Received:
        """Record that ``user_id`` sends on ``ssrc`` (op 5); held packets go on, in order.

        Args:
            ssrc: The SSRC.
            user_id: Its sender.
            now: The current time in seconds.

        Returns:
            The held packets' frames.
        """
        out = self._start(now)
        for arrived, packet in self.ssrcs.map(ssrc, user_id):
            self._deliver(user_id, packet, arrived, now)
        return out

    def forget_user(self, user_id: str) -> Received:
        """``user_id`` left (op 13): release what their jitter buffers hold, forget their SSRCs.

        Returns:
            The released frames and gap markers.
        """
        out = self._out = Received()
        for ssrc in self.ssrcs.ssrcs_of(user_id):
            self._forget_ssrc(ssrc)
            self._idle.forget(ssrc)
        self.ssrcs.forget_user(user_id)
        return out

    # -- time -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has something to do, or ``None`` when nothing waits.

        Calling :meth:`poll` earlier is harmless; later only delays what it releases.
        """
        deadline = self.ssrcs.next_expiry()
        if self._retry:
            retry = self._retry[0][0] + self.retry_window
            deadline = retry if deadline is None else min(deadline, retry)
        summary = self._summary_due
        if summary != float("inf"):
            deadline = summary if deadline is None else min(deadline, summary)
        dave = self.dave.next_deadline() if self.dave is not None else None
        if dave is not None:
            deadline = dave if deadline is None else min(deadline, dave)
        jitters = self.jitters
        for ssrc in list(self._waiting):
            due = jitters[ssrc].next_deadline()
            if due is None:
                self._waiting.discard(ssrc)
            elif deadline is None or due < deadline:
                deadline = due
        return deadline

    def poll(self, now: float) -> Received:
        """Do what is due at ``now``, and retry DAVE frames if the keys changed since.

        Call it at :meth:`next_deadline`, and after handing the DAVE manager a
        gateway message (new keys open waiting frames). It also runs the DAVE
        manager's own deadline (:meth:`DaveManager.tick`).

        Args:
            now: The current time in seconds.

        Returns:
            Frames of expired holds and DAVE retries, what jitter buffers
            release (gap markers for losses waited on long enough, and the
            frames held behind them), and summaries of the problems reported.
        """
        out = self._start(now)
        if self.dave is not None:
            self.dave.tick(
                now
            )  # a DAVE recovery that waited (its messages go out with the next flush)
        self._check_keys(now)
        if self._hold:
            self._unhold(now, now)
        if self._retry:
            self._expire_retries(now)
        jitters = self.jitters
        for ssrc in list(self._waiting):
            jitter = jitters[ssrc]
            released = jitter.poll(now)
            if released:
                self._release(ssrc, released)
            if not jitter.held:
                self._waiting.discard(ssrc)
        return out

    def flush(self, now: float) -> Received:
        """The stream ends: everything held goes out or counts as failed.

        Held packets of unmapped SSRCs go on without a user, frames waiting
        for new DAVE keys count as failed, every jitter buffer releases what
        it holds (with gap markers) and is forgotten, and problems not
        reported yet are summarised.

        Args:
            now: The current time in seconds.

        Returns:
            Everything released.
        """
        out = self._start(now)
        if self._hold:
            self._unhold(float("inf"), now)
        while self._retry:
            _, user, packet, cause = self._retry.popleft()
            self._dave_failed(user, packet, cause)
        for ssrc in list(self.jitters):
            self._forget_ssrc(ssrc)
            self._idle.forget(ssrc)
        self._summarise(float("inf"))
        return out

    # -- internals ------------------------------------------------------------------

    def _start(self, now: float) -> Received:
        """Begin a call: a new result; summaries that are due go in it."""
        out = self._out = Received()
        self._now = now
        if now >= self._summary_due:
            self._summarise(now)
        for gone in self._idle.expired(now):  # at most once per ``forget_after``
            self._forget_ssrc(gone)
        return out

    def _new_jitter(self) -> JitterBuffer[AudioFrame]:
        return JitterBuffer(
            capacity=self._capacity, latency=self._latency, max_latency=self._max_latency
        )

    def _unhold(self, until: float, now: float) -> None:
        """Packets held since before ``until - hold_time`` go on without a user."""
        for _, (arrived, packet) in self.ssrcs.expire(until):
            self.stats.unmapped_expired += 1
            self._deliver(None, packet, arrived, now)  # opens only if no key is needed

    def _deliver(self, user: str | None, packet: _Packet, arrived: float, now: float) -> None:
        """Remove the DAVE layer (step 4) and pass the frame on."""
        payload = packet[4]
        dave = self.dave
        if dave is not None:
            if user is None:
                opus = dave.open_unattributed(payload)
                if opus is None:
                    self._problem(DiagnosticKind.DAVE_DECRYPT_FAILED, _NO_SENDER, packet[0])
                    return
            else:
                # Held: a failure counts towards DAVE's tolerance only once it
                # is lost for good (_dave_failed), after the retry below.
                opus = dave.decrypt(user, payload, now, held=True)
                if opus is None:
                    cause = dave.failure_cause(now)
                    self._mark_dave_lost(packet)
                    if is_dave_frame(payload):
                        # Perhaps sealed with keys of a commit we have not processed
                        # yet: retry once the keys change.
                        retry = self._retry
                        if len(retry) >= self.retry_limit:
                            _, old_user, old, old_cause = retry.popleft()
                            self._dave_failed(old_user, old, old_cause)
                        retry.append((arrived, user, packet, cause))
                    else:
                        self._dave_failed(user, packet, cause)
                    return
            payload = opus
        self._opened(user, packet, payload, arrived, now)

    def _opened(
        self, user: str | None, packet: _Packet, opus: bytes, arrived: float, now: float
    ) -> None:
        """Pass a decrypted frame on as it arrived, and into its jitter buffer (step 5)."""
        ssrc, sequence, timestamp, marker, _ = packet
        frame = _audio_frame(user, ssrc, sequence, timestamp, opus, arrived, marker)
        if self.keep_raw:
            self._out.raw.append(frame)
        if self.reorder:
            self._reorder(frame, now)

    def _reorder(self, frame: AudioFrame, now: float) -> None:
        """Step 5: ``frame`` into its SSRC's jitter buffer."""
        ssrc, sequence, timestamp = frame.ssrc, frame.sequence, frame.timestamp
        if self._idle.touch(ssrc, now):
            self._forget_ssrc(ssrc)  # back after a quiet spell: start afresh
        jitter = self.jitters.get(ssrc)
        if jitter is None:
            jitter = self.jitters[ssrc] = self._new_jitter()
        elif jitter.push_next(sequence, timestamp, now):  # in order: the common case
            self._out.ordered.append(frame)
            return
        released = jitter.push(sequence, timestamp, frame, now)
        if released:
            self._release(ssrc, released)
        if jitter.held:
            self._waiting.add(ssrc)

    def _release(self, ssrc: int, released: list[Release[AudioFrame]]) -> None:
        ordered = self._out.ordered
        for item in released:
            if isinstance(item, JitterPacket):
                frame = item.item
                ordered.append(replace(frame, resynced=True) if item.resynced else frame)
            else:
                dave_lost = self._dave_lost_in(ssrc, item.sequence, item.count)
                stats = self.stats
                stats.frames_lost += item.count
                stats.frames_lost_to_dave += dave_lost
                ordered.append(
                    AudioGap(
                        self._user_of(ssrc),
                        ssrc,
                        item.sequence,
                        item.count,
                        item.timestamp,
                        dave_lost,
                    )
                )

    def _mark_dave_lost(self, packet: _Packet) -> None:
        """Remember that this frame failed DAVE, so the gap that covers it says so."""
        if not self.reorder:
            return
        ssrc, sequence = packet[0], packet[1]
        marks = self._dave_lost.get(ssrc)
        if marks is None:
            marks = self._dave_lost[ssrc] = {}
        elif len(marks) >= _DAVE_LOST_MARKS:
            del marks[next(iter(marks))]
        marks[sequence] = None

    def _dave_lost_in(self, ssrc: int, first: int, count: int) -> int:
        """How many of the ``count`` sequences from ``first`` failed DAVE (and forget them)."""
        marks = self._dave_lost.get(ssrc)
        if not marks:
            return 0
        lost = [seq for seq in marks if (seq - first) % SEQ_MOD < count]
        for seq in lost:
            del marks[seq]
        return len(lost)

    def _forget_ssrc(self, ssrc: int) -> None:
        """Release what an SSRC's jitter buffer holds and forget the buffer."""
        jitter = self.jitters.pop(ssrc, None)
        self._waiting.discard(ssrc)
        if jitter is not None:
            released = jitter.flush()
            if released:
                self._release(ssrc, released)
        self._dave_lost.pop(ssrc, None)

    def _check_keys(self, now: float) -> None:
        dave = self.dave
        if dave is not None and dave.generation != self._generation:
            self._generation = dave.generation
            if self._retry:
                self._retry_all(now)

    def _retry_all(self, now: float) -> None:
        """New DAVE keys: try the frames that failed before them once more."""
        waiting = list(self._retry)
        self._retry.clear()
        dave = self.dave
        assert dave is not None
        for arrived, user, packet, cause in waiting:
            opus = None
            if now - arrived <= self.retry_window:
                opus = dave.decrypt(user, packet[4], now, held=True)
            if opus is None:
                self._dave_failed(user, packet, cause)
                continue
            self.stats.dave_retried += 1
            marks = self._dave_lost.get(packet[0])
            if marks:
                marks.pop(packet[1], None)
            self._opened(user, packet, opus, arrived, now)

    def _expire_retries(self, now: float) -> None:
        retry = self._retry
        horizon = now - self.retry_window
        while retry and retry[0][0] < horizon:
            _, user, packet, cause = retry.popleft()
            self._dave_failed(user, packet, cause)

    def _dave_failed(self, user: str, packet: _Packet, cause: DaveFailure) -> None:
        """A frame is lost to DAVE for good: count it by the cause it failed with."""
        stats = self.stats
        if self.dave is not None:
            self.dave.lost(user, cause, self._now)
        if cause is DaveFailure.FAILED:
            stats.dave_failures += 1
        elif cause is DaveFailure.NOT_IN_GROUP:
            stats.dave_failures_before_join += 1
        else:
            stats.dave_failures_in_transition += 1
        self._problem(DiagnosticKind.DAVE_DECRYPT_FAILED, _DAVE_DETAIL[cause], packet[0], user)

    def _problem(
        self, kind: DiagnosticKind, detail: str, ssrc: int | None = None, user: str | None = None
    ) -> None:
        """Count one problem by name, and report it unless reported lately (then summarise).

        The caller counted it in :attr:`stats`. Cheap after the first of a
        window: a flood costs a dictionary lookup per datagram.
        """
        if self.counts is not None:
            self.counts[kind] += 1
        key = kind if ssrc is None else (kind, ssrc)
        tally = self._tallies.get(key)
        now = self._now
        if tally is not None and now < tally.end:
            if not tally.suppressed and tally.end < self._summary_due:
                self._summary_due = tally.end
            tally.suppressed += 1
            return
        self._tallies[key] = _Tally(now + self.diagnostic_interval, kind, detail, ssrc, user)
        self._report(kind, detail, ssrc, user, 1)

    def _summarise(self, now: float) -> None:
        """Report what windows ended by ``now`` kept back; a window that did starts anew."""
        due = float("inf")
        for key, tally in list(self._tallies.items()):
            if tally.end > now:
                if tally.suppressed and tally.end < due:
                    due = tally.end
                continue
            if not tally.suppressed:
                del self._tallies[key]
                continue
            count, tally.suppressed = tally.suppressed, 0
            tally.end = now + self.diagnostic_interval
            interval = self.diagnostic_interval
            self._report(
                tally.kind,
                f"{tally.detail} ({count} in {interval:g} s)",
                tally.ssrc,
                tally.user,
                count,
            )
        self._summary_due = due

    def _report(
        self, kind: DiagnosticKind, detail: str, ssrc: int | None, user: str | None, count: int
    ) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s (ssrc=%s user=%s)", kind.value, detail, ssrc, user)
        if self.diagnose:
            self._out.diagnostics.append(Diagnostic(kind, detail, ssrc, user, count))

"""Simulated speakers: users inside the sandbox that join and talk like real clients.

A :class:`Speaker` is a voice client without a WebSocket: it is attached to the
voice gateway through the same handlers a WebSocket client uses (an in-memory
:class:`~rxvoice.testing.sandbox.links.MemoryLink`), so it appears in the roster
(op 11 / op 13), announces itself with op 5, and runs DAVE with its own
:class:`~rxvoice.testing.sandbox.daveclient.DaveClient` (its own
``davey.DaveSession``: key packages, commits, welcomes, transitions), as
discord.js does. Its media goes through a real UDP socket to the relay, so the
relay treats it like anyone's.

It sends real Opus (encoded with :class:`rxvoice.audio.opus.OpusEncoder`) at
20 ms pacing on the event loop clock, DAVE-encrypted once its group is ready
(plain before, as real clients do) and transport-encrypted. Its voice is
either a steady sine tone at its own frequency (the default: tests recognise
speakers by it; the first second is encoded once and then replayed, since a
tone of a whole number of hertz repeats every second and encoding costs about
125 µs a frame, most of the sandbox's time with dozens of speakers), or, with a
:class:`SpeechVoice`, speech-like sound: synthesised vowels in syllables, with
a pitch contour around the speaker's own pitch and pauses, taking turns with
the other speakers of a :class:`Conversation`.

Its DAVE logic follows discord.js's ``DAVESession`` on purpose rather than
reusing rxvoice's :class:`~rxvoice.protocol.dave.DaveManager`: a speaker is a
peer for rxvoice's client to be tested against, and a shared implementation
would agree with itself on any mistake. One shortcut: a speaker still waiting for
its first group does not commit proposals when the Welcome that makes it a
member is already in its inbox (its commit could only lose; with dozens of
speakers forming a group together, each would cost a commit over the whole
group). Every Opus payload it sends is recorded in
:attr:`Speaker.sent`, so a test can check bit-exact delivery, and the tone
tells the speakers apart after decoding.

A speaker added with ``listen=True`` also receives what the relay sends it,
as a client does: it opens the transport encryption with its own key, maps
SSRCs to users from op 5 (holding a few packets that arrive before their op 5),
DAVE-decrypts with its own session, and records each frame in
:attr:`Speaker.heard`, per sender, as the sender sent it. Speakers that do not
listen get no media at all (the relay skips them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import davey
import numpy as np

from rxvoice.audio.opus import CHANNELS, SAMPLE_RATE, SAMPLES_PER_FRAME, OpusEncoder
from rxvoice.errors import DaveError, MalformedMessage, MalformedPacket, ProtocolError
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.closecodes import ClosePolicy, close_policy
from rxvoice.protocol.crypto import RtpCrypto, choose_mode
from rxvoice.protocol.ipdiscovery import (
    IP_DISCOVERY_SIZE,
    IpDiscoveryRequest,
    IpDiscoveryResponse,
)
from rxvoice.protocol.rtp import SILENCE_FRAME, DatagramKind, RtpPacket, classify
from rxvoice.testing.sandbox.daveclient import DaveClient
from rxvoice.testing.sandbox.links import Close, MemoryLink
from rxvoice.testing.sandbox.voice import VoiceConnection, VoiceServer

__all__ = [
    "TONE_LOOP",
    "Conversation",
    "EncodedTone",
    "SentFrame",
    "Speaker",
    "SpeechVoice",
    "speech_pitch",
    "tone",
]

logger = logging.getLogger(__name__)

FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE
_AMPLITUDE = 0.3 * 32767


def tone(frequency: float, index: int) -> np.ndarray:
    """The ``index``-th 20 ms stereo int16 frame of a continuous sine at ``frequency`` Hz."""
    t = (index * SAMPLES_PER_FRAME + np.arange(SAMPLES_PER_FRAME)) / SAMPLE_RATE
    mono = (_AMPLITUDE * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return np.repeat(mono[:, None], CHANNELS, axis=1)


SENT_HISTORY = 30_000  # frames a speaker remembers in Speaker.sent (and per sender in heard)
_HELD = 250  # packets a listening speaker holds until op 5 names their SSRC (5 s of one sender)
TONE_LOOP = 50  # frames encoded once, then replayed: one second


class EncodedTone:
    """A speaker's Opus frames: the first second of its tone, encoded once, then looped.

    Args:
        frequency: The tone, in Hz (a whole number of hertz loops seamlessly).
    """

    def __init__(self, frequency: float) -> None:
        self.frequency = frequency
        self._frames: list[bytes] = []
        self._encoder: OpusEncoder | None = OpusEncoder()

    def __getitem__(self, index: int) -> bytes:
        """The Opus frame of the tone's ``index``-th 20 ms."""
        frames = self._frames
        while len(frames) <= index % TONE_LOOP:
            assert self._encoder is not None
            frames.append(self._encoder.encode(tone(self.frequency, len(frames))))
            if len(frames) == TONE_LOOP:
                self._encoder.close()
                self._encoder = None
        return frames[index % TONE_LOOP]

    def close(self) -> None:
        """Free the encoder if the loop is not complete yet."""
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None


# Formants (Hz) of five vowels, for a voice of pitch about 120 Hz.
_VOWELS = (
    (730, 1090, 2440),
    (530, 1840, 2480),
    (270, 2290, 3010),
    (570, 840, 2410),
    (300, 870, 2240),
)
_FORMANT_GAINS = (1.0, 0.5, 0.25)
_BANDWIDTH = 90.0  # Hz, of each formant
_SPEECH_PEAK = 0.3 * 32767
_PITCH_RATIO = 1.26  # between neighbouring speakers: a third apart, never confused
_SPEECH_VOICES = 8


def speech_pitch(index: int) -> float:
    """The pitch (Hz) of the ``index``-th speech speaker: 100 Hz x 1.26^i, eight distinct voices."""
    return round(100.0 * _PITCH_RATIO ** (index % _SPEECH_VOICES), 1)


class SpeechVoice:
    """Speech-like sound around one pitch: vowels in syllables, with a pitch contour and pauses.

    Each phrase is a run of syllables (a vowel of 120-280 ms with a soft
    attack and release, then a 30-90 ms pause). The pitch rises and falls
    around the voice's :attr:`pitch` (by 5 %, about once a second, as
    intonation does) with a small accent per syllable, so the median pitch of
    any half second is close to it: a speaker stays recognisable by it (see
    :func:`rxvoice.audio.dsp.fundamental_frequency`).
    The sound is a sum of harmonics of the pitch shaped by the vowel's
    formants (scaled up for higher voices, as shorter vocal tracts are).

    Args:
        pitch: The voice's median pitch in Hz.
        seed: Seed of the syllables and vowels chosen.
    """

    def __init__(self, pitch: float, seed: int = 0) -> None:
        self.pitch = pitch
        self._rng = random.Random(seed)  # noqa: S311 - a script, not crypto
        self._phase = 0.0
        self._tract = (pitch / 120.0) ** 0.25  # formant scale
        self._tune = self._rng.uniform(0, 2 * math.pi)  # where the intonation starts

    def phrase(self, seconds: float) -> Iterator[np.ndarray]:
        """Yield the 20 ms stereo int16 frames of a phrase of about ``seconds``."""
        rng = self._rng
        total = max(1, round(seconds / FRAME_SECONDS)) * SAMPLES_PER_FRAME
        plan: list[tuple[int, int, int]] = []  # (start sample, length, vowel) of each syllable
        at = 0
        while at < total:
            length = round(rng.uniform(0.12, 0.28) * SAMPLE_RATE)
            plan.append((at, min(length, total - at), rng.randrange(len(_VOWELS))))
            at += length + round(rng.uniform(0.03, 0.09) * SAMPLE_RATE)
        accents = [rng.uniform(-0.02, 0.02) for _ in plan]
        for first in range(0, total, SAMPLES_PER_FRAME):
            yield self._frame(first, total, plan, accents)

    def _frame(
        self, first: int, total: int, plan: list[tuple[int, int, int]], accents: list[float]
    ) -> np.ndarray:
        n = np.arange(first, first + SAMPLES_PER_FRAME)
        out = np.zeros(SAMPLES_PER_FRAME)
        # Intonation: up and down by 5 % around the pitch, about once a second.
        glide = 1.0 + 0.05 * np.sin(2 * np.pi * n / (0.9 * SAMPLE_RATE) + self._tune)
        accent = np.zeros(SAMPLES_PER_FRAME)
        envelope = np.zeros(SAMPLES_PER_FRAME)
        vowel = 0
        for (start, length, v), bump in zip(plan, accents, strict=True):
            inside = (n >= start) & (n < start + length)
            if not inside.any():
                continue
            vowel = v
            position = (n[inside] - start) / max(length, 1)
            accent[inside] = bump * np.sin(np.pi * position)
            edge = min(0.02 * SAMPLE_RATE, length / 2)
            rise = np.minimum(1.0, (n[inside] - start) / edge)
            fall = np.minimum(1.0, (start + length - n[inside]) / edge)
            envelope[inside] = np.sin(0.5 * np.pi * np.minimum(rise, fall)) ** 2
        frequency = self.pitch * (glide + accent)
        phase = self._phase + 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
        self._phase = float(phase[-1] % (2 * np.pi))
        if envelope.any():
            formants = [f * self._tract for f in _VOWELS[vowel]]
            mean = float(frequency.mean())
            for k in range(1, int(4000 / mean) + 1):
                gain = sum(
                    g * math.exp(-0.5 * ((k * mean - f) / _BANDWIDTH) ** 2)
                    for f, g in zip(formants, _FORMANT_GAINS, strict=True)
                )
                out += (gain + 0.3 / k) * np.sin(k * phase)
            out *= envelope * _SPEECH_PEAK / 2.5
        mono = np.clip(out, -32768, 32767).astype(np.int16)
        return np.repeat(mono[:, None], CHANNELS, axis=1)


@dataclass(frozen=True, slots=True)
class SentFrame:
    """One packet as a speaker sent it (and as a listening speaker heard it).

    Attributes:
        sequence: Its RTP sequence number.
        timestamp: Its RTP timestamp.
        opus: The Opus payload before DAVE (the silence frame for pauses).
        dave: Whether it went out DAVE-encrypted.
    """

    sequence: int
    timestamp: int
    opus: bytes
    dave: bool


class _SpeakerUdp(asyncio.DatagramProtocol):
    def __init__(
        self,
        on_discovery: Callable[[IpDiscoveryResponse], None],
        on_media: Callable[[bytes], None] | None,
    ) -> None:
        self._on_discovery = on_discovery
        self._on_media = on_media  # None: not listening

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if len(data) == IP_DISCOVERY_SIZE and data[:2] == b"\x00\x02":
            with contextlib.suppress(MalformedPacket):
                self._on_discovery(IpDiscoveryResponse.parse(data))
        elif self._on_media is not None:
            self._on_media(data)


class Speaker:
    """A simulated user in a call.

    Create speakers with :meth:`rxvoice.testing.sandbox.Sandbox.add_speaker`.

    Attributes:
        user_id: The speaker's user id.
        frequency: Its tone, in Hz; with a speech voice, the voice's pitch.
        voice: Its speech voice, or ``None`` for the tone.
        listen: Whether it receives the others' media.
        sent: Every packet sent, in order (the last :data:`SENT_HISTORY`).
        heard: With ``listen``: per sender's user id, every packet received,
            in arrival order, as its sender sent it (after transport and DAVE
            decryption; the last :data:`SENT_HISTORY` per sender).
        heard_errors: Packets received that could not be opened (transport or
            DAVE decryption failed) or whose SSRC op 5 never named.
    """

    def __init__(
        self,
        server: VoiceServer,
        *,
        user_id: str,
        channel_id: str,
        frequency: float,
        dave: bool,
        on_change: Callable[[], None],
        voice: SpeechVoice | None = None,
        listen: bool = False,
    ) -> None:
        self._server = server
        self.user_id = user_id
        self.listen = listen
        self.channel_id = channel_id
        self.frequency = frequency
        self.voice = voice
        self.saying = False  # a phrase is being sent (see say())
        self._max_dave = davey.DAVE_PROTOCOL_VERSION if dave else 0
        self._on_change = on_change
        # What it sent, for tests to compare; bounded so a long-running CLI
        # sandbox does not grow (about 10 minutes of audio).
        self.sent: collections.deque[SentFrame] = collections.deque(maxlen=SENT_HISTORY)
        self.heard: collections.defaultdict[str, collections.deque[SentFrame]] = (
            collections.defaultdict(lambda: collections.deque(maxlen=SENT_HISTORY))
        )
        self.heard_errors = 0
        # Packets whose SSRC no op 5 has named yet (op 5 and RTP race).
        self._unattributed: collections.deque[RtpPacket] = collections.deque(maxlen=_HELD)
        self._session_id, self._token = server.mint(user_id, channel_id)
        self._loop = asyncio.get_running_loop()
        self._link = MemoryLink()
        self._conn: VoiceConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._discovered: asyncio.Future[IpDiscoveryResponse] = self._loop.create_future()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._rtp: RtpCrypto | None = None
        self._ssrc = 0
        self._seq_ack = -1
        self._speaking = False
        self._frame_index = 0
        self._tone: EncodedTone | None = None
        self._encoder: OpusEncoder | None = None  # a speech voice's (tones use self._tone)
        self.closed = False
        self._dave = DaveClient(user_id, channel_id)

    def __repr__(self) -> str:
        kind = "speech" if self.voice is not None else "tone"
        return f"Speaker(user_id={self.user_id!r}, frequency={self.frequency}, {kind})"

    # -- state ------------------------------------------------------------------------------

    @property
    def ssrc(self) -> int:
        """The SSRC from Ready (0 before)."""
        return self._ssrc

    @property
    def dave_ready(self) -> bool:
        """Whether the speaker's frames are DAVE-encrypted now."""
        return self._dave.ready

    @property
    def epoch(self) -> int | None:
        """The speaker's MLS epoch, ``None`` without a group."""
        return self._dave.epoch

    @property
    def protocol_version(self) -> int:
        """The DAVE protocol version in force for the speaker (0: none)."""
        return self._dave.protocol_version

    # -- joining ----------------------------------------------------------------------------

    async def join(self, timeout: float = 10.0) -> None:
        """Identify, do IP discovery and select the protocol; return once op 4 arrived."""
        self._udp, _ = await self._loop.create_datagram_endpoint(
            lambda: _SpeakerUdp(self._on_discovery, self._hear if self.listen else None),
            remote_addr=(self._server.media_ip, self._server.media_port),
        )
        self._conn = self._server.open(self._link, listens=self.listen)
        self._reader = self._loop.create_task(self._read(), name=f"speaker-{self.user_id}")
        self._send(
            gw.Identify(
                server_id=self._server.guild_id,
                user_id=self.user_id,
                session_id=self._session_id,
                token=self._token,
                max_dave_protocol_version=self._max_dave,
            )
        )
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    def _on_discovery(self, response: IpDiscoveryResponse) -> None:
        if not self._discovered.done():
            self._discovered.set_result(response)

    def _send(self, message: gw.GatewayMessage) -> None:
        if self._conn is not None and not self.closed:
            self._server.receive(self._conn, gw.serialize(message))

    async def _read(self) -> None:
        while True:
            item = await self._link.inbox.get()
            if isinstance(item, Close):
                self._closed(item.code)
                self._on_change()
                if self.closed:
                    return
                continue
            try:
                envelope = gw.parse(item, from_server=True)
            except MalformedMessage:
                logger.warning("speaker %s got a malformed frame", self.user_id)
                continue
            if envelope.seq is not None:
                self._seq_ack = envelope.seq
            try:
                await self._handle(envelope.message)
            except Exception:
                logger.exception("speaker %s failed on op %s", self.user_id, envelope.message.op)
            self._on_change()

    def _closed(self, code: int | None) -> None:
        if close_policy(code) is ClosePolicy.RESUME and self._ready.done():
            logger.info("speaker %s resumes after close %s", self.user_id, code)
            self._link = MemoryLink()
            self._conn = self._server.open(self._link, listens=self.listen)
            self._send(
                gw.Resume(
                    server_id=self._server.guild_id,
                    session_id=self._session_id,
                    token=self._token,
                    seq_ack=self._seq_ack,
                )
            )
            return
        logger.info("speaker %s disconnected (%s)", self.user_id, code)
        self._shutdown()

    async def _handle(self, m: gw.GatewayMessage) -> None:
        if isinstance(m, gw.Ready):
            self._ssrc = m.ssrc
            assert self._udp is not None
            self._udp.sendto(IpDiscoveryRequest(m.ssrc).serialize())
            found = await asyncio.wait_for(self._discovered, 10.0)
            self._send(gw.SelectProtocol(found.address, found.port, choose_mode(m.modes).value))
            return
        if isinstance(m, gw.SessionDescription):
            self._rtp = RtpCrypto(choose_mode([m.mode]), m.secret_key, self._ssrc)
        elif isinstance(m, gw.Resumed):
            self._speaking = False
        queued = isinstance(m, gw.DaveMlsProposals) and self._welcome_queued()
        for reply in self._dave.receive(m, welcome_queued=queued):
            self._send(reply)
        if isinstance(m, gw.SessionDescription) and not self._ready.done():
            self._ready.set_result(None)
        elif isinstance(m, gw.Speaking) and self._unattributed:
            held = [p for p in self._unattributed if p.header.ssrc == m.ssrc]
            for packet in held:
                self._unattributed.remove(packet)
                self._attribute(packet)

    def _welcome_queued(self) -> bool:
        welcome = gw.DaveMlsWelcome.op
        return any(
            isinstance(frame, bytes) and len(frame) > 2 and frame[2] == welcome
            for frame in self._link.queued()
        )

    # -- media ------------------------------------------------------------------------------

    def _hear(self, datagram: bytes) -> None:
        rtp = self._rtp
        if rtp is None or classify(datagram) is not DatagramKind.RTP:
            return  # RTCP and keepalives: nothing to hear
        try:
            packet = rtp.open(datagram)
        except ProtocolError:
            self.heard_errors += 1
            return
        self._attribute(packet)

    def _attribute(self, packet: RtpPacket) -> None:
        try:
            heard = self._dave.decrypt(packet.header.ssrc, packet.payload)
        except DaveError as exc:
            logger.debug("speaker %s: %s", self.user_id, exc)
            self.heard_errors += 1
            return
        if heard is None:
            if len(self._unattributed) == self._unattributed.maxlen:
                self.heard_errors += 1  # the oldest held packet is given up
            self._unattributed.append(packet)
            return
        user_id, opus, dave = heard
        header = packet.header
        self.heard[user_id].append(SentFrame(header.sequence, header.timestamp, opus, dave))
        self._on_change()

    def _packet(self, opus: bytes) -> None:
        rtp, udp = self._rtp, self._udp
        if rtp is None or udp is None or udp.is_closing():
            return
        payload, dave = self._dave.encrypt(opus)
        self.sent.append(SentFrame(rtp.sequence, rtp.timestamp, opus, dave))
        udp.sendto(rtp.seal_opus(payload))

    def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            self._send(gw.Speaking(speaking=1 if speaking else 0, ssrc=self._ssrc, delay=0))

    async def _paced(self, frames: int, make: Callable[[], bytes]) -> None:
        start = self._loop.time()
        for i in range(frames):
            if self.closed:
                return
            self._packet(make())
            # Pacing on the loop clock: frame i+1 is due 20 ms after frame i.
            delay = start + (i + 1) * FRAME_SECONDS - self._loop.time()
            await asyncio.sleep(max(0.0, delay))

    async def talk(self, frames: int) -> None:
        """Send ``frames`` Opus frames of the tone (op 5 ``speaking: 1`` first)."""
        if self._rtp is None or self.closed:
            return
        if self._tone is None:
            self._tone = EncodedTone(self.frequency)
        frames_of_tone = self._tone
        self._set_speaking(True)

        def next_frame() -> bytes:
            index = self._frame_index
            self._frame_index += 1
            return frames_of_tone[index]

        await self._paced(frames, next_frame)

    async def say(self, seconds: float) -> None:
        """Say a phrase of about ``seconds`` (speech voice) or talk that long (tone), then pause."""
        if self._rtp is None or self.closed or self.saying:
            return
        self.saying = True
        try:
            if self.voice is None:
                await self.talk(max(1, round(seconds / FRAME_SECONDS)))
            else:
                if self._encoder is None:
                    # As Discord clients: in-band FEC, so a single loss can be recovered.
                    self._encoder = OpusEncoder(
                        application="voip", fec=True, packet_loss_percent=10
                    )
                encoder, frames = self._encoder, self.voice.phrase(seconds)
                self._set_speaking(True)
                count = max(1, round(seconds / FRAME_SECONDS))
                await self._paced(count, lambda: encoder.encode(next(frames)))
            await self.pause()
        finally:
            self.saying = False

    async def pause(self) -> None:
        """Stop talking as clients do: five silence frames, then op 5 ``speaking: 0``."""
        if self._rtp is None or self.closed or not self._speaking:
            return
        await self._paced(5, lambda: SILENCE_FRAME)
        self._set_speaking(False)

    async def run(self, talk_frames: int = 50, pause_seconds: float | None = 0.5) -> None:
        """Talk and pause in turns until the speaker leaves (the sandbox's default script).

        With ``pause_seconds=None`` it talks without pausing (50 packets a second,
        no speaking changes).
        """
        if pause_seconds is None:
            await self.talk(sys.maxsize)
            return
        while not self.closed:
            await self.talk(talk_frames)
            await self.pause()
            await asyncio.sleep(pause_seconds)  # a gap in the script, not a wait for an event

    async def leave(self) -> None:
        """Leave the call (as a main-gateway leave) and release the sockets."""
        if not self.closed:
            self._server.leave(self.user_id)
        await self.aclose()

    def _shutdown(self) -> None:
        self.closed = True
        if self._udp is not None:
            self._udp.close()
        if self._tone is not None:
            self._tone.close()
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        if not self._ready.done():
            self._ready.set_exception(ConnectionError("the speaker was disconnected"))
            self._ready.exception()  # retrieved: nobody may be waiting any more

    async def aclose(self) -> None:
        """Stop the speaker's tasks (after :meth:`leave`, or at sandbox shutdown)."""
        self._shutdown()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


class Conversation:
    """Speech speakers taking turns like people: one at a time, sometimes overlapping.

    A turn lasts 0.8-2.2 s; the next one starts 0.5 s after it ends, or up to
    0.35 s before (people talk over each other). Speakers take turns in
    order; a speaker who joins later speaks next. It runs while
    :meth:`run` does (the sandbox runs it as a task).

    Args:
        seed: Seed of the turn lengths and gaps.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - a script, not crypto
        self._order: collections.deque[Speaker] = collections.deque()
        self._joined = asyncio.Event()
        self._turns: set[asyncio.Task[None]] = set()

    def add(self, speaker: Speaker, *, soon: bool = True) -> None:
        """Let ``speaker`` take part: it speaks next (``soon``), or after the others."""
        if soon:
            self._order.appendleft(speaker)
        else:
            self._order.append(speaker)
        self._joined.set()

    def _next(self) -> Speaker | None:
        for _ in range(len(self._order)):
            speaker = self._order.popleft()
            if speaker.closed:
                continue  # left the call: out of the conversation
            self._order.append(speaker)
            if not speaker.saying:
                return speaker
        return None

    async def run(self) -> None:
        """Hand out turns until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                speaker = self._next()
                if speaker is None and not self._order:
                    self._joined.clear()
                    await self._joined.wait()  # nobody left to talk: wait for a joiner
                    continue
                length = self._rng.uniform(0.8, 2.2)
                if speaker is not None:
                    turn = loop.create_task(speaker.say(length), name=f"turn-{speaker.user_id}")
                    self._turns.add(turn)
                    turn.add_done_callback(self._turns.discard)
                alone = sum(not s.closed for s in self._order) < 2
                gap = self._rng.uniform(0.1 if alone else -0.35, 0.5)
                # A gap in the script (pacing), not a wait for an event.
                await asyncio.sleep(length + gap)
        finally:
            for turn in list(self._turns):
                turn.cancel()

"""What a sandbox is built with: :class:`SandboxOptions`, validated once, here.

The sandbox, its voice gateway and relay read their settings from one frozen
:class:`SandboxOptions`; ``python -m rxvoice sandbox`` builds one from its
flags (fields whose metadata names a ``flag``, see :func:`cli_flag`), and the
test fixtures pass one through. ``Sandbox(**options)`` still takes the fields
as keywords.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rxvoice.errors import InvalidArgument, MalformedMessage
from rxvoice.protocol.crypto import EncryptionMode
from rxvoice.protocol.gateway import check_snowflake
from rxvoice.testing.sandbox.faults import Faults

__all__ = ["MAX_SPEAKERS", "SandboxOptions", "cli_flag"]

_ALL_MODES = (
    EncryptionMode.AEAD_AES256_GCM_RTPSIZE.value,
    EncryptionMode.AEAD_XCHACHA20_POLY1305_RTPSIZE.value,
)
VOICES = ("tone", "speech")
MAX_SPEAKERS = 99
"""The most speakers a sandbox starts with: the highest user limit Discord lets a voice
channel have, and the most the sandbox is measured with (docs/benchmarks.md); with 200,
the speakers' joins timed out."""
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind


def cli_flag(flag: str, help_text: str, **argparse_options: Any) -> Mapping[str, Any]:
    """Field metadata: the option is also the command-line ``flag``.

    A bool field is a switch: ``--no-...`` stores ``False``, any other flag
    ``True``. ``group`` makes flags of one group mutually exclusive; other
    keywords (``choices``, ``metavar``) go to ``argparse`` as they are.
    """
    return {"flag": flag, "help": help_text, **argparse_options}


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """How a :class:`~rxvoice.testing.sandbox.Sandbox` is set up.

    Attributes:
        host: Address to bind (the advertised address is 127.0.0.1 for a
            wildcard); IPv4, since clients open udp4 sockets (protocol.md §11).
        port: Main-gateway port; the voice gateway (TCP) and the relay (UDP)
            use ``port + 1``. 0 picks free ports.
        speakers: Simulated speakers that join at start (together, see
            ``Sandbox.add_speakers``) and talk (see ``voices``); at most
            :data:`MAX_SPEAKERS`.
        voices: ``"tone"`` (the default): each speaker sings a steady sine,
            speaker ``i`` at 300 + 150·i Hz, talking 1 s then pausing, all
            at once. ``"speech"``: speech-like voices (vowels with a pitch
            contour, speaker ``i`` around ``speech_pitch(i)``) taking turns
            like people, sometimes overlapping; a speaker added later speaks
            next.
        continuous_speech: Tone speakers added with ``talk=True`` talk without
            pauses (50 packets a second each, no speaking changes).
        listen: Speakers receive, decrypt and record what the others send
            (``speaker.heard``), unless ``add_speaker(listen=False)``. Off by
            default: the relay then sends them nothing (no CPU for media
            nobody checks, with dozens of speakers).
        dave: Offer DAVE (E2EE). Off: every op 4 says version 0.
        require_dave: Close clients without DAVE with 4017, as Discord does
            since 2026-03-01. Otherwise a non-DAVE client downgrades the call.
        resume_window: Seconds a voice session survives without its WebSocket.
        modes: Transport modes offered in Ready, in order.
        heartbeat_interval: Voice Hello interval, in ms. A connection that
            stays silent for two intervals is closed with 4009.
        gateway_heartbeat_interval: Main-gateway Hello interval, in ms.
        transition_timeout: Seconds before a DAVE transition executes without
            every op 23.
        replay_limit: Messages buffered per session for resume.
        resume_gap_code: Close code for a resume the buffer cannot cover.
        rtp_extensions: Put a ``0xBEDE`` extension on every other relayed packet.
        rtcp_interval: Send an RTCP receiver report every this many relayed
            packets per recipient (0: never).
        faults: Fault knobs (see :class:`~rxvoice.testing.sandbox.Faults`);
            ``Sandbox.set_faults`` changes them later.
        guild_id: The guild id; random when omitted.
        channel_id: The voice channel id; random when omitted.
        channels: Voice channels in the guild (``channel_ids``; the first is
            ``channel_id``). Any snowflake works as a call; these are the ones
            ``GUILD_CREATE`` lists, so a bot library's cache holds them.

    Raises:
        InvalidArgument: A value out of range, or a combination that cannot
            work (``require_dave`` without ``dave``).
    """

    host: str = field(
        default="127.0.0.1", metadata=cli_flag("--host", "address to bind (default 127.0.0.1)")
    )
    port: int = field(
        default=0,
        metadata=cli_flag(
            "--port", "main-gateway port; voice uses PORT+1 (TCP and UDP); 0 picks free ports"
        ),
    )
    speakers: int = field(
        default=0,
        metadata=cli_flag("--speakers", f"simulated speakers, 0 to {MAX_SPEAKERS} (default 0)"),
    )
    voices: str = field(
        default="tone",
        metadata=cli_flag(
            "--voices",
            "speakers sing a steady tone each (default), or talk in turns like people",
            choices=VOICES,
        ),
    )
    continuous_speech: bool = field(
        default=False,
        metadata=cli_flag(
            "--continuous",
            "speakers talk without pauses (50 packets/s each) instead of in turns",
        ),
    )
    listen: bool = False
    dave: bool = field(
        default=True,
        metadata=cli_flag("--no-dave", "offer no DAVE (transport only)", group="dave"),
    )
    require_dave: bool = field(
        default=False,
        metadata=cli_flag("--require-dave", "close clients without DAVE with 4017", group="dave"),
    )
    resume_window: float = field(
        default=30.0,
        metadata=cli_flag(
            "--resume-window",
            "how long a session whose WebSocket closed stays resumable (default 30)",
            metavar="SECONDS",
        ),
    )
    modes: tuple[str, ...] = _ALL_MODES
    heartbeat_interval: float = 41_250.0
    gateway_heartbeat_interval: float = 41_250.0
    transition_timeout: float = 2.0
    replay_limit: int = 1024
    resume_gap_code: int = 4006
    rtp_extensions: bool = True
    rtcp_interval: int = 50
    faults: Faults | None = None
    guild_id: str | None = None
    channel_id: str | None = None
    channels: int = 1

    def __post_init__(self) -> None:
        # A list is welcome (``modes=[...]``); stored as a tuple, so the options stay frozen.
        object.__setattr__(self, "modes", tuple(self.modes))
        problem = self._problem()
        if problem is not None:
            raise InvalidArgument(problem)

    def _problem(self) -> str | None:
        checks: tuple[tuple[bool, str], ...] = (
            (
                self.host in WILDCARDS or _is_ipv4(self.host),
                f"host must be an IPv4 address, got {self.host!r}",
            ),
            (0 <= self.port < 0xFFFF, f"port must be 0..65534 (PORT+1 is used), got {self.port}"),
            (
                0 <= self.speakers <= MAX_SPEAKERS,
                f"speakers must be between 0 and {MAX_SPEAKERS}, got {self.speakers}",
            ),
            (
                self.voices in VOICES,
                f"voices must be 'tone' or 'speech', got {self.voices!r}",
            ),
            (self.dave or not self.require_dave, "require_dave needs dave=True"),
            (
                self.resume_window >= 0,
                f"resume_window must not be negative, got {self.resume_window}",
            ),
            (
                bool(self.modes) and all(m in _ALL_MODES for m in self.modes),
                f"modes must be some of {_ALL_MODES}, got {self.modes}",
            ),
            (
                self.heartbeat_interval > 0 and self.gateway_heartbeat_interval > 0,
                "heartbeat intervals must be positive",
            ),
            (self.transition_timeout > 0, "transition_timeout must be positive"),
            (self.replay_limit >= 1, "replay_limit must be at least 1"),
            (
                1000 <= self.resume_gap_code <= 4999,
                f"resume_gap_code must be a close code 1000..4999, got {self.resume_gap_code}",
            ),
            (self.rtcp_interval >= 0, "rtcp_interval must not be negative"),
            (self.channels >= 1, "channels must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                return message
        for name in ("guild_id", "channel_id"):
            value = getattr(self, name)
            if value is not None:
                try:
                    check_snowflake(value, name)
                except MalformedMessage as exc:
                    return str(exc)
        return None


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True

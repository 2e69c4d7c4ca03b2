"""The ``decrypt`` operators: raw voice datagrams to :class:`AudioFrame`, both layers removed.

Both run the receiver's steps 1-4 (classify, transport open, attribution,
DAVE with its retry); :func:`decrypt_` with fixed keys, :func:`decrypt_session_`
with the keys a live session holds at each datagram.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from reactivex import Observable, abc

from rxvoice.errors import UsageError
from rxvoice.events import AudioFrame
from rxvoice.operators._common import DiagnosticCallback, drive_receiver
from rxvoice.protocol.crypto import RtpCrypto, TransportCipher
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.receiver import Received, VoiceReceiver


class SsrcLookup(Protocol):
    """Tells which user sends on an SSRC (e.g. :class:`rxvoice.protocol.ssrcmap.SsrcMap`)."""

    def user_of(self, ssrc: int, /) -> str | None:
        """The user sending on ``ssrc``, or ``None`` if not known yet."""
        ...


class SessionKeys(Protocol):
    """What :func:`decrypt_session` reads from a live session, e.g. a :class:`rxvoice.Connection`.

    The attributes are read again for every datagram, since a reconnect or a
    new session replaces them.
    """

    @property
    def rtp(self) -> RtpCrypto | None:
        """The transport cipher with its counters; ``None`` before the session starts."""
        ...

    @property
    def dave(self) -> DaveManager | None:
        """The DAVE session; ``None`` before the session starts."""
        ...

    @property
    def ssrcs(self) -> SsrcLookup:
        """SSRC to user attribution."""
        ...


def _emitter(
    on_diagnostic: DiagnosticCallback | None,
) -> Callable[[Received, abc.ObserverBase[AudioFrame]], None]:
    def emit(received: Received, observer: abc.ObserverBase[AudioFrame]) -> None:
        if on_diagnostic is not None:
            for diagnostic in received.diagnostics:
                on_diagnostic(diagnostic)
        for frame in received.raw:
            observer.on_next(frame)

    return emit


def _receive(receiver: VoiceReceiver, datagram: bytes, now: float) -> Received:
    return receiver.receive((datagram,), now)


def decrypt_(
    cipher: TransportCipher | RtpCrypto,
    dave: DaveManager | None,
    user_of: Callable[[int], str | None] | None,
    stats: Counter[str] | None,
    on_diagnostic: DiagnosticCallback | None,
    clock: Callable[[], float] | None,
) -> Callable[[Observable[bytes]], Observable[AudioFrame]]:
    if isinstance(cipher, RtpCrypto):
        cipher = cipher.cipher
    elif not isinstance(cipher, TransportCipher):
        raise UsageError(
            f"decrypt takes a TransportCipher or RtpCrypto, not {type(cipher).__name__}; "
            "for a live session (a Connection) use decrypt_session"
        )
    keys = cipher

    def new() -> VoiceReceiver:
        receiver = VoiceReceiver(
            keys,
            dave,
            user_of=user_of if user_of is not None else _nobody,
            reorder=False,
            counts=stats,
        )
        receiver.diagnose = on_diagnostic is not None
        return receiver

    return drive_receiver(new, _receive, _emitter(on_diagnostic), clock=clock)


def _nobody(_: int) -> None:
    return None


def decrypt_session_(
    session: SessionKeys,
    stats: Counter[str] | None,
    on_diagnostic: DiagnosticCallback | None,
    clock: Callable[[], float] | None,
) -> Callable[[Observable[bytes]], Observable[AudioFrame]]:
    # A Connection's DaveManager measures its transition windows on the event
    # loop's clock (time.monotonic for asyncio's loops), whatever scheduler
    # this pipeline runs on: RxPY's own report the wall clock.
    def user_of(ssrc: int) -> str | None:
        return session.ssrcs.user_of(ssrc)

    def new() -> VoiceReceiver:
        receiver = VoiceReceiver(user_of=user_of, reorder=False, counts=stats)
        receiver.diagnose = on_diagnostic is not None
        return receiver

    def step(receiver: VoiceReceiver, datagram: bytes, now: float) -> Received:
        rtp, dave = session.rtp, session.dave
        cipher = rtp.cipher if rtp is not None else None
        if cipher is not receiver.cipher or dave is not receiver.dave:
            receiver.set_keys(cipher, dave)  # a new session (or its first keys)
        return receiver.receive((datagram,), now)

    return drive_receiver(
        new,
        step,
        _emitter(on_diagnostic),
        clock=clock if clock is not None else time.monotonic,
    )


__all__ = ["SessionKeys", "SsrcLookup", "decrypt_", "decrypt_session_"]

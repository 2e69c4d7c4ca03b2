"""The ``decrypt`` operator: raw voice datagrams to :class:`AudioFrame`, both layers removed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from reactivex import Observable, abc

from rxvoice.errors import ProtocolError
from rxvoice.events import RTP_HEADER_SIZE, AudioFrame
from rxvoice.operators._common import DiagnosticCallback, Reporter, choose_scheduler, now_of
from rxvoice.protocol.crypto import RtpCrypto, TransportCipher
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.rtp import OPUS_PAYLOAD_TYPE, DatagramKind, classify


class SsrcLookup(Protocol):
    """Tells which user sends on an SSRC (e.g. :class:`rxvoice.protocol.ssrcmap.SsrcMap`)."""

    def user_of(self, ssrc: int, /) -> str | None:
        """The user sending on ``ssrc``, or ``None`` if not known yet."""
        ...


class SessionKeys(Protocol):
    """What :func:`decrypt` reads from a live session, e.g. a :class:`rxvoice.Connection`.

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


def decrypt_(
    keys: TransportCipher | RtpCrypto | SessionKeys,
    dave: DaveManager | None,
    user_of: Callable[[int], str | None] | None,
    stats: Counter[str] | None,
    on_diagnostic: DiagnosticCallback | None,
    clock: Callable[[], float] | None,
) -> Callable[[Observable[bytes]], Observable[AudioFrame]]:
    fixed = isinstance(keys, TransportCipher | RtpCrypto)
    if clock is None and not fixed:
        # A Connection's DaveManager measures its transition windows on the
        # event loop's clock (time.monotonic for asyncio's loops), whatever
        # scheduler this pipeline runs on: RxPY's own report the wall clock.
        clock = time.monotonic

    def operator(source: Observable[bytes]) -> Observable[AudioFrame]:
        def subscribe(
            observer: abc.ObserverBase[AudioFrame],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            report = Reporter(stats, on_diagnostic)
            timer = choose_scheduler(scheduler)

            def on_next(datagram: bytes) -> None:
                try:
                    frame = open_datagram(datagram)
                except Exception as error:  # a user callback raised: this pipeline fails
                    observer.on_error(error)
                    return
                if frame is not None:
                    observer.on_next(frame)

            def open_datagram(datagram: bytes) -> AudioFrame | None:
                kind = classify(datagram)
                if kind is not DatagramKind.RTP:
                    if stats is not None:  # RTCP and keepalives are normal: counted only
                        stats[f"not_rtp_{kind.value}"] += 1
                    return None
                if fixed:
                    cipher: TransportCipher | RtpCrypto | None = keys  # type: ignore[assignment]
                    dave_now = dave
                    lookup = user_of
                else:
                    session: SessionKeys = keys  # type: ignore[assignment]
                    cipher = session.rtp
                    dave_now = dave if dave is not None else session.dave
                    lookup = user_of if user_of is not None else session.ssrcs.user_of
                if cipher is None:
                    report("no_keys", "datagram before the session description")
                    return None
                try:
                    packet = cipher.open(datagram)
                except ProtocolError as exc:
                    report("undecryptable_packet", str(exc))
                    return None
                header = packet.header
                ssrc = header.ssrc
                if header.payload_type != OPUS_PAYLOAD_TYPE:
                    if stats is not None:
                        stats["not_opus"] += 1
                    return None
                user = lookup(ssrc) if lookup is not None else None
                now = clock() if clock is not None else now_of(timer)
                payload = packet.payload
                if dave_now is not None:
                    if user is not None:
                        opus = dave_now.decrypt(user, payload, now)
                    else:
                        opus = dave_now.open_unattributed(payload)
                    if opus is None:
                        report(
                            "dave_decrypt_failed", "frame could not be DAVE-decrypted", ssrc, user
                        )
                        return None
                    payload = opus
                return AudioFrame(user, ssrc, packet.frame()[:RTP_HEADER_SIZE] + payload, now)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


__all__ = ["SessionKeys", "SsrcLookup", "decrypt_"]

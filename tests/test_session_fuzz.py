"""Fuzz: random sequences of valid-looking voice gateway messages into a Connection's session.

Server messages (ops 2, 4, 5, 6, 8, 9, 11, 13, 18, 20, 21-31, some garbage) with
random fields, in any order, interleaved with the session's background work
(IP discovery, Select Protocol) and with new WebSockets (resumes), are fed to
the :class:`~rxvoice._voice.session.Session` on fake transports
(tests/voice_harness.py). After every message:

- nothing raised out of the frame handler (a ``Reconnect``, asking for a new
  WebSocket after an unusable first op 4, ends the sequence: that is its job);
- the state is consistent: the SSRC we announce is the one we send with, one
  Ready is taken, one Select Protocol and one discovery made, one DAVE session
  per voice session (never replaced, never closed under us), "ready" only with keys;
- a message whose handling failed was counted, and the failure came from the
  DAVE manager refusing input (issue 12 defect 1, the receive side's part), never
  from the Connection's own code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from rxvoice._voice.session import Reconnect
from rxvoice.events import ConnectionState
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.crypto import EncryptionMode
from rxvoice.testing.sandbox.mls import ExternalSender

from .voice_harness import Harness, harness

USERS = ["42", "43", "1001", "18446744073709551615"]
SSRCS = st.sampled_from([1, 2, 11, 99, 0xFFFF_FFFF]) | st.integers(0, 0xFFFF_FFFF)
U16 = st.integers(0, 0xFFFF)
SMALL = st.integers(0, 4) | U16
MODES = [m.value for m in EncryptionMode] + ["xsalsa20_poly1305", "nonsense"]
EXTERNAL_SENDER = ExternalSender().package

messages: st.SearchStrategy[gw.GatewayMessage | str | bytes] = st.one_of(
    st.builds(
        gw.Ready,
        ssrc=SSRCS,
        ip=st.sampled_from(["127.0.0.1", "203.0.113.9", "0.0.0.0"]),
        port=U16,
        modes=st.lists(st.sampled_from(MODES), max_size=3).map(tuple),
    ),
    st.builds(
        gw.SessionDescription,
        mode=st.sampled_from(MODES),
        secret_key=st.binary(min_size=32, max_size=32),
        dave_protocol_version=SMALL,
    ),
    st.builds(gw.Speaking, speaking=st.integers(0, 7), ssrc=SSRCS, user_id=st.sampled_from(USERS)),
    st.builds(gw.HeartbeatAck, nonce=st.integers(0, 2**48)),
    st.builds(gw.Hello, heartbeat_interval=st.floats(0.001, 1e7)),
    st.just(gw.Resumed()),
    st.builds(gw.ClientsConnect, user_ids=st.lists(st.sampled_from(USERS), max_size=3).map(tuple)),
    st.builds(gw.ClientDisconnect, user_id=st.sampled_from(USERS)),
    st.builds(gw.ClientFlags, user_id=st.sampled_from(USERS), flags=U16),
    st.builds(gw.ClientPlatform, user_id=st.sampled_from(USERS), platform=U16),
    st.builds(gw.DavePrepareTransition, protocol_version=SMALL, transition_id=SMALL),
    st.builds(gw.DaveExecuteTransition, transition_id=SMALL),
    st.builds(gw.DaveTransitionReady, transition_id=SMALL),  # a client op, sent by the server
    st.builds(gw.DavePrepareEpoch, protocol_version=SMALL, epoch=SMALL),
    st.builds(
        gw.DaveMlsExternalSender,
        payload=st.just(EXTERNAL_SENDER) | st.binary(max_size=80),
    ),
    st.builds(gw.DaveMlsKeyPackage, key_package=st.binary(max_size=40)),
    st.builds(
        gw.DaveMlsProposals,
        operation=st.sampled_from(list(gw.ProposalsOperation)),
        payload=st.binary(max_size=80),
    ),
    st.builds(gw.DaveMlsCommitWelcome, payload=st.binary(max_size=40)),
    st.builds(
        gw.DaveMlsAnnounceCommitTransition, transition_id=SMALL, commit=st.binary(max_size=80)
    ),
    st.builds(gw.DaveMlsWelcome, transition_id=SMALL, welcome=st.binary(max_size=80)),
    st.builds(gw.DaveMlsInvalidCommitWelcome, transition_id=SMALL),
    # Not quite valid: unknown ops, wrong fields, garbage.
    st.sampled_from(['{"op": 200, "d": {}}', '{"op": 4, "d": {"mode": 1}}', "{", b"\x00\x07"]),
)


@dataclass(frozen=True)
class Settle:
    """Let the session's background work run (IP discovery, Select Protocol)."""


@dataclass(frozen=True)
class NewWebSocket:
    """The WebSocket is replaced: the opening message is a Resume when the session allows."""


HANDSHAKE: list[Any] = [
    gw.Hello(heartbeat_interval=1000.0),
    gw.Ready(ssrc=11, ip="127.0.0.1", port=9, modes=("aead_aes256_gcm_rtpsize",)),
    Settle(),
    gw.SessionDescription("aead_aes256_gcm_rtpsize", bytes(32), dave_protocol_version=1),
    Settle(),
]
steps = st.lists(
    messages | st.just(Settle()) | st.just(NewWebSocket()),
    max_size=25,
)
sequences = st.tuples(st.booleans(), steps).map(lambda t: (HANDSHAKE if t[0] else []) + t[1])


class Failures(logging.Handler):
    """Keeps the records logged with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


async def drive(sequence: list[Any]) -> None:
    logger = logging.getLogger(f"{__name__}.session")
    logger.propagate = False
    failures = Failures()
    logger.addHandler(failures)
    h = harness(logger=logger)
    try:
        dave_seen = None
        for step in sequence:
            if isinstance(step, Settle):
                await h.settle()
            elif isinstance(step, NewWebSocket):
                h.session.opening_message(resume=h.session.gateway.resumable)
            else:
                try:
                    await h.feed(step, seq=7)
                except Reconnect:
                    assert h.session.rtp is None  # only an unusable first op 4 asks for it
                    event("a new WebSocket asked for")
                    return
            dave_seen = check(h, dave_seen)
        event(f"ready: {h.conn.current_state is ConnectionState.READY}")
        # Nothing the server sends makes our handling raise (davey's refusals
        # included: the DaveManager counts them as protocol errors).
        assert h.conn.stats.failed_messages == 0, [r.exc_info for r in failures.records]
        assert failures.records == []
    finally:
        logger.removeHandler(failures)
        cancelled = h.session.close()
        if cancelled:
            await asyncio.wait(cancelled)


def check(h: Harness, dave_seen: object) -> object:
    conn, session = h.conn, h.session
    rtp, dave = session.rtp, session.dave
    assert len(h.ws.sent_of(gw.SelectProtocol)) <= 1 and len(h.udp.discovered) <= 1
    assert (rtp is None) == (dave is None)
    if rtp is not None:
        assert conn.ssrc == rtp.ssrc  # what we announce is what we send with
        assert h.udp.discovered == [rtp.ssrc]
        assert dave_seen in (None, dave)  # one DAVE session per voice session
    if conn.current_state is ConnectionState.READY:
        assert rtp is not None  # ready only with keys
    assert len(h.readies) <= 1
    assert all(interval > 0 for interval in h.ws.heartbeats)
    assert len(session._tasks) <= 2  # the setup and op 5 registration at most
    return dave if dave is not None else dave_seen


@settings(max_examples=400)  # cheap: no sockets, about 5 ms an example
@given(sequences)
def test_any_sequence_of_server_messages_leaves_the_session_consistent(
    sequence: list[Any],
) -> None:
    asyncio.run(drive(sequence))

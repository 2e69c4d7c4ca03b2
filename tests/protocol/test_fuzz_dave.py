"""Hypothesis fuzz of DaveManager: random sequences of ops 21-30 never raise.

The manager under test (A) is a member of a real group (the sandbox's
delivery service with B, and C who may join). Each example interleaves:

- messages captured from real calls (commits, welcomes, proposals, external
  senders, transitions), as they were or mutated (bytes flipped or cut, a
  transition id, epoch or protocol version replaced);
- messages built from random fields: unknown protocol versions, garbage
  payloads, ops the server never sends;
- media: frames to decrypt (valid, tampered, garbage, silence, plain) and
  frames to encrypt;
- the call going on: C joins, B leaves, time passes, A's replies (op 23, 26,
  28, 31) reach the service.

Nothing may raise but :meth:`DaveManager.encrypt`'s documented ``DaveError``;
the protocol version stays one A speaks; every example ends in bounded time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rxvoice.errors import DaveError
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.gateway import (
    DaveExecuteTransition,
    DaveMlsAnnounceCommitTransition,
    DaveMlsCommitWelcome,
    DaveMlsExternalSender,
    DaveMlsInvalidCommitWelcome,
    DaveMlsKeyPackage,
    DaveMlsProposals,
    DaveMlsWelcome,
    DavePrepareEpoch,
    DavePrepareTransition,
    DaveTransitionReady,
    GatewayMessage,
    ProposalsOperation,
)
from rxvoice.protocol.rtp import SILENCE_FRAME
from tests.protocol.test_dave_manager import OPUS, A, B, C, Call

CLIENT_MESSAGES = (
    DaveTransitionReady,
    DaveMlsKeyPackage,
    DaveMlsCommitWelcome,
    DaveMlsInvalidCommitWelcome,
)


@dataclasses.dataclass
class RecordingCall(Call):
    """A call that keeps every message the service sent to a member."""

    heard: list[GatewayMessage] = dataclasses.field(default_factory=list)

    def run(self, initial: list[tuple[str, GatewayMessage | None]]) -> None:
        self.heard.extend(m for _, m in initial if m is not None)
        super().run(initial)

    def _to_service(self, user: str, message: GatewayMessage) -> list[tuple[str, GatewayMessage]]:
        out = super()._to_service(user, message)
        self.heard.extend(m for _, m in out)
        return out


@functools.cache
def captured() -> tuple[GatewayMessage, ...]:
    """Server messages of real calls: joins, a leave, a corrupted commit, a downgrade."""
    call = RecordingCall()
    call.join(A)
    call.join(B)
    call.join(C)
    call.service.inject_fault(A)
    call.leave(B)
    call.tick(3.0)
    call.run(call.service.join("2001", dave_capable=False, now=call.now))
    call.tick(3.0)
    return tuple(call.heard)


versions = st.sampled_from([0, 1, 2, 5, 0xFFFF])
tids = st.sampled_from([0, 1, 2, 3, 0xFFFF])
payloads = st.binary(max_size=120)


def mutated(message: GatewayMessage, data: st.DataObject) -> GatewayMessage:
    """The message with one field replaced: bytes flipped or cut, an id or version changed."""
    fields = [f.name for f in dataclasses.fields(message)]  # type: ignore[arg-type]
    if not fields:
        return message
    name = data.draw(st.sampled_from(fields))
    value = getattr(message, name)
    if isinstance(value, bytes):
        if value and data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(value) - 1))
            new: Any = value[:i] + bytes([value[i] ^ 0x40]) + value[i + 1 :]
        else:
            new = value[: data.draw(st.integers(0, len(value)))]
    elif isinstance(value, ProposalsOperation):
        new = data.draw(st.sampled_from(list(ProposalsOperation)))
    elif name == "epoch":
        new = data.draw(st.sampled_from([0, 1, 2, 7, 2**64 - 1]))
    else:
        new = data.draw(versions if name == "protocol_version" else tids)
    return dataclasses.replace(message, **{name: new})  # type: ignore[type-var]


random_messages = st.one_of(
    st.builds(DavePrepareTransition, protocol_version=versions, transition_id=tids),
    st.builds(DaveExecuteTransition, transition_id=tids),
    st.builds(
        DavePrepareEpoch,
        protocol_version=versions,
        epoch=st.sampled_from([1, 1, 0, 2, 2**64 - 1]),  # 1: a new group
        transition_id=st.none() | tids,
    ),
    st.builds(DaveMlsExternalSender, payload=payloads),
    st.builds(
        DaveMlsProposals, operation=st.sampled_from(list(ProposalsOperation)), payload=payloads
    ),
    st.builds(DaveMlsAnnounceCommitTransition, transition_id=tids, commit=payloads),
    st.builds(DaveMlsWelcome, transition_id=tids, welcome=payloads),
    # Client-to-server ops: a manager ignores them.
    st.builds(DaveTransitionReady, transition_id=tids),
    st.builds(DaveMlsKeyPackage, key_package=payloads),
    st.builds(DaveMlsCommitWelcome, payload=payloads),
)

# Messages three times as often as anything else.
STEP_KINDS = [
    *(["captured", "mutated", "random"] * 3),
    "decrypt",
    "encrypt",
    "join",
    "leave",
    "tick",
]


def step(call: RecordingCall, a: DaveManager, data: st.DataObject) -> None:
    """One thing happens to A."""
    kind = data.draw(st.sampled_from(STEP_KINDS))
    if kind in ("captured", "mutated"):
        message = data.draw(st.sampled_from(captured()))
        if kind == "mutated":
            message = mutated(message, data)
        a.handle(message, call.now)
    elif kind == "random":
        a.handle(data.draw(random_messages), call.now)
    elif kind == "decrypt":
        sender = call.managers.get(B) or call.managers.get(C)
        valid = sender.encrypt(OPUS) if sender is not None else OPUS
        frame = data.draw(
            st.sampled_from(
                [valid, bytes([valid[0] ^ 1]) + valid[1:], SILENCE_FRAME, OPUS, b"\xfa\xfa"]
            )
            | payloads
        )
        a.decrypt(
            data.draw(st.sampled_from([B, C, "0", "99999999999999999999999"])), frame, call.now
        )
    elif kind == "encrypt":
        with contextlib.suppress(DaveError):  # documented
            a.encrypt(OPUS)
    elif kind == "join" and C not in call.managers:
        call.join(C)
    elif kind == "leave" and B in call.managers:
        call.leave(B)
    elif kind == "tick":
        call.tick(data.draw(st.sampled_from([0.5, 3.0, 12.0])))
    call.run([(A, None)])  # A's replies reach the service, its answers come back


@settings(max_examples=60, deadline=timedelta(seconds=5))
@given(data=st.data(), steps=st.integers(1, 20))
def test_random_dave_message_sequences_never_raise(data: st.DataObject, steps: int) -> None:
    call = RecordingCall()
    a = call.join(A)
    call.join(B)
    for _ in range(steps):
        step(call, a, data)
        assert 0 <= a.protocol_version <= a.max_protocol_version
        assert all(isinstance(m, CLIENT_MESSAGES) for m in a.poll().send)

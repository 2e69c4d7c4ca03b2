"""DaveManager (the client's DAVE side) against the sandbox's delivery service.

No network: messages travel through one ordered queue, like WebSockets, and
time moves only when a test says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.gateway import (
    DaveMlsCommitWelcome,
    DaveMlsInvalidCommitWelcome,
    DaveMlsKeyPackage,
    DaveTransitionReady,
    GatewayMessage,
)
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.testing.sandbox.dave import DaveDeliveryService

CHANNEL = "927310423890473011"
A, B, C = "1001", "1002", "1003"
OPUS = bytes(range(1, 60))


@dataclass
class Call:
    """A delivery service and the managers of the users in the call."""

    service: DaveDeliveryService = field(default_factory=lambda: DaveDeliveryService(int(CHANNEL)))
    managers: dict[str, DaveManager] = field(default_factory=dict)
    now: float = 0.0
    sent: list[tuple[str, GatewayMessage]] = field(default_factory=list)
    transitions: dict[str, list[int]] = field(default_factory=dict)

    def join(self, user: str, *, tolerance: int = 36) -> DaveManager:
        manager = DaveManager(user, CHANNEL, failure_tolerance=tolerance)
        others = list(self.managers)
        self.managers[user] = manager
        self.transitions[user] = []
        # op 11 both ways, then op 4 (start) and what join() returned (op 25...)
        manager.add_users(others)
        for other in others:
            self.managers[other].add_users([user])
        out = self.service.join(user, dave_capable=True, now=self.now)
        manager.start(self.service.session_description_version(user), self.now)
        self.run([(user, None), *out])
        return manager

    def leave(self, user: str) -> None:
        self.managers.pop(user).close()
        for manager in self.managers.values():
            manager.remove_user(user)
        self.run(self.service.leave(user, self.now))

    def run(self, initial: list[tuple[str, GatewayMessage | None]]) -> None:
        queue: deque[tuple[str, GatewayMessage | None]] = deque(initial)
        while queue:
            user, message = queue.popleft()
            manager = self.managers.get(user)
            if manager is None:
                continue
            if message is not None:
                manager.handle(message, self.now)
            out = manager.poll()
            self.transitions[user].extend(t.epoch for t in out.transitions)
            for up in out.send:
                self.sent.append((user, up))
                queue.extend(self._to_service(user, up))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.run(self.service.tick(self.now))

    def _to_service(self, user: str, message: GatewayMessage) -> list[tuple[str, GatewayMessage]]:
        svc, now = self.service, self.now
        match message:
            case DaveMlsKeyPackage(key_package=kp):
                return list(svc.key_package(user, kp, now))
            case DaveMlsCommitWelcome(payload=payload):
                return list(svc.commit_welcome(user, payload, now))
            case DaveTransitionReady(transition_id=tid):
                return list(svc.transition_ready(user, tid, now))
            case DaveMlsInvalidCommitWelcome(transition_id=tid):
                return list(svc.invalid_commit_welcome(user, tid, now))
        raise AssertionError(f"unexpected client message {message!r}")

    def assert_all_decrypt(self) -> None:
        for sender, manager in self.managers.items():
            frame = manager.encrypt(OPUS)
            assert is_dave_frame(frame)
            for receiver, other in self.managers.items():
                if receiver != sender:
                    assert other.decrypt(sender, frame, self.now) == OPUS


def test_two_members_establish_and_decrypt_each_other():
    call = Call()
    a = call.join(A)
    assert not a.ready
    assert a.encrypt(OPUS) == OPUS  # a sole member sends plain frames
    b = call.join(B)
    assert a.ready and b.ready
    assert a.epoch == b.epoch == 1
    assert a.members == b.members == (A, B)
    assert a.privacy_code == b.privacy_code is not None
    call.assert_all_decrypt()
    # op 23 went out only for non-zero transition ids, and transitions executed.
    assert all(m.transition_id != 0 for _, m in call.sent if isinstance(m, DaveTransitionReady))
    assert call.transitions[A] == [1] and call.transitions[B] == [1]


def test_key_package_on_every_start():
    call = Call()
    call.join(A)
    assert [u for u, m in call.sent if isinstance(m, DaveMlsKeyPackage)] == [A]


def test_third_member_and_a_leave_move_epochs_and_keep_decrypting():
    call = Call()
    call.join(A)
    call.join(B)
    c = call.join(C)
    assert c.epoch == 2
    call.assert_all_decrypt()
    call.leave(B)
    assert {m.epoch for m in call.managers.values()} == {3}
    call.assert_all_decrypt()


def test_sole_member_reset_sends_a_new_key_package():
    call = Call()
    call.join(A)
    call.join(B)
    before = len([m for u, m in call.sent if u == A and isinstance(m, DaveMlsKeyPackage)])
    call.leave(B)
    after = len([m for u, m in call.sent if u == A and isinstance(m, DaveMlsKeyPackage)])
    assert after == before + 1  # op 24 epoch 1 → reinit → op 26
    assert not call.managers[A].ready
    # The reset is transition id 0 (op 21 id 0): it is never acknowledged with op 23.
    assert DaveTransitionReady(0) not in [m for _, m in call.sent]
    call.join(C)
    call.assert_all_decrypt()


def test_invalid_commit_is_reported_and_recovered():
    call = Call()
    call.join(A)
    call.join(B)
    call.service.inject_fault(A)  # corrupts the next op 29/30 to A
    call.join(C)
    assert any(u == A and isinstance(m, DaveMlsInvalidCommitWelcome) for u, m in call.sent)
    assert call.managers[A].stats.recoveries == 1
    assert all(m.ready for m in call.managers.values())
    call.assert_all_decrypt()


def test_decrypt_failures_are_tolerated_then_reinitialise():
    call = Call()
    call.join(A, tolerance=3)
    call.join(B)
    a = call.managers[A]
    garbage = b"\x00" * 20 + bytes([12]) + b"\xfa\xfa"
    tampered = bytearray(call.managers[B].encrypt(OPUS))
    tampered[0] ^= 1
    for frame in (bytes(tampered), garbage, bytes(tampered)):
        assert a.decrypt(B, frame, call.now) is None
    assert a.stats.recoveries == 0
    assert a.decrypt(B, garbage, call.now) is None  # the 4th in a row: past tolerance
    assert a.stats.recoveries == 1
    assert a.stats.decrypt_failures == 4
    call.run([(A, None)])  # deliver op 31 + op 26 to the service
    assert all(m.ready for m in call.managers.values())
    call.assert_all_decrypt()


def test_silence_always_passes_and_plain_frames_only_in_passthrough():
    call = Call()
    call.join(A)
    call.join(B)
    a = call.managers[A]
    assert a.decrypt(B, SILENCE_FRAME, call.now) == SILENCE_FRAME
    assert a.encrypt(SILENCE_FRAME) == SILENCE_FRAME
    # Plain frames still in flight from before our first group pass for 10 s...
    assert a.decrypt(B, OPUS, call.now) == OPUS
    # ...and are refused after that.
    call.tick(11.0)
    assert a.decrypt(B, OPUS, call.now) is None


def test_downgrade_passes_plain_frames_and_stops_encrypting():
    call = Call()
    call.join(A)
    call.join(B)
    a = call.managers[A]
    # A non-DAVE user joins: op 21 pv 0, op 23, op 22.
    out = call.service.join("2001", dave_capable=False, now=call.now)
    call.run(out)
    assert a.protocol_version == 0
    assert a.encrypt(OPUS) == OPUS
    assert a.decrypt("2001", OPUS, call.now) == OPUS
    call.tick(500.0)
    assert a.decrypt("2001", OPUS, call.now) == OPUS  # still version 0


def test_a_frame_of_an_unknown_sender_is_opened_only_when_plain():
    call = Call()
    call.join(A)
    call.join(B)
    a, b = call.managers[A], call.managers[B]
    in_flight = b.encrypt(OPUS)  # sent just before the downgrade
    assert a.open_unattributed(in_flight) is None  # DAVE needs the sender
    assert a.open_unattributed(OPUS) is None  # plain, but DAVE is on: cannot tell
    assert a.open_unattributed(SILENCE_FRAME) == SILENCE_FRAME
    call.run(call.service.join("2001", dave_capable=False, now=call.now))
    assert a.protocol_version == 0
    assert a.open_unattributed(OPUS) == OPUS
    # A DAVE frame still in flight is never passed on as if it were Opus.
    assert a.open_unattributed(in_flight) is None


@pytest.mark.parametrize("version", [0])
def test_transport_only_session_passes_everything(version: int):
    manager = DaveManager(A, CHANNEL)
    manager.start(version, 0.0)
    assert manager.poll().send == ()  # no key package without DAVE
    assert manager.encrypt(OPUS) == OPUS
    assert manager.decrypt(B, OPUS, 1e9) == OPUS


def test_failures_while_waiting_for_the_group_never_reset_it():
    call = Call()
    call.join(A)
    call.join(B)
    waiting = DaveManager(C, CHANNEL, failure_tolerance=3)
    waiting.start(1, call.now)  # pending: no group yet, like a joiner before its welcome
    frame = call.managers[A].encrypt(OPUS)
    for _ in range(100):
        assert waiting.decrypt(A, frame, call.now) is None
    assert waiting.stats.decrypt_failures == 100
    assert waiting.stats.recoveries == 0
    assert [m for m in waiting.poll().send if isinstance(m, DaveMlsInvalidCommitWelcome)] == []

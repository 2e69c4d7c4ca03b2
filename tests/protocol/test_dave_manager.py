"""DaveManager (the client's DAVE side) against the sandbox's delivery service.

No network: messages travel through one ordered queue, like WebSockets, and
time moves only when a test says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest

from rxvoice.protocol.dave import DaveFailure, DaveManager
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.gateway import (
    DaveExecuteTransition,
    DaveMlsAnnounceCommitTransition,
    DaveMlsCommitWelcome,
    DaveMlsInvalidCommitWelcome,
    DaveMlsKeyPackage,
    DavePrepareEpoch,
    DavePrepareTransition,
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
    call.tick(3.0)  # the transition has settled: failures are real now
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


# -- davey's errors never escape (issue 12, defect 1) ----------------------------------------------


def established() -> tuple[Call, DaveManager, DaveManager]:
    call = Call()
    a, b = call.join(A), call.join(B)
    return call, a, b


def sent_by(manager: DaveManager) -> list[GatewayMessage]:
    return list(manager.poll().send)


def test_a_new_group_at_version_0_is_a_counted_protocol_error():
    call, a, _ = established()
    a.handle(DavePrepareEpoch(protocol_version=0, epoch=1), call.now)
    assert a.stats.protocol_errors == 1
    assert a.protocol_version == 1 and a.ready and sent_by(a) == []
    call.assert_all_decrypt()


@pytest.mark.parametrize("version", [2, 5, 0xFFFF])
def test_an_unsupported_version_is_refused_and_never_stored(version: int):
    call, a, _ = established()
    a.handle(DavePrepareTransition(protocol_version=version, transition_id=3), call.now)
    a.handle(DavePrepareTransition(protocol_version=version, transition_id=0), call.now)
    a.handle(DaveExecuteTransition(transition_id=3), call.now)
    assert a.protocol_version == 1
    a.handle(DavePrepareEpoch(protocol_version=version, epoch=1), call.now)
    assert a.protocol_version == 1 and a.stats.protocol_errors == 3
    assert sent_by(a) == []  # no op 23 for a transition we cannot make
    # A bad commit after it recovers at the version we do speak.
    a.handle(DaveMlsAnnounceCommitTransition(transition_id=4, commit=b"garbage"), call.now)
    out = sent_by(a)
    assert out[0] == DaveMlsInvalidCommitWelcome(4) and isinstance(out[1], DaveMlsKeyPackage)
    assert a.session is not None and a.stats.recoveries == 1


def test_a_bad_commit_after_a_downgrade_is_reported_without_a_crash():
    call, a, _ = established()
    a.handle(DavePrepareTransition(protocol_version=0, transition_id=7), call.now)
    a.handle(DaveExecuteTransition(transition_id=7), call.now)
    sent_by(a)
    a.handle(DaveMlsAnnounceCommitTransition(transition_id=8, commit=b"garbage"), call.now)
    assert sent_by(a) == [DaveMlsInvalidCommitWelcome(8)]  # no key package at version 0
    assert a.protocol_version == 0 and a.session is None
    assert a.decrypt(B, OPUS, call.now) == OPUS  # plain frames pass


def test_failing_dave_frames_after_a_real_downgrade_never_reinitialise():
    call, a, b = established()
    in_flight = [bytes([f[0] ^ 1]) + f[1:] for f in (b.encrypt(OPUS) for _ in range(60))]
    call.run(call.service.join("2001", dave_capable=False, now=call.now))
    assert a.protocol_version == 0
    call.tick(60.0)
    for frame in in_flight:
        assert a.decrypt(B, frame, call.now) is None
    assert a.stats.recoveries == 0 and a.stats.decrypt_failures == 60
    assert a.failure_cause(call.now) is DaveFailure.TRANSITION


def test_a_davey_that_refuses_everything_is_survived():
    class Refusing:
        def __init__(self, *_: object) -> None:
            raise ValueError("Unsupported protocol version")

    manager = DaveManager(A, CHANNEL, session_factory=Refusing)  # type: ignore[arg-type]
    manager.start(1, 0.0)
    assert manager.session is None and manager.stats.protocol_errors == 1
    assert manager.poll().send == ()
    garbage = b"\x00" * 20 + bytes([12]) + b"\xfa\xfa"
    assert manager.decrypt(B, garbage, 100.0) is None
    assert manager.encrypt(OPUS) == OPUS  # no group: plain, as a sole member sends


# -- re-initialising is for a broken session, not one bad sender (defect 2) ------------------------


GARBAGE = b"\x00" * 20 + bytes([12]) + b"\xfa\xfa"  # DAVE-framed, opens with no key


def test_one_bad_sender_among_good_ones_never_reinitialises_the_session():
    call = Call()
    a = call.join(A, tolerance=3)
    b, c = call.join(B), call.join(C)
    call.tick(3.0)
    for _ in range(100):
        assert a.decrypt(B, GARBAGE, call.now) is None
        assert a.decrypt(C, c.encrypt(OPUS), call.now) == OPUS
    assert a.stats.recoveries == 0
    assert a.stats.failures_by_user == {B: 100}
    assert b.ready


def test_a_bad_sender_alone_reinitialises_at_a_backed_off_rate():
    # One member sends 40 bad DAVE frames every 2 s and nobody else speaks.
    call = Call()
    a = call.join(A)
    call.join(B)
    call.tick(3.0)
    for _ in range(10):
        for _ in range(40):
            a.decrypt(B, GARBAGE, call.now)
        call.run([(A, None)])  # op 31 and the new key package reach the service
        call.tick(2.0)  # the group takes A back
    assert 1 <= a.stats.recoveries <= 2  # 10 s, then 20 s apart; not every 2 s
    assert a.stats.recoveries_deferred > 0
    assert a.ready


def test_the_backoff_resets_once_a_reinitialisation_helped():
    call = Call()
    a = call.join(A, tolerance=3)
    b = call.join(B)
    call.tick(3.0)
    for _ in range(4):
        a.decrypt(B, GARBAGE, call.now)
    assert a.stats.recoveries == 1
    call.run([(A, None)])
    call.tick(3.0)
    assert a.decrypt(B, b.encrypt(OPUS), call.now) == OPUS  # the re-init worked
    call.tick(10.0)
    for _ in range(4):
        a.decrypt(B, GARBAGE, call.now)
    assert a.stats.recoveries == 2 and a.stats.recoveries_deferred == 0


def test_a_retried_frame_is_not_counted_twice_towards_the_tolerance():
    call = Call()
    a = call.join(A, tolerance=3)
    call.join(B)
    call.tick(3.0)
    for _ in range(3):
        a.decrypt(B, GARBAGE, call.now)
    for _ in range(10):
        assert a.decrypt(B, GARBAGE, call.now, held=True) is None
    assert a.stats.recoveries == 0 and a.stats.decrypt_failures == 13


# -- transition id 0 is a transition (issue 12, item 11) -------------------------------------------


def test_recovery_after_transition_0_reports_transition_0():
    call = Call()
    a = call.join(A, tolerance=3)
    call.join(B)
    a.handle(DavePrepareTransition(protocol_version=1, transition_id=0), call.now)  # runs at once
    sent_by(a)
    call.tick(3.0)
    for _ in range(4):
        a.decrypt(B, GARBAGE, call.now)
    out = sent_by(a)
    assert out[0] == DaveMlsInvalidCommitWelcome(0)
    assert isinstance(out[1], DaveMlsKeyPackage)
    assert a.stats.recoveries == 1


def test_recoveries_are_spaced_so_a_commit_that_never_applies_cannot_loop():
    call, a, _ = established()
    bad = DaveMlsAnnounceCommitTransition(transition_id=5, commit=b"garbage")
    for _ in range(5):  # at once: one recovery, the rest wait
        a.handle(bad, call.now)
    assert (a.stats.recoveries, a.stats.recoveries_deferred) == (1, 4)
    assert [m for m in sent_by(a) if isinstance(m, DaveMlsInvalidCommitWelcome)] == [
        DaveMlsInvalidCommitWelcome(5)
    ]
    a.handle(bad, call.now + 0.5)  # still within the 1 s gap
    a.handle(DaveExecuteTransition(transition_id=99), call.now + 1.0)  # any message: it is time
    assert a.stats.recoveries == 2
    a.handle(bad, call.now + 2.0)  # the gap doubled: 2 s now
    assert a.stats.recoveries == 2
    a.handle(bad, call.now + 3.0)
    assert a.stats.recoveries == 3


def test_a_waiting_recovery_has_a_deadline_for_a_call_where_nothing_comes():
    call, a, _ = established()
    bad = DaveMlsAnnounceCommitTransition(transition_id=5, commit=b"garbage")
    a.handle(bad, call.now)
    a.handle(bad, call.now)
    assert a.next_deadline() == call.now + 1.0
    a.tick(call.now + 0.5)
    assert a.stats.recoveries == 1
    a.tick(call.now + 1.0)
    assert a.stats.recoveries == 2 and a.next_deadline() is None

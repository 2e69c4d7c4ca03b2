"""DaveDeliveryService driven against real davey sessions, with no network.

A small harness plays the clients: each DAVE user is the sandbox's sans-I/O
:class:`~rxvoice.testing.sandbox.daveclient.DaveClient` (its own
``davey.DaveSession``, reacting to the service's outputs the way discord.js
does, protocol.md §5.7, §7.5). Messages travel through one FIFO queue, like
ordered WebSockets, and time only moves when a test says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import davey
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from rxvoice.errors import DaveRequired, UsageError
from rxvoice.protocol.gateway import (
    ClientDisconnect,
    ClientsConnect,
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
    SessionDescription,
)
from rxvoice.testing.sandbox import mls
from rxvoice.testing.sandbox.dave import DaveDeliveryService, Out, next_transition_id
from rxvoice.testing.sandbox.daveclient import DaveClient
from tests.sandbox.test_mls import fake_commit

CHANNEL = 927310423890473011
A, B, C, D = "1001", "1002", "1003", "1004"
N = "2001"  # a client without DAVE
FRAME = bytes(range(40))  # an Opus-sized payload
AES = "aead_aes256_gcm_rtpsize"
# In our external Add: 2+2 header, V(8-byte group) 9, epoch 8, sender 5, V() 1, type 1, add 2.
_ADD_KEY_PACKAGE_AT = 30


@dataclass(frozen=True)
class Down:
    """Server to client."""

    user_id: str
    message: GatewayMessage


@dataclass(frozen=True)
class Up:
    """Client to server (ops 23, 26, 28, 31)."""

    user_id: str
    message: GatewayMessage


@dataclass
class Client:
    """A DAVE client as the real libraries behave, minus the sockets."""

    dave: DaveClient
    send_ready: bool = True  # send op 23 (a test may make a client "hang")

    @property
    def user_id(self) -> str:
        return self.dave.user_id

    @property
    def session(self) -> davey.DaveSession:
        assert self.dave.session is not None
        return self.dave.session

    @property
    def executed(self) -> list[int]:
        return list(self.dave.executed)

    @property
    def errors(self) -> deque[str]:
        return self.dave.errors


class Call:
    """The service plus its clients; ``run()`` delivers until nothing moves."""

    def __init__(self, svc: DaveDeliveryService) -> None:
        self.svc = svc
        self.clients: dict[str, Client] = {}
        self.present: set[str] = set()
        self.now = 0.0
        self.queue: deque[Down | Up] = deque()
        self.sent: list[Out] = []  # everything the service sent, in order

    # -- driving -------------------------------------------------------------------------

    def join(self, user_id: str, *, dave: bool = True, run: bool = True) -> None:
        for other in self.clients:  # op 11 to the others (the joiner's comes with op 4)
            self.queue.append(Down(other, ClientsConnect((user_id,))))
        out = self.svc.join(user_id, dave_capable=dave, now=self.now)
        version = self.svc.session_description_version(user_id)
        self.present.add(user_id)
        if dave:
            client = self.clients[user_id] = Client(DaveClient(user_id, str(CHANNEL)))
            client.dave.receive(ClientsConnect(tuple(self.present - {user_id})))  # op 11
            # op 4: with DAVE, the client sends a key package right away.
            self.on_message(client, SessionDescription(AES, bytes(32), version))
        self.deliver(out)
        if run:
            self.run()

    def leave(self, user_id: str, *, run: bool = True) -> None:
        self.present.discard(user_id)
        self.clients.pop(user_id, None)
        for other in self.clients:  # op 13, before whatever the service says next
            self.queue.append(Down(other, ClientDisconnect(user_id)))
        self.deliver(self.svc.leave(user_id, self.now))
        if run:
            self.run()

    def tick(self, now: float) -> None:
        self.now = now
        self.deliver(self.svc.tick(now))
        self.run()

    def key_package(self, user_id: str) -> None:
        kp = self.clients[user_id].session.get_serialized_key_package()
        self.queue.append(Up(user_id, DaveMlsKeyPackage(kp)))

    def deliver(self, out: list[Out]) -> None:
        self.sent.extend(out)
        for user_id, message in out:
            self.queue.append(Down(user_id, message))

    def step(self) -> None:
        item = self.queue.popleft()
        if isinstance(item, Down):
            client = self.clients.get(item.user_id)
            if client is not None:
                self.on_message(client, item.message)
            return
        user_id, svc, now = item.user_id, self.svc, self.now
        if user_id not in self.present:
            return
        match item.message:
            case DaveMlsKeyPackage(key_package=kp):
                out = svc.key_package(user_id, kp, now)
            case DaveMlsCommitWelcome(payload=payload):
                out = svc.commit_welcome(user_id, payload, now)
            case DaveTransitionReady(transition_id=tid):
                out = svc.transition_ready(user_id, tid, now)
            case DaveMlsInvalidCommitWelcome(transition_id=tid):
                out = svc.invalid_commit_welcome(user_id, tid, now)
            case _:
                raise AssertionError(item)
        self.deliver(out)

    def step_until_up(self, user_id: str, kind: type[GatewayMessage]) -> None:
        """Deliver until the service has handled ``user_id``'s next ``kind`` message."""
        while self.queue:
            item = self.queue[0]
            self.step()
            if isinstance(item, Up) and item.user_id == user_id and isinstance(item.message, kind):
                return
        raise AssertionError(f"no {kind.__name__} from {user_id}")

    def drain_down(self) -> None:
        """Let clients handle everything sent to them; their replies stay queued."""
        ups: deque[Down | Up] = deque()
        while self.queue:
            if isinstance(self.queue[0], Up):
                ups.append(self.queue.popleft())
            else:
                self.step()
        self.queue = ups

    def run(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            self.step()
        raise AssertionError("the call did not settle")

    # -- the client side -----------------------------------------------------------------

    def on_message(self, client: Client, message: GatewayMessage) -> None:
        for reply in client.dave.receive(message):
            if client.send_ready or not isinstance(reply, DaveTransitionReady):
                self.queue.append(Up(client.user_id, reply))

    # -- checks --------------------------------------------------------------------------

    def assert_group(self, *users: str) -> None:
        """The users share the service's epoch, their leaves match, and media flows."""
        svc = self.svc
        assert sorted(svc.members) == sorted(users)
        for uid in users:
            session = self.clients[uid].session
            assert session.ready, uid
            assert session.epoch == svc.epoch, uid
            assert session.own_leaf_index == svc.leaf_of(uid), uid
            assert sorted(session.get_user_ids()) == sorted(users)
        for sender in users:
            frame = self.clients[sender].session.encrypt_opus(FRAME)
            assert frame != FRAME and frame.endswith(b"\xfa\xfa")
            for receiver in users:
                if receiver != sender:
                    got = self.clients[receiver].session.decrypt(
                        int(sender), davey.MediaType.audio, frame
                    )
                    assert got == FRAME, (sender, receiver)

    def messages(self, user_id: str, kind: type) -> list[GatewayMessage]:
        return [m for u, m in self.sent if u == user_id and isinstance(m, kind)]

    def no_errors(self) -> None:
        assert {u: c.errors for u, c in self.clients.items() if c.errors} == {}


@pytest.fixture
def svc() -> DaveDeliveryService:
    key = ec.derive_private_key(0x5EED, ec.SECP256R1())
    return DaveDeliveryService(CHANNEL, signer=mls.ExternalSender(key))


@pytest.fixture
def call(svc: DaveDeliveryService) -> Call:
    return Call(svc)


# -- forming groups ------------------------------------------------------------------------


def test_two_members_form_a_group(call: Call) -> None:
    call.join(A)
    assert call.svc.pending == (A,)
    assert call.svc.epoch == 0
    assert call.messages(A, DaveMlsProposals) == []  # alone: nothing to commit
    assert not call.clients[A].session.ready

    call.join(B)
    call.no_errors()
    assert call.svc.epoch == 1
    call.assert_group(A, B)
    # One commit won: its committer got op 29, the other op 30, both op 22.
    announce = call.messages(A, DaveMlsAnnounceCommitTransition) + call.messages(
        B, DaveMlsAnnounceCommitTransition
    )
    welcome = call.messages(A, DaveMlsWelcome) + call.messages(B, DaveMlsWelcome)
    assert len(announce) == 1
    assert len(welcome) == 1
    assert call.clients[A].executed == call.clients[B].executed == [1]
    assert call.svc.leaves[0] in (A, B)
    assert call.svc.stats.commits_accepted == 1
    assert call.svc.pending_transitions == ()


def test_op25_goes_only_to_dave_joiners_and_matches_the_signer(call: Call) -> None:
    call.join(A)
    assert call.sent[0] == (A, DaveMlsExternalSender(call.svc.signer.package))


def test_three_members_sequentially(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.join(C)
    call.no_errors()
    assert call.svc.epoch == 2
    call.assert_group(A, B, C)
    # C was pending in an established group: it got no proposals, only op 30.
    assert call.messages(C, DaveMlsProposals) == []
    assert len(call.messages(C, DaveMlsWelcome)) == 1
    assert call.messages(C, DaveMlsAnnounceCommitTransition) == []
    assert call.svc.leaf_of(C) == 2


def test_three_members_create_the_group_together(call: Call) -> None:
    for user in (A, B, C):
        call.join(user, run=False)
    call.run()
    call.no_errors()
    assert call.svc.epoch == 1
    call.assert_group(A, B, C)
    # Each pending member saw adds for the other two only.
    for user in (A, B, C):
        added = [
            m
            for m in call.messages(user, DaveMlsProposals)
            if isinstance(m, DaveMlsProposals) and m.operation is ProposalsOperation.APPEND
        ]
        kps = [
            mls.KeyPackage.read(mls.Reader(msg, _ADD_KEY_PACKAGE_AT))
            for m in added
            for msg in mls.split_proposals(m.payload)
        ]
        assert sorted(str(kp.user_id) for kp in kps) == sorted({A, B, C} - {user})


def test_held_proposals_form_the_group_in_one_commit(call: Call) -> None:
    call.svc.hold()
    for user in (A, B, C, D):
        call.join(user)
    # Key packages were taken, nothing was proposed yet.
    assert call.svc.stats.key_packages == 4
    assert [m for _, m in call.sent if isinstance(m, DaveMlsProposals)] == []
    assert call.svc.pending == (A, B, C, D) and call.svc.epoch == 0
    call.deliver(call.svc.release(call.now))
    call.run()
    call.no_errors()
    # One epoch for all four: each commit was for epoch 0, and only the first won.
    assert call.svc.epoch == 1
    assert call.svc.stats.commits_accepted == 1
    call.assert_group(A, B, C, D)


def test_whole_welcome_forwarding_also_works() -> None:
    call = Call(DaveDeliveryService(CHANNEL, filter_welcome=False))
    for user in (A, B, C):
        call.join(user, run=False)
    call.run()
    call.no_errors()
    call.assert_group(A, B, C)


# -- leaving -------------------------------------------------------------------------------


def test_member_leaves_and_newcomer_reuses_the_leaf(call: Call) -> None:
    for user in (A, B, C):
        call.join(user)
    middle = call.svc.leaves[1]
    assert middle is not None
    rest = sorted({A, B, C} - {middle})
    epoch = call.svc.epoch

    mark = len(call.sent)
    call.leave(middle)
    call.no_errors()
    assert call.svc.epoch == epoch + 1
    assert call.svc.leaves[1] is None
    call.assert_group(*rest)
    # The leaver got neither its Remove nor the commit removing it.
    assert [m for u, m in call.sent[mark:] if u == middle] == []
    assert {u for u, m in call.sent[mark:] if isinstance(m, DaveMlsProposals)} == set(rest)

    call.join(D)
    call.no_errors()
    assert call.svc.leaf_of(D) == 1
    call.assert_group(*rest, D)


def test_last_leaf_leaving_trims_the_tree(call: Call) -> None:
    for user in (A, B, C):
        call.join(user)
    last = call.svc.leaves[-1]
    assert last is not None
    call.leave(last)
    call.no_errors()
    assert len(call.svc.leaves) == 2
    call.join(D)
    assert call.svc.leaf_of(D) == 2
    call.assert_group(*sorted({A, B, C, D} - {last}))


def test_sole_member_reset_and_recreation(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.leave(B)
    call.no_errors()
    assert call.messages(A, DavePrepareEpoch)[-1] == DavePrepareEpoch(1, 1)
    assert call.sent[-2:][0] == (A, DavePrepareEpoch(1, 1))
    assert call.sent[-2:][1] == (A, DavePrepareTransition(1, 0))
    assert call.svc.epoch == 0
    assert call.svc.members == ()
    assert call.svc.pending == (A,)
    assert call.svc.stats.sole_member_resets == 1
    assert 0 in call.clients[A].executed  # tid 0: executed at once, no op 23

    call.join(C)
    call.no_errors()
    assert call.svc.epoch == 1
    call.assert_group(A, C)


def test_a_pending_joiner_leaving_revokes_its_add(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.join(C, run=False)
    call.step_until_up(C, DaveMlsKeyPackage)  # add(C) goes to A and B
    assert call.svc.pending == (C,)
    call.leave(C)
    call.no_errors()
    assert call.svc.stats.revoked == 1
    assert call.svc.epoch == 1  # nothing left to commit
    call.assert_group(A, B)
    call.join(D)
    call.assert_group(A, B, D)


def test_member_leaves_while_a_joiner_is_pending(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.join(C, run=False)
    call.step_until_up(C, DaveMlsKeyPackage)  # add(C) goes to A and B
    gone = call.svc.leaves[1]
    assert gone is not None
    stays = A if gone == B else B
    call.leave(gone)  # remove(gone) joins add(C) at the same epoch
    call.no_errors()
    assert call.svc.epoch == 2
    assert call.svc.leaf_of(C) == 1  # the freed leaf
    call.assert_group(stays, C)


def test_one_of_two_pending_joiners_leaving(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.join(C, run=False)
    call.join(D, run=False)
    call.step_until_up(D, DaveMlsKeyPackage)  # add(C) and add(D) reach A and B
    mark = len(call.sent)
    call.leave(D)
    call.no_errors()
    # davey attaches a Welcome only for an op 27 holding an Add, so the members
    # get revoke [add(C), add(D)] then append [add(C)], not just revoke [add(D)].
    for member in (A, B):
        sent = [m for u, m in call.sent[mark:] if u == member and isinstance(m, DaveMlsProposals)]
        assert [m.operation for m in sent][:2] == [
            ProposalsOperation.REVOKE,
            ProposalsOperation.APPEND,
        ]
        assert len(mls.split_refs(sent[0].payload)) == 2
        assert len(mls.split_proposals(sent[1].payload)) == 1
    call.assert_group(A, B, C)


def test_pending_member_leaving_during_initial_creation(call: Call) -> None:
    for user in (A, B, C):
        call.join(user, run=False)
    call.step_until_up(C, DaveMlsKeyPackage)
    call.drain_down()  # everyone holds the others' adds and has committed them
    call.leave(B)  # every commit holding add(B) loses; A and C must commit again
    call.no_errors()
    assert call.svc.stats.dropped_commits == {"refs": 3, "epoch": 1}
    assert call.svc.epoch == 1
    call.assert_group(A, C)


def test_quick_rejoin_before_the_remove_lands(call: Call) -> None:
    for user in (A, B, C):
        call.join(user)
    call.leave(C, run=False)
    call.join(C, run=False)  # a new connection, a new MLS state, same user id
    call.run()
    call.no_errors()
    call.assert_group(A, B, C)


def test_key_package_from_a_member_means_it_started_over(call: Call) -> None:
    for user in (A, B, C):
        call.join(user)
    leaf = call.svc.leaf_of(B)
    call.clients[B].session.reinit(1, int(B), CHANNEL)
    call.key_package(B)
    call.run()
    call.no_errors()
    assert call.svc.leaf_of(B) == leaf
    call.assert_group(A, B, C)


# -- recovery (op 31) ----------------------------------------------------------------------


@pytest.mark.parametrize("victim", [A, B], ids=["committer", "member"])
def test_invalid_commit_recovery(call: Call, victim: str) -> None:
    for user in (A, B, C):
        call.join(user)
    leaf = call.svc.leaf_of(victim)
    call.svc.inject_fault(victim)
    call.join(D)  # A's commit adding D wins (its op 28 arrives first)
    stats = call.svc.stats
    assert stats.faults_injected == 1
    assert stats.invalid_reports == 1
    assert len(call.clients[victim].errors) == 1  # the corrupted commit, nothing else
    call.clients[victim].errors.clear()
    call.no_errors()
    # The victim was removed and re-added into its old leaf, and decrypts again.
    assert call.svc.leaf_of(victim) == leaf
    call.assert_group(A, B, C, D)


def test_invalid_welcome_recovery(call: Call) -> None:
    call.join(A)
    call.join(B)
    call.svc.inject_fault(C)
    call.join(C)
    assert call.svc.stats.invalid_reports == 1
    assert len(call.clients[C].errors) == 1
    call.clients[C].errors.clear()
    call.no_errors()
    call.assert_group(A, B, C)


def test_op31_removal_then_re_add_in_separate_commits(call: Call) -> None:
    call.join(A)
    call.join(B)
    flagger = call.svc.leaves[1]
    stayer = call.svc.leaves[0]
    assert flagger is not None and stayer is not None
    session = call.clients[flagger].session
    session.reinit(1, int(flagger), CHANNEL)  # its state is gone, as after a failure
    call.deliver(call.svc.invalid_commit_welcome(flagger, 1, call.now))
    call.run()  # the remove commit lands before the flagger's new key package
    call.no_errors()
    assert call.svc.epoch == 2
    assert call.svc.leaves == (stayer,)
    assert call.svc.members == (stayer,)
    assert call.messages(flagger, DaveMlsAnnounceCommitTransition) == []

    call.key_package(flagger)
    call.run()
    call.no_errors()
    assert call.svc.epoch == 3
    call.assert_group(A, B)


# -- mixed calls ---------------------------------------------------------------------------


def test_downgrade_and_upgrade(call: Call) -> None:
    call.join(A)
    call.join(B)
    assert call.svc.protocol_version == 1

    call.join(N, dave=False)
    svc = call.svc
    assert svc.protocol_version == 0
    assert svc.session_description_version(N) == 0
    down = call.messages(A, DavePrepareTransition)
    assert len(down) == 1 and isinstance(down[0], DavePrepareTransition)
    assert down[0].protocol_version == 0 and down[0].transition_id != 0
    assert call.clients[A].executed[-1] == call.clients[B].executed[-1] == down[0].transition_id
    assert call.clients[A].dave.protocol_version == call.clients[B].dave.protocol_version == 0
    assert svc.epoch == 0 and svc.members == ()

    call.join(C)  # joins a version-0 call: no op 25, no key package
    assert svc.session_description_version(C) == 0
    assert call.messages(C, DaveMlsExternalSender) == []

    call.leave(N)
    call.no_errors()
    for user in (A, B, C):
        epochs = call.messages(user, DavePrepareEpoch)
        assert epochs == [DavePrepareEpoch(1, 1)]
    assert svc.protocol_version == 1
    call.assert_group(A, B, C)


def test_non_dave_first_then_dave(call: Call) -> None:
    call.join(N, dave=False)
    call.join(A)
    assert call.sent == []  # version 0 from the start: nothing to say
    call.leave(N)
    call.join(B)
    call.no_errors()
    call.assert_group(A, B)


def test_require_dave() -> None:
    svc = DaveDeliveryService(CHANNEL, require_dave=True)
    assert svc.close_code_for(dave_capable=False) == 4017
    assert svc.close_code_for(dave_capable=True) is None
    with pytest.raises(DaveRequired) as info:
        svc.join(N, dave_capable=False, now=0.0)
    assert info.value.code == 4017
    assert svc.protocol_version == 1
    assert svc.join(A, dave_capable=True, now=0.0)[0][0] == A  # op 25


def test_usage_errors(svc: DaveDeliveryService) -> None:
    svc.join(A, dave_capable=True, now=0.0)
    with pytest.raises(UsageError):
        svc.join(A, dave_capable=True, now=0.0)
    with pytest.raises(UsageError):
        svc.leave(B, 0.0)
    with pytest.raises(UsageError):
        svc.key_package(B, b"", 0.0)


# -- transitions ---------------------------------------------------------------------------


def test_transition_timeout(call: Call) -> None:
    call.join(A)
    call.join(B, run=False)
    call.clients[B].send_ready = False  # B never sends op 23
    call.run()
    svc = call.svc
    assert svc.epoch == 1
    assert svc.pending_transitions == (1,)
    assert call.clients[A].executed == []

    call.tick(svc.transition_timeout - 0.001)
    assert svc.pending_transitions == (1,)
    call.tick(svc.transition_timeout)
    assert not svc.pending_transitions
    assert call.clients[A].executed == call.clients[B].executed == [1]
    assert svc.stats.transition_timeouts == 1
    call.tick(10.0)
    assert call.clients[A].executed == [1]  # once only


def test_transition_ids_skip_zero() -> None:
    assert next_transition_id(0) == 1
    assert next_transition_id(1) == 2
    assert next_transition_id(0xFFFF) == 1


def test_transition_ids_are_sequential(call: Call) -> None:
    for user in (A, B, C, D):
        call.join(user)
    assert call.clients[A].executed == [1, 2, 3]
    ready = call.svc.transition_ready(A, 99, call.now)
    assert ready == []  # unknown transition id: ignored


# -- choosing commits ----------------------------------------------------------------------


def test_second_commit_for_an_epoch_is_dropped(call: Call) -> None:
    call.join(A)
    call.join(B, run=False)
    while call.svc.epoch == 0:
        call.step()
    # Both A and B committed at epoch 0; exactly one won and the other was dropped.
    call.run()
    call.no_errors()
    assert call.svc.stats.commits_received == 2
    assert call.svc.stats.dropped_commits == {"epoch": 1}
    # Replaying the winner is dropped too.
    winner = call.svc.leaves[0]
    assert winner is not None
    [announce] = call.messages(winner, DaveMlsAnnounceCommitTransition)
    assert isinstance(announce, DaveMlsAnnounceCommitTransition)
    assert call.svc.commit_welcome(winner, announce.commit, call.now) == []
    assert call.svc.stats.dropped_commits == {"epoch": 2}


def test_commit_with_stale_refs_is_dropped(call: Call) -> None:
    # A and B get add proposals, then C's key package arrives before their
    # commits: the first commits miss add(C) and must lose.
    call.join(A)
    call.join(B, run=False)
    call.join(C, run=False)
    call.run()
    call.no_errors()
    assert call.svc.stats.dropped_commits.get("refs", 0) >= 1
    call.assert_group(A, B, C)


def test_commit_checks(call: Call) -> None:
    call.join(A)
    call.join(B)
    svc = call.svc
    # Garbage, and a commit from someone not in the group.
    assert svc.commit_welcome(A, b"\x00\x01\x00\x01junk", call.now) == []
    call.join(C, run=False)
    call.step_until_up(C, DaveMlsKeyPackage)  # add(C) goes to A and B
    [proposals] = [i.message for i in call.queue if isinstance(i, Down) and i.user_id == A]
    assert isinstance(proposals, DaveMlsProposals)
    cw = call.clients[A].session.process_proposals(
        davey.ProposalsOperationType.append, proposals.payload, [int(A), int(B), int(C)]
    )
    assert cw is not None and cw.welcome is not None
    # Without its Welcome the commit is refused; by someone else, too.
    assert svc.commit_welcome(A, cw.commit, call.now) == []
    assert svc.commit_welcome(C, cw.commit + cw.welcome, call.now) == []
    dropped = svc.stats.dropped_commits
    assert dropped == {"epoch": 1, "malformed": 1, "welcome": 1, "committer": 1}
    # The loser of the initial creation was the one "epoch" drop.


def test_commit_drop_reasons(call: Call) -> None:
    call.join(A)
    call.join(B)
    svc = call.svc
    leaf = svc.leaf_of(A)
    assert leaf is not None
    ref = b"\x02" + mls.opaque(b"r" * 32)
    inline = b"\x01\x00\x03" + (1).to_bytes(4, "big")
    cases = {
        "group": fake_commit(b"\x00" * 8, 1, leaf, ref),
        "epoch": fake_commit(svc.group_id, 0, leaf, ref),
        "committer": fake_commit(svc.group_id, 1, leaf + 1, ref),
        "inline": fake_commit(svc.group_id, 1, leaf, inline),
        "empty": fake_commit(svc.group_id, 1, leaf, b""),
        "refs": fake_commit(svc.group_id, 1, leaf, ref),
    }
    before = dict(svc.stats.dropped_commits)
    for reason, payload in cases.items():
        assert svc.commit_welcome(A, payload, call.now) == []
        assert svc.stats.dropped_commits.get(reason, 0) == before.get(reason, 0) + 1, reason
    assert svc.epoch == 1


def test_bad_key_packages_are_dropped(svc: DaveDeliveryService) -> None:
    svc.join(A, dave_capable=True, now=0.0)
    svc.join(B, dave_capable=True, now=0.0)
    other = davey.DaveSession(1, int(C), CHANNEL)  # someone else's identity
    assert svc.key_package(A, other.get_serialized_key_package(), 0.0) == []
    assert svc.key_package(A, b"\x00\x01\x00\x02", 0.0) == []
    kp = bytearray(davey.DaveSession(1, int(A), CHANNEL).get_serialized_key_package())
    kp[-3] ^= 1  # break the signature
    assert svc.key_package(A, bytes(kp), 0.0) == []
    assert svc.stats.rejected_key_packages == 3
    assert svc.stats.key_packages == 0

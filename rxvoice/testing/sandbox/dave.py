"""The sandbox voice gateway's DAVE side: the MLS delivery service, without I/O.

:class:`DaveDeliveryService` plays Discord's part in DAVE (protocol.md §5.6,
§5.7, §7.4, §10) for one voice channel. It is a plain object: the voice
WebSocket server calls one method per event (a join, an op 26, an op 28, an
op 23, an op 31, a leave, a clock tick) and sends what comes back, a list of
``(user_id, message)`` pairs, in order, to those users. Time is passed in as
``now`` (seconds), so tests are deterministic; every event takes it, though
only those that start a transition need it.

How the caller wires it (the order matters, §1.4, §11):

1. At Identify, :meth:`~DaveDeliveryService.close_code_for` says whether the
   client must be closed with 4017 (``require_dave`` and no DAVE support).
2. When sending op 4: call :meth:`~DaveDeliveryService.join` (after op 11 went
   to everyone), put :meth:`~DaveDeliveryService.session_description_version`
   into op 4's ``dave_protocol_version``, send op 4, *then* send what ``join``
   returned (op 25 to the joiner must follow op 4; op 21 to the others).
3. Feed ops 23, 26, 28 and 31 to the matching methods; after sending op 13,
   call :meth:`~DaveDeliveryService.leave`; call
   :meth:`~DaveDeliveryService.tick` at :meth:`~DaveDeliveryService.next_deadline`
   (op 22 after a timeout).

Who is what. A *member* holds the established group (epoch >= 1) and receives
proposals and commits for it. Every other DAVE client is *pending*: it has only
its local pending group and gets proposals only during initial group creation
(epoch 0). The server's view of the ratchet tree (``leaves``) may still hold
the leaf of a client that left or reset until a commit removes it.

Routing rules kept (each one, broken, makes real clients fail; §10):

- at epoch 0 every pending member gets Add proposals for the *other* pending
  members only; the first valid commit wins and its committer is leaf 0;
- op 27 for an established epoch goes to members only, never to pending ones;
- op 29 goes to members that were already in the group (the committer is one),
  op 30 to the members the commit adds; a removed member gets neither its own
  Remove nor the commit that removes it;
- when the proposals a client holds change without a new Add (a Remove joins
  in-flight Adds, or one of several Adds is revoked), it gets a revoke of all
  it holds and one append of the new set: davey 0.1.7 attaches the Welcome to
  its commit only when the op 27 it is processing holds an Add, so an
  incremental op 27 would yield a commit without a Welcome, which must lose.

Transition ids count 1, 2, …, 65535 and wrap to 1 (0 means "at once" and is
only used for the sole-member reset's op 21). :meth:`~DaveDeliveryService.inject_fault`
corrupts the next op 29/30 for a user, to exercise the client's op 31 recovery.

Peer mistakes (a bad key package, an invalid or late commit, an unknown
transition id) are logged, counted in :attr:`DaveDeliveryService.stats` and
dropped: Discord drops them too. Caller mistakes raise
:class:`~rxvoice.errors.UsageError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from rxvoice.errors import DaveError, DaveRequired, UsageError
from rxvoice.protocol.gateway import (
    DaveExecuteTransition,
    DaveMlsAnnounceCommitTransition,
    DaveMlsExternalSender,
    DaveMlsProposals,
    DaveMlsWelcome,
    DavePrepareEpoch,
    DavePrepareTransition,
    GatewayMessage,
    ProposalsOperation,
)
from rxvoice.testing.sandbox.mls import (
    Commit,
    ExternalSender,
    KeyPackage,
    Welcome,
    append_vector,
    key_package_ref,
    proposal_ref,
    revoke_vector,
    split_commit_welcome,
)

__all__ = [
    "DAVE_REQUIRED_CLOSE_CODE",
    "DaveDeliveryService",
    "DaveServiceStats",
    "Out",
    "next_transition_id",
]

logger = logging.getLogger(__name__)

Out: TypeAlias = tuple[str, GatewayMessage]
"""One thing to send: ``(user_id, message)``."""

DAVE_REQUIRED_CLOSE_CODE = 4017
_PROTOCOL_VERSION = 1
_MAX_LIFETIME = (0, 2**64 - 1)


def next_transition_id(last: int) -> int:
    """The transition id after ``last``: 1, 2, …, 65535, then 1 again (0 is reserved)."""
    return last % 0xFFFF + 1


@dataclass(slots=True)
class DaveServiceStats:
    """Counters of a :class:`DaveDeliveryService`.

    ``dropped_commits`` counts dropped op 28s by reason: ``malformed``,
    ``version`` (DAVE off), ``group``, ``epoch``, ``committer``, ``inline``,
    ``empty``, ``refs``, ``welcome``, ``credential``. ``proposals`` and
    ``revoked`` count signed and withdrawn proposals, not op 27 messages.
    """

    key_packages: int = 0
    rejected_key_packages: int = 0
    proposals: int = 0
    revoked: int = 0
    commits_received: int = 0
    commits_accepted: int = 0
    dropped_commits: dict[str, int] = field(default_factory=dict)
    invalid_reports: int = 0
    transitions: int = 0
    transition_timeouts: int = 0
    sole_member_resets: int = 0
    downgrades: int = 0
    upgrades: int = 0
    faults_injected: int = 0


@dataclass(eq=False, slots=True)
class _Client:
    """One user in the call, by identity (a rejoin is a new object)."""

    user_id: str
    dave: bool
    key_package: KeyPackage | None = None  # newest op 26 not yet used by a welcome
    member: bool = False  # holds the established group (receives op 27/29 for it)
    signature_key: bytes | None = None  # from the key package it joined the group with


@dataclass(eq=False, slots=True)
class _Proposal:
    """A signed proposal at the current epoch and who received it."""

    ref: bytes
    message: bytes
    add: _Client | None = None  # the client added (with add_kp), or
    add_kp: KeyPackage | None = None
    remove: int | None = None  # the leaf removed
    recipients: list[_Client] = field(default_factory=list)


@dataclass(slots=True)
class _Transition:
    """A prepared transition waiting for op 23 from its targets."""

    targets: list[_Client]
    deadline: float
    ready: set[str] = field(default_factory=set)


class DaveDeliveryService:
    """Discord's DAVE delivery service and external sender for one voice channel.

    Args:
        channel_id: The voice channel id; the MLS group id is its 8-byte BE form.
        signer: The external sender; a fresh P-256 key when omitted.
        require_dave: Refuse clients without DAVE (close 4017), as Discord does
            since 2026-03-01. When off, a non-DAVE client downgrades the call.
        transition_timeout: Seconds after which op 22 goes out even if some
            targets never sent op 23.
        filter_welcome: Send each added member only its own Welcome entry, as
            Discord does; ``False`` forwards the committer's whole Welcome.
    """

    def __init__(
        self,
        channel_id: int,
        *,
        signer: ExternalSender | None = None,
        require_dave: bool = False,
        transition_timeout: float = 2.0,
        filter_welcome: bool = True,
    ) -> None:
        self.channel_id = channel_id
        self.group_id = channel_id.to_bytes(8, "big")
        self.signer = signer or ExternalSender()
        self.require_dave = require_dave
        self.transition_timeout = transition_timeout
        self.filter_welcome = filter_welcome
        self.stats = DaveServiceStats()
        self.epoch = 0  # 0: no established group
        self.last_transition_id = 0
        self._clients: dict[str, _Client] = {}
        self._tree: list[_Client | None] = []
        self._proposals: dict[bytes, _Proposal] = {}
        self._retired: list[_Proposal] = []  # withdrawn, still to revoke from their holders
        self._transitions: dict[int, _Transition] = {}
        self._faults: set[str] = set()
        self._holding = False

    # -- views -----------------------------------------------------------------------------

    @property
    def protocol_version(self) -> int:
        """The call's DAVE version: 1, or 0 while a non-DAVE client is present."""
        if all(c.dave for c in self._clients.values()):
            return _PROTOCOL_VERSION
        return 0

    @property
    def established(self) -> bool:
        """Whether an MLS group exists (``epoch >= 1``)."""
        return self.epoch > 0

    @property
    def members(self) -> tuple[str, ...]:
        """Users holding the established group, in leaf order."""
        return tuple(c.user_id for c in self._tree if c is not None and c.member)

    @property
    def pending(self) -> tuple[str, ...]:
        """DAVE users present that are not members, in join order."""
        return tuple(c.user_id for c in self._clients.values() if c.dave and not c.member)

    @property
    def leaves(self) -> tuple[str | None, ...]:
        """The server's view of the ratchet tree: the user at each leaf, or ``None``."""
        return tuple(c.user_id if c is not None else None for c in self._tree)

    @property
    def pending_transitions(self) -> tuple[int, ...]:
        """Transition ids prepared but not executed yet."""
        return tuple(self._transitions)

    def leaf_of(self, user_id: str) -> int | None:
        """The leaf index of a present user in the server's tree, or ``None``."""
        client = self._clients.get(user_id)
        if client is None or client not in self._tree:
            return None
        return self._tree.index(client)

    def close_code_for(self, *, dave_capable: bool) -> int | None:
        """The close code a new client gets at Identify: 4017 or ``None`` (admitted)."""
        return DAVE_REQUIRED_CLOSE_CODE if self.require_dave and not dave_capable else None

    def session_description_version(self, user_id: str) -> int:
        """The ``dave_protocol_version`` for the op 4 of a joined user.

        Raises:
            UsageError: ``user_id`` has not joined.
        """
        return self.protocol_version if self._client(user_id).dave else 0

    # -- events ----------------------------------------------------------------------------

    def join(self, user_id: str, *, dave_capable: bool, now: float) -> list[Out]:
        """A client was admitted; send the result after op 4 (and after op 11 to everyone).

        A DAVE joiner gets op 25 when the call runs DAVE. A non-DAVE joiner in a
        DAVE call starts a downgrade: op 21 ``{pv: 0, tid}`` to the DAVE clients.

        Raises:
            DaveRequired: ``require_dave`` is on and the client has no DAVE: the
                caller must close it with 4017 (``code`` is 4017). Nothing changed.
            UsageError: ``user_id`` is already in the call.
        """
        if user_id in self._clients:
            raise UsageError(f"user {user_id} already joined")
        if self.require_dave and not dave_capable:
            raise DaveRequired(DAVE_REQUIRED_CLOSE_CODE, "this channel requires DAVE (E2EE)")
        was = self.protocol_version
        self._clients[user_id] = _Client(user_id, dave_capable)
        if not dave_capable:
            return self._downgrade(now) if was else []
        if self.protocol_version:
            return [(user_id, DaveMlsExternalSender(self.signer.package))]
        return []

    def key_package(self, user_id: str, key_package: bytes, now: float) -> list[Out]:
        """Op 26: store the user's newest key package and propose adding it.

        A key package comes from a fresh MLS state, so the client is treated
        as holding nothing: from a member it works like op 31 (remove, then
        add); a pending client gets the in-flight adds again. Invalid key
        packages (wrong identity or lifetime, bad signature) are dropped.

        Raises:
            UsageError: ``user_id`` has not joined.
        """
        client = self._client(user_id)
        try:
            kp = KeyPackage.parse(key_package)
            if kp.user_id != int(user_id) or kp.leaf_node.lifetime != _MAX_LIFETIME:
                raise DaveError("identity or lifetime does not match")
            if not kp.verify():
                raise DaveError("bad signature")
        except (DaveError, ValueError) as exc:
            self.stats.rejected_key_packages += 1
            logger.warning("key package from %s dropped: %s", user_id, exc)
            return []
        if not client.dave:
            logger.warning("key package from non-DAVE client %s ignored", user_id)
            return []
        self.stats.key_packages += 1
        # A key package comes from a fresh MLS state: whatever the client held is gone.
        out = self._forget_group_state(client)
        self._retire(p for p in self._proposals.values() if p.add is client)
        client.key_package = kp
        return out + self._sync()

    def commit_welcome(self, user_id: str, payload: bytes, now: float) -> list[Out]:
        """Op 28: accept the first valid commit of the epoch, drop any other.

        The winner goes out as op 29 to the members that were in the group and
        as op 30 to the members it adds; the transition waits for op 23.

        Raises:
            UsageError: ``user_id`` has not joined.
        """
        client = self._client(user_id)
        self.stats.commits_received += 1
        try:
            commit, welcome = split_commit_welcome(payload)
        except DaveError as exc:
            return self._drop(user_id, "malformed", str(exc))
        reason = self._check_commit(client, commit, welcome)
        if reason:
            return self._drop(user_id, reason, f"epoch {commit.epoch}")
        return self._accept(client, commit, welcome, now)

    def transition_ready(self, user_id: str, transition_id: int, now: float) -> list[Out]:
        """Op 23: the user is ready; op 22 goes out once every target is."""
        transition = self._transitions.get(transition_id)
        if transition is None or user_id not in {c.user_id for c in transition.targets}:
            logger.debug("op 23 from %s for transition %d ignored", user_id, transition_id)
            return []
        transition.ready.add(user_id)
        return self._execute_if_ready(transition_id)

    def invalid_commit_welcome(self, user_id: str, transition_id: int, now: float) -> list[Out]:
        """Op 31: the user could not process a commit or welcome and starts over.

        Its leaf (if any) is proposed for removal; its next op 26 is proposed
        for adding, possibly in the same commit.

        Raises:
            UsageError: ``user_id`` has not joined.
        """
        client = self._client(user_id)
        self.stats.invalid_reports += 1
        logger.info("user %s reported transition %d invalid", user_id, transition_id)
        out = self._forget_group_state(client)
        self._retire(p for p in self._proposals.values() if p.add is client)
        client.key_package = None  # its reset dropped the private keys
        return out + self._sync()

    def leave(self, user_id: str, now: float) -> list[Out]:
        """The user left (the caller already sent op 13 to the others).

        The remaining members get remove(leaf); when one DAVE member is left
        alone it gets the sole-member reset; when the last non-DAVE client
        leaves, the call upgrades (op 24 ``{pv: 1, epoch: 1}`` and op 25).

        Raises:
            UsageError: ``user_id`` has not joined.
        """
        client = self._client(user_id)
        was = self.protocol_version
        out = self._forget_group_state(client)
        self._retire(p for p in self._proposals.values() if p.add is client)
        del self._clients[user_id]
        self._faults.discard(user_id)
        if not was and self.protocol_version:
            return out + self._upgrade()
        dave = [c for c in self._clients.values() if c.dave]
        if self.established and len(dave) == 1 and dave[0].member:
            return out + self._sole_member_reset(dave[0])
        return out + self._sync()

    def next_deadline(self) -> float | None:
        """When the earliest prepared transition times out (call :meth:`tick` then), if any."""
        return min((t.deadline for t in self._transitions.values()), default=None)

    def tick(self, now: float) -> list[Out]:
        """Send op 22 for every transition whose timeout has passed."""
        out: list[Out] = []
        for tid, transition in list(self._transitions.items()):
            if now >= transition.deadline:
                self.stats.transition_timeouts += 1
                missing = {c.user_id for c in transition.targets} - transition.ready
                logger.info("transition %d timed out waiting for %s", tid, sorted(missing))
                out += self._execute(tid)
        return out

    def hold(self) -> None:
        """Hold proposals back until :meth:`release`; key packages are still taken.

        The gateway may delay proposals and batch them (protocol.md §5.6). Clients
        that join while proposals are held at epoch 0 form the group in one
        commit instead of one epoch per joiner, each committed by every member.
        """
        self._holding = True

    def release(self, now: float) -> list[Out]:
        """Stop holding proposals: what the group needs now goes out, batched."""
        self._holding = False
        return self._sync()

    def inject_fault(self, user_id: str) -> None:
        """Corrupt the next op 29 or op 30 sent to ``user_id`` (to test op 31 recovery).

        The last byte is flipped: for a commit that breaks its membership tag,
        for a welcome its encrypted GroupInfo, so the client refuses it.
        """
        self._faults.add(user_id)

    # -- internals -------------------------------------------------------------------------

    def _client(self, user_id: str) -> _Client:
        client = self._clients.get(user_id)
        if client is None:
            raise UsageError(f"user {user_id} is not in the call")
        return client

    def _drop(self, user_id: str, reason: str, detail: str) -> list[Out]:
        dropped = self.stats.dropped_commits
        dropped[reason] = dropped.get(reason, 0) + 1
        logger.debug("commit from %s dropped (%s): %s", user_id, reason, detail)
        return []

    def _new_transition(self, targets: list[_Client], now: float) -> int:
        tid = next_transition_id(self.last_transition_id)
        while tid in self._transitions:  # 65535 open transitions cannot happen in practice
            tid = next_transition_id(tid)
        self.last_transition_id = tid
        self._transitions[tid] = _Transition(targets, now + self.transition_timeout)
        self.stats.transitions += 1
        return tid

    def _execute_if_ready(self, tid: int) -> list[Out]:
        transition = self._transitions[tid]
        if {c.user_id for c in transition.targets} <= transition.ready:
            return self._execute(tid)
        return []

    def _execute(self, tid: int) -> list[Out]:
        transition = self._transitions.pop(tid)
        return [(c.user_id, DaveExecuteTransition(tid)) for c in transition.targets]

    def _forget_group_state(self, client: _Client) -> list[Out]:
        """The client lost its MLS state (left, reset, op 31): no more group traffic.

        What it held is forgotten, not revoked: there is nothing left to revoke from.
        """
        client.member = False
        for proposal in self._proposals.values():
            if client in proposal.recipients:
                proposal.recipients.remove(client)
        out: list[Out] = []
        for tid, transition in list(self._transitions.items()):
            if client in transition.targets:
                transition.targets.remove(client)
                out += self._execute_if_ready(tid)
        return out

    def _dissolve(self) -> None:
        """Forget the group: back to epoch 0, nobody is a member."""
        self.epoch = 0
        self._tree.clear()
        self._proposals.clear()
        self._retired.clear()
        for client in self._clients.values():
            client.member = False

    def _sole_member_reset(self, client: _Client) -> list[Out]:
        logger.info("sole-member reset for %s", client.user_id)
        self.stats.sole_member_resets += 1
        self._dissolve()
        client.key_package = None
        return [
            (client.user_id, DavePrepareEpoch(protocol_version=_PROTOCOL_VERSION, epoch=1)),
            (
                client.user_id,
                DavePrepareTransition(protocol_version=_PROTOCOL_VERSION, transition_id=0),
            ),
        ]

    def _downgrade(self, now: float) -> list[Out]:
        """A non-DAVE client joined: DAVE clients switch to version 0."""
        self.stats.downgrades += 1
        self._dissolve()
        dave = [c for c in self._clients.values() if c.dave]
        for client in dave:
            client.key_package = None
        if not dave:
            return []
        tid = self._new_transition(dave, now)
        logger.info("downgrade to DAVE version 0 (transition %d)", tid)
        message = DavePrepareTransition(protocol_version=0, transition_id=tid)
        return [(c.user_id, message) for c in dave]

    def _upgrade(self) -> list[Out]:
        """The last non-DAVE client left: everyone re-creates the group at version 1."""
        self.stats.upgrades += 1
        logger.info("upgrade to DAVE version %d", _PROTOCOL_VERSION)
        self._dissolve()
        out: list[Out] = []
        for client in self._clients.values():
            client.key_package = None
            # op 25 again: a client that joined at version 0 may not have kept it.
            out.append(
                (client.user_id, DavePrepareEpoch(protocol_version=_PROTOCOL_VERSION, epoch=1))
            )
            out.append((client.user_id, DaveMlsExternalSender(self.signer.package)))
        return out

    # proposals

    def _propose(
        self, message: bytes, add: _Client | None = None, remove: int | None = None
    ) -> None:
        kp = add.key_package if add is not None else None
        proposal = _Proposal(proposal_ref(message), message, add, kp, remove)
        self._proposals[proposal.ref] = proposal
        self.stats.proposals += 1

    def _retire(self, proposals: Iterable[_Proposal]) -> None:
        """Withdraw in-flight proposals; the next :meth:`_sync` revokes them from holders."""
        for proposal in list(proposals):
            del self._proposals[proposal.ref]
            self.stats.revoked += 1
            if proposal.recipients:
                self._retired.append(proposal)

    def _sync(self) -> list[Out]:
        """Propose what the group needs, then bring each client's proposals up to date.

        Idempotent: every event calls it, and it only sends what changed.
        """
        if not self.protocol_version or self._holding:
            return []
        dave = [c for c in self._clients.values() if c.dave]
        if self.established and not any(c.member for c in dave):
            logger.info("no member holds the group any more; starting over at epoch 0")
            self._dissolve()
        adding = {p.add for p in self._proposals.values() if p.add is not None}
        removing = {p.remove for p in self._proposals.values() if p.remove is not None}
        for client in dave:
            if client.key_package is not None and not client.member and client not in adding:
                message = self.signer.propose_add(self.group_id, self.epoch, client.key_package.raw)
                self._propose(message, add=client)
        if self.established:
            for leaf, holder in enumerate(self._tree):
                if holder is not None and not holder.member and leaf not in removing:
                    message = self.signer.propose_remove(self.group_id, self.epoch, leaf)
                    self._propose(message, remove=leaf)
            # Established epoch: proposals go to the members only.
            recipients = [c for c in dave if c.member]
        else:
            # Initial creation: each pending client with a key package gets the others' adds.
            recipients = [c for c in dave if c.key_package is not None]
        out: list[Out] = []
        for client in dave:
            out += self._update_holdings(client, client in recipients)
        self._retired.clear()
        return out

    def _update_holdings(self, client: _Client, recipient: bool) -> list[Out]:
        """Revoke what ``client`` holds and should not, append what it lacks."""
        held = [p for p in (*self._retired, *self._proposals.values()) if client in p.recipients]
        wanted = [p for p in self._proposals.values() if recipient and p.add is not client]
        revoke = [p for p in held if p not in wanted]
        append = [p for p in wanted if p not in held]
        if not revoke and not append:
            return []
        if any(p.add for p in wanted) and not any(p.add for p in append):
            # davey 0.1.7 attaches the Welcome only when the op 27 it is processing
            # holds an Add: hand over the whole set again, Adds included.
            revoke, append = held, wanted
        out: list[Out] = []
        if revoke:
            refs = revoke_vector(p.ref for p in revoke)
            out.append((client.user_id, DaveMlsProposals(ProposalsOperation.REVOKE, refs)))
            for proposal in revoke:
                proposal.recipients.remove(client)
        if append:
            messages = append_vector(p.message for p in append)
            out.append((client.user_id, DaveMlsProposals(ProposalsOperation.APPEND, messages)))
            for proposal in append:
                proposal.recipients.append(client)
        return out

    # commits

    def _check_commit(self, client: _Client, commit: Commit, welcome: bytes | None) -> str:
        """Why this commit cannot win (an empty string when it can)."""
        if not self.protocol_version or not client.dave:
            return "version"
        if commit.group_id != self.group_id:
            return "group"
        if commit.epoch != self.epoch:
            return "epoch"
        if self.established:
            committer_ok = client.member and self.leaf_of(client.user_id) == commit.sender_leaf
            signature_key = client.signature_key
        else:
            committer_ok = client.key_package is not None and commit.sender_leaf == 0
            signature_key = (
                client.key_package.leaf_node.signature_key if client.key_package else None
            )
        if not committer_ok:
            return "committer"
        if commit.has_inline_proposals:
            return "inline"
        if not commit.proposal_refs:
            return "empty"
        expected = {p.ref for p in self._proposals.values() if client in p.recipients}
        refs = commit.proposal_refs
        if len(set(refs)) != len(refs) or set(refs) != expected:
            return "refs"
        adds = any(self._proposals[ref].add is not None for ref in refs)
        if adds != (welcome is not None):
            return "welcome"
        leaf = commit.path_leaf
        if leaf is not None and (
            leaf.signature_key != signature_key
            or leaf.identity != int(client.user_id).to_bytes(8, "big")
        ):
            return "credential"
        return ""

    def _accept(
        self, committer: _Client, commit: Commit, welcome: bytes | None, now: float
    ) -> list[Out]:
        proposals = [self._proposals[ref] for ref in commit.proposal_refs]
        if self.established:
            existing = [c for c in self._tree if c is not None and c.member]
        else:
            # The committer created the group at leaf 0 of its pending group.
            existing = [committer]
            kp = committer.key_package
            assert kp is not None  # checked in _check_commit
            self._tree = [committer]
            committer.member = True
            committer.signature_key = kp.leaf_node.signature_key
            committer.key_package = None
        # Leaf bookkeeping (§5.8, §10): removes first, trim, then adds leftmost.
        for proposal in proposals:
            if proposal.remove is not None:
                self._tree[proposal.remove] = None
        while self._tree and self._tree[-1] is None:
            self._tree.pop()
        added: list[tuple[_Client, KeyPackage]] = []
        for proposal in proposals:
            if proposal.add is not None and proposal.add_kp is not None:
                client = proposal.add
                if None in self._tree:
                    self._tree[self._tree.index(None)] = client
                else:
                    self._tree.append(client)
                added.append((client, proposal.add_kp))
        self.epoch += 1
        self._proposals.clear()
        self.stats.commits_accepted += 1
        tid = self._new_transition(existing + [c for c, _ in added], now)
        logger.info(
            "commit from %s accepted: epoch %d, transition %d", committer.user_id, self.epoch, tid
        )
        out: list[Out] = [
            (c.user_id, DaveMlsAnnounceCommitTransition(tid, self._maybe_corrupt(c, commit.raw)))
            for c in existing
        ]
        parsed = Welcome.parse(welcome) if welcome is not None else None
        for client, kp in added:
            client.member = True
            client.signature_key = kp.leaf_node.signature_key
            if client.key_package is kp:
                client.key_package = None  # used up by this welcome
            data = welcome or b""
            if parsed is not None and self.filter_welcome:
                mine = parsed.for_member(key_package_ref(kp.raw))
                data = mine.serialize() if mine is not None else data
            out.append((client.user_id, DaveMlsWelcome(tid, self._maybe_corrupt(client, data))))
        return out + self._sync()

    def _maybe_corrupt(self, client: _Client, data: bytes) -> bytes:
        if client.user_id not in self._faults or not data:
            return data
        self._faults.discard(client.user_id)
        self.stats.faults_injected += 1
        logger.info("corrupting the commit/welcome for %s (fault injection)", client.user_id)
        return data[:-1] + bytes([data[-1] ^ 0x01])

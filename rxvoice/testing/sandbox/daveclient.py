"""A voice client's DAVE side without I/O, after discord.js's ``DAVESession``.

:class:`DaveClient` is what the sandbox's simulated speakers and the sandbox's
own tests run as the client half of DAVE: gateway messages in
(:meth:`~DaveClient.receive`), the messages to send back out; Opus in and out
(:meth:`~DaveClient.encrypt`, :meth:`~DaveClient.decrypt`). It owns one
``davey.DaveSession`` and does what discord.js does with it:

- op 4 with a DAVE version, or op 24 for epoch 1: (re)initialise the session and
  send a key package (op 26); version 0: reset, with a passthrough window;
- op 25: the external sender; op 27: process the proposals and send the commit
  and welcome (op 28) if there is one;
- op 29 / op 30: process the commit or welcome, then op 23 for its transition;
  a bad one: op 31 and a new key package (once, until a commit or welcome
  succeeds again);
- op 21 / op 22: prepare and execute transitions (id 0 at once; a downgrade
  opens a passthrough window; an upgrade after one opens another);
- op 11 / op 13 / op 5: who is in the call (the users proposals may add) and
  which SSRC is whose (to decrypt).

It is on purpose **not** rxvoice's :class:`~rxvoice.protocol.dave.DaveManager`:
the sandbox is a peer for rxvoice's client to be tested against, and a shared
implementation would agree with itself on any mistake.
"""

from __future__ import annotations

import collections
import logging

import davey

from rxvoice.errors import DaveError
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.rtp import SILENCE_FRAME

__all__ = ["DaveClient"]

logger = logging.getLogger(__name__)

_HISTORY = 256  # errors and executed transitions remembered
_OPERATIONS = {
    gw.ProposalsOperation.APPEND: davey.ProposalsOperationType.append,
    gw.ProposalsOperation.REVOKE: davey.ProposalsOperationType.revoke,
}


class DaveClient:
    """One user's DAVE state in one call, as discord.js keeps it.

    Args:
        user_id: The user (a snowflake).
        channel_id: The call (the MLS group id).

    Attributes:
        session: The ``davey`` session, once op 4 or op 24 asked for DAVE.
        protocol_version: The DAVE version in force (0: none).
        pending: Prepared transitions: transition id -> protocol version.
        executed: Transition ids executed, oldest first (the last 256).
        errors: What went wrong, oldest first (the last 256): refused
            proposals, invalid commits or welcomes.
        users: User ids of the others in the call (op 11 minus op 13).
        ssrcs: Whose each SSRC is (op 5).
    """

    def __init__(self, user_id: str, channel_id: str) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.session: davey.DaveSession | None = None
        self.protocol_version = 0
        self.pending: dict[int, int] = {}
        self.executed: collections.deque[int] = collections.deque(maxlen=_HISTORY)
        self.errors: collections.deque[str] = collections.deque(maxlen=_HISTORY)
        self.users: set[str] = set()
        self.ssrcs: dict[int, str] = {}
        self._downgraded = False
        self._reinitializing = False

    def __repr__(self) -> str:
        return (
            f"DaveClient(user_id={self.user_id!r}, version={self.protocol_version}, "
            f"epoch={self.epoch}, ready={self.ready})"
        )

    @property
    def ready(self) -> bool:
        """Whether frames are DAVE-encrypted now."""
        return self.protocol_version > 0 and self.session is not None and self.session.ready

    @property
    def epoch(self) -> int | None:
        """The MLS epoch, ``None`` without a group."""
        return None if self.session is None else self.session.epoch

    # -- messages -------------------------------------------------------------------------

    def receive(
        self, m: gw.GatewayMessage, *, welcome_queued: bool = False
    ) -> list[gw.GatewayMessage]:
        """Handle one message from the voice gateway; returns what to send, in order.

        Args:
            m: The message (any; those DAVE does not care about return nothing).
            welcome_queued: For op 27 while still waiting for a first group: a
                Welcome for this client is already waiting behind it, so
                someone else's commit adds it and its own could only lose.
                The sandbox's speakers skip that commit (with dozens joining
                at once, each would cost a commit over the whole group).
        """
        if isinstance(m, gw.SessionDescription):
            self.protocol_version = m.dave_protocol_version
            return self._reinit()
        if isinstance(m, gw.ClientsConnect):
            self.users.update(m.user_ids)
        elif isinstance(m, gw.ClientDisconnect):
            self.users.discard(m.user_id)
            for ssrc in [s for s, u in self.ssrcs.items() if u == m.user_id]:
                del self.ssrcs[ssrc]
        elif isinstance(m, gw.Speaking) and m.user_id is not None:
            self.ssrcs[m.ssrc] = m.user_id
        elif isinstance(m, gw.DavePrepareTransition):
            return self._prepare(m)
        elif isinstance(m, gw.DaveExecuteTransition):
            self._execute(m.transition_id)
        elif isinstance(m, gw.DavePrepareEpoch):
            if m.epoch == 1:  # a new group: start over with a key package
                self.protocol_version = m.protocol_version
                return self._reinit()
        elif self.session is None:
            pass  # MLS messages before op 4: nothing to apply them to
        elif isinstance(m, gw.DaveMlsExternalSender):
            self.session.set_external_sender(m.payload)
        elif isinstance(m, gw.DaveMlsProposals):
            if welcome_queued and self.session.status == davey.SessionStatus.pending:
                return []
            return self._proposals(self.session, m)
        elif isinstance(m, gw.DaveMlsAnnounceCommitTransition | gw.DaveMlsWelcome):
            return self._commit_or_welcome(self.session, m)
        return []

    def _reinit(self) -> list[gw.GatewayMessage]:
        if self.protocol_version > 0:
            user, channel = int(self.user_id), int(self.channel_id)
            if self.session is None:
                self.session = davey.DaveSession(self.protocol_version, user, channel)
            else:
                self.session.reinit(self.protocol_version, user, channel)
            return [gw.DaveMlsKeyPackage(self.session.get_serialized_key_package())]
        if self.session is not None:
            self.session.reset()
            self.session.set_passthrough_mode(True, 10)
        return []

    def _prepare(self, m: gw.DavePrepareTransition) -> list[gw.GatewayMessage]:
        self.pending[m.transition_id] = m.protocol_version
        if m.transition_id == 0:  # "at once": no op 23
            self._execute(0)
            return []
        if m.protocol_version == 0 and self.session is not None:
            self.session.set_passthrough_mode(True, 24)  # others may stop framing first
        return [gw.DaveTransitionReady(m.transition_id)]

    def _execute(self, transition_id: int) -> None:
        version = self.pending.pop(transition_id, None)
        if version is None:
            return
        if version == 0 and self.protocol_version != 0:
            self._downgraded = True
        elif transition_id > 0 and self._downgraded and self.session is not None:
            self._downgraded = False
            self.session.set_passthrough_mode(True, 10)  # upgraded: late plain frames pass
        self.protocol_version = version
        self.executed.append(transition_id)

    def _proposals(
        self, session: davey.DaveSession, m: gw.DaveMlsProposals
    ) -> list[gw.GatewayMessage]:
        expected = sorted(int(u) for u in self.users)
        try:
            result = session.process_proposals(_OPERATIONS[m.operation], m.payload, expected)
        except ValueError as exc:
            self._error(f"proposals refused: {exc}")
            return []
        if result is None:
            return []
        return [gw.DaveMlsCommitWelcome(result.commit + (result.welcome or b""))]

    def _commit_or_welcome(
        self,
        session: davey.DaveSession,
        m: gw.DaveMlsAnnounceCommitTransition | gw.DaveMlsWelcome,
    ) -> list[gw.GatewayMessage]:
        try:
            if isinstance(m, gw.DaveMlsWelcome):
                session.process_welcome(m.welcome)
            else:
                session.process_commit(m.commit)
        except ValueError as exc:
            self._error(f"op {m.op} for transition {m.transition_id} invalid: {exc}")
            if self._reinitializing:
                return []
            self._reinitializing = True
            return [gw.DaveMlsInvalidCommitWelcome(m.transition_id), *self._reinit()]
        self._reinitializing = False
        if not m.transition_id:
            return []
        self.pending[m.transition_id] = self.protocol_version
        return [gw.DaveTransitionReady(m.transition_id)]

    def _error(self, text: str) -> None:
        logger.warning("DAVE client %s: %s", self.user_id, text)
        self.errors.append(text)

    # -- media ----------------------------------------------------------------------------

    def encrypt(self, opus: bytes) -> tuple[bytes, bool]:
        """The payload to send for ``opus``, and whether it is DAVE-encrypted.

        Silence and everything before the group is ready go out plain, as do
        frames the session cannot encrypt mid-transition (as discord.js does).
        """
        if opus == SILENCE_FRAME or not self.ready:
            return opus, False
        assert self.session is not None
        try:
            return self.session.encrypt_opus(opus), True
        except ValueError as exc:
            logger.debug("DAVE client %s: encrypt failed: %s", self.user_id, exc)
            return opus, False

    def decrypt(self, ssrc: int, payload: bytes) -> tuple[str, bytes, bool] | None:
        """Decrypt a received payload (transport encryption already removed).

        Args:
            ssrc: The packet's SSRC.
            payload: Its payload: Opus, or a DAVE frame.

        Returns:
            ``(user_id, opus, was_dave)``, or ``None`` while op 5 has not said
            whose the SSRC is.

        Raises:
            DaveError: A DAVE frame this client cannot decrypt (no group, or
                not the sender's key).
        """
        user_id = self.ssrcs.get(ssrc)
        if user_id is None:
            return None
        if payload == SILENCE_FRAME or not is_dave_frame(payload):
            return user_id, payload, False
        if self.session is None:
            raise DaveError(f"a DAVE frame from {user_id} before any DAVE session")
        try:
            opus = self.session.decrypt(int(user_id), davey.MediaType.audio, payload)
        except ValueError as exc:
            raise DaveError(f"cannot decrypt a frame from {user_id}: {exc}") from None
        return user_id, opus, True

"""DAVE bookkeeping for one voice connection, without I/O.

:class:`DaveManager` owns the MLS session (through ``davey``), follows the
gateway's transitions (ops 21-31), decides when to send op 23, op 26, op 28 and
op 31, encrypts our Opus frames and decrypts other users' frames with their own
decryptors.

Time is passed in (``now``, seconds) so passthrough windows are deterministic.
What the manager wants sent and the transitions it executed are collected and
handed out by :meth:`DaveManager.poll`.

Rules it follows (see protocol.md §5.7 and the whitepaper):

- a key package (op 26) goes out on every (re)start: after op 4 with DAVE on,
  after op 24 with ``epoch == 1``, and after reporting an invalid commit (op 31);
- op 23 is sent for every non-zero transition id and never for id 0, which
  executes at once;
- a failed commit or welcome is reported with op 31, then the session resets;
- decryption failures are tolerated up to ``failure_tolerance`` in a row per
  user, then the session re-initialises (op 31 + a new key package); a failure
  never ends anything;
- frames that are not DAVE frames pass through while DAVE is off, while a
  downgrade is pending (``downgrade_passthrough`` seconds), and for
  ``upgrade_passthrough`` seconds after an upgrade or after joining our first
  group (members without a group send plain frames, and some are in flight);
  silence frames always pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import davey

from rxvoice.errors import DaveError
from rxvoice.events import DaveEpochTransition
from rxvoice.protocol.daveframe import is_dave_frame
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

__all__ = ["DAVE_PROTOCOL_VERSION", "DaveManager", "DaveOutput", "DaveStats"]

logger = logging.getLogger(__name__)

DAVE_PROTOCOL_VERSION: int = davey.DAVE_PROTOCOL_VERSION

SessionFactory = Callable[[int, int, int], davey.DaveSession]

# How long after a transition is prepared decryption failures are not counted
# towards the tolerance (senders may switch keys before we do, or after).
_TRANSITION_GRACE = 10.0

_OPERATIONS = {
    ProposalsOperation.APPEND: davey.ProposalsOperationType.append,
    ProposalsOperation.REVOKE: davey.ProposalsOperationType.revoke,
}


@dataclass(frozen=True, slots=True)
class DaveOutput:
    """What the manager produced since the last :meth:`DaveManager.poll`.

    Attributes:
        send: Gateway messages to send, in order.
        transitions: Transitions executed, in order.
    """

    send: tuple[GatewayMessage, ...] = ()
    transitions: tuple[DaveEpochTransition, ...] = ()


@dataclass(slots=True)
class DaveStats:
    """Counters of a :class:`DaveManager`."""

    decrypted: int = 0
    passed_through: int = 0
    decrypt_failures: int = 0
    encrypted: int = 0
    invalid_commits: int = 0
    proposal_failures: int = 0
    recoveries: int = 0
    key_packages: int = 0
    failures_by_user: dict[str, int] = field(default_factory=dict)


class DaveManager:
    """The DAVE E2EE MLS session of one connection and per-user key rotation.

    Args:
        user_id: Our user id.
        channel_id: The voice channel id (the MLS group id).
        max_protocol_version: The highest DAVE version we speak (0 disables DAVE).
        failure_tolerance: Consecutive decryption failures per user before the
            session re-initialises (discord.js uses 36).
        downgrade_passthrough: Seconds unencrypted frames are accepted while a
            downgrade to version 0 is pending.
        upgrade_passthrough: Seconds unencrypted frames are still accepted after
            an upgrade executes (frames in flight).
        session_factory: Creates the MLS session; ``davey.DaveSession`` by default.
    """

    def __init__(
        self,
        user_id: str,
        channel_id: str,
        *,
        max_protocol_version: int = DAVE_PROTOCOL_VERSION,
        failure_tolerance: int = 36,
        downgrade_passthrough: float = 120.0,
        upgrade_passthrough: float = 10.0,
        session_factory: SessionFactory = davey.DaveSession,
    ) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.max_protocol_version = max_protocol_version
        self.failure_tolerance = failure_tolerance
        self.downgrade_passthrough = downgrade_passthrough
        self.upgrade_passthrough = upgrade_passthrough
        self._factory = session_factory
        self.session: davey.DaveSession | None = None
        self.protocol_version = 0
        self.recognised: set[str] = set()
        self.stats = DaveStats()
        self._pending: dict[int, int] = {}  # transition id -> protocol version
        self._prepared_at = 0.0  # when the latest transition was prepared
        self._passthrough_until = 0.0
        self._last_transition_id = 0
        self._consecutive_failures: dict[str, int] = {}
        self._outbox: list[GatewayMessage] = []
        self._transitions: list[DaveEpochTransition] = []
        # Counts key changes (a processed commit or welcome, an executed
        # transition): a frame that failed before one may decrypt after it.
        self.generation = 0

    # -- state -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the MLS group is established and media can be E2EE'd."""
        return self.session is not None and self.session.ready

    @property
    def epoch(self) -> int:
        """The current MLS epoch (0 when there is no group)."""
        epoch = self.session.epoch if self.session is not None else None
        return epoch or 0

    @property
    def members(self) -> tuple[str, ...]:
        """User ids in the MLS group, sorted."""
        if self.session is None or not self.session.ready:
            return ()
        return tuple(sorted(str(u) for u in self.session.get_user_ids()))

    @property
    def privacy_code(self) -> str | None:
        """The voice privacy code users can compare out of band, when established."""
        if self.session is None or not self.session.ready:
            return None
        return self.session.voice_privacy_code

    @property
    def has_output(self) -> bool:
        """Whether :meth:`poll` has messages to send or transitions to report."""
        return bool(self._outbox or self._transitions)

    def poll(self) -> DaveOutput:
        """Hand out (and forget) the messages to send and the transitions executed."""
        out = DaveOutput(tuple(self._outbox), tuple(self._transitions))
        self._outbox.clear()
        self._transitions.clear()
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, protocol_version: int, now: float) -> None:
        """Begin from op 4's ``dave_protocol_version`` (a new voice session)."""
        self.protocol_version = min(protocol_version, self.max_protocol_version)
        self._pending.clear()
        self._consecutive_failures.clear()
        if self.protocol_version > 0:
            self._reinit()
        else:
            self.session = None
            self._passthrough_until = float("inf")

    def close(self) -> None:
        """Drop the MLS session (the voice session ended)."""
        if self.session is not None:
            self.session.reset()
        self.session = None
        self._pending.clear()

    def add_users(self, user_ids: Iterable[str]) -> None:
        """Users the gateway announced (op 11): their Add proposals are accepted."""
        self.recognised.update(user_ids)

    def remove_user(self, user_id: str) -> None:
        """A user left (op 13): no Add proposal for them is accepted any more."""
        self.recognised.discard(user_id)
        self._consecutive_failures.pop(user_id, None)

    # -- gateway messages --------------------------------------------------------------

    def handle(self, message: GatewayMessage, now: float) -> None:
        """Process one DAVE gateway message (ops 21, 22, 24, 25, 27, 29, 30).

        Other messages are ignored. Problems are logged and counted; the manager
        reports them to the gateway (op 31) where the protocol says so.
        """
        match message:
            case DavePrepareTransition(protocol_version=version, transition_id=tid):
                self._prepare_transition(version, tid, now)
            case DaveExecuteTransition(transition_id=tid):
                self._execute_transition(tid, now)
            case DavePrepareEpoch(protocol_version=version, epoch=epoch):
                if epoch == 1:
                    # A new group: (re)create the pending group and send a key package.
                    self.protocol_version = min(version, self.max_protocol_version)
                    self._reinit()
            case DaveMlsExternalSender(payload=payload):
                self._set_external_sender(payload)
            case DaveMlsProposals(operation=operation, payload=payload):
                self._process_proposals(operation, payload)
            case DaveMlsAnnounceCommitTransition(transition_id=tid, commit=commit):
                self._process_mls(tid, commit, welcome=False, now=now)
            case DaveMlsWelcome(transition_id=tid, welcome=welcome):
                self._process_mls(tid, welcome, welcome=True, now=now)
            case _:
                pass

    def _prepare_transition(self, version: int, tid: int, now: float) -> None:
        self._pending[tid] = version
        self._prepared_at = now
        if version == 0:
            # Receivers must accept plain frames as soon as a downgrade is announced.
            self._passthrough_until = max(self._passthrough_until, now + self.downgrade_passthrough)
        if tid == 0:
            self._execute_transition(0, now)
        else:
            self._outbox.append(DaveTransitionReady(tid))

    def _execute_transition(self, tid: int, now: float) -> None:
        version = self._pending.pop(tid, None)
        if version is None:
            logger.debug("execute for unknown DAVE transition %d ignored", tid)
            return
        previous = self.protocol_version
        self.protocol_version = version
        self._last_transition_id = tid
        self.generation += 1
        if version == 0:
            self._passthrough_until = float("inf")
        elif previous == 0 or self._passthrough_until == float("inf"):
            # Upgrade: frames sent before the switch are still in flight.
            self._passthrough_until = now + self.upgrade_passthrough
        self._transitions.append(
            DaveEpochTransition(
                epoch=self.epoch if version > 0 else 0,
                protocol_version=version,
                transition_id=tid,
                members=self.members,
                privacy_code=self.privacy_code,
            )
        )

    def _set_external_sender(self, payload: bytes) -> None:
        if self.session is None:
            logger.warning("DAVE external sender received while DAVE is off; ignored")
            return
        try:
            self.session.set_external_sender(payload)
        except ValueError as exc:
            logger.warning("DAVE external sender refused: %s", exc)

    def _process_proposals(self, operation: ProposalsOperation, payload: bytes) -> None:
        if self.session is None:
            return
        expected = [int(u) for u in self.recognised if u.isdigit()]
        try:
            result = self.session.process_proposals(_OPERATIONS[operation], payload, expected)
        except (ValueError, KeyError) as exc:
            self.stats.proposal_failures += 1
            logger.warning("DAVE proposals refused: %s", exc)
            return
        if result is not None:
            self._outbox.append(DaveMlsCommitWelcome(result.commit + (result.welcome or b"")))

    def _process_mls(self, tid: int, data: bytes, *, welcome: bool, now: float) -> None:
        if self.session is None:
            return
        was_ready = self.session.ready
        try:
            if welcome:
                self.session.process_welcome(data)
            else:
                self.session.process_commit(data)
        except ValueError as exc:
            self.stats.invalid_commits += 1
            logger.warning(
                "DAVE %s for transition %d refused: %s",
                "welcome" if welcome else "commit",
                tid,
                exc,
            )
            self._recover(tid)
            return
        self._consecutive_failures.clear()
        self.generation += 1
        if not was_ready:
            # Our first group: until now everyone sent plain frames (a member
            # without a group does), and some are still in flight.
            self._passthrough_until = max(self._passthrough_until, now + self.upgrade_passthrough)
        self._pending[tid] = self.protocol_version or self.max_protocol_version
        self._prepared_at = now
        if tid == 0:
            self._execute_transition(0, now)
        else:
            self._outbox.append(DaveTransitionReady(tid))

    def _recover(self, tid: int) -> None:
        """Report an invalid commit/welcome (op 31) and start over with a new key package."""
        self.stats.recoveries += 1
        self._outbox.append(DaveMlsInvalidCommitWelcome(tid))
        self._reinit()

    def _reinit(self) -> None:
        user, channel = int(self.user_id), int(self.channel_id)
        if self.session is None:
            self.session = self._factory(self.protocol_version, user, channel)
        else:
            self.session.reinit(self.protocol_version, user, channel)
        self._consecutive_failures.clear()
        self.stats.key_packages += 1
        self._outbox.append(DaveMlsKeyPackage(self.session.get_serialized_key_package()))

    # -- media -------------------------------------------------------------------------

    def encrypt(self, opus: bytes) -> bytes:
        """E2EE one of our Opus frames when the group is established, else return it as is.

        Silence frames are never DAVE-encrypted. A sole member (no group) sends
        plain frames, as Discord's clients do.
        """
        if self.protocol_version == 0 or opus == SILENCE_FRAME or not self.ready:
            return opus
        assert self.session is not None
        try:
            frame = self.session.encrypt_opus(opus)
        except ValueError as exc:
            raise DaveError(f"DAVE encryption failed: {exc}") from exc
        self.stats.encrypted += 1
        return frame

    def decrypt(self, user_id: str, frame: bytes, now: float) -> bytes | None:
        """Remove the E2EE layer of ``user_id``'s frame.

        Returns:
            The Opus frame, or ``None`` when it could not be decrypted (counted;
            past the tolerance the session re-initialises).
        """
        if frame == SILENCE_FRAME or (now < self._passthrough_until and not is_dave_frame(frame)):
            self.stats.passed_through += 1
            return frame
        session = self.session
        if session is None or not session.ready:
            if not is_dave_frame(frame):
                # A sender without an established group sends plain frames.
                self.stats.passed_through += 1
                return frame
            # Expected while we wait to be welcomed: counted, never a reason to reset.
            self._failed(user_id, "no established DAVE group", now, tolerated=False)
            return None
        try:
            opus = session.decrypt(int(user_id), davey.MediaType.audio, frame)
        except (ValueError, OverflowError) as exc:
            self._failed(user_id, str(exc), now)
            return None
        self._consecutive_failures[user_id] = 0
        self.stats.decrypted += 1
        return opus

    def open_unattributed(self, frame: bytes) -> bytes | None:
        """The Opus of a frame whose sender is unknown (its SSRC never mapped).

        E2EE needs the sender's identity, so a DAVE frame stays closed whatever
        the protocol version (one in flight across a downgrade, say): only the
        silence frame, and plain frames in a call without DAVE, pass.

        Returns:
            The frame, or ``None`` when it cannot be opened (not counted here).
        """
        if frame == SILENCE_FRAME or (self.protocol_version == 0 and not is_dave_frame(frame)):
            self.stats.passed_through += 1
            return frame
        return None

    def _failed(self, user_id: str, why: str, now: float, *, tolerated: bool = True) -> None:
        stats = self.stats
        stats.decrypt_failures += 1
        stats.failures_by_user[user_id] = stats.failures_by_user.get(user_id, 0) + 1
        if not tolerated or (self._pending and now - self._prepared_at < _TRANSITION_GRACE):
            # Without a group, or while a transition is under way, failures are
            # expected and re-initialising would only delay the group further.
            return
        count = self._consecutive_failures.get(user_id, 0) + 1
        self._consecutive_failures[user_id] = count
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("DAVE decrypt failed for user %s (%d in a row): %s", user_id, count, why)
        if count > self.failure_tolerance and self.session is not None:
            logger.warning(
                "%d DAVE decryption failures in a row for user %s; re-initialising the session",
                count,
                user_id,
            )
            self._recover(self._last_transition_id)

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
  recoveries are at least a second apart (a gap that doubles while they keep
  failing): one that comes sooner waits, so a commit that can never apply
  cannot make the client and the server loop;
- every ``davey`` call is guarded: what davey refuses (a garbage message, a
  protocol version it does not speak) is logged and counted
  (:attr:`DaveStats.protocol_errors`), never raised; a protocol version above
  ``max_protocol_version`` (or 0 where only a real version makes sense) is
  refused before davey sees it, and never stored;
- decryption failures have a cause (:class:`DaveFailure`): only failures in a
  settled group (no transition under way, not waiting to join) count towards
  ``failure_tolerance``, as failures in a row with nothing decrypted in
  between (from anyone: discord.js's rule, which catches a broken session,
  not one bad sender). A caller that holds failed frames for a retry after
  the next key change (``decrypt(held=True)``, as the receiver does) reports
  them with :meth:`DaveManager.lost` only when they never open: a sender that
  switched to a new epoch's keys before our commit arrived is not a failure.
  Past the tolerance the session re-initialises (op 31 + a new key package),
  at most once per ``reinit_backoff`` seconds, a backoff that doubles while
  re-initialising does not help; a failure never ends anything;
- frames that are not DAVE frames pass through while DAVE is off, while a
  downgrade is pending (``downgrade_passthrough`` seconds), and for
  ``upgrade_passthrough`` seconds after an upgrade or after joining our first
  group (members without a group send plain frames, and some are in flight);
  silence frames always pass.
"""

from __future__ import annotations

import enum
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

__all__ = ["DAVE_PROTOCOL_VERSION", "DaveFailure", "DaveManager", "DaveOutput", "DaveStats"]

logger = logging.getLogger(__name__)

DAVE_PROTOCOL_VERSION: int = davey.DAVE_PROTOCOL_VERSION

SessionFactory = Callable[[int, int, int], davey.DaveSession]

# How long after a transition is prepared decryption failures are not counted
# towards the tolerance (senders may switch keys before we do, or after).
_TRANSITION_GRACE = 10.0
# How long after a transition executes frames sealed with the keys before it
# may still arrive (in flight, or from a sender that switched late).
_SETTLE_TIME = 2.0
# The longest wait between two re-initialisations caused by decryption failures.
_MAX_REINIT_BACKOFF = 320.0
# Any two recoveries (op 31 and a new group) are this far apart at least, a
# gap that doubles while they keep failing and is back to it once a transition
# executes: a commit or welcome that can never apply (an external sender davey
# refused, say) must not make the client and the server loop.
_RECOVERY_GAP = 1.0
_MAX_RECOVERY_GAP = 60.0

_AUDIO = davey.MediaType.audio

# What davey raises on input it refuses (OverflowError: a user id out of range).
_DAVEY_ERRORS = (ValueError, OverflowError, TypeError)

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


class DaveFailure(enum.Enum):
    """Why a frame could not be DAVE-decrypted (see :meth:`DaveManager.failure_cause`)."""

    NOT_IN_GROUP = "not_in_group"
    """We were not in the MLS group (yet): before our welcome, until our
    joining transition settled, or while re-joining after a re-initialisation.
    Frames sealed before we joined can never be opened; expected at a join."""
    TRANSITION = "transition"
    """A transition was under way or had just executed (keys switching), or
    DAVE was downgraded: expected in small numbers, most are retried."""
    FAILED = "failed"
    """A settled group: a real failure (a broken session, or a bad sender)."""


@dataclass(slots=True)
class DaveStats:
    """Counters of a :class:`DaveManager`.

    Attributes:
        decrypted: Frames whose DAVE layer was removed.
        passed_through: Frames that needed no DAVE: silence frames, plain
            frames from senders without a group, during a passthrough window
            or in a call without DAVE.
        decrypt_failures: Failed decryption attempts, retries included (the
            receiver's ``dave_failures*`` counters count frames instead).
        failures_by_user: :attr:`decrypt_failures` per sender's user id.
        encrypted: Our frames DAVE-encrypted.
        encrypt_failures: Our frames davey could not encrypt (raised as
            :class:`~rxvoice.errors.DaveError`).
        invalid_commits: MLS commits or welcomes that did not apply (each
            reported with op 31, then a recovery).
        proposal_failures: MLS proposals (op 27) davey refused.
        protocol_errors: DAVE messages refused before or by davey: an
            unsupported protocol version, an external sender davey refused, a
            davey call that failed (each logged; the message is ignored).
        recoveries: Re-initialisations with op 31 (after an invalid commit or
            welcome, or too many decryption failures in a row).
        recoveries_deferred: Recoveries held back by a backoff: decryption
            failures past the tolerance within ``reinit_backoff`` of the last
            re-initialisation, or an invalid commit or welcome within the
            recovery gap of the last recovery (that one is made once the gap
            is over, unless a commit or welcome applies meanwhile).
        key_packages: Key packages sent (op 26).
    """

    decrypted: int = 0
    passed_through: int = 0
    decrypt_failures: int = 0
    failures_by_user: dict[str, int] = field(default_factory=dict)
    encrypted: int = 0
    encrypt_failures: int = 0
    invalid_commits: int = 0
    proposal_failures: int = 0
    protocol_errors: int = 0
    recoveries: int = 0
    recoveries_deferred: int = 0
    key_packages: int = 0


class DaveManager:
    """The DAVE E2EE MLS session of one connection and per-user key rotation.

    Nothing it does on the gateway's or the network's input raises: what
    cannot be used is logged and counted in :attr:`stats`.

    Args:
        user_id: Our user id.
        channel_id: The voice channel id (the MLS group id).
        max_protocol_version: The highest DAVE version we speak (0 disables DAVE).
        failure_tolerance: Decryption failures in a row, in a settled group and
            with nothing decrypted in between, before the session
            re-initialises (discord.js uses 36).
        reinit_backoff: Seconds between two re-initialisations caused by
            decryption failures; it doubles (up to 320 s) while they do not
            help, and is back to this once the sender whose failures caused
            one decrypts again.
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
        reinit_backoff: float = 10.0,
        downgrade_passthrough: float = 120.0,
        upgrade_passthrough: float = 10.0,
        session_factory: SessionFactory = davey.DaveSession,
    ) -> None:
        self.user_id = user_id
        self.channel_id = channel_id
        self.max_protocol_version = max_protocol_version
        self.failure_tolerance = failure_tolerance
        self.reinit_backoff = reinit_backoff
        self.downgrade_passthrough = downgrade_passthrough
        self.upgrade_passthrough = upgrade_passthrough
        self._factory = session_factory
        self.session: davey.DaveSession | None = None
        self.protocol_version = 0
        self.recognised: set[str] = set()
        self.stats = DaveStats()
        self._pending: dict[int, int] = {}  # transition id -> protocol version
        self._prepared_at = 0.0  # when the latest transition was prepared
        self._settled_at = 0.0  # when frames of the keys before the latest transition stop
        # Until when failures are from before we (re)joined: from a (re)start
        # or our welcome until its transition executes (bounded by the
        # transition grace, should it never execute), then the settle time.
        self._joining_until = float("inf")
        self._joining: int | None = None  # the transition id that brings us into the group
        self._passthrough_until = 0.0
        self._last_transition_id = 0
        # Failures in a row (fresh frames, settled group, nothing decrypted in between).
        self._streak = 0
        self._next_reinit = 0.0  # no failure-caused re-init before this
        self._backoff = reinit_backoff
        self._blamed: str | None = None  # whose failures caused the last re-init
        self._next_recovery = 0.0  # no recovery of any kind before this
        self._recovery_gap = _RECOVERY_GAP
        self._deferred: int | None = None  # a recovery waiting for the gap to end
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
        if not self.ready:
            return ()
        assert self.session is not None
        try:
            return tuple(sorted(str(u) for u in self.session.get_user_ids()))
        except _DAVEY_ERRORS:
            return ()

    @property
    def privacy_code(self) -> str | None:
        """The voice privacy code users can compare out of band, when established."""
        if not self.ready:
            return None
        assert self.session is not None
        try:
            return self.session.voice_privacy_code
        except _DAVEY_ERRORS:
            return None

    @property
    def has_output(self) -> bool:
        """Whether :meth:`poll` has messages to send or transitions to report."""
        return bool(self._outbox or self._transitions)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (a recovery that waits), or ``None``."""
        return self._next_recovery if self._deferred is not None else None

    def tick(self, now: float) -> None:
        """Do what is due at ``now``: a recovery that waited for the recovery gap.

        Handling a message or a failing frame does it too; this is for a call
        where neither comes.
        """
        if self._deferred is not None:
            self._catch_up(now)

    def poll(self) -> DaveOutput:
        """Hand out (and forget) the messages to send and the transitions executed."""
        out = DaveOutput(tuple(self._outbox), tuple(self._transitions))
        self._outbox.clear()
        self._transitions.clear()
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, protocol_version: int, now: float) -> None:
        """Begin from op 4's ``dave_protocol_version`` (a new voice session)."""
        self.protocol_version = max(0, min(protocol_version, self.max_protocol_version))
        self._pending.clear()
        self._streak = 0
        if self.protocol_version > 0:
            self._reinit()
        else:
            self._drop_session()
            self._passthrough_until = float("inf")

    def close(self) -> None:
        """Drop the MLS session (the voice session ended)."""
        self._drop_session()
        self._pending.clear()

    def add_users(self, user_ids: Iterable[str]) -> None:
        """Users the gateway announced (op 11): their Add proposals are accepted."""
        self.recognised.update(user_ids)

    def remove_user(self, user_id: str) -> None:
        """A user left (op 13): no Add proposal for them is accepted any more."""
        self.recognised.discard(user_id)

    # -- gateway messages --------------------------------------------------------------

    def handle(self, message: GatewayMessage, now: float) -> None:
        """Process one DAVE gateway message (ops 21, 22, 24, 25, 27, 29, 30).

        Other messages are ignored. Never raises: problems are logged and
        counted; the manager reports them to the gateway (op 31) where the
        protocol says so.
        """
        if self._deferred is not None:
            self._catch_up(now)
        match message:
            case DavePrepareTransition(protocol_version=version, transition_id=tid):
                if self._supported(version, message):
                    self._prepare_transition(version, tid, now)
            case DaveExecuteTransition(transition_id=tid):
                self._execute_transition(tid, now)
            case DavePrepareEpoch(protocol_version=version, epoch=epoch):
                # epoch 1: a new group, so only a real version makes sense.
                if epoch == 1 and self._supported(version, message, minimum=1):
                    # (Re)create the pending group and send a key package.
                    self.protocol_version = version
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

    def _supported(self, version: int, message: GatewayMessage, *, minimum: int = 0) -> bool:
        """Whether ``version`` is one we speak; a protocol error (counted, logged) if not."""
        if minimum <= version <= self.max_protocol_version:
            return True
        self._protocol_error(
            f"op {message.op} with unsupported DAVE protocol version {version} "
            f"(we speak {minimum}..{self.max_protocol_version}); ignored"
        )
        return False

    def _protocol_error(self, what: str) -> None:
        self.stats.protocol_errors += 1
        logger.warning("DAVE: %s", what)

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
        self._recovery_gap = _RECOVERY_GAP  # the group works
        self._settled_at = now + _SETTLE_TIME
        if tid == self._joining:
            self._joining = None
            self._joining_until = now + _SETTLE_TIME
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
        except _DAVEY_ERRORS as exc:
            self._protocol_error(f"external sender refused: {exc}")

    def _process_proposals(self, operation: ProposalsOperation, payload: bytes) -> None:
        if self.session is None:
            return
        expected = [int(u) for u in self.recognised if u.isdigit()]
        try:
            result = self.session.process_proposals(_OPERATIONS[operation], payload, expected)
        except (*_DAVEY_ERRORS, KeyError) as exc:
            self.stats.proposal_failures += 1
            logger.warning("DAVE proposals refused: %s", exc)
            return
        if result is not None:
            self._outbox.append(DaveMlsCommitWelcome(result.commit + (result.welcome or b"")))

    def _process_mls(self, tid: int, data: bytes, *, welcome: bool, now: float) -> None:
        session = self.session
        if session is None:
            return
        was_ready = session.ready
        try:
            if welcome:
                session.process_welcome(data)
            else:
                session.process_commit(data)
        except _DAVEY_ERRORS as exc:
            self.stats.invalid_commits += 1
            logger.warning(
                "DAVE %s for transition %d refused: %s",
                "welcome" if welcome else "commit",
                tid,
                exc,
            )
            self._recover(tid, now)
            return
        self._streak = 0
        self._deferred = None  # whatever was wrong, this applied
        self.generation += 1
        if not was_ready:
            # Our first group: until now everyone sent plain frames (a member
            # without a group does), and some are still in flight.
            self._passthrough_until = max(self._passthrough_until, now + self.upgrade_passthrough)
            self._joining, self._joining_until = tid, now + _TRANSITION_GRACE
        self._pending[tid] = self.protocol_version or self.max_protocol_version
        self._prepared_at = now
        if tid == 0:
            self._execute_transition(0, now)
        else:
            self._outbox.append(DaveTransitionReady(tid))

    def _recover(self, tid: int, now: float) -> None:
        """Report an invalid commit/welcome (op 31) and start over with a new key package.

        ``tid`` is sent as it is, 0 included: transition 0 is a transition.
        Within the recovery gap of the last one it waits (:meth:`_catch_up`).
        """
        if now < self._next_recovery:
            self._deferred = tid
            self.stats.recoveries_deferred += 1
            return
        self._deferred = None
        self._next_recovery = now + self._recovery_gap
        self._recovery_gap = min(self._recovery_gap * 2, _MAX_RECOVERY_GAP)
        self.stats.recoveries += 1
        self._outbox.append(DaveMlsInvalidCommitWelcome(tid))
        self._reinit()

    def _catch_up(self, now: float) -> None:
        """Make the recovery that waited for the recovery gap, once it is over."""
        if self._deferred is not None and now >= self._next_recovery:
            self._recover(self._deferred, now)

    def _reinit(self) -> None:
        """A new pending group and a key package (op 26); none without a DAVE version."""
        self._streak = 0
        self._joining, self._joining_until = None, float("inf")  # bounded at our welcome
        if self.protocol_version <= 0:
            # No group to join at version 0 (a downgrade was executed): drop ours.
            self._drop_session()
            return
        user, channel = int(self.user_id), int(self.channel_id)
        try:
            if self.session is None:
                self.session = self._factory(self.protocol_version, user, channel)
            else:
                self.session.reinit(self.protocol_version, user, channel)
            key_package = self.session.get_serialized_key_package()
        except _DAVEY_ERRORS as exc:
            self._protocol_error(
                f"could not start a group at version {self.protocol_version}: {exc}"
            )
            self._drop_session()
            return
        self.stats.key_packages += 1
        self._outbox.append(DaveMlsKeyPackage(key_package))

    def _drop_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                session.reset()
            except _DAVEY_ERRORS as exc:
                logger.debug("DAVE session reset failed: %s", exc)

    # -- media -------------------------------------------------------------------------

    def encrypt(self, opus: bytes) -> bytes:
        """E2EE one of our Opus frames when the group is established, else return it as is.

        Silence frames are never DAVE-encrypted. A sole member (no group) sends
        plain frames, as Discord's clients do.

        Raises:
            DaveError: davey could not encrypt the frame (counted in
                :attr:`DaveStats.encrypt_failures`); never a plain frame instead.
        """
        if self.protocol_version == 0 or opus == SILENCE_FRAME or not self.ready:
            return opus
        assert self.session is not None
        try:
            frame = self.session.encrypt_opus(opus)
        except _DAVEY_ERRORS as exc:
            self.stats.encrypt_failures += 1
            raise DaveError(f"DAVE encryption failed: {exc}") from exc
        self.stats.encrypted += 1
        return frame

    def decrypt(
        self, user_id: str, frame: bytes, now: float, *, held: bool = False
    ) -> bytes | None:
        """Remove the E2EE layer of ``user_id``'s frame.

        Args:
            user_id: The sender.
            frame: The frame, transport layer removed.
            now: The current time in seconds.
            held: The caller keeps a frame that fails, tries it again after the
                next key change and reports it with :meth:`lost` if it never
                opens: its failure counts towards the tolerance only then. A
                sender may switch to a new epoch's keys before our copy of the
                commit arrives (gateway and media travel apart), so a failure
                that the next key change cures is no sign of a broken session.

        Returns:
            The Opus frame, or ``None`` when it could not be decrypted (counted;
            past the tolerance the session re-initialises; why:
            :meth:`failure_cause`).
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
            self._failed(user_id, "no established DAVE group", now, count=not held)
            return None
        try:
            opus = session.decrypt(int(user_id), _AUDIO, frame)
        except _DAVEY_ERRORS as exc:
            self._failed(user_id, str(exc), now, count=not held)
            return None
        self._streak = 0
        if self._blamed is not None and user_id == self._blamed:
            # The re-initialisation their failures caused worked.
            self._blamed, self._backoff = None, self.reinit_backoff
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

    def failure_cause(self, now: float) -> DaveFailure:
        """Why a frame that failed decryption at ``now`` failed (see :class:`DaveFailure`)."""
        session = self.session
        if session is None or not session.ready or now < self._joining_until:
            return DaveFailure.NOT_IN_GROUP
        if (
            self.protocol_version == 0
            or now < self._settled_at
            or (self._pending and now - self._prepared_at < _TRANSITION_GRACE)
        ):
            return DaveFailure.TRANSITION
        return DaveFailure.FAILED

    def lost(self, user_id: str, cause: DaveFailure, now: float) -> None:
        """A frame that failed with ``held=True`` never opened: count it now.

        Args:
            user_id: The sender.
            cause: :meth:`failure_cause` when it first failed; only a failure
                in a settled group (:attr:`DaveFailure.FAILED`) counts
                towards the tolerance.
            now: The current time in seconds.
        """
        if self._deferred is not None:
            self._catch_up(now)
        if cause is DaveFailure.FAILED:
            self._count(user_id, "still failing after a key change, or none came", now)

    def _failed(self, user_id: str, why: str, now: float, *, count: bool) -> None:
        if self._deferred is not None:
            self._catch_up(now)
        stats = self.stats
        stats.decrypt_failures += 1
        stats.failures_by_user[user_id] = stats.failures_by_user.get(user_id, 0) + 1
        if count and self.failure_cause(now) is DaveFailure.FAILED:
            # Only in a settled group: without a group, or while keys switch,
            # failures are expected and re-initialising would only delay the
            # group further.
            self._count(user_id, why, now)

    def _count(self, user_id: str, why: str, now: float) -> None:
        """One more real failure in a row; past the tolerance, re-initialise."""
        stats = self.stats
        self._streak += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "DAVE decrypt failed for user %s (%d in a row): %s", user_id, self._streak, why
            )
        if self._streak <= self.failure_tolerance:
            return
        if now < self._next_reinit:
            stats.recoveries_deferred += 1
            return
        logger.warning(
            "%d DAVE decryption failures in a row (the last from user %s); "
            "re-initialising the session (the next one not before %.0f s)",
            self._streak,
            user_id,
            self._backoff,
        )
        self._next_reinit = now + self._backoff
        self._backoff = min(self._backoff * 2, _MAX_REINIT_BACKOFF)
        self._blamed = user_id
        self._recover(self._last_transition_id, now)

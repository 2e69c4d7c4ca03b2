"""The voice server's timing on a hand-stepped clock: 4009, resume windows, DAVE timeouts.

No sockets and no event loop: peers are in-memory links, the clock moves only
when a test says so, and DAVE clients are the sandbox's sans-I/O DaveClient.
"""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from rxvoice.protocol import gateway as gw
from rxvoice.testing.sandbox.daveclient import DaveClient
from rxvoice.testing.sandbox.faults import FaultInjector, Faults
from rxvoice.testing.sandbox.options import SandboxOptions
from rxvoice.testing.sandbox.voice import VoiceConnection, VoiceServer

GUILD, CHANNEL = "41771983423143937", "41771983444115456"
AES = "aead_aes256_gcm_rtpsize"


@dataclass(order=True)
class _Timer:
    when: float
    order: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A :class:`~rxvoice.testing.sandbox.voice.Scheduler` that moves only in :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[_Timer] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(when, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        return timer

    @property
    def deadlines(self) -> list[float]:
        """When the timers still armed fire, earliest first."""
        return sorted(t.when for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time on, firing each timer that comes due at its own time."""
        end = self.now + seconds
        while self._timers and self._timers[0].when <= end:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = max(self.now, timer.when)
                timer.callback()
        self.now = end


class Wire:
    """An in-memory link that keeps what the server sends, for a test to read."""

    def __init__(self, *, in_process: bool) -> None:
        self.in_process = in_process
        self.frames: collections.deque[str | bytes] = collections.deque()
        self.close_code: int | None = None
        self.closed = False

    def send(self, frame: str | bytes) -> None:
        if not self.closed:
            self.frames.append(frame)

    def close(self, code: int | None, reason: str = "") -> None:
        self.closed, self.close_code = True, code


class Peer:
    """One client: its link, its connection, its DAVE client, what it received."""

    def __init__(self, server: VoiceServer, user_id: str, *, in_process: bool = True) -> None:
        self.server, self.user_id = server, user_id
        self.wire = Wire(in_process=in_process)
        self.conn: VoiceConnection = server.open(self.wire)
        self.dave = DaveClient(user_id, CHANNEL)
        self.received: list[gw.GatewayMessage] = []
        self.withhold: set[type[gw.GatewayMessage]] = set()

    def send(self, message: gw.GatewayMessage) -> None:
        if type(message) not in self.withhold:
            self.server.receive(self.conn, gw.serialize(message))

    def join(self) -> None:
        self.send(
            gw.Identify(
                server_id=GUILD,
                user_id=self.user_id,
                session_id=f"session-{self.user_id}",
                token=self.server.universal_token,
                max_dave_protocol_version=1,
            )
        )
        self.send(gw.SelectProtocol("127.0.0.1", 50_000, AES))

    def pump(self) -> bool:
        """Handle what arrived (DAVE replies go back at once); whether anything did."""
        moved = False
        while self.wire.frames:
            moved = True
            message = gw.parse(self.wire.frames.popleft(), from_server=True).message
            self.received.append(message)
            for reply in self.dave.receive(message):
                self.send(reply)
        return moved

    def of(self, kind: type[gw.GatewayMessage]) -> list[gw.GatewayMessage]:
        return [m for m in self.received if isinstance(m, kind)]


def settle(*peers: Peer) -> None:
    while any([p.pump() for p in peers]):
        pass


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def server(clock: ManualClock, **options: object) -> VoiceServer:
    changes = {"heartbeat_interval": 1000.0, "transition_timeout": 2.0, **options}
    return VoiceServer(
        SandboxOptions(**changes),  # type: ignore[arg-type]
        guild_id=GUILD,
        default_channel_id=CHANNEL,
        media_ip="127.0.0.1",
        clock=clock,
        injector=FaultInjector(Faults()),
        counters=collections.Counter(),
        on_change=lambda: None,
        on_voice_state=lambda p, joined: None,
    )


def test_a_silent_connection_is_closed_with_4009_two_intervals_after_its_last_beat(
    clock: ManualClock,
) -> None:
    vs = server(clock)
    peer = Peer(vs, "1001", in_process=False)
    peer.join()
    assert clock.deadlines == [2.0]  # two 1 s intervals after Hello
    clock.advance(1.5)
    peer.send(gw.Heartbeat(nonce=1, seq_ack=0))
    assert clock.deadlines == [3.5]  # the beat moved the deadline
    clock.advance(1.75)
    assert not peer.wire.closed
    clock.advance(0.25)
    assert peer.wire.close_code == 4009
    assert vs.counters["heartbeat_timeouts"] == 1
    assert vs.participant("1001") is None  # 4009 is not resumable: the session ended
    # In-process peers (the simulated speakers) need no heartbeats.
    speaker = Peer(vs, "1002")
    speaker.join()
    clock.advance(60.0)
    assert not speaker.wire.closed and clock.deadlines == []


def test_a_detached_session_lives_for_the_resume_window(clock: ManualClock) -> None:
    vs = server(clock, resume_window=5.0, dave=False)
    alice, bob = Peer(vs, "1001"), Peer(vs, "1002")
    alice.join()
    bob.join()
    settle(alice, bob)
    vs.closed(bob.conn, 1006)  # bob's WebSocket dropped
    clock.advance(4.75)
    assert vs.participant("1002") is not None
    # Resumed in time: the expiry is cancelled.
    again = Peer(vs, "1002")
    again.send(gw.Resume(server_id=GUILD, session_id="session-1002", token=vs.universal_token))
    settle(again)
    assert again.of(gw.Resumed) and clock.deadlines == []
    vs.closed(again.conn, 1006)
    assert clock.deadlines == [9.75]  # a new window from the new drop
    clock.advance(4.75)
    settle(alice)
    assert not alice.of(gw.ClientDisconnect)
    clock.advance(0.25)
    settle(alice)
    assert [m.user_id for m in alice.of(gw.ClientDisconnect)] == ["1002"]  # type: ignore[attr-defined]
    assert vs.counters["sessions_expired"] == 1 and vs.participant("1002") is None


def test_a_dave_transition_times_out_at_its_deadline_without_polling(clock: ManualClock) -> None:
    vs = server(clock, transition_timeout=2.0)
    alice, bob = Peer(vs, "1001"), Peer(vs, "1002")
    bob.withhold.add(gw.DaveTransitionReady)  # bob never sends op 23
    alice.join()
    settle(alice)
    assert clock.deadlines == []  # nothing to time out: no timer at all
    clock.advance(1.0)
    bob.join()
    settle(alice, bob)
    service = vs.calls[CHANNEL].dave
    assert service is not None and service.epoch == 1
    assert service.pending_transitions == (1,)
    assert clock.deadlines == [3.0]  # one timer, at the transition's deadline
    clock.advance(1.75)
    settle(alice, bob)
    assert service.pending_transitions == (1,) and not alice.of(gw.DaveExecuteTransition)
    clock.advance(0.25)
    settle(alice, bob)
    assert service.pending_transitions == () and service.stats.transition_timeouts == 1
    assert list(alice.dave.executed) == list(bob.dave.executed) == [1]
    assert alice.dave.ready and bob.dave.ready and alice.dave.epoch == bob.dave.epoch == 1
    assert clock.deadlines == []


def test_a_transition_everyone_is_ready_for_cancels_its_timer(clock: ManualClock) -> None:
    vs = server(clock)
    alice, bob = Peer(vs, "1001"), Peer(vs, "1002")
    alice.join()
    bob.join()
    settle(alice, bob)
    service = vs.calls[CHANNEL].dave
    assert service is not None and service.stats.transition_timeouts == 0
    assert list(alice.dave.executed) == [1] and clock.deadlines == []
    vs.shutdown()
    assert clock.deadlines == []

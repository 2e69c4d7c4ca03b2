"""DAVE end to end through the sandbox: raw clients with their own davey sessions.

Each client runs DAVE as discord.js does (rawclient.py); the sandbox's delivery
service must route so that they reach the same epoch and decrypt each other's
frames after the relay re-encrypted them (protocol.md §5.7, §7.4, §10).
"""

from __future__ import annotations

import os

import pytest

from rxvoice.protocol import gateway as gw
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.testing.sandbox import Sandbox
from tests.sandbox.rawclient import RawVoiceClient, harness


async def settled(sb: Sandbox, clients: list[RawVoiceClient], epoch: int) -> None:
    """Wait until every client and the server are at ``epoch`` with no transition pending."""
    service = sb.dave()
    assert service is not None
    await sb.wait_for(lambda: service.epoch == epoch and not service.pending_transitions)
    for c in clients:
        await c.wait_until(lambda c=c: c.epoch == epoch and c.dave_ready and not c.pending)
    assert not any(c.dave_errors for c in clients), [c.dave_errors for c in clients]


async def announce(sender: RawVoiceClient, receivers: list[RawVoiceClient]) -> None:
    """op 5 from ``sender``; wait until every receiver maps its SSRC."""
    await sender.speak(1)
    for r in receivers:
        await r.wait_until(lambda r=r: r.ssrc_user.get(sender.ssrc) == sender.user_id)


async def exchange(
    sender: RawVoiceClient, receivers: list[RawVoiceClient], frames: int = 3
) -> None:
    """``sender``'s DAVE frames reach every receiver through the relay and decrypt exactly."""
    assert sender.rtp is not None
    sent: dict[int, bytes] = {}
    for i in range(frames):
        opus = os.urandom(30 + i)
        sent[sender.rtp.sequence] = opus
        assert is_dave_frame(sender.send_opus(opus))
    for receiver in receivers:
        got: dict[int, bytes] = {}
        while len(got) < frames:
            _, packet = await receiver.recv_rtp()
            header = packet.header
            if header.ssrc == sender.ssrc and header.sequence in sent:
                assert is_dave_frame(packet.payload)  # opaque through the SFU
                got[header.sequence] = receiver.dave_decrypt(header.ssrc, packet.payload)
        assert got == sent


async def everyone_hears_everyone(clients: list[RawVoiceClient]) -> None:
    for sender in clients:
        await exchange(sender, [r for r in clients if r is not sender])


async def test_two_members_share_an_epoch_and_decrypt_each_other() -> None:
    async with harness() as h:
        a = await h.joined()
        assert a.of(gw.SessionDescription)[0].dave_protocol_version == 1
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        for c in (a, b):
            kinds = [type(e.message) for e in c.messages]
            # §11.5: op 25 only after op 4.
            assert kinds.index(gw.SessionDescription) < kinds.index(gw.DaveMlsExternalSender)
            # op 23 only for non-zero transition ids (§7.5).
            assert (23, 0) not in c.sent_ops
        assert a.dave is not None and b.dave is not None
        assert a.dave.voice_privacy_code == b.dave.voice_privacy_code
        await announce(a, [b])
        await announce(b, [a])
        await everyone_hears_everyone([a, b])
        service = h.sb.dave()
        assert service is not None and set(service.members) == {a.user_id, b.user_id}


async def test_three_members_and_one_leaves_mid_call() -> None:
    async with harness() as h:
        a = await h.joined()
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        c = await h.joined()
        await settled(h.sb, [a, b, c], 2)
        for x in (a, b, c):
            await announce(x, [y for y in (a, b, c) if y is not x])
        await everyone_hears_everyone([a, b, c])
        # b leaves in the middle: a and c get op 13, a Remove, commit, a new epoch.
        # a keeps talking through the transition; c decrypts every frame (old keys linger).
        h.sb.leave(b.user_id)
        await exchange(a, [c])
        assert await b.wait_closed() == 4014
        await settled(h.sb, [a, c], 3)
        assert a.dave is not None and sorted(a.dave.get_user_ids()) == sorted(
            [a.user_id, c.user_id]
        )
        await everyone_hears_everyone([a, c])


async def test_a_newcomer_reuses_the_freed_leaf() -> None:
    async with harness() as h:
        a = await h.joined()
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        c = await h.joined()
        await settled(h.sb, [a, b, c], 2)
        leaf_of_b = b.dave.own_leaf_index if b.dave else None
        h.sb.leave(b.user_id)
        await settled(h.sb, [a, c], 3)
        d = await h.joined()
        await settled(h.sb, [a, c, d], 4)
        assert d.dave is not None and d.dave.own_leaf_index == leaf_of_b
        service = h.sb.dave()
        assert service is not None and service.leaf_of(d.user_id) == leaf_of_b
        for x in (a, c, d):
            await announce(x, [y for y in (a, c, d) if y is not x])
        await everyone_hears_everyone([a, c, d])


@pytest.mark.parametrize("victim", ["newcomer", "member"])
async def test_invalid_commit_recovery_with_op31(victim: str) -> None:
    async with harness() as h:
        a = await h.joined()
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        c = await h.joined()
        # The next op 30 (newcomer) or op 29 (member) this client gets is corrupted.
        target = c if victim == "newcomer" else a
        assert h.sb.inject_invalid_commit(target.user_id)
        await target.wait_until(lambda: any(op == 31 for op, _ in target.sent_ops))
        target.dave_errors.clear()  # expected: the corrupted message was refused
        # The server removes and re-adds the client; everyone ends up together.
        service = h.sb.dave()
        assert service is not None
        await h.sb.wait_for(lambda: service.stats.invalid_reports == 1)
        everyone = {a.user_id, b.user_id, c.user_id}
        await h.sb.wait_for(
            lambda: (
                set(service.members) == everyone
                and not service.pending
                and not service.pending_transitions
            )
        )
        await settled(h.sb, [a, b, c], service.epoch)
        assert service.stats.faults_injected == 1
        for x in (a, b, c):
            await announce(x, [y for y in (a, b, c) if y is not x])
        await everyone_hears_everyone([a, b, c])


async def test_sole_member_reset_and_regroup() -> None:
    async with harness() as h:
        a = await h.joined()
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        h.sb.leave(b.user_id)
        # Alone: op 24 epoch 1, then op 21 tid 0; a sends a fresh key package.
        epoch = await a.next(gw.DavePrepareEpoch)
        assert (epoch.protocol_version, epoch.epoch) == (1, 1)
        prepare = await a.next(gw.DavePrepareTransition)
        assert (prepare.protocol_version, prepare.transition_id) == (1, 0)
        await a.wait_until(lambda: a.sent_ops.count((26, None)) == 2)
        assert not a.dave_ready
        c = await h.joined()
        await settled(h.sb, [a, c], 1)
        await announce(a, [c])
        await exchange(a, [c])


async def test_downgrade_and_upgrade_with_a_non_dave_client() -> None:
    async with harness() as h:
        a = await h.joined()
        b = await h.joined()
        await settled(h.sb, [a, b], 1)
        legacy = await h.joined(max_dave=0)
        assert legacy.of(gw.SessionDescription)[0].dave_protocol_version == 0
        # Downgrade: op 21 {pv 0, tid} → op 23 → op 22; senders stop DAVE-framing.
        for x in (a, b):
            prepare = await x.next(gw.DavePrepareTransition)
            assert prepare.protocol_version == 0 and prepare.transition_id != 0
            await x.wait_until(lambda x=x: x.protocol_version == 0 and not x.pending)
        await announce(a, [legacy, b])
        assert a.send_opus(b"plain now") == b"plain now"
        _, packet = await legacy.recv_rtp()
        assert packet.payload == b"plain now"
        # Upgrade when the last non-DAVE client leaves: op 24 {pv 1, epoch 1}, new group.
        h.sb.leave(legacy.user_id)
        for x in (a, b):
            epoch = await x.next(gw.DavePrepareEpoch)
            assert (epoch.protocol_version, epoch.epoch) == (1, 1)
        await settled(h.sb, [a, b], 1)
        await announce(b, [a])
        await everyone_hears_everyone([a, b])


async def test_transition_times_out_without_op23() -> None:
    async with harness(transition_timeout=0.2) as h:
        a = await h.joined()
        lazy = await h.joined(suppress_ops=frozenset({23}))
        # lazy never sends op 23; the tick timer executes the transition anyway.
        await settled(h.sb, [a, lazy], 1)
        service = h.sb.dave()
        assert service is not None and service.stats.transition_timeouts == 1
        assert (23, 1) not in lazy.sent_ops

"""Simulated speakers: real DAVE clients inside the sandbox, sending real Opus."""

from __future__ import annotations

import asyncio
import itertools
import os

import numpy as np

from rxvoice.audio.opus import SAMPLE_RATE, OpusDecoder
from rxvoice.protocol import gateway as gw
from rxvoice.protocol.daveframe import is_dave_frame
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.testing.sandbox import Faults, Sandbox, SentFrame, Speaker
from rxvoice.testing.sandbox.speakers import TONE_LOOP, EncodedTone
from tests.sandbox.rawclient import RawVoiceClient, harness


def dominant_frequency(packets: list[bytes]) -> float:
    decoder = OpusDecoder()
    pcm = np.concatenate([decoder.decode(p) for p in packets])[:, 0].astype(np.float64)
    pcm = pcm[960 * 2 :]  # skip the encoder's first frames
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])


async def settled(sb: Sandbox, speakers: list[Speaker], listener: RawVoiceClient) -> None:
    service = sb.dave()
    assert service is not None
    everyone = {s.user_id for s in speakers} | {listener.user_id}
    await sb.wait_for(lambda: set(service.members) == everyone and not service.pending_transitions)
    await sb.wait_for(lambda: all(s.dave_ready and s.epoch == service.epoch for s in speakers))
    await listener.wait_until(lambda: listener.dave_ready and listener.epoch == service.epoch)


async def test_speakers_audio_arrives_bit_exact_and_recognisable() -> None:
    async with harness(rtcp_interval=10) as h:
        sb = h.sb
        speakers = [await sb.add_speaker(talk=False) for _ in range(2)]
        assert speakers[0].frequency != speakers[1].frequency
        listener = await h.joined()
        # The speakers are in the roster like anyone: op 11 lists them.
        assert set((await listener.next(gw.ClientsConnect)).user_ids) == {
            s.user_id for s in speakers
        }
        await settled(sb, speakers, listener)

        frames = 25

        async def script(s: Speaker) -> None:
            await s.talk(frames)
            await s.pause()

        await asyncio.gather(*(script(s) for s in speakers))
        by_ssrc = {s.ssrc: s for s in speakers}
        received: dict[int, dict[int, bytes]] = {s.ssrc: {} for s in speakers}
        while any(len(r) < frames + 5 for r in received.values()):
            _, packet = await listener.recv_rtp()
            ssrc, seq = packet.header.ssrc, packet.header.sequence
            if ssrc not in by_ssrc:
                continue
            payload = packet.payload
            if payload == SILENCE_FRAME:
                received[ssrc][seq] = payload  # silence is never DAVE-encrypted
            else:
                assert is_dave_frame(payload)
                received[ssrc][seq] = listener.dave_decrypt(ssrc, payload)
        for s in speakers:
            sent = {f.sequence: f.opus for f in s.sent}
            assert received[s.ssrc] == sent  # bit-exact, every frame
            assert all(f.dave for f in s.sent if f.opus != SILENCE_FRAME)
            assert [f.opus for f in list(s.sent)[-5:]] == [SILENCE_FRAME] * 5
            voiced = [f.opus for f in s.sent if f.opus != SILENCE_FRAME]
            assert abs(dominant_frequency(voiced) - s.frequency) < 5

        # op 5 on and off, relayed with each speaker's ssrc and user id.
        def states() -> list[tuple[str | None, int]]:
            return [(m.user_id, m.speaking) for m in listener.of(gw.Speaking)]

        for s in speakers:
            await listener.wait_until(lambda s=s: (s.user_id, 0) in states())
            assert (s.user_id, 1) in states()

        # Leaving: op 13 and a new epoch without the speaker.
        await sb.remove_speaker(speakers[0])
        assert (await listener.next(gw.ClientDisconnect)).user_id == speakers[0].user_id
        await settled(sb, speakers[1:], listener)


async def test_default_script_without_dave_and_churn() -> None:
    async with harness(dave=False, speakers=2) as h:
        sb = h.sb
        listener = await h.joined()
        heard: set[str] = set()
        while len(heard) < 2:
            _, packet = await listener.recv_rtp()
            user = listener.ssrc_user.get(packet.header.ssrc)
            if user is not None and packet.payload != SILENCE_FRAME:
                assert not is_dave_frame(packet.payload)
                OpusDecoder().decode(packet.payload)  # real Opus
                heard.add(user)
        assert heard == {s.user_id for s in sb.speakers}
        # Churn: speakers join and leave at once; the roster ends where it started.
        before = sb.roster()
        await sb.churn(3)
        assert sb.roster() == before
        assert sb.counters["churn_cycles"] == 3
        await listener.wait_until(lambda: len(listener.of(gw.ClientDisconnect)) == 3)


async def test_speaker_resumes_after_a_resumable_close() -> None:
    async with Sandbox(dave=False) as sb:
        speaker = await sb.add_speaker(talk=False)
        assert sb.force_close(speaker.user_id, 4015)
        await sb.wait_for(lambda: sb.counters.get("resumed", 0) == 1)
        assert sb.roster() == [speaker.user_id] and not speaker.closed
        sb.force_close(speaker.user_id, 4014)
        await sb.wait_for(lambda: speaker.closed and sb.roster() == [])


async def test_dave_churn_settles_and_media_still_decrypts() -> None:
    async with harness() as h:
        sb = h.sb
        speakers = [await sb.add_speaker(talk=False) for _ in range(2)]
        listener = await h.joined()
        await settled(sb, speakers, listener)
        service = sb.dave()
        assert service is not None
        epoch = service.epoch
        await sb.churn(2)
        assert sb.counters["churn_cycles"] == 2
        # The churners came and went: the group moved on and everyone is on its epoch.
        await settled(sb, speakers, listener)
        assert service.epoch > epoch
        # One of the original speakers leaves too; the other still gets through.
        await sb.remove_speaker(speakers[0])
        await settled(sb, speakers[1:], listener)
        assert service.stats.transition_timeouts == 0 and not listener.dave_errors
        speaker = speakers[1]
        frames = 10
        await speaker.talk(frames)
        await listener.wait_until(lambda: speaker.ssrc in listener.ssrc_user)
        received: dict[int, bytes] = {}
        while len(received) < frames:
            _, packet = await listener.recv_rtp()
            assert packet.header.ssrc == speaker.ssrc
            assert is_dave_frame(packet.payload)
            received[packet.header.sequence] = listener.dave_decrypt(speaker.ssrc, packet.payload)
        assert received == {f.sequence: f.opus for f in speaker.sent}
        assert all(f.dave for f in speaker.sent)


async def test_speaker_pacing_and_rtp_steps() -> None:
    async with harness(dave=False, rtcp_interval=0) as h:
        sb = h.sb
        speaker = await sb.add_speaker(talk=False)
        listener = await h.joined()
        loop = asyncio.get_running_loop()
        frames = 25
        start = loop.time()
        await speaker.talk(frames)
        elapsed = loop.time() - start
        # 25 frames at 20 ms: 24 intervals between the first and the last, then one more.
        assert elapsed >= 0.46, elapsed
        sent = list(speaker.sent)
        assert len(sent) == frames
        for before, after in itertools.pairwise(sent):
            assert after.sequence == (before.sequence + 1) & 0xFFFF
            assert after.timestamp == (before.timestamp + 960) & 0xFFFF_FFFF
        # On the wire as recorded, and spread over the same time at the receiving end.
        for frame in sent:
            _, packet = await listener.recv_rtp()
            assert packet.header.ssrc == speaker.ssrc
            assert (packet.header.sequence, packet.header.timestamp) == (
                frame.sequence,
                frame.timestamp,
            )
            assert packet.payload == frame.opus
        times = [t for t, _ in listener.arrivals]
        # Paced, not a burst (a late first arrival under load shortens the spread).
        assert len(times) == frames and times[-1] - times[0] >= 0.3


def test_encoded_tone_replays_its_first_second() -> None:
    frames = EncodedTone(450.0)
    first = [frames[i] for i in range(TONE_LOOP)]
    assert len(set(first)) > 1  # real, evolving Opus, not one frame repeated
    assert [frames[TONE_LOOP + i] for i in range(TONE_LOOP)] == first
    assert abs(dominant_frequency(first * 2) - 450.0) < 5
    frames.close()


async def test_initial_speakers_form_one_group_and_talk_without_pauses() -> None:
    async with harness(speakers=4, continuous_speech=True) as h:
        sb = h.sb
        service = sb.dave()
        assert service is not None
        await sb.wait_for(lambda: all(s.dave_ready for s in sb.speakers))
        # Proposals were held until all four had joined: one epoch, one commit. The
        # first speaker committed; the others found their Welcome queued and did not.
        assert service.epoch == 1
        assert (service.stats.commits_received, service.stats.commits_accepted) == (1, 1)

        relayed: list[tuple[str, int, int]] = []
        sb.tap_relay(lambda *sent: relayed.append(sent))
        listener = await h.joined()
        await settled(sb, sb.speakers, listener)
        _, packet = await listener.recv_rtp()
        assert (listener.user_id, packet.header.ssrc, packet.header.sequence) in relayed
        # Media goes to clients only: these speakers do not listen.
        simulated = [p for p in sb.participants() if p.simulated]
        assert len(simulated) == 4 and all(p.packets_out == 0 for p in simulated)

        # Continuous speech: past the first second, no silence, no op 5 off, and
        # the first second's Opus again.
        speaker = sb.speakers[0]
        await sb.wait_for(lambda: len(speaker.sent) > TONE_LOOP + 5)
        sent = list(speaker.sent)
        assert SILENCE_FRAME not in {f.opus for f in sent}
        assert [f.opus for f in sent[TONE_LOOP:]] == [f.opus for f in sent[: len(sent) - TONE_LOOP]]
        assert all(p.speaking == 1 for p in simulated)


async def test_speakers_added_together_join_a_clients_call_in_one_commit() -> None:
    async with harness() as h:
        sb = h.sb
        listener = await h.joined()  # alone: no group yet
        speakers = await sb.add_speakers(3, talk=False)
        await settled(sb, speakers, listener)
        service = sb.dave()
        assert service is not None
        assert service.epoch == 1 and service.stats.commits_accepted == 1


async def test_a_listening_speaker_hears_everyone_bit_exact_through_dave() -> None:
    # op 5 reaches the others 0.1 s after the sender's first packets: they wait for it.
    async with harness(faults=Faults(speaking_delay=0.1), rtcp_interval=10) as h:
        sb = h.sb
        ear = await sb.add_speaker(talk=False, listen=True)
        mouth = await sb.add_speaker(talk=False)
        client = await h.joined()
        await settled(sb, [ear, mouth], client)

        await mouth.talk(10)
        await mouth.pause()
        await client.speak(1)
        await sb.wait_for(lambda: any(p.speaking for p in sb.participants() if not p.simulated))
        assert client.rtp is not None
        expected = []
        for i in range(10):
            opus = os.urandom(20 + i)
            expected.append(SentFrame(client.rtp.sequence, client.rtp.timestamp, opus, True))
            client.send_opus(opus)
        await sb.wait_for(lambda: len(ear.heard[client.user_id]) == 10)
        await sb.wait_for(lambda: len(ear.heard[mouth.user_id]) == 15)
        assert list(ear.heard[client.user_id]) == expected  # bit-exact, DAVE end to end
        assert list(ear.heard[mouth.user_id]) == list(mouth.sent)
        assert ear.heard_errors == 0 and sb.counters["delayed_speaking"] >= 2

        # Only the listener costs the relay anything; the other speaker got nothing.
        info = {p.user_id: p for p in sb.participants()}
        assert info[ear.user_id].listens and info[ear.user_id].packets_out >= 25
        assert not info[mouth.user_id].listens and info[mouth.user_id].packets_out == 0
        assert not mouth.heard

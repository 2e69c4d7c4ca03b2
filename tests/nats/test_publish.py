"""Publishing and consuming through a real nats-server: windows, drops, errors, partitions."""

from __future__ import annotations

import asyncio
import collections
import threading

import nats
import pytest
import reactivex
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from reactivex import operators as ops
from reactivex.subject import Subject

from rxvoice import nats as vnats
from rxvoice.errors import UsageError
from rxvoice.events import AudioFrame, Diagnostic
from rxvoice.nats.server import LocalNatsServer
from rxvoice.testing.packets import rtp_frame
from tests.integration.helpers import Recorder, count

GUILD, CHANNEL = "111", "222"


def frame(n: int, user: str | None = "333", ssrc: int = 42) -> AudioFrame:
    return AudioFrame.from_packet(
        rtp_frame(n, ssrc, bytes([0xFC, n % 256]) * 20), user_id=user, received_at=float(n)
    )


def publisher(js: JetStreamContext, subject: str = vnats.AUDIO_SUBJECT, **options: object):
    source: Subject[AudioFrame] = Subject()
    pub = vnats.publish(js, subject, guild_id=GUILD, channel_id=CHANNEL, **options)  # type: ignore[arg-type]
    result = Recorder(source.pipe(pub))
    return source, pub, result


async def test_frames_cross_the_broker_unchanged(js: JetStreamContext):
    source, pub, result = publisher(js)
    sent = [frame(n) for n in range(40)] + [frame(0, user=None, ssrc=7)]
    for f in sent:
        source.on_next(f)
    source.on_completed()
    await result.wait_for(lambda _: result.completed)
    # The sink emits its final counts once everything is settled.
    assert result.items == [pub.stats]
    assert (pub.stats.offered, pub.stats.acked, pub.stats.in_flight) == (41, 41, 0)

    got = Recorder(vnats.frames(js, "voice.*.*", durable="reader"))
    await got.wait_for(count(41))
    assert [(f.user_id, f.ssrc, f.frame) for f in got.items] == [
        (f.user_id, f.ssrc, f.frame) for f in sent
    ]
    info = await js.stream_info(vnats.STREAM, subjects_filter=">")
    assert info.state.subjects == {f"voice.{GUILD}.333": 40, f"voice.{GUILD}.unknown": 1}
    got.dispose()


async def test_a_full_window_drops_while_the_broker_is_away_then_recovers(
    js: JetStreamContext, nats_server: LocalNatsServer
):
    source, pub, _ = publisher(js, max_in_flight=4, ack_timeout=0.3)
    await nats_server.kill()
    for n in range(10):
        source.on_next(frame(n))  # returns at once: nothing waits for the broker
    stats = pub.stats
    assert (stats.offered, stats.dropped, stats.in_flight) == (10, 6, 4)
    await pub.drain()  # the 4 handed over are never acknowledged by a dead broker
    assert stats.timeouts + stats.errors == 4 and stats.acked == 0
    assert "not acknowledged" in pub.last_error or "publish failed" in pub.last_error

    await nats_server.start()  # same port and store: nats-py reconnects by itself
    for n in range(10, 13):
        source.on_next(frame(n))
    await pub.drain()
    assert stats.acked == 3
    assert stats.offered == stats.acked + stats.dropped + stats.errors + stats.timeouts


async def test_a_subject_no_stream_stores_is_counted_as_errors(js: JetStreamContext):
    source, pub, _ = publisher(js, "nowhere.{user_id}")
    for n in range(3):
        source.on_next(frame(n))
    await pub.drain()
    assert (pub.stats.errors, pub.stats.acked) == (3, 0)
    assert "no JetStream stream" in pub.last_error


async def test_a_frame_that_cannot_be_published_is_counted(js: JetStreamContext):
    source, pub, _ = publisher(js, "voice.{guild_id}.{user_id}")
    source.on_next(frame(0, user="3.4"))
    source.on_next(frame(1))
    await pub.drain()
    assert (pub.stats.errors, pub.stats.acked) == (1, 1)


@pytest.mark.parametrize(
    "template", ["voice.{nope}", "voice.*.{user_id}", "voice..{user_id}", "v.{user_id:>5}", "v.{"]
)
def test_bad_templates_are_usage_errors(js: JetStreamContext, template: str):
    with pytest.raises(UsageError):
        vnats.publish(js, template, guild_id=1, channel_id=2)


def test_guild_and_channel_are_needed(js: JetStreamContext):
    with pytest.raises(UsageError, match="connection="):
        vnats.publish(js, guild_id=1)
    with pytest.raises(UsageError):
        vnats.publish(js, guild_id=1, channel_id=2, max_in_flight=0)


async def test_frames_from_another_thread_are_published(js: JetStreamContext):
    source, pub, _ = publisher(js)
    thread = threading.Thread(target=lambda: [source.on_next(frame(n)) for n in range(5)])
    thread.start()
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    got = Recorder(vnats.frames(js))
    await got.wait_for(count(5))
    assert [f.sequence for f in got.items] == list(range(5))
    assert pub.stats.offered == 5
    got.dispose()


async def test_malformed_messages_are_skipped_and_counted(js: JetStreamContext):
    await js.publish("voice.1.2", b"not a frame")
    source, _pub, _ = publisher(js)
    source.on_next(frame(9))
    stats: collections.Counter[str] = collections.Counter()
    diagnostics: list[Diagnostic] = []
    got = Recorder(vnats.frames(js, stats=stats, on_diagnostic=diagnostics.append))
    await got.wait_for(count(1))
    assert [f.sequence for f in got.items] == [9]
    assert stats["malformed_message"] == 1 and stats["received"] == 1
    assert diagnostics[0].kind == "malformed_message" and "voice.1.2" in diagnostics[0].detail
    got.dispose()


async def test_partitions_keep_each_user_on_one_worker(js: JetStreamContext):
    await js.delete_stream(vnats.STREAM)
    await vnats.ensure_stream(js, vnats.stream_config(partitions=3))
    source, pub, _ = publisher(js)
    users = [str(1000 + u) for u in range(12)]
    for n in range(3):
        for u, user in enumerate(users):
            source.on_next(frame(n, user=user, ssrc=u))
    await pub.drain()
    assert pub.stats.acked == 36
    workers = reactivex.merge(
        *(
            vnats.frames(js, vnats.partition_subjects(k)).pipe(ops.map(lambda f, k=k: (k, f)))
            for k in range(3)
        )
    )
    got = Recorder(workers)
    await got.wait_for(count(36))
    got.dispose()
    owners = collections.defaultdict(set)
    for k, f in got.items:
        owners[f.user_id].add(k)
    assert set(owners) == set(users) and all(len(ks) == 1 for ks in owners.values())
    assert len({k for ks in owners.values() for k in ks}) > 1  # the load is spread


async def test_a_closed_client_drops_and_counts(nats_server: LocalNatsServer):
    nc = await nats.connect(nats_server.url)
    await nc.close()
    source, pub, _ = publisher(nc.jetstream())
    source.on_next(frame(0))
    await pub.drain()
    source.on_next(frame(1))
    assert (pub.stats.offered, pub.stats.dropped, pub.stats.in_flight) == (2, 2, 0)
    assert "stopped" in pub.last_error


async def test_a_consumer_carries_on_across_a_broker_restart(
    js: JetStreamContext, nats_server: LocalNatsServer
):
    source, pub, _ = publisher(js)
    stats: collections.Counter[str] = collections.Counter()
    got = Recorder(vnats.frames(js, durable="steady", stats=stats))
    for n in range(3):
        source.on_next(frame(n))
    await got.wait_for(count(3))
    await nats_server.restart()
    for n in range(3, 6):
        source.on_next(frame(n))
    await pub.drain()
    await got.wait_for(lambda fs: {f.sequence for f in fs} >= set(range(6)))
    assert pub.stats.acked + pub.stats.timeouts == 6
    got.dispose()


async def test_acknowledgements_are_read_as_json_not_searched_for_error(nc: NatsClient):
    # A PubAck names its stream: one called "error" once made every ack an error.
    js = nc.jetstream()
    await vnats.ensure_stream(js, vnats.stream_config("error"))
    source, pub, _ = publisher(js)
    for n in range(3):
        source.on_next(frame(n))
    await pub.drain()
    assert (pub.stats.acked, pub.stats.errors) == (3, 0)

"""Sandbox speakers → Connection → NATS → a consumer in another process → each speaker's pitch.

On the way the consumer process is killed and restarted (its durable consumer
loses nothing) and the broker is killed and restarted (the publisher drops
and counts what does not fit its window, recovers by itself, and the
connection's own stream never stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from reactivex.subject import Subject

from rxvoice import nats as vnats
from rxvoice.nats.server import LocalNatsServer
from rxvoice.testing.sandbox import Sandbox, Speaker
from tests.integration.conftest import Join
from tests.integration.helpers import Recorder, count, hear_everything

ROOT = Path(__file__).parents[2]
ACK_WAIT = 1.0  # seconds before a frame the killed consumer held is delivered again


class ConsumerProcess:
    """``python -m tests.nats.consumer``: reports each frame it gets, then pitches."""

    def __init__(self, process: asyncio.subprocess.Process, seen: Subject[tuple[str, int]]):
        self.process = process
        self.report: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read(seen))

    async def _read(self, seen: Subject[tuple[str, int]]) -> None:
        assert self.process.stdout is not None
        while line := (await self.process.stdout.readline()).decode():
            if line.startswith("frame "):
                _, user, sequence = line.split()
                seen.on_next((user, int(sequence)))
            elif line.startswith("{") and not self.report.done():
                self.report.set_result(json.loads(line))

    async def finish(self) -> dict[str, Any]:
        """Ask for the report; the process exits after printing it."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        report = await asyncio.wait_for(self.report, 30)
        await self.process.wait()
        return report

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        await self._reader


Start = Callable[[], Awaitable[ConsumerProcess]]


@pytest.fixture
async def consumers(
    nats_server: LocalNatsServer,
) -> AsyncIterator[tuple[Start, Recorder[tuple[str, int]]]]:
    """Start consumer processes on one durable; a Recorder of every (user, sequence) they got."""
    seen: Subject[tuple[str, int]] = Subject()
    started: list[ConsumerProcess] = []

    async def start() -> ConsumerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.nats.consumer",
            nats_server.url,
            "transcriber",
            str(ACK_WAIT),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        started.append(ConsumerProcess(process, seen))
        return started[-1]

    yield start, Recorder(seen)
    for consumer in started:
        with contextlib.suppress(ProcessLookupError):
            await consumer.kill()


async def talk(speakers: list[Speaker], frames: int) -> None:
    await asyncio.gather(*(s.talk(frames) for s in speakers))


async def test_voice_crosses_nats_to_another_process(
    sandbox: Sandbox,
    join: Join,
    nats_server: LocalNatsServer,
    js: JetStreamContext,
    consumers: tuple[Start, Recorder[tuple[str, int]]],
):
    start_consumer, seen = consumers
    speakers = [
        await sandbox.add_speaker(440.0, talk=False),
        await sandbox.add_speaker(700.0, talk=False),
    ]
    conn = await join(connect=False)
    heard = Recorder(conn.on_audio_frame)
    published = vnats.publish_connection(js, conn, max_in_flight=32, ack_timeout=1.0)
    events = Recorder(vnats.control_events(js))
    await conn.connect()
    await sandbox.wait_for(lambda: (d := sandbox.dave()) is not None and len(d.members) == 3)
    audio = published.audio.stats

    # A consumer in another process; killed once it has some of the talk.
    first = await start_consumer()
    await talk(speakers, 50)
    await seen.wait_for(count(40), timeout=30)
    await first.kill()

    # The broker goes away while the speakers talk on: the connection's stream
    # goes on, the publisher drops what does not fit its window of 32.
    await nats_server.kill()
    stop = asyncio.Event()

    async def talk_until_stopped() -> None:
        while not stop.is_set():
            await talk(speakers, 5)

    talking = asyncio.create_task(talk_until_stopped())
    at_kill = len(heard.items)
    await heard.wait_for(lambda _: audio.dropped > 0)
    emitted_while_away = len(heard.items) - at_kill
    assert emitted_while_away > 32  # the connection was never held up
    await nats_server.start()
    acked = audio.acked
    await heard.wait_for(lambda _: audio.acked > acked)  # recovered by itself
    stop.set()
    await talking

    # A new consumer process on the same durable resumes where the first stopped.
    second = await start_consumer()
    await talk(speakers, 50)
    for speaker in speakers:
        await hear_everything(heard, speaker)  # the connection itself lost nothing
    await published.drain()

    # Every frame is accounted for once.
    assert audio.offered == len(heard.items) and audio.in_flight == 0
    assert audio.offered == audio.acked + audio.dropped + audio.errors + audio.timeouts
    assert audio.dropped >= emitted_while_away - 32 > 0
    # Whatever JetStream stored reached the consumers, across the kill.
    info = await js.stream_info(vnats.STREAM, subjects_filter="voice.>")
    stored = sum(info.state.subjects.values())
    assert stored >= audio.acked > 0
    await seen.wait_for(lambda items: len(set(items)) >= stored, timeout=30)
    assert len(set(seen.items)) == stored

    report = await second.finish()
    for speaker in speakers:
        assert report["pitch"][speaker.user_id] == pytest.approx(speaker.frequency, abs=5)
        assert report["seconds"][speaker.user_id] > 0.5
    assert "malformed_message" not in report["stats"]

    # The lifecycle went to the control subject.
    users = {s.user_id for s in speakers}
    await events.wait_for(
        lambda ms: users <= {m.event.user_id for m in ms if m.type == "ssrc"}  # type: ignore[union-attr]
    )
    types = {m.type for m in events.items}
    assert {"state", "session", "dave", "join", "speaking", "ssrc"} <= types
    assert published.control.stats.acked > 0
    events.dispose()
    await published.aclose()

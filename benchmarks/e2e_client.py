"""One Python client of the end-to-end benchmark, in its own process (see bench_e2e.py).

Run: ``python benchmarks/e2e_client.py KIND USER_ID`` with the sandbox's JSON line
(what ``python -m rxvoice sandbox`` prints) on the first line of stdin. Kinds:

- ``rx-frames``: rxvoice, ``Connection.on_audio_frame`` subscribed, counting frames;
- ``rx-mix``: rxvoice, ``on_audio_frame`` through ``decode_opus()`` and ``mix()``;
- ``naive-mix``: a straightforward receiver: an asyncio datagram callback per packet,
  PyNaCl AES-GCM, ``davey`` for DAVE, ``opuslib.Decoder.decode``, a numpy mix. Its
  signalling (voice gateway, DAVE handshake) is the raw client of the sandbox tests
  (websockets + davey, no rxvoice Connection);
- ``rx-send``: rxvoice sending: ``send_opus`` in bursts, then paced ``play_opus``.

A kind ending in ``+uvloop`` (``rx-frames+uvloop``) runs the same client on uvloop's
event loop (``rxvoice[speed]``) instead of asyncio's.

The client joins, prints ``{"ready": ...}``, then answers one JSON line per
command line on stdin: ``heard`` (once frames of every listed speaker arrived),
``mark`` (process CPU and frames so far), ``latency-on`` / ``latency-off`` (record
``[ssrc, sequence, monotonic_ns]`` per emitted frame in between; the off answer
carries them), ``profile-on`` / ``profile-off`` (cProfile in between; the off
answer carries the top functions), ``send`` (rx-send only) and ``quit``. Nothing
is recorded outside a latency or profile window.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import resource
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import davey
import numpy as np
import opuslib
from nacl.bindings import crypto_aead_aes256gcm_decrypt
from nacl.exceptions import CryptoError
from reactivex import operators as ops

from rxvoice import Connection
from rxvoice import operators as vops
from rxvoice.events import AudioFrame, PcmChunk
from rxvoice.testing.sandbox.speakers import TONE_LOOP, EncodedTone
from tests.sandbox.rawclient import RawVoiceClient

Sample = tuple[int, int, int]  # ssrc, sequence, monotonic_ns at emission
SAMPLES_PER_FRAME = 960
OPUS_PAYLOAD_TYPE = 120


def cpu_seconds() -> float:
    """User + system CPU time of this whole process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Client:
    """What every kind answers to: frames counted, optional latency samples."""

    def __init__(self, info: dict[str, Any], user_id: str) -> None:
        self.info = info
        self.user_id = user_id
        self.frames = 0
        self.samples: list[Sample] | None = None
        self.heard: set[str] = set()
        self.heard_changed = asyncio.Event()

    def hear(self, user_id: str | None) -> None:
        if user_id is not None and user_id not in self.heard:
            self.heard.add(user_id)
            self.heard_changed.set()

    async def wait_heard(self, speakers: list[str]) -> dict[str, Any]:
        while not self.heard >= set(speakers):
            self.heard_changed.clear()
            await self.heard_changed.wait()
        self.all_heard()
        return {"heard": len(self.heard)}

    def all_heard(self) -> None:
        """Every speaker was heard: stop looking."""

    async def start(self) -> None:
        raise NotImplementedError

    def latency(self, on: bool) -> list[Sample]:
        raise NotImplementedError(f"{type(self).__name__} records no latency")

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"unknown command {cmd}")

    async def close(self) -> None:
        pass


class RxClient(Client):
    """An rxvoice Connection with the sandbox's voice credentials."""

    async def join(self) -> Connection:
        voice = self.info["voice"]
        self.conn = Connection(
            guild_id=self.info["guild_id"],
            channel_id=self.info["channel_id"],
            user_id=self.user_id,
            session_id=f"bench{self.user_id}",
            token=voice["token"],
            endpoint=voice["endpoint"],
            ssl=ssl.create_default_context(cafile=self.info["ca_file"]),
        )
        await self.conn.connect()
        self.hearing = self.conn.on_audio_frame.subscribe(lambda f: self.hear(f.user_id))
        return self.conn

    def all_heard(self) -> None:
        self.hearing.dispose()

    async def close(self) -> None:
        await self.conn.close()


class RxFrames(RxClient):
    async def start(self) -> None:
        conn = await self.join()
        self.counting = conn.on_audio_frame.subscribe(self.count)

    def count(self, _: AudioFrame) -> None:
        self.frames += 1

    def record(self, frame: AudioFrame) -> None:
        self.frames += 1
        self.samples.append((frame.ssrc, frame.sequence, time.monotonic_ns()))  # type: ignore[union-attr]

    def latency(self, on: bool) -> list[Sample]:
        self.counting.dispose()
        samples = self.samples or []
        self.samples = [] if on else None
        self.counting = self.conn.on_audio_frame.subscribe(self.record if on else self.count)
        return samples


class RxMix(RxClient):
    async def start(self) -> None:
        conn = await self.join()
        self.mixed = 0
        conn.on_audio_frame.pipe(
            vops.decode_opus(), ops.do_action(self.count), vops.mix()
        ).subscribe(self.play)

    def count(self, _: PcmChunk) -> None:
        self.frames += 1

    def play(self, _: PcmChunk) -> None:
        self.mixed += 1


class RxSend(RxClient):
    """Sends only; its sandbox has one silent speaker so that DAVE is on.

    Ready once joined: the benchmark waits for the DAVE group to settle before ``send``.
    """

    async def start(self) -> None:
        await self.join()
        tone = EncodedTone(440.0)
        self.opus = [tone[i] for i in range(TONE_LOOP)]
        tone.close()

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] != "send":
            return await super().command(cmd)
        frames = [self.opus[i % TONE_LOOP] for i in range(cmd["burst"])]
        bursts = []
        for _ in range(cmd["repeat"]):
            cpu = cpu_seconds()
            for frame in frames:
                await self.conn.send_opus(frame)
            bursts.append((cpu_seconds() - cpu) / len(frames) * 1e6)
            await asyncio.sleep(0.1)  # let the socket drain between bursts
        paced = frames[: cmd["paced"]]
        cpu = cpu_seconds()
        await self.conn.play_opus(paced, stop=False)
        return {"burst_us": bursts, "paced_us": (cpu_seconds() - cpu) / len(paced) * 1e6}


class NaiveMix(Client):
    """The naive receiver: everything per datagram, in the most obvious way."""

    async def start(self) -> None:
        voice = self.info["voice"]
        raw = self.raw = _NaiveRaw(
            voice["url"],
            ssl.create_default_context(cafile=self.info["ca_file"]),
            server_id=self.info["guild_id"],
            user_id=self.user_id,
            session_id=f"bench{self.user_id}",
            token=voice["token"],
            channel_id=self.info["channel_id"],
            receiver=self,
        )
        self.decoders: dict[int, opuslib.Decoder] = {}
        self.mix = np.zeros(SAMPLES_PER_FRAME * 2, dtype=np.int32)
        self.mixed = 0
        self.key: bytes | None = None
        await raw.connect()
        self.key = (await raw.handshake()).secret_key
        self.ticker = asyncio.get_running_loop().create_task(self.tick())

    async def tick(self) -> None:
        """Every 20 ms: clip the sum into int16 PCM (the mixed audio) and start afresh."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += 0.02
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self.out = np.clip(self.mix, -32768, 32767).astype(np.int16)
            self.mix[:] = 0
            self.mixed += 1

    def datagram(self, data: bytes) -> None:
        if len(data) < 12 or data[1] & 0x7F != OPUS_PAYLOAD_TYPE:
            return  # RTCP (payload types 200-204 read as 72-76 here) and others
        raw, key = self.raw, self.key
        if key is None:
            return  # media before we took the key from op 4
        # rtpsize AEAD: the header with the extension's 4-byte preamble is the AAD,
        # the nonce is the last 4 bytes (zero-padded), the tag precedes it.
        extended = data[0] & 0x10
        header_size = 12 + 4 * (data[0] & 0x0F) + (4 if extended else 0)
        nonce = data[-4:] + bytes(8)
        try:
            payload = crypto_aead_aes256gcm_decrypt(
                data[header_size:-4], data[:header_size], nonce, key
            )
        except CryptoError:
            return
        if extended:
            payload = payload[4 * int.from_bytes(data[header_size - 2 : header_size]) :]
        ssrc = int.from_bytes(data[8:12])
        user_id = raw.ssrc_user.get(ssrc)
        if user_id is None:
            return
        if payload[-2:] == b"\xfa\xfa" and raw.dave is not None:  # a DAVE frame
            try:
                payload = raw.dave.decrypt(int(user_id), davey.MediaType.audio, payload)
            except ValueError:
                return
        decoder = self.decoders.get(ssrc)
        if decoder is None:
            decoder = self.decoders[ssrc] = opuslib.Decoder(48_000, 2)
        pcm = decoder.decode(payload, SAMPLES_PER_FRAME)
        self.mix += np.frombuffer(pcm, dtype=np.int16)
        self.frames += 1
        self.hear(user_id)

    async def close(self) -> None:
        self.ticker.cancel()
        await self.raw.close()


class _NaiveRaw(RawVoiceClient):
    def __init__(self, *args: Any, receiver: NaiveMix, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver = receiver

    async def connect(self) -> None:
        # As the raw client, without websockets' keepalive pings: the benchmark
        # stops this process for a while, and a ping timeout would end the call.
        import websockets

        self.ws = await websockets.connect(
            self.url, ssl=self.ssl, max_size=1 << 22, ping_interval=None
        )
        self._tasks.append(asyncio.get_running_loop().create_task(self._read()))

    def _datagram(self, data: bytes) -> None:
        if len(data) == 74 and data[1] == 2:
            super()._datagram(data)  # IP discovery
        else:
            self.receiver.datagram(data)


KINDS: dict[str, type[Client]] = {
    "rx-frames": RxFrames,
    "rx-mix": RxMix,
    "naive-mix": NaiveMix,
    "rx-send": RxSend,
}


async def main(kind: str, user_id: str) -> None:
    kind = kind.removesuffix("+uvloop")
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    info = json.loads(await stdin.readline())
    client = KINDS[kind](info, user_id)
    await client.start()
    reply({"ready": kind})
    while line := await stdin.readline():
        cmd = json.loads(line)
        name = cmd["cmd"]
        if name == "quit":
            break
        if name == "heard":
            reply(await client.wait_heard(cmd["speakers"]))
        elif name == "mark":
            reply({"cpu": cpu_seconds(), "frames": client.frames})
        elif name in ("latency-on", "latency-off"):
            reply({"samples": client.latency(name == "latency-on")})
        elif name == "profile-on":
            profiler = cProfile.Profile()
            frames = client.frames
            profiler.enable()
            reply({})
        elif name == "profile-off":
            profiler.disable()
            reply({"frames": client.frames - frames, "top": top_functions(profiler, 30)})
        else:
            reply(await client.command(cmd))
    await client.close()


def top_functions(profiler: cProfile.Profile, count: int) -> list[list[Any]]:
    """``[calls, own seconds, cumulative seconds, function]``, by own time."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = [
        [calls, own, cumulative, f"{Path(file).name}:{line}({name})"]
        for (file, line, name), (_, calls, own, cumulative, _) in stats.items()
    ]
    return sorted(rows, key=lambda row: -row[1])[:count]


def reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1].endswith("+uvloop"):
        import uvloop

        uvloop.run(main(sys.argv[1], sys.argv[2]))
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2]))

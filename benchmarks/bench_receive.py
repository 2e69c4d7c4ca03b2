"""Benchmarks of the receive path: UDP draining, transport and DAVE decryption.

Run: ``python benchmarks/bench_receive.py [--repeat N] [--seconds S]``. Prints
microseconds per packet. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import socket
import time
import timeit
from collections.abc import Callable

from rxvoice._voice.runner import Run
from rxvoice._voice.session import Session
from rxvoice.connection import Connection
from rxvoice.protocol.crypto import EncryptionMode, RtpCrypto, TransportCipher
from rxvoice.protocol.dave import DaveManager
from rxvoice.protocol.gateway import (
    DaveMlsCommitWelcome,
    DaveMlsInvalidCommitWelcome,
    DaveMlsKeyPackage,
    DaveTransitionReady,
    GatewayMessage,
)
from rxvoice.protocol.receiver import VoiceReceiver
from rxvoice.protocol.rtp import build_header
from rxvoice.protocol.session import VoiceServerInfo
from rxvoice.secret import Secret
from rxvoice.testing.sandbox.dave import DaveDeliveryService
from rxvoice.transport.udp import UdpTransport

SPEAKERS = 99
CHANNEL = "927310423890473011"
OPUS = os.urandom(120)  # a typical 20 ms voice frame at 48 kb/s


def best_us(func: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` time of one call, in microseconds."""
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def report(name: str, us: float, note: str = "/packet") -> None:
    print(f"| {name} | {us:.1f} µs{note} |")


def bench_transport(repeat: int) -> None:
    from nacl.bindings import crypto_aead_aes256gcm_decrypt

    key = os.urandom(32)
    header = build_header(1, 2, 3)
    for mode in EncryptionMode:
        cipher = TransportCipher(mode, key)
        datagram = cipher.seal(header, OPUS, 7)
        us = best_us(lambda: cipher.open(datagram), 20000, repeat)  # noqa: B023 - run at once
        report(f"transport decrypt, {mode.value}", us)
    aes = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, key)
    datagram = aes.seal(header, OPUS, 7)
    nonce = datagram[-4:] + bytes(8)
    body, aad = datagram[12:-4], datagram[:12]
    report(
        "AES-GCM decrypt alone, PyNaCl (libsodium)",
        best_us(lambda: crypto_aead_aes256gcm_decrypt(body, aad, nonce, key), 20000, repeat),
    )
    report(
        "AES-GCM decrypt alone, cryptography",
        best_us(lambda: aes._aes.decrypt(nonce, body, aad), 20000, repeat),  # type: ignore[union-attr]
    )


def established_group(users: list[str]) -> dict[str, DaveManager]:
    """DAVE managers of ``users`` in one established group (in-process delivery service)."""
    service = DaveDeliveryService(int(CHANNEL))
    managers: dict[str, DaveManager] = {}

    def to_service(user: str, message: GatewayMessage) -> list[tuple[str, GatewayMessage]]:
        match message:
            case DaveMlsKeyPackage(key_package=kp):
                return service.key_package(user, kp, 0.0)
            case DaveMlsCommitWelcome(payload=payload):
                return service.commit_welcome(user, payload, 0.0)
            case DaveTransitionReady(transition_id=tid):
                return service.transition_ready(user, tid, 0.0)
            case DaveMlsInvalidCommitWelcome(transition_id=tid):
                return service.invalid_commit_welcome(user, tid, 0.0)
        return []

    def run(queue: list[tuple[str, GatewayMessage | None]]) -> None:
        while queue:
            user, message = queue.pop(0)
            manager = managers[user]
            if message is not None:
                manager.handle(message, 0.0)
            for up in manager.poll().send:
                queue.extend(to_service(user, up))

    for user in users:
        manager = managers[user] = DaveManager(user, CHANNEL)
        manager.add_users(users)
        out = service.join(user, dave_capable=True, now=0.0)
        manager.start(service.session_description_version(user), 0.0)
        run([(user, None), *out])
    assert all(m.ready for m in managers.values())
    return managers


def bench_dave(repeat: int) -> None:
    managers = established_group(["1001", "1002"])
    sender, receiver = managers["1001"], managers["1002"]
    frame = sender.encrypt(OPUS)
    report("DAVE encrypt (davey)", best_us(lambda: sender.encrypt(OPUS), 5000, repeat), "/frame")
    # Fresh frames each time: davey refuses replays.
    frames = [sender.encrypt(OPUS) for _ in range(5000 * repeat)]
    it = iter(frames)
    report(
        "DAVE decrypt (davey via DaveManager)",
        best_us(lambda: receiver.decrypt("1001", next(it), 0.0), 5000, repeat),
        "/frame",
    )
    assert receiver.decrypt("1001", frame, 0.0) is None  # a replay is refused


def _bad_packets() -> dict[str, list[bytes]]:
    """1,000 datagrams of each kind a hostile network sends (SSRC 1 is a real sender)."""
    rng = random.Random(5)
    key = bytes(range(32))
    cipher = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, key)
    valid = cipher.seal(build_header(7, 7 * 960, 1), OPUS, 8)
    return {
        "bad tag, unknown SSRC": [
            build_header(rng.randrange(1 << 16), 0, rng.randrange(1 << 32)) + rng.randbytes(140)
            for _ in range(1000)
        ],
        "truncated RTP": [valid[: rng.randrange(13, 31)] for _ in range(1000)],
        "replay of a real packet": [valid] * 1000,
        "random bytes": [rng.randbytes(rng.randint(1, 200)) for _ in range(1000)],
    }


def bench_bad_packets(repeat: int) -> None:
    """The receiver's cost per bad datagram, someone listening to diagnostics.

    Without and with DEBUG logging to a file (/dev/null): the per-packet log
    line is what a flood used to cost most.
    """
    key = bytes(range(32))
    cipher = TransportCipher(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, key)
    logger = logging.getLogger("rxvoice")
    for debug in (False, True):
        with open(os.devnull, "w") as sink, contextlib.ExitStack() as undo:
            if debug:
                handler = logging.StreamHandler(sink)
                logger.addHandler(handler)
                logger.setLevel(logging.DEBUG)
                undo.callback(logger.removeHandler, handler)
                undo.callback(logger.setLevel, logging.NOTSET)
            for name, batch in _bad_packets().items():
                receiver = VoiceReceiver(cipher, user_of={1: "1001"}.get)
                receiver.receive(batch[:1], 0.0)  # the real packet's first copy, for the replays

                def flood(receiver: VoiceReceiver = receiver, batch: list[bytes] = batch) -> None:
                    receiver.receive(batch, 0.5)

                us = best_us(flood, 1, repeat * 4) / len(batch)
                report(f"bad packet: {name}{' (DEBUG log)' if debug else ''}", us)


# One at a time, each join makes every member build a commit (O(N²) commits of O(N)
# work: minutes for 99); the cost here is per packet, and bench_e2e.py runs 99.
DAVE_SPEAKERS = 12
DAVE_SETTLE = 10.5  # seconds: see _receive_path_us


def _attach_session(conn: Connection, rtp: RtpCrypto, dave: DaveManager) -> Session:
    """Give ``conn`` a running voice session with these keys, without any server."""
    run = conn._run = Run(conn)
    info = VoiceServerInfo(
        guild_id=conn.guild_id,
        channel_id=conn.channel_id,
        user_id="1000",
        session_id="bench",
        token=Secret("bench"),
        endpoint="127.0.0.1:1",
    )
    session = run.session = Session(conn, run, info)
    session.begin_media(rtp, dave)
    return session


async def _receive_path_us(repeat: int) -> float:
    """Connection._on_datagrams on bursts of DAVE packets (no sockets), per packet.

    Everything a packet goes through: classify, transport and DAVE decryption,
    SSRC attribution, the AudioFrame, the jitter buffer, the emission on
    ``on_audio_frame`` (``on_raw_audio_frame`` has no subscriber: nothing is built).
    """
    users = [str(2000 + i) for i in range(DAVE_SPEAKERS)]
    managers = established_group(["1000", *users])
    key = os.urandom(32)
    conn = Connection(guild_id="1", channel_id=CHANNEL, user_id="1000")
    rtp = RtpCrypto(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, key, ssrc=1)
    session = _attach_session(conn, rtp, managers["1000"])
    senders = []
    for i, user in enumerate(users):
        session.receiver.map(10 + i, user, 0.0)
        senders.append(
            (managers[user], RtpCrypto(EncryptionMode.AEAD_AES256_GCM_RTPSIZE, key, 10 + i))
        )
    bursts = [
        [rtp.seal_opus(manager.encrypt(OPUS)) for manager, rtp in senders]
        for _ in range(100 * repeat + 1)
    ]
    # Each sender's first frame derives its key ratchet (~60 µs): warm up. And
    # davey keeps a sender's decryptor of each transition for 10 s after it
    # (for frames in flight), trying each in turn: a member who joined before
    # the 11 others costs ~5 µs a frame until then, 1.2 µs once the call settled.
    conn._on_datagrams(bursts.pop(0))
    await asyncio.sleep(DAVE_SETTLE)
    conn._on_datagrams(bursts.pop(0))  # the expired decryptors are dropped here
    frames = 0

    def count(_: object) -> None:
        nonlocal frames
        frames += 1

    conn.on_audio_frame.subscribe(count)
    # Best of chunks of 20 bursts, like the other rows' best of runs (DAVE
    # frames cannot be replayed, so each chunk has its own).
    best = float("inf")
    for start in range(0, len(bursts), 20):
        chunk = bursts[start : start + 20]
        began = time.perf_counter()
        for burst in chunk:
            conn._on_datagrams(burst)
        best = min(best, (time.perf_counter() - began) / (len(chunk) * DAVE_SPEAKERS))
    assert frames == DAVE_SPEAKERS * len(bursts), frames
    conn.force_close()
    return best * 1e6


def _sender(port: int, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    """Sends bursts of 99 datagrams every 20 ms, as an SFU relaying 99 speakers does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = build_header(1, 2, 3) + os.urandom(140)
    ready.wait()
    deadline = time.monotonic() + seconds
    tick = time.monotonic()
    while time.monotonic() < deadline:
        for _ in range(SPEAKERS):
            sock.sendto(payload, ("127.0.0.1", port))
        tick += 0.020
        time.sleep(max(0.0, tick - time.monotonic()))
    sock.close()


class _PerDatagram(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.count = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.count += 1


async def _udp_us(batch: bool, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    received = 0
    if batch:

        def on_batch(datagrams: list[bytes]) -> None:
            nonlocal received
            received += len(datagrams)

        udp = UdpTransport(on_batch)
        # Bind (not connect) to the port the sender targets; drain with the transport's reader.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
        udp._sock, udp._loop = sock, loop
        loop.add_reader(sock.fileno(), udp._read_ready)
        close: Callable[[], None] = udp.close
    else:
        transport, protocol = await loop.create_datagram_endpoint(
            _PerDatagram, local_addr=("127.0.0.1", port)
        )
        close = transport.close
    ready = multiprocessing.Event()
    proc = multiprocessing.Process(target=_sender, args=(port, seconds, ready))
    proc.start()
    cpu = time.process_time()
    ready.set()
    await loop.run_in_executor(None, proc.join)
    cpu = time.process_time() - cpu
    if not batch:
        received = protocol.count
    close()
    return cpu / max(received, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print("| receive path | time |")
    print("|---|---|")
    bench_transport(args.repeat)
    bench_dave(args.repeat)
    report(
        f"Connection receive path, DAVE ({DAVE_SPEAKERS} speakers; both decryptions, jitter, emit)",
        asyncio.run(_receive_path_us(args.repeat)),
    )
    bench_bad_packets(args.repeat)
    for batch in (False, True):
        name = "UdpTransport batch drain" if batch else "asyncio DatagramProtocol"
        us = asyncio.run(_udp_us(batch, args.seconds))
        report(f"UDP receive CPU, {SPEAKERS} speakers' bursts, {name}", us)


if __name__ == "__main__":
    main()

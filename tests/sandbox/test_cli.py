"""``python -m rxvoice sandbox``: one JSON line, a working voice token, a clean exit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys

import pytest

from rxvoice.protocol import gateway as gw
from tests.sandbox.rawclient import RawVoiceClient


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _free_port_pair() -> int:
    """A port P with P (TCP) and P+1 (TCP and UDP) free right now, as ``--port`` needs."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for kind, p in (
                    (socket.SOCK_STREAM, port),
                    (socket.SOCK_STREAM, port + 1),
                    (socket.SOCK_DGRAM, port + 1),
                ):
                    s = stack.enter_context(socket.socket(socket.AF_INET, kind))
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _client(line: dict, **options: object) -> RawVoiceClient:
    endpoint = line["voice"]["endpoint"]
    kwargs: dict = {
        "server_id": line["guild_id"],
        "user_id": "123456789012345678",
        "session_id": "any-session",
        "token": line["voice"]["token"],
        "channel_id": line["channel_id"],
    }
    kwargs.update(options)
    return RawVoiceClient(
        f"wss://{endpoint}/?v=8", ssl.create_default_context(cafile=line["ca_file"]), **kwargs
    )


@pytest.mark.parametrize(
    ("flags", "stop"),
    [
        pytest.param((), signal.SIGTERM, id="default-sigterm"),
        pytest.param((), signal.SIGINT, id="default-sigint"),
        pytest.param(("--require-dave",), signal.SIGTERM, id="require-dave"),
        pytest.param(("--no-dave",), signal.SIGINT, id="no-dave"),
        pytest.param(("--port",), signal.SIGTERM, id="fixed-port"),
        pytest.param(("--continuous",), signal.SIGTERM, id="continuous"),
    ],
)
async def test_cli_prints_one_json_line_and_exits_cleanly(
    flags: tuple[str, ...], stop: signal.Signals
) -> None:
    args = list(flags)
    port = 0
    if "--port" in args:
        port = _free_port_pair()
        args.append(str(port))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rxvoice",
        "sandbox",
        "--speakers",
        "1",
        "--loss",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    line: dict = {}
    try:
        assert process.stdout is not None
        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert line["gateway_url"].startswith("wss://127.0.0.1:")
        assert line["gateway_url"].endswith("/?v=10&encoding=json")
        for key in ("bot_token", "guild_id", "channel_id", "ca_file"):
            assert line[key]
        endpoint = line["voice"]["endpoint"]
        assert "://" not in endpoint and endpoint.startswith("127.0.0.1:")
        assert line["voice"]["url"] == f"wss://{endpoint}/?v=8"
        assert _exists(line["ca_file"])
        assert (line["dave"], line["require_dave"]) == (
            "--no-dave" not in flags,
            "--require-dave" in flags,
        )
        if port:
            assert line["gateway_url"] == f"wss://127.0.0.1:{port}/?v=10&encoding=json"
            assert endpoint == f"127.0.0.1:{port + 1}"

        if "--require-dave" in flags:
            legacy = _client(line, user_id="123456789012345679", max_dave=0)
            await legacy.connect()
            await legacy.send(legacy.identify_message())
            assert await legacy.wait_closed() == 4017

        # The line alone is enough: the printed token works for any user and session.
        client = _client(line)
        await client.connect()
        description = await client.handshake()
        assert description.dave_protocol_version == (0 if "--no-dave" in flags else 1)
        assert (await client.next(gw.ClientsConnect)).user_ids == tuple(line["speakers"])
        if port:
            ready = client.of(gw.Ready)[0]
            assert (ready.ip, ready.port) == ("127.0.0.1", port + 1)  # the relay shares PORT+1
        await client.close()
    finally:
        if process.returncode is None:
            process.send_signal(stop)
        rest, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, errors.decode()
    assert rest == b""  # exactly one line on stdout
    assert not _exists(line["ca_file"])  # temporary files removed

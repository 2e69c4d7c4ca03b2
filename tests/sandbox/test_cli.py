"""``python -m rxvoice sandbox``: one JSON line, a working voice token, a clean exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys

from rxvoice.protocol import gateway as gw
from tests.sandbox.rawclient import RawVoiceClient


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def test_cli_prints_one_json_line_and_exits_cleanly_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rxvoice",
        "sandbox",
        "--speakers",
        "1",
        "--loss",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        assert line["gateway_url"].startswith("wss://127.0.0.1:")
        assert line["gateway_url"].endswith("/?v=10&encoding=json")
        for key in ("bot_token", "guild_id", "channel_id", "ca_file"):
            assert line[key]
        endpoint = line["voice"]["endpoint"]
        assert "://" not in endpoint and endpoint.startswith("127.0.0.1:")
        assert _exists(line["ca_file"])

        # The line alone is enough: the printed token works for any user and session.
        client = RawVoiceClient(
            f"wss://{endpoint}/?v=8",
            ssl.create_default_context(cafile=line["ca_file"]),
            server_id=line["guild_id"],
            user_id="123456789012345678",
            session_id="any-session",
            token=line["voice"]["token"],
            channel_id=line["channel_id"],
        )
        await client.connect()
        await client.handshake()
        assert (await client.next(gw.ClientsConnect)).user_ids == tuple(line["speakers"])
        await client.close()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest, errors = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, errors.decode()
    assert rest == b""  # exactly one line on stdout
    assert not _exists(line["ca_file"])  # temporary files removed

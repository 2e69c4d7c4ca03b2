"""The voice/main gateway WebSocket transport: what its frames logger shows."""

from __future__ import annotations

import logging

import pytest
from websockets.frames import Frame, Opcode

from rxvoice.protocol import gateway as gw
from rxvoice.transport.websocket import FRAMES_LOGGER, redact

SECRET = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.Gabcde.secret-part-of-the-token"


@pytest.mark.parametrize(
    "frame",
    [
        # The main gateway's Identify and Resume (json.dumps spacing).
        f'{{"op": 2, "d": {{"token": "{SECRET}", "intents": 129}}}}',
        f'{{"op": 6, "d": {{"token": "{SECRET}", "session_id": "s", "seq": 4}}}}',
        # The voice gateway's Identify, Resume and Session Description.
        str(gw.serialize(gw.Identify("1", "2", "s", SECRET, max_dave_protocol_version=1))),
        str(gw.serialize(gw.Resume("1", "s", SECRET, seq_ack=3))),
        str(gw.serialize(gw.SessionDescription("aead_aes256_gcm_rtpsize", bytes(range(32))))),
        # Cut short (a fragment), odd keys, other value types.
        f'{{"op": 2, "d": {{"token": "{SECRET[:30]}',
        f'{{"access_Token": "{SECRET}", "client_secret": 123456789012}}',
    ],
)
def test_every_token_and_secret_value_is_redacted(frame: str) -> None:
    shown = redact(frame.encode()).decode()
    assert "<redacted>" in shown
    assert SECRET[:8] not in shown and SECRET[-8:] not in shown
    assert "0,1,2,3,4,5" not in shown and "123456789012" not in shown


def test_frames_without_secrets_are_left_alone() -> None:
    frame = str(gw.serialize(gw.Speaking(speaking=1, ssrc=7, delay=0))).encode()
    assert redact(frame) == frame


def test_the_frames_logger_redacts_before_websockets_elides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # websockets logs "> %s" with the Frame; it shows the start and the end.
    caplog.set_level(logging.DEBUG, logger=FRAMES_LOGGER.name)
    data = f'{{"op": 2, "d": {{"token": "{SECRET}", "x": "{"y" * 300}"}}}}'.encode()
    FRAMES_LOGGER.debug("> %s", Frame(Opcode.TEXT, data))
    [record] = caplog.records
    assert "<redacted>" in record.getMessage()
    assert SECRET[:8] not in caplog.text

"""Voice gateway messages: exact wire examples, round trips and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import MalformedMessage, UsageError
from rxvoice.protocol.gateway import (
    BINARY_OPCODES,
    JSON_OPCODES,
    MAX_FRAME_SIZE,
    ClientDisconnect,
    ClientFlags,
    ClientPlatform,
    ClientsConnect,
    DaveExecuteTransition,
    DaveMlsAnnounceCommitTransition,
    DaveMlsCommitWelcome,
    DaveMlsExternalSender,
    DaveMlsInvalidCommitWelcome,
    DaveMlsKeyPackage,
    DaveMlsProposals,
    DaveMlsWelcome,
    DavePrepareEpoch,
    DavePrepareTransition,
    DaveTransitionReady,
    Envelope,
    GatewayMessage,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Identify,
    Opcode,
    ProposalsOperation,
    Ready,
    Resume,
    Resumed,
    SelectProtocol,
    SessionDescription,
    Speaking,
    UnknownMessage,
    is_binary,
    parse,
    parse_binary,
    parse_text,
    serialize,
)
from tests.vectors import DAVE

U16 = 0xFFFF
U32 = 0xFFFF_FFFF
U64 = 0xFFFF_FFFF_FFFF_FFFF
TOKEN = "tok-XYZZY-secret"
KEY = bytes(range(100, 132))

# -- strategies ------------------------------------------------------------------------

u16 = st.integers(0, U16)
u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
seq_acks = st.none() | st.integers(-1, U64)
snowflakes = u64.map(str)
texts = st.text(max_size=40)
ips = st.ip_addresses().map(str)
blobs = st.binary(max_size=200)
positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)

json_messages: st.SearchStrategy[GatewayMessage] = st.one_of(
    st.builds(Identify, snowflakes, snowflakes, texts, texts, u16),
    st.builds(SelectProtocol, texts, u16, texts, texts),
    st.builds(
        Ready, u32, ips, u16, st.lists(texts, max_size=5).map(tuple), st.none() | non_negative
    ),
    st.builds(Heartbeat, u64, seq_acks),
    st.builds(SessionDescription, texts, st.binary(min_size=32, max_size=32), u16),
    st.builds(Speaking, u32, u32, st.none() | snowflakes, st.none() | u32),
    st.builds(HeartbeatAck, u64),
    st.builds(Resume, snowflakes, texts, texts, seq_acks),
    st.builds(Hello, positive | st.integers(1, 10**9), st.none() | u32),
    st.just(Resumed()),
    st.builds(ClientsConnect, st.lists(snowflakes, max_size=10).map(tuple)),
    st.builds(ClientDisconnect, snowflakes),
    st.builds(ClientFlags, snowflakes, u32),
    st.builds(ClientPlatform, snowflakes, u32),
    st.builds(DavePrepareTransition, u16, u16),
    st.builds(DaveExecuteTransition, u16),
    st.builds(DaveTransitionReady, u16),
    st.builds(DavePrepareEpoch, u16, u64, st.none() | u16),
    st.builds(DaveMlsInvalidCommitWelcome, u16),
)

binary_messages: st.SearchStrategy[GatewayMessage] = st.one_of(
    st.builds(DaveMlsExternalSender, blobs),
    st.builds(DaveMlsKeyPackage, blobs),
    st.builds(DaveMlsProposals, st.sampled_from(ProposalsOperation), blobs),
    st.builds(DaveMlsCommitWelcome, blobs),
    st.builds(DaveMlsAnnounceCommitTransition, u16, blobs),
    st.builds(DaveMlsWelcome, u16, blobs),
)

KNOWN_OPS = {int(op) for op in Opcode}
unknown_ops = st.integers(0, 255).filter(lambda op: op not in KNOWN_OPS)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

unknown_messages: st.SearchStrategy[GatewayMessage] = st.one_of(
    st.builds(UnknownMessage, unknown_ops, json_values),
    st.builds(UnknownMessage, unknown_ops, st.none(), blobs),
)


def _d(message: GatewayMessage) -> Any:
    """The ``d`` of a JSON message's frame."""
    frame = serialize(message)
    assert isinstance(frame, str)
    return json.loads(frame)["d"]


# -- round trips -----------------------------------------------------------------------


@given(message=json_messages | unknown_messages.filter(lambda m: not is_binary(m)), data=st.data())
def test_json_round_trip(message: GatewayMessage, data: st.DataObject) -> None:
    seq = data.draw(st.none() | u64)
    frame = serialize(message, seq=seq)
    assert isinstance(frame, str)
    assert not is_binary(message)
    assert frame.isascii()
    expected = Envelope(message, seq)
    assert parse(frame, from_server=True) == expected
    assert parse(frame, from_server=False) == expected
    assert parse_text(frame.encode()) == expected


@given(message=binary_messages | unknown_messages.filter(is_binary), data=st.data())
def test_binary_round_trip(message: GatewayMessage, data: st.DataObject) -> None:
    assert is_binary(message)
    client_frame = serialize(message)
    assert isinstance(client_frame, bytes)
    assert parse(client_frame, from_server=False) == Envelope(message, None)

    seq = data.draw(u16)
    server_frame = serialize(message, seq=seq)
    assert isinstance(server_frame, bytes)
    assert server_frame[:2] == seq.to_bytes(2, "big")
    assert server_frame[2:] == client_frame
    assert parse_binary(server_frame, from_server=True) == Envelope(message, seq)
    # bytearray is accepted at run time too.
    assert parse(bytearray(server_frame), from_server=True) == Envelope(message, seq)  # type: ignore[arg-type]


def test_opcode_sets_partition_the_known_opcodes() -> None:
    assert JSON_OPCODES.isdisjoint(BINARY_OPCODES)
    assert set(Opcode) == JSON_OPCODES | BINARY_OPCODES
    assert {int(op) for op in BINARY_OPCODES} == {25, 26, 27, 28, 29, 30}


def test_messages_are_slotted_and_frozen() -> None:
    message = Hello(41250.0)
    assert not hasattr(message, "__dict__")
    with pytest.raises(AttributeError):
        message.heartbeat_interval = 1.0  # type: ignore[misc]
    assert Hello.op is Opcode.HELLO
    assert DaveMlsWelcome.op == 30


# -- the field tables ------------------------------------------------------------------

# One message per known opcode, every optional field set.
EVERY_MESSAGE: list[GatewayMessage] = [
    Identify("1", "2", "s", TOKEN, 1),
    SelectProtocol("127.0.0.1", 1, "m"),
    Ready(1, "::1", 2, ("m", "n"), 5.0),
    Heartbeat(1, 2),
    SessionDescription("m", KEY, 1),
    Speaking(1, 2, "3", 0),
    HeartbeatAck(1),
    Resume("1", "s", TOKEN, 2),
    Hello(1.5, 8),
    Resumed(),
    ClientsConnect(("1", "2")),
    ClientDisconnect("1"),
    ClientFlags("1", 2),
    ClientPlatform("1", 2),
    DavePrepareTransition(1, 2),
    DaveExecuteTransition(1),
    DaveTransitionReady(1),
    DavePrepareEpoch(1, 2, 3),
    DaveMlsExternalSender(b"es"),
    DaveMlsKeyPackage(b"kp"),
    DaveMlsProposals(ProposalsOperation.REVOKE, b"p"),
    DaveMlsCommitWelcome(b"cw"),
    DaveMlsAnnounceCommitTransition(1, b"c"),
    DaveMlsWelcome(1, b"w"),
    DaveMlsInvalidCommitWelcome(1),
]
JSON_MESSAGES = [m for m in EVERY_MESSAGE if not is_binary(m)]
# The keys that may be missing or null; every other key is required.
OPTIONAL_KEYS = {
    "Identify": {"max_dave_protocol_version"},
    "Ready": {"heartbeat_interval"},
    "Heartbeat": {"seq_ack"},
    "SessionDescription": {"dave_protocol_version"},
    "Speaking": {"user_id", "delay"},
    "Resume": {"seq_ack"},
    "Hello": {"v"},
    "DavePrepareEpoch": {"transition_id"},
}


def _frame(message: GatewayMessage, d: object) -> str:
    return json.dumps({"op": int(message.op), "d": d})


def test_every_opcode_has_a_message_that_round_trips() -> None:
    assert sorted(message.op for message in EVERY_MESSAGE) == sorted(Opcode)
    for message in EVERY_MESSAGE:
        assert parse(serialize(message), from_server=False) == Envelope(message)


@pytest.mark.parametrize("message", JSON_MESSAGES, ids=lambda m: type(m).__name__)
def test_missing_and_null_keys(message: GatewayMessage) -> None:
    d = _d(message)
    if d is None:  # Resumed: whatever d holds is ignored
        assert parse_text(_frame(message, {"a": 1})).message == message
        return
    optional = OPTIONAL_KEYS.get(type(message).__name__, set())
    objects = [d, *(value for value in d.values() if isinstance(value, dict))]
    for obj in objects:
        for key in list(obj):
            value = obj.pop(key)
            if key in optional:  # missing or null: the field's default
                missing = parse_text(_frame(message, d)).message
                obj[key] = None
                assert parse_text(_frame(message, d)).message == missing != message
            else:
                with pytest.raises(MalformedMessage, match="is missing"):
                    parse_text(_frame(message, d))
            obj[key] = value
    assert optional <= set(d)


@pytest.mark.parametrize("message", JSON_MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_keys_are_ignored(message: GatewayMessage) -> None:
    extra = {"extra": {"a": [1, None]}, "x": "y"}
    d = _d(message)
    if isinstance(d, dict):
        for obj in [d, *(value for value in d.values() if isinstance(value, dict))]:
            obj.update(extra)
    assert parse_text(_frame(message, d)).message == message


# -- exact wire examples (protocol.md §1.3, §1.5, §5.5) ---------------------------------


def test_heartbeat_v8_exact_json() -> None:
    assert (
        serialize(Heartbeat(1501184119561, seq_ack=10))
        == '{"op":3,"d":{"t":1501184119561,"seq_ack":10}}'
    )
    assert serialize(Heartbeat(1501184119561)) == '{"op":3,"d":{"t":1501184119561}}'
    assert serialize(Heartbeat(5, seq_ack=-1)) == '{"op":3,"d":{"t":5,"seq_ack":-1}}'


def test_heartbeat_legacy_bare_int_is_accepted() -> None:
    assert parse_text('{"op":3,"d":1501184119561}') == Envelope(Heartbeat(1501184119561))
    assert parse_text('{"op":6,"d":1501184119561}') == Envelope(HeartbeatAck(1501184119561))


def test_heartbeat_ack() -> None:
    assert parse_text('{"op": 6, "d": {"t": 1501184119561}}') == Envelope(
        HeartbeatAck(1501184119561)
    )
    assert serialize(HeartbeatAck(7)) == '{"op":6,"d":{"t":7}}'


def test_identify_exact_json() -> None:
    message = Identify("41771983423143937", "104694319306248192", "my_session_id", TOKEN, 1)
    assert serialize(message) == (
        '{"op":0,"d":{"server_id":"41771983423143937","user_id":"104694319306248192",'
        '"session_id":"my_session_id","token":"tok-XYZZY-secret","max_dave_protocol_version":1}}'
    )


def test_identify_without_dave_field_means_zero() -> None:
    frame = '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s","token":"t"}}'
    assert parse_text(frame).message == Identify("1", "2", "s", "t", 0)


def test_select_protocol_exact_json() -> None:
    message = SelectProtocol("127.0.0.1", 1337, "aead_aes256_gcm_rtpsize")
    assert serialize(message) == (
        '{"op":1,"d":{"protocol":"udp","data":{"address":"127.0.0.1","port":1337,'
        '"mode":"aead_aes256_gcm_rtpsize"}}}'
    )
    # Clients may add keys (codecs, rtc_connection_id, ...): ignored.
    frame = json.loads(serialize(message))
    frame["d"]["codecs"] = [{"name": "opus"}]
    frame["d"]["data"]["extra"] = 1
    assert parse_text(json.dumps(frame)).message == message


@pytest.mark.parametrize("ip", ["not an ip", "discord.media", "\ud800", "", "1.2.3"])
def test_ready_ip_must_be_an_address(ip: str) -> None:
    d = {"ssrc": 1, "ip": ip, "port": 1234, "modes": ["aead_aes256_gcm_rtpsize"]}
    with pytest.raises(MalformedMessage, match=r"Ready\.ip"):
        parse_text(json.dumps({"op": 2, "d": d}))


@pytest.mark.parametrize("user_id", ["01", "00000000000000000001", "1.0", "-1", "+1"])
def test_snowflakes_have_one_spelling(user_id: str) -> None:
    with pytest.raises(MalformedMessage, match="snowflake"):
        parse_text(json.dumps({"op": 13, "d": {"user_id": user_id}}))


def test_nesting_is_capped_below_the_recursion_limit() -> None:
    nested = "[" * 200 + "]" * 200
    with pytest.raises(MalformedMessage, match="nested deeper"):
        parse_text('{"op": 99, "d": ' + nested + "}")
    shallow = "[" * 10 + "]" * 10
    assert parse_text('{"op": 99, "d": ' + shallow + "}").message.op == 99


def test_ready_ignores_extra_keys() -> None:
    frame = json.dumps(
        {
            "op": 2,
            "d": {
                "ssrc": 1,
                "ip": "127.0.0.1",
                "port": 1234,
                "modes": ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"],
                "heartbeat_interval": 1,
                "experiments": ["fixed_keyframe_interval"],
                "streams": [{"type": "video", "ssrc": 2}],
            },
            "seq": 1,
        }
    )
    assert parse_text(frame) == Envelope(
        Ready(
            1,
            "127.0.0.1",
            1234,
            ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"),
            1.0,
        ),
        seq=1,
    )


def test_session_description() -> None:
    d = {
        "mode": "aead_aes256_gcm_rtpsize",
        "secret_key": list(KEY),
        "dave_protocol_version": 1,
        "audio_codec": "opus",
        "media_session_id": "abc",
    }
    envelope = parse_text(json.dumps({"op": 4, "d": d, "seq": 3}))
    assert envelope == Envelope(SessionDescription("aead_aes256_gcm_rtpsize", KEY, 1), 3)
    assert _d(SessionDescription("m", KEY)) == {
        "mode": "m",
        "secret_key": list(KEY),
        "dave_protocol_version": 0,
    }


def test_speaking_both_directions() -> None:
    assert (
        serialize(Speaking(speaking=1, ssrc=12345, delay=0))
        == '{"op":5,"d":{"speaking":1,"ssrc":12345,"delay":0}}'
    )
    frame = '{"op":5,"d":{"speaking":1,"ssrc":12345,"user_id":"104694319306248192"},"seq":9}'
    assert parse_text(frame) == Envelope(Speaking(1, 12345, user_id="104694319306248192"), 9)
    assert serialize(Speaking(1, 12345, user_id="104694319306248192"), seq=9) == frame


def test_resume_hello_resumed() -> None:
    assert (
        serialize(Resume("1", "s", "t", seq_ack=10))
        == '{"op":7,"d":{"server_id":"1","session_id":"s","token":"t","seq_ack":10}}'
    )
    assert parse_text('{"op":8,"d":{"heartbeat_interval":41250,"v":8}}') == Envelope(
        Hello(41250.0, version=8)
    )
    assert serialize(Hello(41250.0)) == '{"op":8,"d":{"heartbeat_interval":41250.0}}'
    assert serialize(Resumed()) == '{"op":9,"d":null}'
    assert parse_text('{"op":9,"d":null}') == Envelope(Resumed())
    assert parse_text('{"op":9}') == Envelope(Resumed())


def test_clients() -> None:
    assert parse_text('{"op":11,"d":{"user_ids":["1","2"]},"seq":4}') == Envelope(
        ClientsConnect(("1", "2")), 4
    )
    assert parse_text('{"op":13,"d":{"user_id":"3"}}').message == ClientDisconnect("3")
    assert parse_text('{"op":18,"d":{"user_id":"3","flags":3}}').message == ClientFlags("3", 3)
    assert parse_text('{"op":20,"d":{"user_id":"3","platform":1}}').message == ClientPlatform(
        "3", 1
    )


def test_dave_json_ops() -> None:
    assert parse_text('{"op":21,"d":{"protocol_version":0,"transition_id":5},"seq":2}') == Envelope(
        DavePrepareTransition(0, 5), 2
    )
    assert parse_text('{"op":22,"d":{"transition_id":5}}').message == DaveExecuteTransition(5)
    assert serialize(DaveTransitionReady(5)) == '{"op":23,"d":{"transition_id":5}}'
    assert parse_text('{"op":24,"d":{"protocol_version":1,"epoch":1}}').message == (
        DavePrepareEpoch(1, 1)
    )
    assert parse_text(
        '{"op":24,"d":{"protocol_version":1,"epoch":1,"transition_id":3}}'
    ).message == DavePrepareEpoch(1, 1, 3)
    assert serialize(DaveMlsInvalidCommitWelcome(9)) == '{"op":31,"d":{"transition_id":9}}'


def test_op25_external_sender_captured_vector() -> None:
    payload = DAVE["EXTERNAL_SENDER"]
    frame = b"\x00\x05\x19" + payload
    assert parse_binary(frame, from_server=True) == Envelope(DaveMlsExternalSender(payload), 5)
    assert serialize(DaveMlsExternalSender(payload), seq=5) == frame


def test_op26_key_package_client_layout() -> None:
    assert serialize(DaveMlsKeyPackage(b"\x00\x01\x00\x02kp")) == b"\x1a\x00\x01\x00\x02kp"
    assert parse_binary(b"\x1a\x00\x01\x00\x02kp", from_server=False) == Envelope(
        DaveMlsKeyPackage(b"\x00\x01\x00\x02kp")
    )


def test_op27_operation_byte_and_vector_with_prefix() -> None:
    append = DAVE["APPENDING_PROPOSALS"]
    frame = b"\x00\x0a\x1b\x00" + append
    envelope = parse_binary(frame, from_server=True)
    assert envelope == Envelope(DaveMlsProposals(ProposalsOperation.APPEND, append), 10)
    assert isinstance(envelope.message, DaveMlsProposals)
    assert envelope.message.payload[:2] == b"\x41\xf0"  # the vector's varint length is kept
    assert serialize(envelope.message, seq=10) == frame

    revoke = DAVE["REVOKING_PROPOSALS"]
    frame = b"\xff\xff\x1b\x01" + revoke
    envelope = parse_binary(frame, from_server=True)
    assert envelope == Envelope(DaveMlsProposals(ProposalsOperation.REVOKE, revoke), 0xFFFF)
    assert isinstance(envelope.message, DaveMlsProposals)
    assert type(envelope.message.operation) is ProposalsOperation


def test_op28_commit_welcome_client_layout() -> None:
    assert serialize(DaveMlsCommitWelcome(b"commit+welcome")) == b"\x1ccommit+welcome"


def test_op29_op30_layout_with_seq() -> None:
    assert (
        serialize(DaveMlsAnnounceCommitTransition(0x0102, b"COMMIT"), seq=0x0B)
        == b"\x00\x0b\x1d\x01\x02COMMIT"
    )
    assert parse_binary(b"\x00\x0b\x1d\x01\x02COMMIT", from_server=True) == Envelope(
        DaveMlsAnnounceCommitTransition(0x0102, b"COMMIT"), 0x0B
    )
    assert serialize(DaveMlsWelcome(7, b"WELCOME"), seq=0x0C) == b"\x00\x0c\x1e\x00\x07WELCOME"
    assert parse_binary(b"\x00\x0c\x1e\x00\x07", from_server=True) == Envelope(
        DaveMlsWelcome(7, b""), 0x0C
    )


# -- unknown opcodes ---------------------------------------------------------------------


@pytest.mark.parametrize("op", [10, 12, 14, 15, 16, 19, 32, 99, 255])
def test_unknown_json_opcodes(op: int) -> None:
    frame = json.dumps({"op": op, "d": {"audio_ssrc": 1, "x": [1, "a"]}, "seq": 7})
    assert parse_text(frame) == Envelope(UnknownMessage(op, {"audio_ssrc": 1, "x": [1, "a"]}), 7)
    assert parse_text(json.dumps({"op": op})) == Envelope(UnknownMessage(op))


def test_unknown_binary_opcode() -> None:
    assert parse_binary(b"\x00\x03\x63abc", from_server=True) == Envelope(
        UnknownMessage(99, payload=b"abc"), 3
    )
    assert parse_binary(b"\x63", from_server=False) == Envelope(UnknownMessage(99, payload=b""))
    assert serialize(UnknownMessage(99, payload=b"abc"), seq=3) == b"\x00\x03\x63abc"


# -- hostile input -------------------------------------------------------------------------


def _only_malformed(call: Any, *args: Any, **kwargs: Any) -> None:
    """Call a parser: success or MalformedMessage, nothing else, and no secret in the text."""
    error: MalformedMessage | None = None
    try:
        call(*args, **kwargs)
    except MalformedMessage as exc:
        error = exc
    assert error is None or "XYZZY" not in str(error)


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _only_malformed(parse_binary, data, from_server=True)
    _only_malformed(parse_binary, data, from_server=False)
    _only_malformed(parse_text, data)


@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    _only_malformed(parse_text, text)


@given(json_values)
def test_random_json_values(value: object) -> None:
    _only_malformed(parse_text, json.dumps(value))


@given(
    op=st.sampled_from(sorted(KNOWN_OPS)) | st.integers(-5, 300) | json_values,
    d=json_values,
    seq=json_values,
)
def test_random_frames(op: object, d: object, seq: object) -> None:
    _only_malformed(parse_text, json.dumps({"op": op, "d": d, "seq": seq}))


@given(message=json_messages, data=st.data())
def test_mutated_fields(message: GatewayMessage, data: st.DataObject) -> None:
    """Valid frames with one field replaced, removed or nested: the validators' job."""
    d = _d(message)
    if isinstance(d, dict) and d:
        key = data.draw(st.sampled_from(sorted(d)))
        if data.draw(st.booleans()):
            del d[key]
        else:
            d[key] = data.draw(json_values | st.just(TOKEN) | st.integers(-(2**70), 2**70))
        if "data" in d and isinstance(d["data"], dict) and d["data"]:
            inner = data.draw(st.sampled_from(sorted(d["data"])))
            d["data"][inner] = data.draw(json_values)
    else:
        d = data.draw(json_values)
    d_token = {"token": TOKEN, **d} if isinstance(d, dict) else d
    _only_malformed(parse_text, json.dumps({"op": int(message.op), "d": d_token}))


@given(message=binary_messages, cut=st.integers(0, 6))
def test_truncated_binary_frames(message: GatewayMessage, cut: int) -> None:
    frame = serialize(message, seq=1)
    assert isinstance(frame, bytes)
    _only_malformed(parse_binary, frame[:cut], from_server=True)
    _only_malformed(parse_binary, frame[: max(cut - 2, 0)], from_server=False)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"a":' * 100_000,
        '{"op":99,"d":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"op":0,"d":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}",
    ],
)
def test_deep_nesting(text: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "null",
        "[]",
        '"op"',
        "{}",
        '{"op":null}',
        '{"op":"3","d":{"t":1}}',
        '{"op":true,"d":{"t":1}}',
        '{"op":3.0,"d":{"t":1}}',
        '{"op":-1}',
        '{"op":256}',
        '{"op":3,"d":{"t":1}} x',
        '{"op":3,"d":{"t":1},"seq":-1}',
        '{"op":3,"d":{"t":1},"seq":"1"}',
        '{"op":3,"d":{"t":1},"seq":1.5}',
        '{"op":3,"d":{"t":1},"seq":18446744073709551616}',
        '{"op":3,"d":{"t":' + "9" * 5000 + "}}",
        '{"op":3,"d":{"t":1e' + "9" * 5000 + "}}",
        '{"op":3,"d":{"t":"1"}}',
        '{"op":3,"d":{"t":true}}',
        '{"op":3,"d":true}',
        '{"op":3,"d":{"t":-5}}',
        '{"op":3,"d":{"t":1,"seq_ack":-2}}',
        '{"op":3}',
        '{"op":2,"d":{"ssrc":4294967296,"ip":"x","port":1,"modes":[]}}',
        '{"op":2,"d":{"ssrc":-1,"ip":"x","port":1,"modes":[]}}',
        '{"op":2,"d":{"ssrc":"1","ip":"x","port":1,"modes":[]}}',
        '{"op":2,"d":{"ssrc":true,"ip":"x","port":1,"modes":[]}}',
        '{"op":2,"d":{"ssrc":1.0,"ip":"x","port":1,"modes":[]}}',
        '{"op":2,"d":{"ssrc":1,"ip":"x","port":65536,"modes":[]}}',
        '{"op":2,"d":{"ssrc":1,"ip":"x","port":1,"modes":[1]}}',
        '{"op":2,"d":{"ssrc":1,"ip":"x","port":1,"modes":"ab"}}',
        '{"op":2,"d":{"ssrc":1,"ip":"x","port":1}}',
        '{"op":2,"d":{"ssrc":1,"ip":"x","port":1,"modes":[],"heartbeat_interval":"x"}}',
        '{"op":2,"d":[]}',
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 31) + "]}}",
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 33) + "]}}",
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 31) + ",256]}}",
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 31) + ",-1]}}",
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 31) + ",true]}}",
        '{"op":4,"d":{"mode":"m","secret_key":[' + ",".join(["1"] * 31) + ",1.0]}}",
        '{"op":4,"d":{"mode":"m","secret_key":"' + "A" * 32 + '"}}',
        '{"op":4,"d":{"mode":"m"}}',
        '{"op":5,"d":{"speaking":true,"ssrc":1}}',
        '{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":123}}',
        '{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"12a"}}',
        '{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":""}}',
        '{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"18446744073709551616"}}',
        '{"op":5,"d":{"speaking":1,"ssrc":1,"user_id":"\\u0661"}}',
        '{"op":8,"d":{"heartbeat_interval":NaN}}',
        '{"op":8,"d":{"heartbeat_interval":Infinity}}',
        '{"op":8,"d":{"heartbeat_interval":1e400}}',
        '{"op":8,"d":{"heartbeat_interval":0}}',
        '{"op":8,"d":{"heartbeat_interval":-1}}',
        '{"op":8,"d":{"heartbeat_interval":null}}',
        '{"op":8,"d":{"heartbeat_interval":' + "1" * 400 + "}}",
        '{"op":11,"d":{"user_ids":"1"}}',
        '{"op":11,"d":{"user_ids":[1]}}',
        '{"op":13,"d":{}}',
        '{"op":21,"d":{"protocol_version":1,"transition_id":65536}}',
        '{"op":22,"d":{"transition_id":-1}}',
        '{"op":24,"d":{"protocol_version":1,"epoch":18446744073709551616}}',
        '{"op":31,"d":{"transition_id":false}}',
        '{"op":25,"d":null}',
        '{"op":29,"d":{"transition_id":1}}',
        '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s"}}',
        '{"op":0,"d":{"server_id":1,"user_id":"2","session_id":"s","token":"t"}}',
        '{"op":0,"d":{"server_id":"1","user_id":"2","session_id":"s","token":5}}',
        '{"op":1,"d":{"protocol":"udp","data":[]}}',
        '{"op":1,"d":{"protocol":"udp"}}',
        '{"op":1,"d":{"data":{"address":"a","port":1,"mode":"m"}}}',
    ],
)
def test_malformed_text(text: str) -> None:
    with pytest.raises(MalformedMessage):
        parse_text(text)


@pytest.mark.parametrize(
    "frame",
    [
        b"\xff",
        b'{"op":9,"d":"\xff"}',
        b'{"op":9,"d":"\xed\xa0\x80"}',  # an encoded surrogate is not UTF-8
        b"\xef\xbb\xbf{}",  # a BOM is not JSON
    ],
)
def test_malformed_text_bytes(frame: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_text(frame)


@pytest.mark.parametrize(
    ("frame", "from_server"),
    [
        (b"", True),
        (b"\x00", True),
        (b"\x00\x01", True),
        (b"", False),
        (b"\x00\x01\x1b", True),  # op 27 without its operation byte
        (b"\x1b", False),
        (b"\x00\x01\x1b\x02\x01\x00", True),  # operation 2 does not exist
        (b"\x00\x01\x1d", True),  # op 29 without transition_id
        (b"\x00\x01\x1d\x01", True),  # op 29 with half a transition_id
        (b"\x1e\x01", False),  # op 30 with half a transition_id
        (b"\x00\x01\x03{}", True),  # a JSON opcode in a binary frame
        (b"\x08", False),
        (b"\x00\x01\x00", True),
    ],
)
def test_malformed_binary(frame: bytes, from_server: bool) -> None:
    with pytest.raises(MalformedMessage):
        parse_binary(frame, from_server=from_server)


def test_frame_size_limit() -> None:
    with pytest.raises(MalformedMessage):
        parse_binary(b"\x00\x01\x19" + bytes(MAX_FRAME_SIZE), from_server=True)
    with pytest.raises(MalformedMessage):
        parse_text(" " * (MAX_FRAME_SIZE + 1))
    with pytest.raises(MalformedMessage):
        parse_text(b" " * (MAX_FRAME_SIZE + 1))


def test_wrong_python_type_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_text(123)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        parse_binary("abc", from_server=True)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        parse(None, from_server=True)  # type: ignore[arg-type]


# -- secrets -------------------------------------------------------------------------------


def test_reprs_hide_secrets() -> None:
    for message in (
        Identify("1", "2", "session", TOKEN, 1),
        Resume("1", "session", TOKEN, 3),
        SessionDescription("aead_aes256_gcm_rtpsize", KEY, 1),
    ):
        text = repr(Envelope(message, 1)) + str(message)
        assert "XYZZY" not in text
        assert "token" not in text
        assert "secret_key" not in text
        assert repr(KEY) not in text
        assert str(list(KEY)) not in text
        assert "session" in text or "aead" in text  # the rest is still shown


def test_errors_do_not_quote_secrets() -> None:
    key_frame = json.dumps({"op": 4, "d": {"mode": "m", "secret_key": [*KEY, 7]}})
    with pytest.raises(MalformedMessage) as info:
        parse_text(key_frame)
    assert "100, 101" not in str(info.value)
    assert "100,101" not in str(info.value)
    bad_identify = json.dumps(
        {"op": 0, "d": {"server_id": TOKEN, "user_id": "1", "session_id": "s", "token": TOKEN}}
    )
    with pytest.raises(MalformedMessage) as info:
        parse_text(bad_identify)
    assert "XYZZY" not in str(info.value)
    with pytest.raises(UsageError) as usage:
        serialize(Identify(TOKEN, "1", "s", TOKEN))
    assert "XYZZY" not in str(usage.value)
    with pytest.raises(UsageError) as usage:
        serialize(SessionDescription("m", KEY[:31]))
    assert "100" not in str(usage.value)


# -- serialising invalid values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "seq"),
    [
        (SelectProtocol("127.0.0.1", 70000, "m"), None),
        (SelectProtocol("127.0.0.1", -1, "m"), None),
        (Ready(-1, "127.0.0.1", 1, ()), None),
        (Ready(1, "127.0.0.1", 1, "ab"), None),  # type: ignore[arg-type]
        (Ready(1, "127.0.0.1", 1, (), float("nan")), None),
        (Ready(1, "localhost", 1, ()), None),
        (Heartbeat(-1), None),
        (Heartbeat(1, seq_ack=-2), None),
        (SessionDescription("m", KEY[:31]), None),
        (SessionDescription("m", "x" * 32), None),  # type: ignore[arg-type]
        (Speaking(True, 1), None),
        (Speaking(1, 1, user_id="abc"), None),
        (Hello(0.0), None),
        (Hello(float("inf")), None),
        (Hello("41250"), None),  # type: ignore[arg-type]
        (ClientsConnect("123"), None),  # type: ignore[arg-type]
        (ClientsConnect((1,)), None),  # type: ignore[arg-type]
        (Identify("1", "2", "s", None), None),  # type: ignore[arg-type]
        (DavePrepareTransition(1, 65536), None),
        (DaveMlsAnnounceCommitTransition(65536, b""), None),
        (DaveMlsWelcome(-1, b""), None),
        (DaveMlsWelcome(True, b""), None),
        (DaveMlsWelcome(1, "text"), None),  # type: ignore[arg-type]
        (DaveMlsProposals(2, b""), None),  # type: ignore[arg-type]
        (DaveMlsExternalSender(5), None),  # type: ignore[arg-type]
        (DaveMlsKeyPackage(b"kp"), 65536),
        (DaveMlsKeyPackage(b"kp"), -1),
        (Resumed(), -1),
        (Resumed(), True),
        (Resumed(), U64 + 1),
        (UnknownMessage(99, {"a": object()}), None),
        (UnknownMessage(99, float("nan")), None),
        (UnknownMessage(99, [1], b"x"), None),
        (UnknownMessage(256, None, b"x"), None),
        (UnknownMessage(-1, None), None),
        ("not a message", None),
    ],
)
def test_serialize_invalid_is_a_usage_error(message: Any, seq: Any) -> None:
    with pytest.raises(UsageError):
        serialize(message, seq=seq)


def test_is_binary() -> None:
    assert is_binary(DaveMlsKeyPackage(b""))
    assert not is_binary(DaveTransitionReady(1))
    assert is_binary(UnknownMessage(99, payload=b""))
    assert not is_binary(UnknownMessage(99))

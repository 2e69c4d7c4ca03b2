import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rxvoice.errors import MalformedPacket, UsageError
from rxvoice.protocol.ipdiscovery import (
    IP_DISCOVERY_SIZE,
    IpDiscoveryRequest,
    IpDiscoveryResponse,
    Keepalive,
)
from rxvoice.protocol.rtp import DatagramKind, classify

u32 = st.integers(0, 0xFFFFFFFF)
ips = st.ip_addresses().map(str)


def _response(
    address: bytes, *, kind: int = 2, length: int = 70, ssrc: int = 1, port: int = 2
) -> bytes:
    return struct.pack(">HHI64sH", kind, length, ssrc, address, port)


@given(u32)
def test_request_round_trip(ssrc):
    wire = IpDiscoveryRequest(ssrc).serialize()
    assert len(wire) == IP_DISCOVERY_SIZE
    assert IpDiscoveryRequest.parse(wire) == IpDiscoveryRequest(ssrc)


def test_request_layout():
    wire = IpDiscoveryRequest(0x01020304).serialize()
    assert wire == bytes.fromhex("0001004601020304") + bytes(66)


@given(u32, ips, st.integers(0, 0xFFFF))
def test_response_round_trip(ssrc, address, port):
    response = IpDiscoveryResponse(ssrc, address, port)
    wire = response.serialize()
    assert len(wire) == IP_DISCOVERY_SIZE
    assert IpDiscoveryResponse.parse(wire) == response
    assert classify(wire) is DatagramKind.IP_DISCOVERY


def test_response_layout():
    wire = IpDiscoveryResponse(0x01020304, "127.0.0.1", 50001).serialize()
    assert wire[:8] == bytes.fromhex("0002004601020304")
    assert wire[8:72] == b"127.0.0.1".ljust(64, b"\x00")
    assert wire[72:] == (50001).to_bytes(2, "big")


def test_response_ignores_bytes_after_nul():
    # discord.js reads up to the first NUL.
    wire = _response(b"10.0.0.1\x00garbage")
    assert IpDiscoveryResponse.parse(wire) == IpDiscoveryResponse(1, "10.0.0.1", 2)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(73),
        _response(b"1.2.3.4") + b"\x00",
        _response(b"1.2.3.4", kind=1),
        _response(b"1.2.3.4", kind=0x0102),
        _response(b"1.2.3.4", length=74),
        _response(b"1" * 64),  # no NUL
        _response(b"\xff\xfe.1.1.1"),  # not ASCII
        _response(b"not an ip"),
        _response(b""),  # empty address
        _response(b"1.2.3.256"),
    ],
)
def test_response_rejects(data):
    with pytest.raises(MalformedPacket):
        IpDiscoveryResponse.parse(data)


@pytest.mark.parametrize(
    "data",
    [bytes(74), b"\x00\x02\x00\x46" + bytes(70), b"\x00\x01\x00\x45" + bytes(70), bytes(75)],
)
def test_request_rejects(data):
    with pytest.raises(MalformedPacket):
        IpDiscoveryRequest.parse(data)


@pytest.mark.parametrize(
    "response",
    [
        IpDiscoveryResponse(-1, "1.2.3.4", 1),
        IpDiscoveryResponse(1 << 32, "1.2.3.4", 1),
        IpDiscoveryResponse(1, "1.2.3.4", 65536),
        IpDiscoveryResponse(1, "example.com", 1),
        IpDiscoveryResponse(1, "fe80::1%" + "x" * 60, 1),  # too long for 64 bytes
        IpDiscoveryResponse(1, "fe80::1%é", 1),
        IpDiscoveryResponse(1, 16909060, 1),  # type: ignore[arg-type]
    ],
)
def test_response_serialize_rejects(response):
    with pytest.raises(UsageError):
        response.serialize()


def test_request_serialize_rejects():
    with pytest.raises(UsageError):
        IpDiscoveryRequest(1 << 32).serialize()


# -- keepalive --------------------------------------------------------------------------


@given(u32)
def test_keepalive_round_trip(counter):
    wire = Keepalive(counter).serialize()
    assert len(wire) == 8
    assert Keepalive.parse(wire) == Keepalive(counter)
    assert classify(wire) is DatagramKind.KEEPALIVE


def test_keepalive_layout_and_wrap():
    assert Keepalive(0x01020304).serialize() == bytes.fromhex("0403020100000000")
    assert Keepalive(1 << 32).serialize() == bytes(8)
    assert Keepalive((1 << 32) + 5).serialize() == Keepalive(5).serialize()
    assert Keepalive(0xFFFFFFFF).next() == Keepalive(0)
    assert Keepalive(7).next() == Keepalive(8)


@pytest.mark.parametrize("data", [b"", bytes(7), bytes(9), b"\x01\x00\x00\x00\x00\x00\x00\x01"])
def test_keepalive_rejects(data):
    with pytest.raises(MalformedPacket):
        Keepalive.parse(data)


def test_keepalive_negative():
    with pytest.raises(UsageError):
        Keepalive(-1).serialize()

"""Thin asyncio transports: the voice WebSocket and the voice UDP socket.

They move bytes and nothing else; every message and packet is parsed by
:mod:`rxvoice.protocol`, and the reactive layer (:mod:`rxvoice.connection`)
decides what happens next.
"""

from rxvoice.transport.udp import UdpTransport
from rxvoice.transport.websocket import WebSocketTransport

__all__ = ["UdpTransport", "WebSocketTransport"]

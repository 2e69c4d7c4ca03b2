"""The sans-I/O protocol core: bytes in, typed values and events out.

Nothing in this package does I/O or imports asyncio, websockets or reactivex;
the transports and the reactive layer are built on top of it.
"""

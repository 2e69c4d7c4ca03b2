"""Reading rxvoice's messages back from JetStream as observables.

A pull consumer is fetched in batches on the running asyncio loop; each
message is parsed, emitted, then acknowledged, so a durable consumer resumes
after the last frame its subscriber saw (at-least-once: a frame emitted just
before a crash comes again after ``ack_wait``). A message that does not parse
is counted, reported and terminated (never redelivered); it never ends the
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from reactivex import Observable, abc
from reactivex.disposable import Disposable

from rxvoice.errors import ProtocolError, UsageError
from rxvoice.events import AudioFrame, Diagnostic
from rxvoice.nats.wire import ControlMessage, VoicePacket

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["consume"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def audio_frame(packet: VoicePacket, received_at: float) -> AudioFrame:
    """The :class:`~rxvoice.events.AudioFrame` a packet carries, arrived at ``received_at``."""
    return AudioFrame(
        user_id=packet.user_id, ssrc=packet.ssrc, frame=packet.frame, received_at=received_at
    )


def frame_of(offset: float) -> Callable[[bytes], AudioFrame]:
    """Parse a frame message; its wall-clock arrival becomes loop time via ``offset``."""

    def parse(data: bytes) -> AudioFrame:
        packet = VoicePacket.parse(data)
        return audio_frame(packet, packet.received_at + offset)

    return parse


def control_of(_: float) -> Callable[[bytes], ControlMessage]:
    """Parse a control message (its ``at`` stays on the publisher's wall clock)."""
    return ControlMessage.parse


def consume(
    js: JetStreamContext,
    subject: str | Sequence[str],
    parser: Callable[[float], Callable[[bytes], T]],
    *,
    durable: str | None,
    deliver: Literal["all", "new"],
    stream: str | None,
    batch: int,
    ack_wait: float | None,
    max_ack_pending: int | None,
    stats: Counter[str] | None,
    on_diagnostic: Callable[[Diagnostic], None] | None,
) -> Observable[T]:
    """A cold observable over a pull consumer (see :func:`rxvoice.nats.frames`)."""
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    subjects = [subject] if isinstance(subject, str) else list(subject)
    if not subjects:
        raise UsageError("frames needs at least one subject")
    counts = stats if stats is not None else Counter()

    def subscribe(
        observer: abc.ObserverBase[T], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError("subscribe to a NATS source inside a running asyncio loop") from None
        task = loop.create_task(_pull(observer, loop), name="rxvoice-nats-consume")

        def dispose() -> None:
            task.cancel()

        return Disposable(dispose)

    async def _pull(observer: abc.ObserverBase[T], loop: asyncio.AbstractEventLoop) -> None:
        from nats.errors import ConnectionClosedError
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import ConsumerConfig, DeliverPolicy

        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL if deliver == "all" else DeliverPolicy.NEW,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
        )
        if len(subjects) > 1:
            config.filter_subjects = subjects
        try:
            psub = await js.pull_subscribe(
                subjects[0], durable=durable, stream=stream, config=config
            )
        except Exception as exc:
            observer.on_error(exc)
            return
        # The wire carries the publisher's wall clock; frames here carry this loop's.
        parse = parser(loop.time() - time.time())
        failures = 0
        try:
            while True:
                try:
                    messages = await psub.fetch(batch, timeout=1.0)
                except NatsTimeout:
                    continue  # nothing new, or the broker is away: nats-py reconnects
                except ConnectionClosedError as exc:
                    observer.on_error(exc)  # closed by its owner: nothing more can come
                    return
                except NatsError as exc:  # e.g. a leadership change: try again
                    counts["fetch_error"] += 1
                    failures += 1
                    logger.warning("fetching from JetStream failed (%r); retrying", exc)
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))  # back off, not a wait
                    continue
                failures = 0
                for message in messages:
                    if not await _deliver(message, parse, observer):
                        return
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _deliver(
        message: Msg, parse: Callable[[bytes], T], observer: abc.ObserverBase[T]
    ) -> bool:
        try:
            item = parse(message.data)
        except ProtocolError as exc:
            counts["malformed_message"] += 1
            logger.debug("skipped a malformed message on %s: %s", message.subject, exc)
            if on_diagnostic is not None:
                on_diagnostic(Diagnostic("malformed_message", f"{message.subject}: {exc}"))
            with contextlib.suppress(Exception):
                await message.term()
            return True
        try:
            observer.on_next(item)
        except Exception as exc:  # the subscriber's own failure ends its subscription
            observer.on_error(exc)
            return False
        counts["received"] += 1
        try:
            await message.ack()
        except Exception as exc:  # the broker is away: it comes again after ack_wait
            counts["ack_failed"] += 1
            logger.debug("acknowledging %s failed: %r", message.subject, exc)
        return True

    return Observable(subscribe)

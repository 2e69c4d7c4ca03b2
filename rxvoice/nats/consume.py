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
from rxvoice.events import AudioFrame, Diagnostic, DiagnosticKind
from rxvoice.nats.wire import VoicePacket

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

__all__ = ["consume", "to_frames"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def to_frames() -> Callable[[Observable[VoicePacket]], Observable[AudioFrame]]:
    """Map packets to the frames they carry, arrival times moved to this process's clock.

    The wire carries the publisher's wall clock; a frame's ``received_at`` is
    on the receiving loop's monotonic clock. The offset between this
    process's two clocks is taken once per subscription.
    """

    def operator(source: Observable[VoicePacket]) -> Observable[AudioFrame]:
        def subscribe(
            observer: abc.ObserverBase[AudioFrame], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                now = time.monotonic()
            offset = now - time.time()

            def on_next(packet: VoicePacket) -> None:
                observer.on_next(packet.to_frame(packet.received_at + offset))

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=scheduler
            )

        return Observable(subscribe)

    return operator


def consume(
    js: JetStreamContext,
    subject: str | Sequence[str],
    parse: Callable[[bytes], T],
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
    """A cold observable of ``parse(data)`` over a pull consumer (see ``rxvoice.nats.frames``)."""
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
        task = loop.create_task(_pull(observer), name="rxvoice-nats-consume")

        def dispose() -> None:
            task.cancel()

        return Disposable(dispose)

    async def _pull(observer: abc.ObserverBase[T]) -> None:
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
            _fail(observer, exc)
            return
        failures = 0
        try:
            while True:
                try:
                    messages = await psub.fetch(batch, timeout=1.0)
                except NatsTimeout:
                    continue  # nothing new, or the broker is away: nats-py reconnects
                except ConnectionClosedError as exc:
                    _fail(observer, exc)  # closed by its owner: nothing more can come
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
                on_diagnostic(
                    Diagnostic(DiagnosticKind.MALFORMED_MESSAGE, f"{message.subject}: {exc}")
                )
            with contextlib.suppress(Exception):
                await message.term()
            return True
        try:
            observer.on_next(item)
        except Exception as exc:  # the subscriber's own failure ends its subscription
            _fail(observer, exc)
            return False
        counts["received"] += 1
        try:
            await message.ack()
        except Exception as exc:  # the broker is away: it comes again after ack_wait
            counts["ack_failed"] += 1
            logger.debug("acknowledging %s failed: %r", message.subject, exc)
        return True

    return Observable(subscribe)


def _fail(observer: abc.ObserverBase[T], error: Exception) -> None:
    # A subscriber without on_error makes RxPY raise it again: log it rather
    # than leave it in a task nobody awaits.
    try:
        observer.on_error(error)
    except Exception:
        logger.warning("a NATS source ended with %r (its subscriber has no on_error)", error)

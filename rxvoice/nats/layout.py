"""Subjects and the stream: where rxvoice's messages go in NATS, and how long they stay.

Subjects (templates; see docs/nats.md for why)::

    voice.{guild_id}.{user_id}            audio, one subject per speaker
    voicectl.{guild_id}.{type}            lifecycle events (speaking, join, leave, …)

One JetStream stream, ``VOICE``, stores both roots (``voice.>`` and
``voicectl.>``) with limits retention: every consumer group (a durable
consumer: "transcriber", "recorder", …) reads at its own pace, and messages
go after ``max_age`` whoever read them.

With ``partitions=P`` the stream rewrites each audio subject as it stores it
to ``voice.{p}.{guild_id}.{user_id}``, ``p`` a stable hash of guild and
user (or of the guild alone) modulo ``P``: worker ``k`` of a group then
consumes :func:`partition_subjects` ``(k, …)``, and every frame of one user
reaches the same worker, in order.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from rxvoice.errors import UsageError

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig, StreamInfo

__all__ = [
    "AUDIO_SUBJECT",
    "CONTROL_SUBJECT",
    "STREAM",
    "SubjectTemplate",
    "ensure_stream",
    "partition_subjects",
    "stream_config",
]

AUDIO_SUBJECT = "voice.{guild_id}.{user_id}"
"""Where :func:`rxvoice.nats.publish` puts frames by default."""

CONTROL_SUBJECT = "voicectl.{guild_id}.{type}"
"""Where :func:`rxvoice.nats.publish_connection` puts lifecycle events by default."""

STREAM = "VOICE"
"""The default stream name."""

_CACHE_LIMIT = 4096
_FORBIDDEN = frozenset(" \t\r\n*>")


def _check_subject(subject: str, what: str) -> None:
    tokens = subject.split(".")
    if not subject or any(not t or _FORBIDDEN & set(t) for t in tokens):
        raise UsageError(f"{what} is not a NATS subject to publish to: {subject!r}")


class SubjectTemplate:
    """A subject with ``{field}`` placeholders, rendered per message and cached.

    Args:
        template: E.g. ``"voice.{guild_id}.{user_id}"``.
        fields: The placeholders allowed.

    Raises:
        UsageError: An unknown placeholder, a format spec, or a subject that
            cannot be published to (empty token, wildcard, whitespace).
    """

    __slots__ = ("_cache", "_fields", "template")

    def __init__(self, template: str, fields: Sequence[str]) -> None:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise UsageError(f"bad subject template {template!r}: {exc}") from None
        for _, name, spec, conversion in parsed:
            if name is not None and (name not in fields or spec or conversion):
                raise UsageError(
                    f"subject template {template!r}: use only {{{'}, {'.join(fields)}}}"
                )
        self.template = template
        self._fields = tuple(fields)
        self._cache: dict[tuple[object, ...], str] = {}
        _check_subject(template.format(**dict.fromkeys(fields, "x")), "the subject template")

    def render(self, **values: object) -> str:
        """Return the subject for these values.

        Raises:
            UsageError: A value makes an invalid subject (e.g. contains a dot).
        """
        key = tuple(values.values())
        subject = self._cache.get(key)
        if subject is None:
            subject = self.template.format(**values)
            _check_subject(subject, "a rendered subject")
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = subject
        return subject


def stream_config(
    name: str = STREAM,
    *,
    subjects: Sequence[str] = ("voice.>", "voicectl.>"),
    max_age: float = 3600.0,
    max_bytes: int | None = None,
    storage: Literal["file", "memory"] = "file",
    replicas: int = 1,
    partitions: int | None = None,
    partition_by: Literal["user", "guild"] = "user",
) -> StreamConfig:
    """The stream configuration rxvoice recommends (see the module docstring).

    Args:
        name: The stream name.
        subjects: What it stores.
        max_age: Seconds a message is kept (limits retention, oldest discarded).
        max_bytes: A size cap for the stream; ``None``: only ``max_age``.
        storage: ``"file"`` (survives a broker restart) or ``"memory"``.
        replicas: Copies in a NATS cluster (1 for a single server).
        partitions: Rewrite audio subjects of the default template
            (``voice.{guild_id}.{user_id}``) to ``voice.{p}.{guild_id}.{user_id}``
            with ``p`` in ``range(partitions)``; ``None``: no rewriting.
        partition_by: Hash ``"user"`` (guild and user: spreads the load most)
            or ``"guild"`` (a whole call on one worker, e.g. to mix it).

    Returns:
        A ``nats.js.api.StreamConfig`` for ``js.add_stream``.

    Raises:
        UsageError: ``partitions`` below 1.
    """
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig, SubjectTransform

    transform = None
    if partitions is not None:
        if partitions < 1:
            raise UsageError(f"partitions must be >= 1, got {partitions}")
        tokens = "1,2" if partition_by == "user" else "1"
        transform = SubjectTransform(
            src="voice.*.*",
            dest=f"voice.{{{{partition({partitions},{tokens})}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        )
    return StreamConfig(
        name=name,
        subjects=list(subjects),
        retention=RetentionPolicy.LIMITS,
        max_age=max_age,
        max_bytes=max_bytes if max_bytes is not None else -1,
        storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
        num_replicas=replicas,
        subject_transform=transform,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig | None = None) -> StreamInfo:
    """Create the stream, or update it to ``config`` if it exists.

    Args:
        js: The JetStream context.
        config: The configuration; :func:`stream_config` ``()`` by default.

    Returns:
        The stream's info.
    """
    from nats.js.errors import BadRequestError

    config = config if config is not None else stream_config()
    try:
        return await js.add_stream(config)
    except BadRequestError:  # it exists with another configuration
        return await js.update_stream(config)


def partition_subjects(partitions: int | Iterable[int]) -> list[str]:
    """The filter subjects of the audio in some partitions (see :func:`stream_config`).

    Args:
        partitions: One partition number or several.

    Returns:
        E.g. ``["voice.3.*.*"]``, for :func:`rxvoice.nats.frames`.
    """
    chosen = [partitions] if isinstance(partitions, int) else list(partitions)
    return [f"voice.{p}.*.*" for p in chosen]

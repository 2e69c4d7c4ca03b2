"""Marble tests for voice pipelines, on RxPY's ``TestScheduler`` and marble syntax.

:func:`voice_marbles` opens a virtual-time test (a
``reactivex.testing.TestScheduler``) in which every marble position lasts
one Opus frame (20 ms), and marble elements are voice packets:

=============  ===============================================================
in a source    means
=============  ===============================================================
``12``         frame 12 of the default speaker ``a`` (sequence ``12 % 65536``,
               timestamp ``12 * 960``), with a real Opus payload of its tone
``b12``        frame 12 of speaker ``b`` (any one-letter speaker name)
``12s``        frame 12 carrying the Opus silence frame ``F8 FF FE``
``(4,4)``      two elements at the same time (a group)
``-``          20 ms pass
``|`` ``#``    completion; error
=============  ===============================================================

**Timing differs from RxPY's parser on one point:** every element and every
group lasts one position (20 ms) whatever its width, so ``-12-(4,4)-|`` has
``12`` at 20 ms, the group at 60 ms and the completion at 100 ms. Frame
numbers of any width then line up with time, and any output can be written
down. Spaces are ignored, as in RxPY. Two elements in a row need a separator
(``1(2)``: a group of one), since ``12`` is a single element.

Frame indexes are unwrapped: ``65535-65536`` crosses the sequence wraparound
with a continuous timestamp. Other elements go through ``lookup`` (after
RxPY's conversion of numbers). A hot observable's element in the very first
position is emitted before the subscription (as in RxPY), so start with ``-``.

Results are :class:`reactivex.testing.recorded.Recorded` with the time in
**milliseconds since the subscription** and values shortened to the same
tokens by :meth:`VoiceMarbles.describe`, so output compares to a marble
string with :meth:`VoiceMarbles.exp`, or is drawn as one with
:meth:`VoiceMarbles.render`:

=====================  ==========================================================
value                  token
=====================  ==========================================================
frame                  ``12`` (speaker ``a``) or ``b12``
gap marker             ``g12`` (or ``g12x3`` for 3 missing) / ``bg12``
decoded chunk          ``p12``; concealed ``c12``; FEC-recovered ``f12`` (``bp12``...)
mixed tick             ``m3`` (tick 3)
audio level            ``l12`` (``bl12``...; ``ml3`` for a mixed tick)
voice activity         ``on12`` / ``off20`` (``bon12``...)
anything else          its token from ``tokens=``, else itself
=====================  ==========================================================

where the number is the frame index at the item's timestamp
(``timestamp // 960``). Give any other type a token with
``voice_marbles(tokens={SpeakingEvent: lambda e: ...})`` (or
``m.tokens[SpeakingEvent] = ...``); :meth:`VoiceMarbles.prefix` gives a
value's speaker prefix. :meth:`VoiceMarbles.render` refuses a token that a
diagram cannot hold (one with ``-``, ``(``, ``)``, ``,``, ``|``, ``#`` or a
space), such as a raw ``repr``, rather than drawing a diagram that means
something else.

The speakers every test knows (:data:`DEFAULT_SPEAKERS`):

=======  =========  ====  ========
speaker  user id    SSRC  tone
=======  =========  ====  ========
``a``    ``1001``   1     440 Hz
``b``    ``1002``   2     660 Hz
``c``    ``1003``   3     880 Hz
=======  =========  ====  ========

One block runs once: a second :meth:`VoiceMarbles.start` raises
:class:`~rxvoice.errors.UsageError`, because the sources' elements were
spent by the first run (virtual time only moves forward). Open a new
``with voice_marbles() as m:`` block for each run.

Example:
    >>> from rxvoice import operators as vops
    >>> with voice_marbles() as m:
    ...     source = m.hot("-1-3-2-|")
    ...     result = m.start(source.pipe(vops.jitter_buffer(latency=0.06)))
    >>> result == m.exp("-1---(2,3)-|")
    True
    >>> m.render(result)
    '-1---(2,3)-|'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, TypeAlias, cast

from reactivex import Observable
from reactivex.notification import Notification, OnCompleted, OnError, OnNext
from reactivex.testing import TestScheduler
from reactivex.testing.recorded import Recorded

from rxvoice.errors import InvalidArgument, UsageError
from rxvoice.events import AudioFrame, AudioGap, AudioLevel, PcmChunk, VoiceActivityChange
from rxvoice.protocol.crypto import TransportCipher
from rxvoice.protocol.rtp import SILENCE_FRAME
from rxvoice.testing.packets import (
    FRAME_SAMPLES,
    ToneSpeaker,
    audio_frame,
    encrypted_datagram,
    opus_tone,
)

__all__ = [
    "CREATED",
    "DEFAULT_SPEAKERS",
    "DISPOSED",
    "FRAME",
    "SUBSCRIBED",
    "TokenFunction",
    "VoiceMarbles",
    "parse",
    "values",
    "voice_marbles",
]

FRAME = 0.02
"""Seconds per marble character: one Opus frame."""

CREATED = 100.0
"""Virtual time (s) at which :meth:`VoiceMarbles.start` creates the observable."""

SUBSCRIBED = 200.0
"""Virtual time (s) at which it subscribes; marble position 0 of hot streams."""

DISPOSED = 1000.0
"""Virtual time (s) at which it disposes the subscription, by default."""

DEFAULT_SPEAKERS: Mapping[str, ToneSpeaker] = {
    "a": ToneSpeaker("1001", 1, 440.0),
    "b": ToneSpeaker("1002", 2, 660.0),
    "c": ToneSpeaker("1003", 3, 880.0),
}
"""Speakers known by every :func:`voice_marbles`; ``a`` is the default."""

Payload: TypeAlias = Literal["tone", "silence"] | Callable[[ToneSpeaker, int], bytes]

TokenFunction: TypeAlias = Callable[[Any], Any]
"""Turns a value of one type into its marble token (usually a short ``str``)."""

_TOKEN = re.compile(r"(?P<speaker>[A-Za-z]?)(?P<n>\d+)(?P<silence>s?)")
# RxPY's marble lexicon: a group, a run of dashes, a stray comma, or an element.
_LEXICON = re.compile(r"(\(.*?\))|(-+)|(,)|(#|\||[^-,()#|]+)")
_TS_MOD = 1 << 32
# What a rendered element may not contain: marble syntax, or a space (ignored by the parser).
_NOT_IN_TOKEN = re.compile(r"[-(),|#\s]")


class VoiceMarbles:
    """A marble test in progress; made by :func:`voice_marbles`.

    Attributes:
        scheduler: The virtual-time scheduler that runs everything.
        timespan: Seconds per marble character.
        speakers: Speaker name to :class:`~rxvoice.testing.packets.ToneSpeaker`.
        tokens: Type to the function giving its values' tokens; consulted by
            :meth:`describe` before the built-in tokens (along the type's MRO).
    """

    def __init__(
        self,
        scheduler: TestScheduler,
        timespan: float,
        speakers: Mapping[str, ToneSpeaker],
        payload: Payload,
        fec: bool,
        tokens: Mapping[type, TokenFunction] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.timespan = timespan
        self.speakers = dict(speakers)
        self.tokens: dict[type, TokenFunction] = dict(tokens or {})
        self._payload = payload
        self._fec = fec
        self._names = {(s.user_id, s.ssrc): name for name, s in self.speakers.items()}
        self._started = False

    # -- sources -------------------------------------------------------------

    def frame(self, token: str | int, at: float = SUBSCRIBED) -> AudioFrame:
        """Build the frame a token stands for (``12``, ``b12``, ``12s``).

        Args:
            token: The marble element.
            at: Its ``received_at`` (virtual seconds).

        Returns:
            The frame.

        Raises:
            InvalidArgument: If the token is not a frame token of a known speaker.
        """
        match = _TOKEN.fullmatch(str(token))
        if match is None or (match["speaker"] or "a") not in self.speakers:
            raise InvalidArgument(f"{token!r} is not a frame of a known speaker")
        speaker = self.speakers[match["speaker"] or "a"]
        n = int(match["n"])
        return audio_frame(
            n, speaker, self._payload_of(speaker, n, match["silence"] == "s"), received_at=at
        )

    def hot(
        self,
        marbles: str,
        lookup: Mapping[str | float, Any] | None = None,
        error: Exception | None = None,
        *,
        cipher: TransportCipher | None = None,
    ) -> Observable[Any]:
        """A hot observable: position 0 is the subscription time (:data:`SUBSCRIBED`).

        Args:
            marbles: The diagram.
            lookup: Values for elements that are not frame tokens (checked first).
            error: The exception of ``#``.
            cipher: Emit frames as datagrams encrypted with this cipher
                (nonce ``n + 1``) instead of :class:`AudioFrame`.

        Returns:
            The observable, emitting in virtual time.
        """
        messages = self._messages(marbles, SUBSCRIBED, lookup, error, cipher)
        return self.scheduler.create_hot_observable(messages)

    def cold(
        self,
        marbles: str,
        lookup: Mapping[str | float, Any] | None = None,
        error: Exception | None = None,
        *,
        cipher: TransportCipher | None = None,
    ) -> Observable[Any]:
        """A cold observable: position 0 is each subscription's time.

        Args:
            marbles: The diagram.
            lookup: Values for elements that are not frame tokens.
            error: The exception of ``#``.
            cipher: Emit encrypted datagrams instead of frames (see :meth:`hot`).

        Returns:
            The observable. ``received_at`` of its frames assumes a
            subscription at :data:`SUBSCRIBED`.
        """
        messages = self._messages(marbles, 0.0, lookup, error, cipher)
        return self.scheduler.create_cold_observable(messages)

    # -- running and expectations ----------------------------------------------

    def start(
        self,
        create: Observable[Any] | Callable[[], Observable[Any]],
        *,
        disposed: float = DISPOSED,
        describe: bool = True,
    ) -> list[Recorded[Any]]:
        """Run the scheduler: create, subscribe at :data:`SUBSCRIBED`, dispose at ``disposed``.

        Once per block: the run moves virtual time past the sources' elements.

        Args:
            create: The observable under test, or a function making it.
            disposed: When to dispose the subscription (virtual seconds).
            describe: Shorten values to tokens with :meth:`describe`.

        Returns:
            What the observer saw, timed in ms since the subscription.

        Raises:
            UsageError: If this block already ran; open a new
                ``voice_marbles()`` block for each run.
        """
        if self._started:
            raise UsageError(
                "m.start() already ran in this voice_marbles() block, and its sources' "
                "elements are spent (virtual time only moves forward): open a new "
                "`with voice_marbles() as m:` block, with new sources, for each run"
            )
        self._started = True
        factory = create if callable(create) and not isinstance(create, Observable) else None
        observable = cast("Observable[Any] | None", None if factory else create)

        def make() -> Observable[Any]:
            return factory() if factory is not None else cast("Observable[Any]", observable)

        observer = self.scheduler.start(
            make, created=CREATED, subscribed=SUBSCRIBED, disposed=disposed
        )
        return [self._record(m.time, m.value, describe) for m in observer.messages]

    def exp(
        self,
        marbles: str,
        lookup: Mapping[str | float, Any] | None = None,
        error: Exception | None = None,
    ) -> list[Recorded[Any]]:
        """The records a marble diagram of expected tokens stands for.

        Elements stay tokens (numbers become ``int``), to compare with
        :meth:`start`'s described output.

        Args:
            marbles: The diagram of expected output.
            lookup: Values for elements, as in RxPY.
            error: The exception of ``#``.

        Returns:
            Records timed in ms since the subscription.
        """
        table = lookup or {}
        records: list[Recorded[Any]] = []
        for t, notification in parse(marbles, self.timespan, error):
            if isinstance(notification, OnNext):
                notification = OnNext(_look_up(notification.value, table))
            records.append(self._record(SUBSCRIBED + t, notification, describe=False))
        return records

    def render(self, records: list[Recorded[Any]]) -> str:
        """Draw records (as :meth:`start` returns them) as a marble diagram.

        The inverse of :meth:`exp`: ``m.exp(m.render(r)) == r`` for described
        records. Handy in assertions (``assert m.render(result) == "-1-(2,3)-|"``)
        and to see what a pipeline did.

        Args:
            records: Records timed in ms since the subscription.

        Returns:
            The diagram; an element right after another is wrapped in
            parentheses (``-p1(p2)``) so the two stay apart.

        Raises:
            InvalidArgument: If a record is not on a position (a multiple of
                :attr:`timespan`), or a value's token cannot stand in a diagram
                (give its type a token with :attr:`tokens`).
        """
        step = self.timespan * 1000
        slots: dict[int, list[str]] = {}
        for record in records:
            position = round(record.time / step)
            if abs(position * step - record.time) > 1e-6 * step + 0.5:
                raise InvalidArgument(f"{record} is between two positions of {step:g} ms")
            value = record.value
            if isinstance(value, OnNext):
                text = str(value.value)
                if not text or _NOT_IN_TOKEN.search(text):
                    kind = type(value.value).__name__
                    raise InvalidArgument(
                        f"no marble token for {value.value!r} (at {record.time} ms): give "
                        f"{kind} a token without spaces or marble syntax, e.g. "
                        f"m.tokens[{kind}] = lambda value: ..."
                    )
            else:
                text = "|" if isinstance(value, OnCompleted) else "#"
            slots.setdefault(position, []).append(text)
        out: list[str] = []
        previous_element = False
        for position in range(max(slots, default=-1) + 1):
            items = slots.get(position)
            if items is None:
                out.append("-")
                previous_element = False
            elif len(items) == 1 and not previous_element:
                out.append(items[0])
                previous_element = items[0] not in ("|", "#")
            else:
                out.append(f"({','.join(items)})")
                previous_element = False
        return "".join(out)

    def describe(self, value: Any) -> Any:
        """Shorten a value to its marble token (see the module docstring).

        Args:
            value: Any value a pipeline emits.

        Returns:
            The token from :attr:`tokens` for the value's type (or a base
            class), else the built-in voice token, else the value itself.
        """
        for cls in type(value).__mro__:
            token = self.tokens.get(cls)
            if token is not None:
                return token(value)
        if isinstance(value, AudioFrame):
            prefix = self.prefix(value.user_id, value.ssrc)
            n = value.timestamp // FRAME_SAMPLES
            return n if not prefix else f"{prefix}{n}"
        if isinstance(value, AudioGap):
            count = f"x{value.count}" if value.count > 1 else ""
            prefix = self.prefix(value.user_id, value.ssrc)
            return f"{prefix}g{value.timestamp // FRAME_SAMPLES}{count}"
        if isinstance(value, PcmChunk):
            n = value.timestamp // FRAME_SAMPLES
            if value.user_id is None and value.ssrc is None:
                return f"m{n}"
            kind = "c" if value.concealed else "f" if value.recovered else "p"
            return f"{self.prefix(value.user_id, value.ssrc)}{kind}{n}"
        if isinstance(value, AudioLevel):
            n = value.timestamp // FRAME_SAMPLES
            mixed = value.user_id is None and value.ssrc is None
            return f"{'m' if mixed else self.prefix(value.user_id, value.ssrc)}l{n}"
        if isinstance(value, VoiceActivityChange):
            word = "on" if value.speaking else "off"
            n = value.timestamp // FRAME_SAMPLES
            return f"{self.prefix(value.user_id, value.ssrc)}{word}{n}"
        return value

    def prefix(self, user_id: str | None, ssrc: int | None) -> str:
        """The speaker prefix of a user's tokens: ``""`` for ``a``, ``"b"`` for ``b``...

        For tokens of your own (:attr:`tokens`), e.g.
        ``lambda e: f"{m.prefix(e.user_id, e.ssrc)}s"`` for ``s`` / ``bs``.

        Args:
            user_id: The value's user id.
            ssrc: The value's SSRC.

        Returns:
            The speaker's name (empty for ``a``), matched by user and SSRC,
            else by user, else by SSRC; ``?<user_id>`` for an unknown user.
        """
        name = self._names.get((user_id or "", ssrc or 0))
        if name is None:
            # The user on another SSRC, or an SSRC with no known user.
            name = next(
                (n for n, s in self.speakers.items() if s.user_id == user_id),
                next((n for n, s in self.speakers.items() if s.ssrc == ssrc), f"?{user_id}"),
            )
        return "" if name == "a" else name

    # -- internals -----------------------------------------------------------

    def _payload_of(self, speaker: ToneSpeaker, n: int, silence: bool) -> bytes:
        if silence or self._payload == "silence":
            return SILENCE_FRAME
        if self._payload == "tone":
            return opus_tone(speaker.frequency, n, fec=self._fec)
        return self._payload(speaker, n)

    def _messages(
        self,
        marbles: str,
        shift: float,
        lookup: Mapping[str | float, Any] | None,
        error: Exception | None,
        cipher: TransportCipher | None,
    ) -> list[Recorded[Any]]:
        table = lookup or {}
        records: list[Recorded[Any]] = []
        for t, notification in parse(marbles, self.timespan, error):
            time = t + shift
            if isinstance(notification, OnNext):
                notification = OnNext(self._element(notification.value, time, table, cipher))
            # Recorded's time is typed int, but the TestScheduler takes float seconds.
            records.append(Recorded(cast(int, time), notification))
        return records

    def _element(
        self,
        token: Any,
        time: float,
        table: Mapping[str | float, Any],
        cipher: TransportCipher | None,
    ) -> Any:
        if token in table or str(token) in table:
            return _look_up(token, table)
        match = _TOKEN.fullmatch(str(token))
        if match is None or (match["speaker"] or "a") not in self.speakers:
            return token
        at = time if time >= SUBSCRIBED else SUBSCRIBED + time
        frame = self.frame(token, at)
        if cipher is None:
            return frame
        return encrypted_datagram(cipher, int(match["n"]), frame.ssrc, frame.opus)

    def _record(self, time: float, value: Notification[Any] | Any, describe: bool) -> Recorded[Any]:
        ms = round((float(time) - SUBSCRIBED) * 1000)
        if describe and isinstance(value, OnNext):
            value = OnNext(self.describe(value.value))
        return Recorded(ms, value)


def values(records: list[Recorded[Any]]) -> list[Any]:
    """The values of the ``on_next`` records, in order (times and completion dropped)."""
    return [r.value.value for r in records if isinstance(r.value, OnNext)]


def parse(
    marbles: str, timespan: float = FRAME, error: Exception | None = None
) -> list[tuple[float, Notification[Any]]]:
    """Parse a diagram where each element or group lasts one position.

    Args:
        marbles: The diagram (see the module docstring).
        timespan: Seconds per position.
        error: The exception of ``#``; a generic ``Exception`` by default.

    Returns:
        ``(seconds from position 0, notification)`` in order; elements are
        ``int`` or ``float`` when numeric, else ``str``.

    Raises:
        InvalidArgument: On a comma outside a group, or an unbalanced or nested
            parenthesis.
    """
    out: list[tuple[float, Notification[Any]]] = []
    position = 0
    text = marbles.replace(" ", "")
    end = 0
    for match in _LEXICON.finditer(text):
        if match.start() != end or "(" in match[0][1:]:
            raise InvalidArgument(f"an unbalanced or nested parenthesis in {marbles!r}")
        end = match.end()
        group, dashes, comma, element = match.groups(default="")
        if comma:
            raise InvalidArgument(f"a comma outside a group in {marbles!r}")
        if dashes:
            position += len(dashes)
            continue
        items = group[1:-1].split(",") if group else [element]
        for item in items:
            if item:
                out.append((position * timespan, _notification(item, error)))
        position += 1
    if end != len(text):
        raise InvalidArgument(f"an unbalanced or nested parenthesis in {marbles!r}")
    return out


def _notification(item: str, error: Exception | None) -> Notification[Any]:
    if item == "|":
        return OnCompleted()
    if item == "#":
        return OnError(error or Exception("error"))
    value: Any = item
    for kind in (int, float):
        try:
            value = kind(item)
        except ValueError:
            continue
        break
    return OnNext(value)


def _look_up(token: Any, table: Mapping[str | float, Any]) -> Any:
    if token in table:
        return table[token]
    return table.get(str(token), token)


@contextmanager
def voice_marbles(
    timespan: float = FRAME,
    *,
    speakers: Mapping[str, ToneSpeaker] | None = None,
    payload: Payload = "tone",
    fec: bool = True,
    tokens: Mapping[type, TokenFunction] | None = None,
) -> Iterator[VoiceMarbles]:
    """Open a virtual-time marble test for voice pipelines.

    Args:
        timespan: Seconds per marble character (20 ms: one frame).
        speakers: Extra or replacement speakers by one-letter name, e.g.
            ``{"A": ToneSpeaker("1001", 11)}`` for speaker ``a`` on a new SSRC.
        payload: Frame payloads: ``"tone"`` (real Opus of the speaker's
            tone), ``"silence"`` (``F8 FF FE``) or a function ``(speaker, n) -> bytes``.
        fec: Encode tones with in-band FEC.
        tokens: Tokens for more types, e.g. ``{AudioLevel: lambda v: "loud"
            if v.dbfs > -30 else "soft"}``; they take precedence over the
            built-in ones (see :attr:`VoiceMarbles.tokens`).

    Yields:
        The test: build sources with ``hot``/``cold``, run once with
        ``start``, compare with ``exp`` or ``render``.
    """
    yield VoiceMarbles(
        TestScheduler(),
        timespan,
        {**DEFAULT_SPEAKERS, **(speakers or {})},
        payload,
        fec,
        tokens,
    )

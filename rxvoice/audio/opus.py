"""Opus decoding and encoding over libopus, loaded lazily.

Discord voice is Opus at 48 kHz, stereo, in 20 ms frames: 960 samples per
channel, RTP timestamp step 960. This module wraps libopus through
``opuslib``'s low-level ``opuslib.api`` bindings, calling ``opus_decode`` with
a preallocated ctypes buffer (about 3x faster than ``opuslib.Decoder.decode``,
which allocates and copies through ``array`` on every call).

libopus is loaded on first use, not on import: ``import rxvoice.audio`` works
without it, and only constructing an :class:`OpusDecoder` or :class:`OpusEncoder`
raises :class:`~rxvoice.errors.OpusUnavailable`.

PCM is ``numpy.int16`` shaped ``(samples, channels)``, i.e. interleaved in
memory as libopus wants it.
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt

from rxvoice.errors import MalformedPacket, OpusUnavailable, UsageError

__all__ = [
    "CHANNELS",
    "FRAME_DURATION",
    "SAMPLES_PER_FRAME",
    "SAMPLE_RATE",
    "SILENCE_FRAME",
    "OpusDecoder",
    "OpusEncoder",
    "opus_available",
    "packet_has_fec",
    "require_opus",
]

SAMPLE_RATE: Final = 48_000
"""Discord's Opus sample rate, in Hz."""

CHANNELS: Final = 2
"""Discord's Opus channel count (stereo)."""

SAMPLES_PER_FRAME: Final = 960
"""Samples per channel in one 20 ms frame at 48 kHz; also the RTP timestamp step."""

FRAME_DURATION: Final = 0.02
"""Seconds of audio in one Discord Opus frame."""

SILENCE_FRAME: Final = b"\xf8\xff\xfe"
"""The 3-byte Opus frame Discord clients send when they stop talking."""

# The longest Opus packet: 120 ms (RFC 6716 §3.2.5), in 2.5 ms units.
_MAX_PACKET_MS10 = 1200
# libopus' recommended output buffer size for one encoded packet.
_MAX_PACKET_BYTES = 4000
_SAMPLE_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)
_APPLICATIONS = {"voip": 2048, "audio": 2049, "restricted_lowdelay": 2051}

# CTL request numbers from opus_defines.h.
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_RESET_STATE = 4028

Application = Literal["voip", "audio", "restricted_lowdelay"]
PcmArray = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class _Lib:
    """The loaded ``opuslib.api`` modules."""

    decoder: Any
    encoder: Any
    strerror: Any


_lib: _Lib | None = None


def _load() -> _Lib:
    """Import opuslib (which loads libopus) once.

    Raises:
        OpusUnavailable: If opuslib or libopus cannot be loaded.
    """
    global _lib  # a process-wide cache: libopus is loaded once
    if _lib is None:
        try:
            # opuslib raises a bare Exception (not ImportError) when
            # find_library("opus") fails, and OSError when loading fails.
            import opuslib.api.decoder
            import opuslib.api.encoder
            import opuslib.api.info
        except Exception as exc:
            raise OpusUnavailable() from exc
        _lib = _Lib(opuslib.api.decoder, opuslib.api.encoder, opuslib.api.info.strerror)
    return _lib


def require_opus() -> None:
    """Load libopus now, so that a program fails at once (not later in a task) without it.

    Raises:
        OpusUnavailable: If opuslib or libopus cannot be loaded.
    """
    _load()


def opus_available() -> bool:
    """Return whether libopus can be loaded (loading it if needed)."""
    try:
        _load()
    except OpusUnavailable:
        return False
    return True


def _error_text(lib: _Lib, code: int) -> str:
    text = lib.strerror(code)
    return text.decode() if isinstance(text, bytes) else str(text)


def _check_rate_channels(sample_rate: int, channels: int) -> None:
    if sample_rate not in _SAMPLE_RATES:
        raise UsageError(f"sample_rate must be one of {_SAMPLE_RATES}, got {sample_rate}")
    if channels not in (1, 2):
        raise UsageError(f"channels must be 1 or 2, got {channels}")


class _LibopusState:
    """A libopus state with its rate and channels, freed once.

    The state is released by :meth:`close`, on leaving a ``with`` block, or on
    garbage collection, whichever comes first.
    """

    __slots__ = ("__weakref__", "_channels", "_finalizer", "_lib", "_rate", "_state")

    _kind = "state"

    def _own(self, lib: _Lib, state: Any, destroy: Any, sample_rate: int, channels: int) -> None:
        self._lib = lib
        self._rate = sample_rate
        self._channels = channels
        self._state: Any = state
        self._finalizer = weakref.finalize(self, destroy, state)

    @property
    def sample_rate(self) -> int:
        """The sample rate in Hz."""
        return self._rate

    @property
    def channels(self) -> int:
        """The channel count."""
        return self._channels

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has freed the libopus state."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Free the libopus state now. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise UsageError(f"the Opus {self._kind} is closed")


class OpusDecoder(_LibopusState):
    """Decodes one Opus stream (one SSRC) to int16 PCM.

    Args:
        sample_rate: Output rate in Hz: 8000, 12000, 16000, 24000 or 48000.
        channels: Output channels, 1 or 2 (libopus down- or up-mixes).

    Raises:
        OpusUnavailable: If libopus is not installed.
        UsageError: If ``sample_rate`` or ``channels`` is not supported.

    The libopus state is freed by :meth:`close`, on leaving a ``with`` block,
    or when the decoder is garbage collected, whichever comes first. An
    instance is not thread-safe; use one per stream.

    Example:
        >>> with OpusDecoder() as decoder:
        ...     pcm = decoder.decode(SILENCE_FRAME)
        >>> pcm.shape, pcm.dtype.name
        ((960, 2), 'int16')
    """

    __slots__ = ("_buffer", "_decode_fn", "_frames")

    _kind = "decoder"

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = CHANNELS) -> None:
        _check_rate_channels(sample_rate, channels)
        lib = _load()
        state = lib.decoder.create_state(sample_rate, channels)
        self._own(lib, state, lib.decoder.destroy, sample_rate, channels)
        # One output buffer, big enough for a 120 ms packet, reused by every
        # call; results are copied out so callers never see it change.
        max_samples = sample_rate * _MAX_PACKET_MS10 // 10_000
        self._buffer = (ctypes.c_int16 * (max_samples * channels))()
        # The buffer as (samples, channels): a result is one slice and one copy.
        self._frames: PcmArray = np.ctypeslib.as_array(self._buffer).reshape(-1, channels)
        self._decode_fn = lib.decoder.libopus_decode

    @property
    def frame_samples(self) -> int:
        """Samples per channel in 20 ms at this decoder's rate (960 at 48 kHz)."""
        return self._rate // 50

    def decode(self, packet: bytes) -> PcmArray:
        """Decode one Opus packet.

        Args:
            packet: The Opus payload (no RTP header), e.g. :attr:`AudioFrame.opus`.

        Returns:
            A new int16 array shaped ``(samples, channels)``; 960 samples for a
            20 ms packet at 48 kHz.

        Raises:
            MalformedPacket: If the packet is empty or libopus rejects it as
                corrupted. The decoder stays usable; conceal the frame instead.
            UsageError: If the decoder is closed.
        """
        if not packet:
            raise MalformedPacket("empty Opus packet")
        return self._decode(packet, len(self._buffer) // self._channels, fec=False)

    def conceal(self, samples: int | None = None) -> PcmArray:
        """Synthesise audio for a lost packet (libopus packet-loss concealment).

        Args:
            samples: Samples per channel to synthesise, a multiple of 2.5 ms;
                ``None`` for one 20 ms frame (960 at 48 kHz).

        Returns:
            A new int16 array shaped ``(samples, channels)``.

        Raises:
            UsageError: If ``samples`` is not a positive multiple of 2.5 ms up
                to 120 ms, or the decoder is closed.
        """
        return self._decode(None, self._frame_size(samples), fec=False)

    def decode_fec(self, next_packet: bytes, samples: int | None = None) -> PcmArray:
        """Recover a lost frame from the in-band FEC data of the packet after it.

        Call it for the lost frame, before decoding ``next_packet`` itself
        normally. When ``next_packet`` carries no FEC data (see
        :func:`packet_has_fec`) libopus conceals the frame instead.

        Args:
            next_packet: The packet that followed the lost one.
            samples: Duration of the lost frame in samples per channel, a
                multiple of 2.5 ms; ``None`` for 20 ms.

        Returns:
            A new int16 array shaped ``(samples, channels)``.

        Raises:
            MalformedPacket: If ``next_packet`` is empty or corrupted.
            UsageError: If ``samples`` is invalid or the decoder is closed.
        """
        if not next_packet:
            raise MalformedPacket("empty Opus packet")
        return self._decode(next_packet, self._frame_size(samples), fec=True)

    def reset(self) -> None:
        """Return the decoder to its freshly created state (e.g. a new talk spurt).

        Raises:
            UsageError: If the decoder is closed.
        """
        self._check_open()
        self._lib.decoder.libopus_ctl(self._state, _RESET_STATE)

    def _frame_size(self, samples: int | None) -> int:
        if samples is None:
            return self._rate // 50
        quantum = self._rate // 400  # 2.5 ms
        if samples <= 0 or samples % quantum or samples * self._channels > len(self._buffer):
            raise UsageError(
                f"samples must be a positive multiple of {quantum} (2.5 ms) up to "
                f"{len(self._buffer) // self._channels} (120 ms), got {samples}"
            )
        return samples

    def _decode(self, packet: bytes | None, frame_size: int, *, fec: bool) -> PcmArray:
        self._check_open()
        n = self._decode_fn(
            self._state,
            packet,
            len(packet) if packet is not None else 0,
            self._buffer,
            frame_size,
            fec,
        )
        if n < 0:
            raise MalformedPacket(f"Opus packet could not be decoded: {_error_text(self._lib, n)}")
        return self._frames[:n].copy()


class OpusEncoder(_LibopusState):
    """Encodes int16 PCM frames to Opus packets.

    Args:
        sample_rate: Input rate in Hz: 8000, 12000, 16000, 24000 or 48000.
        channels: Input channels, 1 or 2.
        application: ``"audio"`` (music and general audio), ``"voip"``
            (speech; best with FEC) or ``"restricted_lowdelay"``.
        bitrate: Target bits per second (Discord uses 64000 by default).
        fec: Enable in-band forward error correction: each packet also carries
            a low-bitrate copy of the previous frame (SILK and hybrid modes).
        packet_loss_percent: Expected packet loss (0-100); makes the encoder
            spend more bits on FEC and robustness.
        complexity: Encoder complexity 0 (fastest) to 10 (best).

    Raises:
        OpusUnavailable: If libopus is not installed.
        UsageError: If an argument is out of range.

    Example:
        >>> import numpy as np
        >>> with OpusEncoder() as encoder:
        ...     packet = encoder.encode(np.zeros((960, 2), np.int16))
        >>> 0 < len(packet) < 100
        True
    """

    __slots__ = ("_out",)

    _kind = "encoder"

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        channels: int = CHANNELS,
        application: Application = "audio",
        bitrate: int = 64_000,
        *,
        fec: bool = False,
        packet_loss_percent: int = 0,
        complexity: int = 10,
    ) -> None:
        _check_rate_channels(sample_rate, channels)
        if application not in _APPLICATIONS:
            raise UsageError(f"application must be one of {sorted(_APPLICATIONS)}")
        if not 500 <= bitrate <= 512_000:
            raise UsageError(f"bitrate must be in [500, 512000], got {bitrate}")
        if not 0 <= packet_loss_percent <= 100:
            raise UsageError(f"packet_loss_percent must be in [0, 100], got {packet_loss_percent}")
        if not 0 <= complexity <= 10:
            raise UsageError(f"complexity must be in [0, 10], got {complexity}")
        lib = _load()
        state = lib.encoder.create_state(sample_rate, channels, _APPLICATIONS[application])
        self._own(lib, state, lib.encoder.destroy, sample_rate, channels)
        self._out = (ctypes.c_char * _MAX_PACKET_BYTES)()
        self._ctl(_SET_BITRATE, bitrate)
        self._ctl(_SET_COMPLEXITY, complexity)
        self._ctl(_SET_INBAND_FEC, int(fec))
        self._ctl(_SET_PACKET_LOSS_PERC, packet_loss_percent)

    def encode(self, pcm: PcmArray) -> bytes:
        """Encode one frame.

        Args:
            pcm: int16 samples shaped ``(samples, channels)`` (or 1-D for mono),
                where ``samples`` is 2.5, 5, 10, 20, 40 or 60 ms worth (960 for
                20 ms at 48 kHz).

        Returns:
            One Opus packet.

        Raises:
            UsageError: If the shape, dtype or frame size is wrong, or the
                encoder is closed.
        """
        self._check_open()
        if pcm.dtype != np.int16:
            raise UsageError(f"pcm must be int16, got {pcm.dtype}")
        ch = self._channels
        if not ((pcm.ndim == 1 and ch == 1) or (pcm.ndim == 2 and pcm.shape[1] == ch)):
            raise UsageError(f"pcm must be shaped (samples, {ch}), got {pcm.shape}")
        samples = pcm.shape[0]
        # Legal Opus frame durations, in units of 2.5 ms: 2.5, 5, 10, 20, 40, 60 ms.
        if samples * 400 % self._rate or samples * 400 // self._rate not in (1, 2, 4, 8, 16, 24):
            raise UsageError(f"{samples} samples is not an Opus frame size at {self._rate} Hz")
        data = np.ascontiguousarray(pcm)
        n = self._lib.encoder.libopus_encode(
            self._state,
            data.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
            samples,
            self._out,
            _MAX_PACKET_BYTES,
        )
        if n < 0:  # pragma: no cover - libopus only fails on bad arguments
            raise UsageError(f"Opus encoding failed: {_error_text(self._lib, n)}")
        return self._out.raw[:n]

    def reset(self) -> None:
        """Return the encoder to its freshly created state (keeps the settings).

        Raises:
            UsageError: If the encoder is closed.
        """
        self._check_open()
        self._lib.encoder.libopus_ctl(self._state, _RESET_STATE)

    def _ctl(self, request: int, value: int) -> None:
        code = self._lib.encoder.libopus_ctl(self._state, request, ctypes.c_int(value))
        if code < 0:  # pragma: no cover - the values are validated above
            raise UsageError(
                f"Opus encoder setting {request} failed: {_error_text(self._lib, code)}"
            )


def packet_has_fec(packet: bytes) -> bool:
    """Return whether an Opus packet carries in-band FEC (LBRR) data.

    Reads the TOC byte and the first header bits of the first frame (RFC 6716
    §3.1, §3.2 and §4.2.3): only SILK-only and hybrid packets can carry LBRR
    data, and its flags are the first symbols of the range coder, coded with
    probability 1/2, so they are the top bits of the frame's first byte. Needs
    no libopus. Malformed packets give ``False``.

    Args:
        packet: An Opus packet.

    Returns:
        Whether :meth:`OpusDecoder.decode_fec` can recover the previous frame
        from it.
    """
    if not packet:
        return False
    toc = packet[0]
    config = toc >> 3
    if config >= 16:  # CELT-only: no SILK layer, no LBRR
        return False
    # SILK-only packets last 10, 20, 40 or 60 ms (1, 1, 2, 3 SILK frames);
    # hybrid ones 10 or 20 ms (one SILK frame).
    silk_frames = (1, 1, 2, 3)[config & 3] if config < 12 else 1
    channels = 2 if toc & 0x04 else 1
    start = _first_frame_offset(packet)
    if start is None or start >= len(packet):
        return False
    first = packet[start]
    # Per channel (mid, then side): one VAD flag per SILK frame, then the LBRR flag.
    for ch in range(channels):
        bit = (ch + 1) * (silk_frames + 1) - 1
        if first & (0x80 >> bit):
            return True
    return False


def _first_frame_offset(packet: bytes) -> int | None:
    """Return where the first frame's data starts (RFC 6716 §3.2), or ``None``."""
    code = packet[0] & 0x03
    if code in (0, 1):  # one frame, or two of equal size: data follows the TOC
        return 1
    if code == 2:  # two frames, the first one's length coded in 1 or 2 bytes
        if len(packet) < 2:
            return None
        return 2 if packet[1] < 252 else 3
    # Code 3: frame count byte, optional padding length, then VBR frame lengths.
    if len(packet) < 2:
        return None
    count_byte = packet[1]
    vbr, padded, count = count_byte & 0x80, count_byte & 0x40, count_byte & 0x3F
    pos = 2
    if padded:
        while True:
            if pos >= len(packet):
                return None
            pad = packet[pos]
            pos += 1
            if pad != 255:
                break
    if vbr:
        for _ in range(count - 1):
            if pos >= len(packet):
                return None
            pos += 1 if packet[pos] < 252 else 2
    return pos

from __future__ import annotations

import ctypes.util
import gc
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

from rxvoice.audio import opus
from rxvoice.audio.opus import (
    SAMPLES_PER_FRAME,
    SILENCE_FRAME,
    OpusDecoder,
    OpusEncoder,
    packet_has_fec,
)
from rxvoice.errors import MalformedPacket, OpusUnavailable, UsageError
from tests.vectors import RTP

RATE = 48_000


def sine(freq: float, frames: int, amplitude: float = 10_000) -> np.ndarray:
    t = np.arange(frames * SAMPLES_PER_FRAME) / RATE
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return np.stack([x, x], axis=1)


def speech_like(frames: int) -> np.ndarray:
    """A voiced, pitch-gliding harmonic signal: the encoder treats it as speech."""
    t = np.arange(frames * SAMPLES_PER_FRAME) / RATE
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 2 * t)) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 15))
    x = (6000 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.int16)
    return np.stack([x, x], axis=1)


def frames_of(pcm: np.ndarray) -> list[np.ndarray]:
    return [pcm[i : i + SAMPLES_PER_FRAME] for i in range(0, len(pcm), SAMPLES_PER_FRAME)]


def encode_all(encoder: OpusEncoder, pcm: np.ndarray) -> list[bytes]:
    return [encoder.encode(frame) for frame in frames_of(pcm)]


def test_sine_round_trip_keeps_frequency_and_energy() -> None:
    pcm = sine(440, 50)
    with OpusEncoder(bitrate=64_000) as encoder, OpusDecoder() as decoder:
        packets = encode_all(encoder, pcm)
        out = np.concatenate([decoder.decode(p) for p in packets])
    assert out.shape == pcm.shape
    assert out.dtype == np.int16
    # Opus delays the signal by its look-ahead: find the lag, then compare.
    ref = pcm[:, 0].astype(np.float64)
    got = out[:, 0].astype(np.float64)
    lags = range(0, 1000)
    corr = [np.dot(ref[5000:40000], got[5000 + lag : 40000 + lag]) for lag in lags]
    lag = int(np.argmax(corr))
    a, b = ref[5000:40000], got[5000 + lag : 40000 + lag]
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert np.sqrt(np.mean(b**2)) == pytest.approx(np.sqrt(np.mean(a**2)), rel=0.1)


def test_silence_frame_decodes_to_near_silence() -> None:
    with OpusDecoder() as decoder:
        out = decoder.decode(SILENCE_FRAME)
    assert out.shape == (960, 2)
    assert np.abs(out).max() <= 2


def test_real_discord_packet_decodes() -> None:
    # A hybrid (SILK + CELT) mono packet from a Discord client, after the
    # 8-byte header-extension body.
    packet = RTP["XCHACHA20_SAMPLE"]["decrypted"][8:]
    with OpusDecoder() as decoder:
        assert decoder.decode(packet).shape == (960, 2)
    assert packet_has_fec(packet) is False


def test_decode_returns_a_fresh_array_each_time() -> None:
    with OpusEncoder() as encoder, OpusDecoder() as decoder:
        packets = encode_all(encoder, sine(440, 3))
        first = decoder.decode(packets[0])
        snapshot = first.copy()
        decoder.decode(packets[1])
        assert (first == snapshot).all()


def test_conceal_shapes() -> None:
    with OpusDecoder() as decoder:
        assert decoder.conceal().shape == (960, 2)
        assert decoder.conceal(480).shape == (480, 2)
        assert decoder.conceal(5760).shape == (5760, 2)
        for bad in (0, 100, 5760 + 120):
            with pytest.raises(UsageError):
                decoder.conceal(bad)
    with OpusDecoder(16_000, 1) as narrow:
        assert narrow.conceal().shape == (320, 1)
        assert narrow.frame_samples == 320


def recover(packets: list[bytes], lost: int) -> tuple[float, float]:
    """RMS error against the truth of FEC recovery and of concealment of one loss."""
    reference, with_fec, with_plc = OpusDecoder(), OpusDecoder(), OpusDecoder()
    for p in packets[:lost]:
        for d in (reference, with_fec, with_plc):
            d.decode(p)
    truth = reference.decode(packets[lost]).astype(np.float64)
    recovered = with_fec.decode_fec(packets[lost + 1]).astype(np.float64)
    concealed = with_plc.conceal().astype(np.float64)
    assert recovered.shape == concealed.shape == (960, 2)
    # The next packet itself still decodes normally afterwards.
    assert with_fec.decode(packets[lost + 1]).shape == (960, 2)
    return (
        float(np.sqrt(np.mean((recovered - truth) ** 2))),
        float(np.sqrt(np.mean((concealed - truth) ** 2))),
    )


def test_fec_recovers_a_lost_frame_better_than_concealment() -> None:
    pcm = speech_like(24)
    with OpusEncoder(application="voip", bitrate=32_000, fec=True, packet_loss_percent=30) as enc:
        packets = encode_all(enc, pcm)
    assert not packet_has_fec(packets[0])  # nothing before it to protect
    flags = [packet_has_fec(p) for p in packets]
    assert sum(flags) >= 0.7 * len(flags)
    fec_error, plc_error = recover(packets, 4)
    assert flags[5]
    assert fec_error < plc_error / 2


def test_packet_has_fec_agrees_with_libopus() -> None:
    """Where the LBRR flag is set FEC beats concealment; where not, libopus conceals."""
    pcm = speech_like(24)
    with OpusEncoder(application="voip", bitrate=32_000, fec=True, packet_loss_percent=30) as enc:
        packets = encode_all(enc, pcm)
    for lost in range(1, len(packets) - 1):
        fec_error, plc_error = recover(packets, lost)
        assert packet_has_fec(packets[lost + 1]) == (fec_error < 0.8 * plc_error), lost


def test_decode_fec_without_fec_data_conceals() -> None:
    with OpusEncoder() as enc, OpusDecoder() as dec:
        packets = encode_all(enc, sine(440, 3))
        dec.decode(packets[0])
        assert not packet_has_fec(packets[2])
        assert dec.decode_fec(packets[2]).shape == (960, 2)


@pytest.mark.parametrize("garbage", [b"\x03", b"\x03\xff", b"\x7f\xff\xff\xff"])
def test_corrupted_packet_raises_and_the_decoder_keeps_working(garbage: bytes) -> None:
    pcm = sine(440, 10)
    with OpusEncoder() as enc:
        packets = encode_all(enc, pcm)
    clean, damaged = OpusDecoder(), OpusDecoder()
    expected = [clean.decode(p) for p in packets]
    got = []
    for i, p in enumerate(packets):
        if i == 5:
            with pytest.raises(MalformedPacket, match="could not be decoded"):
                damaged.decode(garbage)
        got.append(damaged.decode(p))
    assert all((a == b).all() for a, b in zip(expected, got, strict=True))


def test_empty_packet_is_malformed() -> None:
    with OpusDecoder() as dec:
        with pytest.raises(MalformedPacket, match="empty"):
            dec.decode(b"")
        with pytest.raises(MalformedPacket, match="empty"):
            dec.decode_fec(b"")


def test_reset_restores_a_fresh_decoder() -> None:
    with OpusEncoder() as enc:
        packets = encode_all(enc, sine(440, 6))
    fresh, used = OpusDecoder(), OpusDecoder()
    for p in packets[:4]:
        used.decode(p)
    used.reset()
    assert (used.decode(packets[4]) == fresh.decode(packets[4])).all()


def test_close_is_deterministic_idempotent_and_final() -> None:
    decoder = OpusDecoder()
    assert not decoder.closed
    decoder.close()
    decoder.close()
    assert decoder.closed
    with pytest.raises(UsageError, match="closed"):
        decoder.decode(SILENCE_FRAME)
    with pytest.raises(UsageError, match="closed"):
        decoder.reset()
    encoder = OpusEncoder()
    with encoder:
        pass
    assert encoder.closed
    with pytest.raises(UsageError, match="closed"):
        encoder.encode(np.zeros((960, 2), np.int16))


def test_state_is_freed_on_garbage_collection() -> None:
    decoder = OpusDecoder()
    finalizer = decoder._finalizer
    del decoder
    gc.collect()
    assert not finalizer.alive


def test_encoder_validates_its_input() -> None:
    with OpusEncoder() as enc:
        with pytest.raises(UsageError, match="int16"):
            enc.encode(np.zeros((960, 2), np.float32))
        with pytest.raises(UsageError, match="shaped"):
            enc.encode(np.zeros((960, 1), np.int16))
        with pytest.raises(UsageError, match="frame size"):
            enc.encode(np.zeros((1000, 2), np.int16))
        assert len(enc.encode(np.zeros((480, 2), np.int16))) > 0  # 10 ms is legal
    with OpusEncoder(channels=1) as mono:
        assert len(mono.encode(np.zeros(960, np.int16))) > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 44_100},
        {"channels": 3},
        {"application": "music"},
        {"bitrate": 100},
        {"packet_loss_percent": 101},
        {"complexity": 11},
    ],
)
def test_encoder_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        OpusEncoder(**kwargs)


def test_decoder_rejects_bad_settings() -> None:
    with pytest.raises(UsageError):
        OpusDecoder(44_100)
    with pytest.raises(UsageError):
        OpusDecoder(channels=0)


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"", False),
        (SILENCE_FRAME, False),  # CELT-only
        (bytes([1 << 3, 0b0100_0000]), True),  # SILK mono 20 ms: VAD, LBRR
        (bytes([1 << 3, 0b1000_0000]), False),  # VAD only
        (bytes([1 << 3 | 0x04, 0b0001_0000]), True),  # stereo: the side channel's LBRR
        (bytes([3 << 3, 0b0001_0000]), True),  # SILK 60 ms: 3 VAD flags, then LBRR
        (bytes([3 << 3, 0b0100_0000]), False),  # ... so bit 1 is a VAD flag
        (bytes([15 << 3, 0b0100_0000]), True),  # hybrid 20 ms
        (bytes([1 << 3 | 1, 0b0100_0000, 0]), True),  # code 1: two equal frames
        (bytes([1 << 3 | 2, 1, 0b0100_0000, 0]), True),  # code 2: 1-byte length
        (bytes([1 << 3 | 2, 252, 0, 0b0100_0000]), True),  # code 2: 2-byte length
        (bytes([1 << 3 | 2]), False),  # truncated
        (bytes([1 << 3 | 3, 0x42, 255, 1, 0b0100_0000]), True),  # code 3, padding
        (bytes([1 << 3 | 3, 0x82, 5, 0b0100_0000]), True),  # code 3, VBR lengths
        (bytes([1 << 3 | 3, 0xC2, 255]), False),  # truncated padding
        (bytes([1 << 3 | 3, 0x83]), False),  # truncated lengths
        (bytes([1 << 3 | 3]), False),
    ],
)
def test_packet_has_fec(packet: bytes, expected: bool) -> None:
    assert packet_has_fec(packet) is expected


def test_missing_libopus_raises_opus_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus, "_lib", None)
    for name in [m for m in sys.modules if m == "opuslib" or m.startswith("opuslib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert opus.opus_available() is False
    with pytest.raises(OpusUnavailable, match="libopus is not installed") as info:
        OpusDecoder()
    assert "apt-get install libopus0" in str(info.value)
    with pytest.raises(OpusUnavailable):
        OpusEncoder()


def test_importing_rxvoice_audio_needs_no_libopus() -> None:
    # A fresh interpreter where the library lookup finds nothing.
    code = textwrap.dedent(
        """
        import ctypes.util, sys
        ctypes.util.find_library = lambda name: None
        import rxvoice, rxvoice.audio
        from rxvoice.audio import OpusDecoder, mix_blocks, resample
        assert "opuslib" not in sys.modules
        try:
            OpusDecoder()
        except rxvoice.errors.OpusUnavailable as exc:
            print("unavailable:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "unavailable: libopus is not installed" in result.stdout

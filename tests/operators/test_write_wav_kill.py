"""A WAV file written by ``write_wav`` stays readable when its process is killed (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

# Writes 50 chunks of 20 ms, says so, then blocks until killed: no finaliser,
# no atexit, no close() runs after the kill.
CHILD = """
import sys
import numpy as np
from reactivex.subject import Subject
from rxvoice import operators as vops
from rxvoice.events import PcmChunk

chunks = Subject()
chunks.pipe(vops.write_wav(sys.argv[1])).subscribe()
for n in range(50):
    pcm = np.full((960, 2), n, dtype=np.int16)
    chunks.on_next(PcmChunk("1001", 1, n * 960, pcm, time=n * 0.02))
print("written", flush=True)
sys.stdin.read()
"""


def test_a_killed_writer_leaves_a_readable_file_with_every_chunk(tmp_path: Path) -> None:
    path = tmp_path / "out" / "a.wav"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "written\n"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 48_000, 50 * 960)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").reshape(-1, 2)
    assert np.array_equal(pcm[::960, 0], np.arange(50))

"""The ``write_wav`` sink: one WAV file per user (or one for the mix), with stdlib ``wave``."""

from __future__ import annotations

import os
import threading
import wave
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeAlias

import numpy as np
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import PcmArray, StreamKey, stream_key

PathSpec: TypeAlias = "str | os.PathLike[str] | Callable[[str | None], str | os.PathLike[str]]"
"""A path, a ``str.format`` template with ``{user_id}``/``{ssrc}``, or a function of the user id."""


class WavFile:
    """A 16-bit PCM WAV file being written, in the format of its first chunk.

    Its folder is created if needed. Opening it ourselves (not through
    ``wave.open(path)``) means a failure leaves no half-built writer behind.

    Args:
        path: Where to write.
        chunk: The first chunk: its rate and channel count are the file's.
        raw: The file, already opened for binary writing (it is closed with
            this one); by default ``path`` is created or replaced.
    """

    __slots__ = (
        "__weakref__",
        "_finalizer",
        "_raw",
        "channels",
        "path",
        "rate",
        "samples",
        "writer",
    )

    def __init__(self, path: Path, chunk: PcmChunk, *, raw: BinaryIO | None = None) -> None:
        self.path = path
        self.rate = chunk.sample_rate
        self.channels = chunk.channels
        self.samples = 0  # samples per channel written so far
        if raw is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = path.open("wb")
        self._raw = raw
        try:
            self.writer = wave.open(self._raw, "wb")  # noqa: SIM115 - closed by close()
            self.writer.setnchannels(self.channels)
            self.writer.setsampwidth(2)
            self.writer.setframerate(self.rate)
        except BaseException:
            self._raw.close()
            raise
        # A file a pipeline abandons (never completed nor disposed) is still
        # finished when collected or at exit: the header first, then the file.
        self._finalizer = weakref.finalize(self, _finish, self.writer, self._raw)

    def write(self, chunk: PcmChunk) -> None:
        """Append a chunk's samples.

        Raises:
            UsageError: If the chunk's rate or channel count differs from the file's.
            OSError: If writing fails.
        """
        if chunk.sample_rate != self.rate or chunk.channels != self.channels:
            raise UsageError(
                f"{self.path}: chunk format {chunk.sample_rate} Hz x {chunk.channels} differs "
                f"from the file's {self.rate} Hz x {self.channels}"
            )
        self.write_pcm(chunk.pcm)

    def write_pcm(self, pcm: PcmArray) -> None:
        """Append int16 samples shaped ``(samples, channels)`` (or 1-D for mono)."""
        # WAV is little-endian int16, interleaved: (samples, channels) in C order.
        self.writer.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
        self.samples += int(pcm.shape[0])

    def write_silence(self, samples: int) -> None:
        """Append ``samples`` samples of silence (in blocks: a long pause costs no big array)."""
        block = np.zeros((min(samples, self.rate), self.channels), np.int16)
        while samples > 0:
            self.write_pcm(block[:samples])
            samples -= block.shape[0]

    def close(self) -> None:
        """Finish the header and close the file (the file is closed even if that fails).

        Raises:
            OSError: If the header could not be written (e.g. disk full).
        """
        self._finalizer.detach()
        try:
            self.writer.close()  # writes the final header sizes
        finally:
            self._raw.close()


def _finish(writer: wave.Wave_write, raw: BinaryIO) -> None:
    try:
        writer.close()
    except (OSError, ValueError):
        pass  # nobody is left to tell: the samples written are still in the file
    finally:
        raw.close()


def _resolve(spec: PathSpec, chunk: PcmChunk) -> Path:
    if callable(spec):
        return Path(spec(chunk.user_id))
    text = os.fspath(spec)
    if "{" in text:
        user = chunk.user_id if chunk.user_id is not None else "mix"
        return Path(text.format(user_id=user, ssrc=chunk.ssrc))
    return Path(text)


class WavFiles:
    """The files of one subscription of a WAV sink, by stream (user, or SSRC when unknown).

    Subclasses say which file a stream's first chunk opens (:meth:`open`)
    and may write differently (:meth:`write`) or finish the files on
    completion (:meth:`finish`).
    """

    def __init__(self) -> None:
        self.files: dict[StreamKey, WavFile] = {}

    def push(self, chunk: PcmChunk) -> None:
        """Write a chunk to its stream's file, opening it at the stream's first chunk."""
        key = stream_key(chunk)
        file = self.files.get(key)
        if file is None:
            file = self.files[key] = self.open(key, chunk)
        self.write(file, chunk)

    def open(self, key: StreamKey, chunk: PcmChunk) -> WavFile:
        """Open the file of a new stream."""
        raise NotImplementedError

    def write(self, file: WavFile, chunk: PcmChunk) -> None:
        """Write a chunk to its file."""
        file.write(chunk)

    def finish(self) -> None:
        """The source completed: complete the files before they close."""

    def close(self) -> tuple[list[Path], OSError | None]:
        """Close every file (all of them, even after a failure).

        Returns:
            The paths closed in good order, and the first error, if any.
        """
        closed: list[Path] = []
        first_error: OSError | None = None
        for file in self.files.values():
            try:
                file.close()
            except OSError as error:  # e.g. disk full while finishing the header
                first_error = first_error or error
                continue
            closed.append(file.path)
        self.files.clear()
        return closed, first_error


def wav_sink(new: Callable[[], WavFiles]) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    """Build a WAV sink: ``new()`` makes each subscription's files.

    Any exception while writing (an I/O error, a user's path function, a
    format change) closes the files and goes to ``on_error``. On completion
    the files are finished, closed, and their paths emitted; on error or
    dispose they are closed as they are, so they stay readable.
    """

    def operator(source: Observable[PcmChunk]) -> Observable[Path]:
        def subscribe(
            observer: abc.ObserverBase[Path],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            files = new()
            stopped = False

            def fail(error: Exception) -> None:
                nonlocal stopped
                stopped = True
                files.close()
                observer.on_error(error)

            def on_next(chunk: PcmChunk) -> None:
                with lock:
                    if stopped:
                        return
                    try:
                        files.push(chunk)
                    except Exception as error:  # OSError, the path function, a format change
                        fail(error)

            def on_error(error: Exception) -> None:
                with lock:
                    if not stopped:
                        fail(error)

            def on_completed() -> None:
                nonlocal stopped
                with lock:
                    if stopped:
                        return
                    try:
                        files.finish()
                    except Exception as error:
                        fail(error)
                        return
                    stopped = True
                    closed, close_error = files.close()
                    for path in closed:
                        observer.on_next(path)
                    if close_error is not None:
                        observer.on_error(close_error)  # a file is incomplete: not a success
                    else:
                        observer.on_completed()

            def release() -> None:
                # Unsubscribing still finalises the files, so they stay readable.
                nonlocal stopped
                with lock:
                    stopped = True
                    files.close()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(subscription, Disposable(release))

        return Observable(subscribe)

    return operator


class _PathFiles(WavFiles):
    """``write_wav``: a file per stream, named by a template, a function or a plain path."""

    def __init__(self, spec: PathSpec) -> None:
        super().__init__()
        self._spec = spec
        self._owners: dict[Path, StreamKey] = {}

    def open(self, key: StreamKey, chunk: PcmChunk) -> WavFile:
        target = _resolve(self._spec, chunk)
        owner = self._owners.setdefault(target, key)
        if owner != key:
            raise UsageError(
                f"two streams ({owner!r} and {key!r}) map to {target}:"
                " use a {user_id} template or a function for per-user files"
            )
        return WavFile(target, chunk)


def write_wav_(path: PathSpec) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    return wav_sink(lambda: _PathFiles(path))


__all__ = ["PathSpec", "WavFile", "WavFiles", "wav_sink", "write_wav_"]

"""The ``write_wav`` sink: one WAV file per user (or one for the mix), with stdlib ``wave``."""

from __future__ import annotations

import os
import threading
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import numpy as np
from reactivex import Observable, abc
from reactivex.disposable import CompositeDisposable, Disposable

from rxvoice.errors import UsageError
from rxvoice.events import PcmChunk
from rxvoice.operators._common import StreamKey, stream_key

PathSpec: TypeAlias = "str | os.PathLike[str] | Callable[[str | None], str | os.PathLike[str]]"
"""A path, a ``str.format`` template with ``{user_id}``/``{ssrc}``, or a function of the user id."""


class _WavFile:
    __slots__ = ("channels", "path", "rate", "writer")

    def __init__(self, path: Path, chunk: PcmChunk) -> None:
        self.path = path
        self.rate = chunk.sample_rate
        self.channels = chunk.channels
        self.writer = wave.open(str(path), "wb")  # noqa: SIM115 - closed by the operator
        self.writer.setnchannels(self.channels)
        self.writer.setsampwidth(2)
        self.writer.setframerate(self.rate)

    def write(self, chunk: PcmChunk) -> None:
        if chunk.sample_rate != self.rate or chunk.channels != self.channels:
            raise UsageError(
                f"{self.path}: chunk format {chunk.sample_rate} Hz x {chunk.channels} differs "
                f"from the file's {self.rate} Hz x {self.channels}"
            )
        # WAV is little-endian int16, interleaved: (samples, channels) in C order.
        self.writer.writeframes(np.ascontiguousarray(chunk.pcm, dtype="<i2").tobytes())


def _resolve(spec: PathSpec, chunk: PcmChunk) -> Path:
    if callable(spec):
        return Path(spec(chunk.user_id))
    text = os.fspath(spec)
    if "{" in text:
        user = chunk.user_id if chunk.user_id is not None else "mix"
        return Path(text.format(user_id=user, ssrc=chunk.ssrc))
    return Path(text)


def write_wav_(path: PathSpec) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    def operator(source: Observable[PcmChunk]) -> Observable[Path]:
        def subscribe(
            observer: abc.ObserverBase[Path],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            lock = threading.RLock()
            files: dict[StreamKey, _WavFile] = {}
            owners: dict[Path, StreamKey] = {}
            stopped = False

            def close_all() -> tuple[list[Path], OSError | None]:
                """Close every file (all of them, even after a failure)."""
                closed, first_error = [], None
                for file in files.values():
                    try:
                        file.writer.close()  # writes the final header sizes
                    except OSError as error:  # e.g. disk full while finishing the header
                        first_error = first_error or error
                        continue
                    closed.append(file.path)
                files.clear()
                return closed, first_error

            def fail(error: Exception) -> None:
                nonlocal stopped
                stopped = True
                close_all()
                observer.on_error(error)

            def on_next(chunk: PcmChunk) -> None:
                with lock:
                    if stopped:
                        return
                    key = stream_key(chunk)
                    try:
                        file = files.get(key)
                        if file is None:
                            target = _resolve(path, chunk)
                            if owners.get(target, key) != key:
                                raise UsageError(
                                    f"two streams ({owners[target]!r} and {key!r}) map to {target}:"
                                    " use a {user_id} template or a function for per-user files"
                                )
                            owners[target] = key
                            file = files[key] = _WavFile(target, chunk)
                        file.write(chunk)
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
                    stopped = True
                    closed, error = close_all()
                    for path_ in closed:
                        observer.on_next(path_)
                    if error is not None:
                        observer.on_error(error)  # a file is incomplete: not a success
                    else:
                        observer.on_completed()

            def release() -> None:
                # Unsubscribing still finalises the files, so they stay readable.
                nonlocal stopped
                with lock:
                    stopped = True
                    close_all()

            subscription = source.subscribe(on_next, on_error, on_completed, scheduler=scheduler)
            return CompositeDisposable(subscription, Disposable(release))

        return Observable(subscribe)

    return operator


__all__ = ["PathSpec", "write_wav_"]

"""The ``write_timeline`` sink: one WAV per user on the call's timeline, never replacing a file."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, TypeAlias

from reactivex import Observable

from rxvoice.events import PcmChunk
from rxvoice.operators._common import StreamKey
from rxvoice.operators._wav import WavFile, WavFiles, wav_sink

logger = logging.getLogger("rxvoice.operators")

Labels: TypeAlias = "Mapping[str, str] | Callable[[str], str | None]"
"""Display names by user id: a mapping, or a function returning ``None`` for "no label"."""

MAX_LABEL = 40
"""The longest label kept in a file name."""

MAX_RENAMES = 1000
"""How many names (``name.wav``, ``name-2.wav``, ...) are tried before giving up."""

_UNSAFE = re.compile(r"[^\w.-]+")


def file_stem(chunk: PcmChunk, labels: Labels | None) -> str:
    """The file name (without ``.wav``) of a stream: ``label-userid``, ``userid``, ``mix``...

    The label is made safe for any file system: runs of characters other than
    letters, digits, ``_``, ``.`` and ``-`` become ``_``, at most
    :data:`MAX_LABEL` characters, no leading dot.
    """
    user = chunk.user_id
    if user is None:
        return "mix" if chunk.ssrc is None else f"ssrc-{chunk.ssrc}"
    label = None
    if labels is not None:
        label = labels(user) if callable(labels) else labels.get(user)
    safe = _UNSAFE.sub("_", label or "").strip("_.")[:MAX_LABEL]
    return f"{safe}-{user}" if safe else user


def open_new(folder: Path, stem: str, suffix: str, taken: set[Path] | None = None) -> BinaryIO:
    """Create ``stem + suffix`` in ``folder`` (made if needed), or ``stem-2``, ``stem-3``...

    Never opens an existing file: a name is claimed with an exclusive create,
    so a file appearing meanwhile is not replaced either. The name chosen is
    the returned file's ``name``.

    Args:
        folder: Where.
        stem: The name without the suffix.
        suffix: E.g. ``".wav"``.
        taken: Names to skip, and to add the chosen one to.

    Returns:
        The new file, open for binary writing.

    Raises:
        FileExistsError: If :data:`MAX_RENAMES` names are all taken.
        OSError: If the folder or the file cannot be created.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_RENAMES + 1):
        path = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        if taken is not None and path in taken:
            continue
        try:
            raw = path.open("xb")
        except FileExistsError:
            continue
        if n > 1:
            logger.warning("%s%s exists and is kept: writing %s instead", stem, suffix, path.name)
        if taken is not None:
            taken.add(path)
        return raw
    raise FileExistsError(f"{folder / stem}{suffix} and {MAX_RENAMES - 1} other names exist")


class _TimelineFiles(WavFiles):
    """Sample ``k`` of every file is call time ``origin + k / rate``."""

    def __init__(self, folder: Path, start: float | None, labels: Labels | None) -> None:
        super().__init__()
        self._folder = folder
        self._origin = start
        self._labels = labels
        self._taken: set[Path] = set()

    def open(self, key: StreamKey, chunk: PcmChunk) -> WavFile:
        raw = open_new(self._folder, file_stem(chunk, self._labels), ".wav", self._taken)
        return WavFile(Path(raw.name), chunk, raw=raw)

    def write(self, file: WavFile, chunk: PcmChunk) -> None:
        if self._origin is None:
            self._origin = chunk.time
        position = round((chunk.time - self._origin) * file.rate)
        skip = file.samples - position  # > 0: already written over, or before the origin
        if skip < 0:
            file.write_silence(-skip)
        elif skip >= chunk.samples:
            return
        elif skip > 0:
            chunk = replace(chunk, pcm=chunk.pcm[skip:])
        file.write(chunk)

    def finish(self) -> None:
        # Every file as long as the longest: they line up end to end.
        end = max((f.samples / f.rate for f in self.files.values()), default=0.0)
        for file in self.files.values():
            missing = round(end * file.rate) - file.samples
            if missing > 0:
                file.write_silence(missing)


def write_timeline_(
    folder: str | os.PathLike[str], start: float | None, labels: Labels | None
) -> Callable[[Observable[PcmChunk]], Observable[Path]]:
    directory = Path(folder)
    return wav_sink(lambda: _TimelineFiles(directory, start, labels))


__all__ = ["MAX_LABEL", "MAX_RENAMES", "Labels", "open_new", "file_stem", "write_timeline_"]

"""A stream's outputs: the annotated video (each frame with its top-1 label drawn on it, H.264 in a fragmented MP4
through PyAV/FFmpeg) and the JSON-lines file.

Both are written beside their destination and moved into place when the stream ends, also after Ctrl-C or SIGTERM and
after a write that fails (a full disk, a file-size limit): the MP4 is fragmented (a ``moof``/``mdat`` pair about every
second, ISO/IEC 14496-12 8.8), so what was written before the failure is cut back to its last whole fragment and
plays; the JSON-lines file is cut back to its last whole line. A write failure raises :class:`OutputError` once; the
outputs are published with what they hold. On any other error the partial file is removed.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StreamError, require_modules
from ..fileio import atomic_path, json_text

DEFAULT_FPS = 30.0
FRAGMENT_US = 1_000_000  # a fragment about every second: what a failed write can lose at most
# empty_moov: the header carries no sample table, every fragment its own (moof + mdat): a file cut after any fragment plays
MOVFLAGS = "empty_moov+default_base_moof+frag_keyframe"


class OutputError(StreamError):
    """An output could not be written (``ENOSPC``, ``EFBIG``, ``EIO``): the stream stops; what was whole is kept."""


def _why_os(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def whole_fragments(path: Path) -> tuple[int, int]:
    """(bytes, samples) of the fragmented MP4 at ``path`` up to the end of its last whole ``moof`` + ``mdat`` pair
    (boxes as ISO/IEC 14496-12 4.2: 32-bit size, or 1 then a 64-bit size; samples from each ``trun``'s count)."""
    size = path.stat().st_size
    good = samples = pending = 0
    offset = 0
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            box_size, kind = struct.unpack(">I4s", head[:8])
            if box_size == 1 and len(head) == 16:
                box_size = struct.unpack(">Q", head[8:16])[0]
            if box_size < 8 or offset + box_size > size:
                break  # the box runs past the end: the cut is here
            if kind == b"moof":
                f.seek(offset)
                pending = _trun_samples(f.read(box_size))
            elif kind == b"mdat" and pending:
                samples += pending
                pending = 0
                good = offset + box_size
            elif kind in (b"ftyp", b"moov") and not samples:
                good = offset + box_size
            offset += box_size
    return (good if samples else 0), samples


def _trun_samples(moof: bytes) -> int:
    """The sample count of every ``trun`` in a ``moof`` box (``trun``: version/flags, then a 32-bit sample_count)."""
    count, at = 0, moof.find(b"trun")
    while at >= 4:
        count += struct.unpack(">I", moof[at + 8:at + 12])[0] if at + 12 <= len(moof) else 0
        at = moof.find(b"trun", at + 4)
    return count


class VideoWriter:
    """``write(rgb, label)`` H x W x 3 uint8 frames; the size is the first frame's (rounded down to even sides, as
    4:2:0 chroma needs), later frames of another size are scaled to it."""

    def __init__(self, path: Path, fps: float | None, name: str | None = None) -> None:
        self.path = path
        self.name = name or str(path)  # the destination, as errors name it
        self.rate = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] | None = None
        self.frames = 0  # frames given to the encoder
        self.failed: str | None = None  # why a write failed; nothing more is written after it
        self.kept = 0  # frames in the file once closed (after a failure: those in its whole fragments)

    def _open(self, width: int, height: int) -> None:
        import av

        self.size = (max(2, width - width % 2), max(2, height - height % 2))
        try:
            self.container = av.open(str(self.path), mode="w", format="mp4",
                                     options={"movflags": MOVFLAGS, "frag_duration": str(FRAGMENT_US)})
            self.stream = self.container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=self.rate)
        except av.error.FFmpegError as exc:
            raise OutputError(f"{self.name}: cannot write the video ({_why_os(exc)})") from exc
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "veryfast", "crf": "23"}

    def write(self, rgb: np.ndarray, label: str) -> None:
        import av
        from PIL import Image, ImageDraw, ImageFont

        if self.container is None:
            self._open(rgb.shape[1], rgb.shape[0])
        assert self.size is not None
        image = Image.fromarray(rgb)
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=max(12, self.size[1] // 30))
        left, top, right, bottom = draw.textbbox((8, 8), label, font=font)
        draw.rectangle((left - 4, top - 4, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.text((8, 8), label, fill=(255, 255, 255), font=font)
        frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            self.failed = _why_os(exc)
            raise OutputError(f"{self.name}: {self.failed}") from exc
        self.frames += 1

    def close(self) -> None:
        """Flush and close; after a failed write, cut the file back to its last whole fragment (``kept`` frames)."""
        import av

        if self.container is None:
            return
        try:
            if self.failed is None:
                for packet in self.stream.encode():  # flush the encoder's delayed frames
                    self.container.mux(packet)
        except (av.error.FFmpegError, OSError) as exc:
            self.failed = _why_os(exc)
        try:
            self.container.close()
        except (av.error.FFmpegError, OSError) as exc:
            self.failed = self.failed or _why_os(exc)
        self.container = None
        if self.failed is None:
            self.kept = self.frames
            return
        good, self.kept = whole_fragments(self.path)
        with open(self.path, "r+b") as f:  # shrinking a file needs no space
            f.truncate(good)


@contextlib.contextmanager
def video_writer(path: Path | None, fps: float | None) -> Iterator[VideoWriter | None]:
    """A :class:`VideoWriter` into a temporary file beside ``path``, moved over ``path`` when the block ends without an
    error and the file holds at least one frame (``writer.kept``; after a failed write, its whole fragments); None
    when ``path`` is None."""
    if path is None:
        yield None
        return
    require_modules("--save", "av")
    try:
        with atomic_path(path) as tmp:
            writer = VideoWriter(tmp, fps, name=str(path))
            try:
                yield writer
            finally:
                writer.close()
            if writer.kept == 0:
                raise _NothingWritten()
    except _NothingWritten:
        pass


class _NothingWritten(Exception):
    """No frame reached the writer: the temporary file is removed, nothing is published."""


class JsonLinesWriter:
    """One JSON object per line into an open binary file, each line written whole with ``os.write`` and counted; a write
    that fails (a full disk, a file-size limit) cuts the file back to its last whole line and raises
    :class:`OutputError` (``lines`` were kept)."""

    def __init__(self, f: Any, name: str) -> None:
        self.f, self.name = f, name
        self.lines = 0
        self.good = 0  # bytes in whole lines
        self.failed: str | None = None

    def write(self, obj: Any) -> None:
        if self.failed is not None:
            return
        data = (json_text(obj) + "\n").encode("utf-8")
        fd = self.f.fileno()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            self.failed = _why_os(exc)
            os.ftruncate(fd, self.good)
            raise OutputError(f"{self.name}: {self.failed}") from exc
        self.good += len(data)
        self.lines += 1

"""The annotated output video: each frame with its top-1 label drawn on it, H.264 in MP4 through PyAV (FFmpeg).

Written beside its destination and moved into place when closed (also after Ctrl-C or SIGTERM, so the frames
classified so far are a playable file); on an error the partial file is removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StreamError, require_modules
from ..fileio import atomic_path

DEFAULT_FPS = 30.0


class VideoWriter:
    """``write(rgb, label)`` H x W x 3 uint8 frames; the size is the first frame's (rounded down to even sides, as
    4:2:0 chroma needs), later frames of another size are scaled to it."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = path
        self.rate = Fraction(fps or DEFAULT_FPS).limit_denominator(1001)
        self.container: Any = None
        self.stream: Any = None
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        import av

        self.size = (max(2, width - width % 2), max(2, height - height % 2))
        try:
            self.container = av.open(str(self.path), mode="w", format="mp4")
            self.stream = self.container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=self.rate)
        except av.error.FFmpegError as exc:
            raise StreamError(f"cannot write the video: {exc}") from exc
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
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()
        self.container = None


@contextlib.contextmanager
def video_writer(path: Path | None, fps: float | None) -> Iterator[VideoWriter | None]:
    """A :class:`VideoWriter` into a temporary file beside ``path``, moved over ``path`` when the block ends without an
    error and at least one frame was written (``writer.frames``); None when ``path`` is None."""
    if path is None:
        yield None
        return
    require_modules("--save", "av")
    try:
        with atomic_path(path) as tmp:
            writer = VideoWriter(tmp, fps)
            try:
                yield writer
            finally:
                writer.close()
            if writer.frames == 0:
                raise _NothingWritten()
    except _NothingWritten:
        pass


class _NothingWritten(Exception):
    """No frame reached the writer: the temporary file is removed, nothing is published."""

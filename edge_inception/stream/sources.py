"""One source interface over a video file, a camera, a network stream and a folder of images (jetson-inference's
``videoSource``): ``with open_source(uri) as src: for frame in src.frames(): ...``.

Which class reads a URI is a table (:data:`SOURCE_KINDS`), tried in order; the base class knows no kind. Video is
decoded with PyAV (FFmpeg); a Jetson CSI camera (``csi://N``) is read through OpenCV's GStreamer backend where the
installed OpenCV has one. Frames that do not decode are skipped and counted in ``corrupt``; a file that ends early
sets ``truncated``; neither stops the stream.
"""

from __future__ import annotations

import abc
import glob
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import decode_for, find_images, is_image_name, load_image
from ..errors import ImageError, StreamError, require_modules
from ..names import is_number

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
OPEN_TIMEOUT_S = 10.0  # a network stream that sends nothing for this long is an error, not a hang


@dataclass
class Frame:
    """One decoded picture: ``rgb`` H x W x 3 uint8 (upright; a JPEG may be decoded at a reduced scale), ``full_size``
    the (width, height) its geometry is computed for, ``decode_ms`` the time the source took to produce it."""

    index: int  # position among the frames the source produced, 0-based
    timestamp_s: float | None  # presentation time in the video, seconds (None for images)
    rgb: np.ndarray
    full_size: tuple[int, int]
    decode_ms: float
    name: str | None = None  # the file, for folder sources


class VideoSource(abc.ABC):
    """A stream of frames. ``live`` sources (cameras, network streams) run at their own pace: the consumer keeps the
    latest frame and drops stale ones. File and folder sources are read to the end, none dropped."""

    kind = "source"
    live = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.corrupt = 0  # frames or files skipped because they did not decode
        self.truncated = False  # the input ended before its container said it would
        self.total: int | None = None  # frames expected, where the container says
        self.fps: float | None = None  # the source's frame rate, where known

    def __enter__(self) -> VideoSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Open the input; raises :class:`StreamError` in one line when it cannot."""

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Frames in order, until the input ends."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class AvSource(VideoSource):
    """A video file, a V4L2 camera or a network stream, demuxed and decoded by FFmpeg through PyAV (frame threads on)."""

    kind = "file"

    def __init__(self, uri: str, *, fmt: str | None = None, options: dict[str, str] | None = None) -> None:
        super().__init__(uri)
        self.fmt, self.options = fmt, options or {}
        self.container: Any = None

    def open(self) -> None:
        require_modules("stream (video decoding)", "av")
        import av

        try:
            self.container = av.open(self.uri, format=self.fmt, options=self.options, timeout=OPEN_TIMEOUT_S if self.live else None)
        except av.error.FFmpegError as exc:
            raise StreamError(f"{self.uri}: cannot open as video ({_why(exc)})") from exc
        if not self.container.streams.video:
            self.close()
            raise StreamError(f"{self.uri}: has no video stream")
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        self.total = stream.frames or None
        self.fps = float(stream.average_rate) if stream.average_rate else None

    def frames(self) -> Iterator[Frame]:
        import av

        assert self.container is not None, "open() first"
        stream = self.container.streams.video[0]
        packets = self.container.demux(stream)
        index = 0
        last_ts: float | None = None
        t0 = time.perf_counter()
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                self.truncated = self.truncated or self._ends_early(last_ts)
                return
            except av.error.FFmpegError as exc:  # the container ends mid-packet: keep what decoded
                log.info("%s: demuxing stopped: %s", self.uri, _why(exc))
                self.truncated = True
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                log.info("%s: a packet did not decode: %s", self.uri, _why(exc))
                self.corrupt += 1
                t0 = time.perf_counter()
                continue
            for vf in decoded:
                if vf.is_corrupt:
                    self.corrupt += 1
                    continue
                # Full-size RGB, then only the crop resampled (the fast path) or the reference transform. Measured: FFmpeg's
                # scaler straight from YUV to the resize's size was barely faster and moved pixels by up to 12 levels
                # (top-1 agreement 98.7 % on a 1080p clip, below the 99.5 % goal); this path is within one level.
                rgb = vf.to_ndarray(format="rgb24")
                ts = last_ts = float(vf.time) if vf.time is not None else None
                yield Frame(index, ts, rgb, (rgb.shape[1], rgb.shape[0]), (time.perf_counter() - t0) * 1e3)
                index += 1
                t0 = time.perf_counter()

    def _ends_early(self, last_ts: float | None) -> bool:
        """A file whose last frame comes more than a second before the duration its header gives was cut short."""
        duration = self.container.duration if self.container is not None and not self.live else None
        return bool(duration and last_ts is not None and last_ts < duration / 1e6 - 1.0)

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class CameraSource(AvSource):
    """A V4L2 camera: ``/dev/videoN`` or the index ``N`` (USB webcams; a Jetson's CSI camera through its V4L2 node)."""

    kind = "camera"
    live = True

    def __init__(self, uri: str) -> None:
        device = f"/dev/video{uri}" if is_number(uri) else uri
        super().__init__(device, fmt="v4l2" if sys.platform.startswith("linux") else None)

    def open(self) -> None:
        if sys.platform.startswith("linux") and not Path(self.uri).exists():
            here = sorted(glob.glob("/dev/video*"))
            raise StreamError(f"camera {self.uri} does not exist (cameras here: {', '.join(here) if here else 'none'})")
        super().open()


class NetworkSource(AvSource):
    """An RTSP / RTMP / HTTP / UDP stream (RTSP over TCP, which passes firewalls and loses no packets)."""

    kind = "network"
    live = True

    def __init__(self, uri: str) -> None:
        super().__init__(uri, options={"rtsp_transport": "tcp"} if uri.startswith(("rtsp://", "rtsps://")) else {})


class CsiSource(VideoSource):
    """A Jetson CSI camera, ``csi://N``: nvarguscamerasrc through OpenCV's GStreamer backend (JetPack's OpenCV has it)."""

    kind = "csi"
    live = True
    PIPELINE = ("nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
                "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1")

    def open(self) -> None:
        require_modules("a CSI camera", "cv2")
        import cv2

        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise StreamError(f"{self.uri}: this OpenCV has no GStreamer backend (JetPack's OpenCV has it); "
                              f"read the camera through V4L2 instead: /dev/video0")
        self.cap = cv2.VideoCapture(self.PIPELINE.format(sensor=int(self.uri[len("csi://"):])), cv2.CAP_GSTREAMER)
        if not self.cap.isOpened():
            raise StreamError(f"{self.uri}: GStreamer could not open the camera")

    def frames(self) -> Iterator[Frame]:
        import cv2

        index = 0
        t0 = time.perf_counter()
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                return
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield Frame(index, time.monotonic(), rgb, (rgb.shape[1], rgb.shape[0]), (time.perf_counter() - t0) * 1e3)
            index += 1
            t0 = time.perf_counter()

    def close(self) -> None:
        cap = getattr(self, "cap", None)
        if cap is not None:
            cap.release()


class FolderSource(VideoSource):
    """Image files: a folder (recursive, sorted), a glob, or one image. JPEGs decode at the scale the model needs;
    an unreadable file is skipped and counted."""

    kind = "folder"

    def __init__(self, uri: str, image_size: int = 224) -> None:
        super().__init__(uri)
        self.image_size = image_size
        self.draft = True  # JPEGs decoded at the scale the model needs (the fast path); False: fully, as the reference
        self.paths: list[Path] = []

    def open(self) -> None:
        try:
            self.paths = find_images([self.uri]).images
        except ImageError as exc:
            raise StreamError(str(exc)) from exc
        if not self.paths:
            raise StreamError(f"{self.uri}: no images")
        self.total = len(self.paths)

    def frames(self) -> Iterator[Frame]:
        index = 0
        for path in self.paths:
            t0 = time.perf_counter()
            try:
                if self.draft:
                    image, full = decode_for(path, self.image_size)
                else:
                    image = load_image(path)
                    full = image.size
            except ImageError as exc:
                log.info("%s", exc)
                self.corrupt += 1
                continue
            rgb = np.asarray(image)
            yield Frame(index, None, rgb, full, (time.perf_counter() - t0) * 1e3, name=str(path))
            index += 1


def _why(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"\s+", " ", str(text)).strip()[:200]


def _is_folder_or_images(uri: str) -> bool:
    p = Path(uri)
    return p.is_dir() or (p.is_file() and is_image_name(p)) or (any(c in uri for c in "*?[") and not p.exists())


@dataclass(frozen=True)
class SourceKind:
    """One row of the table: which URIs it reads, and how to make its source (``image_size``: the model's input)."""

    name: str
    matches: Callable[[str], bool]
    make: Callable[[str, int], VideoSource]


SOURCE_KINDS: tuple[SourceKind, ...] = (
    SourceKind("csi", lambda u: bool(re.fullmatch(r"csi://[0-9]{1,3}", u)), lambda u, s: CsiSource(u)),
    SourceKind("camera", lambda u: is_number(u) or bool(re.fullmatch(r"/dev/video[0-9]+", u)) or u.startswith("v4l2://"),
               lambda u, s: CameraSource(u[len("v4l2://"):] if u.startswith("v4l2://") else u)),
    SourceKind("network", lambda u: u.lower().startswith(NETWORK_SCHEMES), lambda u, s: NetworkSource(u)),
    SourceKind("folder", _is_folder_or_images, lambda u, s: FolderSource(u, s)),
    SourceKind("file", lambda u: Path(u).is_file(), lambda u, s: AvSource(u)),
)


def open_source(uri: str, image_size: int = 224) -> VideoSource:
    """The source for ``uri`` (not yet opened): ``csi://N``, ``/dev/videoN`` or ``N``, ``rtsp://...`` / ``http://...``,
    a folder, glob or image, or a video file. Raises :class:`StreamError` naming the forms when none matches."""
    for kind in SOURCE_KINDS:
        if kind.matches(uri):
            return kind.make(uri, image_size)
    raise StreamError(f"{uri}: no such file, folder or camera (a source is a video file, an image folder or glob, /dev/videoN, "
                      f"a camera index, csi://N, or an rtsp:// or http:// URL)")

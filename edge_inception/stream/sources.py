"""One source interface over a video file, a camera, a network stream and a folder of images (jetson-inference's
``videoSource``): ``with open_source(uri) as src: for frame in src.frames(): ...``.

Which class reads a URI is a table (:data:`SOURCE_KINDS`), tried in order; the base class knows no kind. Which decoder
reads it is :func:`.plan.choose_decoder`'s answer (hardware where present), each reader a row of :data:`VIDEO_READERS` /
:data:`PHOTO_READERS`; a stream asks for the model's crop (:class:`Wanted`), cut and scaled by FFmpeg in the decoded
frame's own pixel format, and for the whole picture only where it needs it. Video is decoded with PyAV (FFmpeg); a
Jetson CSI camera (``csi://N``) is read through OpenCV's GStreamer backend where the installed OpenCV has one. Frames
that do not decode are skipped and counted in ``corrupt``; a file that ends early sets ``truncated``; neither stops the
stream. A network stream that drops is reopened with backoff for a bounded time
(``reconnect_s``), said on stderr; one that does not come back ends the stream (``lost``).

What FFmpeg may open (issue 38, kind 5): a local file is opened here, by Python, as a regular file, and handed to FFmpeg
as a stream of bytes, so no protocol prefix is read out of its name (``concat:``, ``subfile:``, ``pipe:``, ``file:``, a
file named ``http:x``); only demuxers that read nothing but their input are allowed (:data:`SINGLE_INPUT_FORMATS`,
FFmpeg's ``format_whitelist``: no HLS/DASH playlist, concat list, SDP, image pattern), MP4 external data references are
off (``enable_drefs=0``) and any further open a demuxer asks for is refused (PyAV's ``io_open``). A network stream
gets FFmpeg's ``protocol_whitelist`` for its scheme (:data:`PROTOCOLS`) and the same demuxers; an HTTP source follows
no redirect (``max_redirects=0``): the error names where it pointed.

How large a picture may be (issue 40): every source refuses frames of more than ``max_pixels`` (width x height,
:data:`~edge_inception.limits.MAX_DECODED_PIXELS`, the bound an image file's header is checked against too) in one
line naming the source and the size, and frames more elongated than an image may be (20:1): a video's declared size
when it opens (and reopens), each picture before it is
converted, and FFmpeg's decoder is given the same bound (``max_pixels``), so a header claiming a huge frame, at the
start or mid-way, never has the decoder allocate it.
"""

from __future__ import annotations

import abc
import errno
import glob
import http.client
import logging
import os
import re
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import decode_for, find_images, is_image_name, load_image
from ..errors import ImageError, StreamError, require_modules
from ..limits import MAX_ASPECT_RATIO, MAX_DECODED_PIXELS
from ..names import is_number
from .plan import DECODERS, DecoderSpec

CPU_DECODER = "ffmpeg"  # the video row of plan.DECODERS every source falls back to

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
OPEN_TIMEOUT_S = 10.0  # a network stream that sends nothing for this long is an error, not a hang
RECONNECT_S = 30.0  # a live network stream that drops is reopened for up to this long (the CLI's --reconnect)
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.5, 5.0  # backoff: the first wait, doubling to this

# Demuxers that read only the bytes they are given (FFmpeg's names, as ``format_whitelist`` matches them). Left out on
# purpose: hls, dash, concat, sdp, rtp (open further files or URLs), image2 (a file pattern), tee/data are protocols.
SINGLE_INPUT_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "mpegtsraw", "avi", "flv", "live_flv", "h264",
                        "hevc", "vvc", "mjpeg", "mpjpeg", "mpeg", "mpegvideo", "m4v", "ogg", "asf", "nut", "ivf", "obu", "av1",
                        "mxf", "gif", "apng", "yuv4mpegpipe", "dv", "rm", "wtv", "jpeg_pipe", "png_pipe", "webp_pipe",
                        "bmp_pipe", "tiff_pipe")
# FFmpeg's protocol_whitelist per source scheme: what the stream's own protocol needs under it (https is tls over tcp;
# RTSP carries RTP over its TCP connection or over UDP).
PROTOCOLS = {"http": "http,tcp", "https": "https,tls,tcp", "rtsp": "rtsp,rtp,udp,tcp", "rtsps": "rtsps,rtsp,rtp,udp,tcp,tls",
             "rtmp": "rtmp,tcp", "udp": "udp,rtp", "tcp": "tcp", "srt": "srt,udp"}


@dataclass
class Frame:
    """One decoded picture: ``rgb`` H x W x 3 uint8 (upright; a JPEG may be decoded at a reduced scale; None where
    the source was asked for the model's crop only), ``full_size`` the (width, height) its geometry is computed for,
    ``decode_ms`` the time the source took to produce it (for video: decode, and crop + scale where asked),
    ``model_rgb`` S x S x 3 uint8, the model's crop already cut and scaled by the decoder (None where not asked)."""

    index: int  # position among the frames the source produced, 0-based
    timestamp_s: float | None  # presentation time in the video, seconds (None for images)
    rgb: np.ndarray | None
    full_size: tuple[int, int]
    decode_ms: float
    name: str | None = None  # the file, for folder sources
    model_rgb: np.ndarray | None = None


@dataclass(frozen=True)
class Wanted:
    """What the stream needs of each frame: ``model`` (the decoder cuts and scales the model's ``image_size`` crop:
    the fast path) and ``full`` (the whole picture in RGB: the exact path, an annotated video). Sources that cannot cut
    on the decoder's side give ``full`` always."""

    image_size: int = 224
    model: bool = False
    full: bool = True


class VideoSource(abc.ABC):
    """A stream of frames. ``live`` sources (cameras, network streams) run at their own pace: the consumer keeps the
    latest frame and drops stale ones. File and folder sources are read to the end, none dropped."""

    kind = "source"
    live = False
    media: str | None = None  # what DECODERS rows it reads through ("video", "live", "photos"); None: its own reader
    own_decoder = "the source's own"  # how a source with no media decodes, as the summary names it

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.name = shown_uri(uri)  # what messages and the summary say: the URI without its credentials
        self.want = Wanted()
        self.decoder: DecoderSpec | None = None  # chosen by the stream (plan.choose_decoder); None: the CPU's
        self.decoder_threads = 0  # FFmpeg's decoder thread_count (0: FFmpeg's own choice)
        self.codec: str | None = None  # the codec FFmpeg names, once open
        self.stopped_by: str | None = None  # why the input stopped early, where it did
        self.corrupt = 0  # frames or files skipped because they did not decode
        self.truncated = False  # the input ended before its container said it would
        self.total: int | None = None  # frames expected, where the container says
        self.fps: float | None = None  # the source's frame rate, where known
        self.frame_size: tuple[int, int] | None = None  # (width, height) of a video's frames, once open
        self.max_pixels = MAX_DECODED_PIXELS  # the most width x height a picture may have (check_size); lower it before open()

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

    def check_size(self, width: int, height: int, what: str = "has a frame of") -> None:
        """Raise :class:`StreamError` (one line: the source, the size, the limit) for a picture of more than
        :attr:`max_pixels`, or more elongated than :data:`~edge_inception.limits.MAX_ASPECT_RATIO` (an image file's
        bound too: a 400000 x 2 frame of 1.2 MB took 4.9 GB through the exact path's resize); ``what`` says whether the
        size was declared or decoded."""
        if width * height > self.max_pixels:
            raise StreamError(f"{self.name}: {what} {width} x {height} pixels ({width * height / 1e6:.3g} MP), more than the "
                              f"{self.max_pixels / 1e6:.3g} MP this toolkit decodes")
        if width > 0 and height > 0 and max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise StreamError(f"{self.name}: {what} {width} x {height} pixels, more elongated than the {MAX_ASPECT_RATIO:.0f}:1 this "
                              "toolkit decodes")

    def use_decoder(self, spec: DecoderSpec | None, threads: int) -> None:
        """Read through ``spec`` (a row of :data:`~.plan.DECODERS` for this source's media; None: the source's own)
        with ``threads`` decoder threads; before :meth:`frames`."""
        self.decoder, self.decoder_threads = spec, threads


class AvSource(VideoSource):
    """A local video file, demuxed and decoded by FFmpeg through PyAV (frame threads on). The file is opened here and
    given to FFmpeg as bytes: FFmpeg reads that file and nothing else (see the module's notes)."""

    kind = "file"
    media = "video"

    def __init__(self, uri: str, *, fmt: str | None = None, options: dict[str, str] | None = None) -> None:
        super().__init__(uri)
        self.fmt, self.options = fmt, options or {}
        self.container: Any = None
        self.file: Any = None
        self.refused: list[str] = []  # further files or URLs a demuxer asked for (none is opened)
        self._next_index = 0

    def _open_container(self) -> Any:
        """The PyAV input container; raises av's errors or :class:`StreamError`."""
        import av

        self.file = _Input(_open_regular_file(self.uri), self.uri)
        self.refused = []
        options = {"protocol_whitelist": "file", "format_whitelist": ",".join(SINGLE_INPUT_FORMATS), "enable_drefs": "0"}
        return av.open(self.file, options=self._bounded(options), io_open=self._refuse)

    def _bounded(self, options: dict[str, str]) -> dict[str, str]:
        """``options`` for ``av.open`` with FFmpeg's ``max_pixels`` (:attr:`max_pixels`): the decoders that probe the
        streams at open refuse a larger picture before allocating it (where the container lists its streams first)."""
        return {**options, "max_pixels": str(self.max_pixels)}

    def _refuse(self, url: str, flags: int, options: dict) -> Any:
        """PyAV's ``io_open``: a demuxer asking for another file or URL gets an empty one; the open is then refused."""
        import io

        self.refused.append(url)
        return io.BytesIO(b"")

    def open(self) -> None:
        require_modules("stream (video decoding)", "av", *(("scipy",) if self.want.model else ()))  # scipy: ModelCrop's resample
        import av

        try:
            self.container = self._open_container()
        except av.error.FFmpegError as exc:
            self.close()
            raise StreamError(f"{self.name}: cannot open as video ({self._why_not(exc)})") from exc
        except OSError as exc:  # the file itself: gone, a FIFO or device, unreadable
            self.close()
            raise StreamError(f"{self.name}: cannot read ({exc.strerror or exc})") from exc
        if self.refused:
            asked = self.refused[0]
            self.close()
            raise StreamError(f"{self.name}: refers to another file or URL ({asked[:200]}); a local source is read alone: give the video itself")
        if not self.container.streams.video:
            self.close()
            raise StreamError(f"{self.name}: has no video stream")
        stream = self.container.streams.video[0]
        try:
            self._configure(stream)
        except StreamError:  # a declared frame size beyond max_pixels: nothing decoded
            self.close()
            raise
        self.codec = stream.codec_context.name
        self.total = stream.frames or None
        self.fps = float(stream.average_rate) if stream.average_rate else None

    def use_decoder(self, spec: DecoderSpec | None, threads: int) -> None:
        super().use_decoder(spec, threads)
        if self.container is not None and self.container.streams.video:
            self._configure(self.container.streams.video[0])

    def _configure(self, stream: Any) -> None:
        """Frame and slice threads, ``decoder_threads`` of them (FFmpeg's ``thread_count``; 0: as many as it likes), and
        the decoder's ``max_pixels``; the stream's declared frame size checked (:meth:`check_size`)."""
        stream.thread_type = "AUTO"
        codec = stream.codec_context
        codec.thread_count = self.decoder_threads
        codec.options = {**(codec.options or {}), "max_pixels": str(self.max_pixels)}  # FFmpeg refuses larger pictures
        self.frame_size = (int(codec.width), int(codec.height))
        self.check_size(*self.frame_size, what="declares frames of")

    def _why_not(self, exc: Exception) -> str:
        why = _why(exc)
        sniffed = _sniff(self.uri)
        if sniffed:
            return f"{sniffed}, which makes FFmpeg open other files or URLs: refused for a local source; give the video itself"
        if "whitelist" in why.lower() or getattr(exc, "errno", None) == errno.EINVAL:  # format_whitelist's answer
            return ("not a video container FFmpeg reads alone (MP4, MKV, MPEG-TS, AVI, ...); playlists, concat lists, SDP "
                    "and image patterns are refused for a local source")
        return why

    def frames(self) -> Iterator[Frame]:
        """Frames through the chosen decoder (:data:`VIDEO_READERS`; FFmpeg on the CPU where none was chosen). A
        hardware decoder that fails before its first frame (a driver too old, a profile it does not take) hands over to
        FFmpeg on the CPU, said on stderr; :attr:`decoder` then names the CPU's."""
        chosen = self.decoder.name if self.decoder is not None else CPU_DECODER
        if chosen == CPU_DECODER:
            yield from VIDEO_READERS[CPU_DECODER](self)
            return
        started = False
        try:
            for frame in VIDEO_READERS[chosen](self):
                started = True
                yield frame
        except Exception as exc:  # noqa: BLE001 - any failure of an optional hardware library before a frame: fall back
            if started:
                raise
            log.warning("%s: %s failed (%s); decoding on the CPU", self.name, self.decoder.what if self.decoder else chosen,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            self.decoder = next(d for d in DECODERS if d.name == CPU_DECODER)
            yield from VIDEO_READERS[CPU_DECODER](self)

    def _picture(self, vf: Any, ts: float | None, t0: float) -> Frame:
        """A decoded PyAV frame as :class:`Frame`: the model's crop (the region it reads cut in the frame's own pixel
        format, its planes resampled and converted as the exact path does: :class:`~.decoders.ModelCrop`) and/or the
        whole picture in RGB, as :attr:`want` asks."""
        self.check_size(vf.width, vf.height)
        model = self._scaler()(vf) if self.want.model else None
        rgb = vf.to_ndarray(format="rgb24") if self.want.full or model is None else None
        frame = Frame(self._next_index, ts, rgb, (vf.width, vf.height), (time.perf_counter() - t0) * 1e3, model_rgb=model)
        self._next_index += 1
        return frame

    def _scaler(self) -> Any:
        if getattr(self, "_model_scaler", None) is None:
            from .decoders import ModelCrop

            self._model_scaler = ModelCrop(self.want.image_size)
        return self._model_scaler

    def _ffmpeg_frames(self) -> Iterator[Frame]:
        """FFmpeg's frames; the pictures it flags corrupt, or whose packet does not decode, skipped and counted. The
        frames after those given when the decoder is drained at the end of a file (among them the last one, which a
        cut file leaves incomplete) come as a one-thread decoder gives them (:class:`_SerialTail`): FFmpeg's frame
        threads do not always flag an incomplete picture that another thread outputs, and an error while they are
        drained drops the frames they held, so the frames, the count and the exit status do not depend on the
        decoder's thread count."""
        import av

        assert self.container is not None, "open() first"
        stream = self.container.streams.video[0]
        packets = self.container.demux(stream)
        tail = _SerialTail(stream.codec_context, self.max_pixels, stream.time_base) if not self.live and self.decoder_threads != 1 else None
        if tail is not None:
            stream.codec_context.copy_opaque = True  # a packet's number comes out with its picture (tail.add)
        last_ts: float | None = None
        t0 = time.perf_counter()
        while True:
            ended = False
            try:
                packet = next(packets)
            except StopIteration:
                self.truncated = self.truncated or self._ends_early(last_ts)
                return
            except av.error.FFmpegError as exc:  # the container ends mid-packet: keep what decoded, and what is in the decoder
                log.info("%s: demuxing stopped: %s", self.name, _why(exc))
                self.stopped_by = _why(exc)
                self.truncated = not self.live  # a live source that stops is reconnected and said so, not "truncated"
                packet, ended = None, True
            draining = packet is None or packet.size == 0  # the end: the decoder gives the frames it holds
            if tail is not None and packet is not None and not draining:
                tail.add(packet)
            failed = False
            try:
                decoded = stream.codec_context.decode(packet) if packet is None else packet.decode()
            except av.error.FFmpegError as exc:
                codec = stream.codec_context  # a picture beyond max_pixels (the size changed mid-way): refused, not skipped
                self.check_size(int(codec.width), int(codec.height), what="changes to frames of")
                log.info("%s: a packet did not decode: %s", self.name, _why(exc))
                decoded, failed = [], True
                t0 = time.perf_counter()
            if tail is not None and draining:  # the frames after those given come as one thread gives them
                rest = tail.rest(decoded)
                if rest is not None:
                    (decoded, bad), failed = rest, False
                    self.corrupt += bad
                t0 = time.perf_counter()  # once per file, not a frame's decoding: in the end-to-end time, not the decode stage's
            if failed:
                self.corrupt += 1
                if tail is not None:
                    tail.failed(packet.opaque if packet is not None and isinstance(packet.opaque, int) else None)
            for vf in decoded:
                if vf.is_corrupt:
                    self.corrupt += 1
                    if tail is not None:
                        tail.flagged(vf)
                    continue
                ts = last_ts = float(vf.time) if vf.time is not None else None
                if tail is not None:
                    tail.give(vf)
                yield self._picture(vf, ts, t0)
                t0 = time.perf_counter()
            if ended:
                return

    def _ends_early(self, last_ts: float | None) -> bool:
        """A file whose last frame comes more than a second before the duration its header gives, or that gave no frame
        where its header counts some, was cut short (frame times count from the container's start time, which an
        MPEG-TS sets above zero)."""
        if self.live:
            return False
        if last_ts is None:  # not one frame, where the header promised some (or an external track, never opened)
            return bool(self.total)
        if self._partial_ts_packet():
            return True
        duration = self.container.duration if self.container is not None else None
        start = (self.container.start_time or 0) / 1e6 if duration else 0.0
        return bool(duration and last_ts - start < duration / 1e6 - 1.0)

    def _partial_ts_packet(self) -> bool:
        """An MPEG-TS file whose size is not a whole number of transport packets (188 bytes; 192 for M2TS, 204 with
        Reed-Solomon bytes) ends inside its last packet: cut short. A TS has no duration in a header (FFmpeg estimates
        it from the cut file's own size), so a cut TS read as whole before; one cut exactly between packets still does."""
        if self.container is None or self.file is None or "mpegts" not in (self.container.format.name or "").split(","):
            return False
        try:
            size = os.fstat(self.file.descriptor).st_size
        except (OSError, ValueError):
            return False
        return size > 0 and all(size % n for n in (188, 192, 204))

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        if self.file is not None:
            self.file.close()
            self.file = None


# The packets a one-thread decoder decodes again at the end of a file (_SerialTail): the last two groups of pictures,
# as far as they fit in this many packets and compressed bytes (two 10 s groups at 30 FPS): the last one alone where
# two do not, none where the last one alone does not (its frames then stand as the threads' draining gave them)
SERIAL_TAIL_PACKETS, SERIAL_TAIL_BYTES = 600, 32 * 2**20


class _SerialTail:
    """The packets since the key frame of the group of pictures before the last, decoded again at the end of a file by
    a one-thread decoder of the same codec (:meth:`rest`), which gives the frames drained there. FFmpeg's frame threads
    copy a picture's state to the next thread before it is finished, so a picture that one thread concealed (a cut
    file's last one) may come out of another unflagged; one thread flags it always. The group before the last is kept
    for an open group's leading pictures: they come after the last key frame in decoding order but refer to pictures
    before it, so a decoder that starts at the last key frame does not output them, and the threads' flag on one that
    the cut left incomplete decided the count by chance (MPEG-TS of open groups of 10, cut in a leading picture: 21
    frames and 0 corrupt in 3 of 10 reads at 2 or 4 threads, where one thread gives 20 and 1). Frames are named by their
    packet's number in the file (FFmpeg's ``opaque``, copied from packet to picture by either decoder), not by their pts:
    a raw stream has none, and two clips joined in one MPEG-TS repeat them. The groups kept fit in
    :data:`SERIAL_TAIL_PACKETS` packets and :data:`SERIAL_TAIL_BYTES`: the group before the last is let go first; past
    either with the last alone, the threads' draining stands. The cost: the kept groups decoded again, whole, on one
    thread at the end of a file (a 290-frame group of 640 x 360 H.264: 0.35 s more on a loaded 2-core EPYC, where the
    file took 0.4 s at 2 threads), not counted in the decode stage's per-frame time."""

    def __init__(self, codec: Any, max_pixels: int, time_base: Any) -> None:
        self.codec, self.max_pixels, self.time_base = codec, max_pixels, time_base
        self.groups: list[tuple[int, list[Any]]] = [(0, [])]  # (key frame's number, its packets), oldest first
        self.kept, self.kept_bytes = 0, 0  # the packets in groups, and their compressed bytes
        self.whole = True  # the last group's packets are all kept
        self.number = 0  # the next packet's number (its opaque)
        self.given: set[int] = set()  # the numbers of the frames given since the first kept key frame (give)
        self.bad_at: list[int] = []  # the numbers of packets that did not decode and of frames flagged corrupt since it
        self.unnamed = False  # a frame given since it came without its number: the threads' draining stands

    @property
    def first(self) -> int:
        """The number of the first packet kept (the key frame of the older kept group); frames from it on are judged again."""
        return self.groups[0][0] if self.groups else self.number

    @property
    def packets(self) -> list[Any]:
        return [p for _, group in self.groups for p in group]

    @property
    def bad(self) -> int:
        """Packets that did not decode, and frames flagged corrupt, since :attr:`first` (counted already)."""
        return len(self.bad_at)  # those before first are let go as it moves on (_forget)

    def add(self, packet: Any) -> None:
        """A packet demuxed (not yet decoded): numbered, and kept where it belongs to the last two groups of pictures."""
        packet.opaque, self.number = self.number, self.number + 1
        if packet.is_keyframe:
            while len(self.groups) > 1 or (self.groups and not (self.whole and self.groups[-1][1])):
                self._drop_oldest()  # the last group becomes the older one, if it was kept whole
            self.groups.append((packet.opaque, []))
            self.whole = True
            self._forget()
        if not self.whole:
            return
        self.groups[-1][1].append(packet)
        self.kept, self.kept_bytes = self.kept + 1, self.kept_bytes + packet.size
        while self._over() and len(self.groups) > 1:  # the group before the last is let go first
            self._drop_oldest()
            self._forget()
        if self._over():  # the last group alone does not fit: nothing kept
            self.groups, self.kept, self.kept_bytes, self.whole = [], 0, 0, False
            self._forget()

    def _over(self) -> bool:
        return self.kept > SERIAL_TAIL_PACKETS or self.kept_bytes > SERIAL_TAIL_BYTES

    def _drop_oldest(self) -> None:
        _, group = self.groups.pop(0)
        self.kept, self.kept_bytes = self.kept - len(group), self.kept_bytes - sum(p.size for p in group)

    def _forget(self) -> None:
        """What was recorded before the first packet kept: no longer judged again."""
        first = self.first
        self.given = {n for n in self.given if n >= first}
        self.bad_at = [n for n in self.bad_at if n >= first]
        if not self.given:
            self.unnamed = False

    def failed(self, number: int | None) -> None:
        """A packet that did not decode (counted already): ``number`` the packet's, None where not known (the drain)."""
        self._bad(self.number - 1 if number is None else number)

    def flagged(self, frame: Any) -> None:
        """A frame the threads' decoder flagged corrupt (counted already)."""
        if isinstance(frame.opaque, int):
            self._bad(frame.opaque)

    def _bad(self, number: int) -> None:
        if number >= self.first:  # one of the kept groups': judged again (none while none is kept: the list stays bounded)
            self.bad_at.append(number)

    def give(self, frame: Any) -> None:
        """A frame the threads' decoder gave (yielded to the consumer)."""
        if not isinstance(frame.opaque, int):
            self.unnamed = True
        elif frame.opaque >= self.first:  # not a frame of an earlier group still coming out
            self.given.add(frame.opaque)

    def rest(self, drained: list[Any]) -> tuple[list[Any], int] | None:
        """The frames to give at the end of a file, after those already given (:attr:`given`), for the threads'
        ``drained`` frames: those of earlier groups, and those one thread does not output (the older kept group's
        leading pictures, which refer to the group before it), as the threads gave them; then the kept groups' frames
        after those given as a one-thread decoder gives them. The threads' draining of those is not used: their flags
        miss an incomplete picture at times, and an error there (a cut FLV's last packet) drops the frames they still
        held. (the frames, how many more of the kept groups one thread finds corrupt or undecodable than were counted
        already: :attr:`bad`); None when the last group was not kept whole. Every kept packet is decoded (the count
        needs each picture judged)."""
        if not self.whole or not self.packets or self.unnamed or any(not isinstance(f.opaque, int) for f in drained):
            return None
        serial: set[int] = set()  # the numbers of the frames one thread gave
        after: list[Any] = []  # its good frames after the last one given already (only these are kept: memory)
        bad = 0
        for frame in self._decoded():
            if frame is not None and not isinstance(frame.opaque, int):
                return None
            if frame is not None:
                serial.add(frame.opaque)
                if frame.opaque in self.given:
                    after = []
            if frame is None or frame.is_corrupt:
                bad += 1
            elif frame.opaque not in self.given:
                after.append(frame)
        frames = [f for f in drained if f.opaque < self.first or f.opaque not in serial]
        return frames + after, max(0, bad - self.bad)

    def _decoded(self) -> Iterator[Any]:
        """The kept packets and a drain through a one-thread decoder, in order: each frame, and None for a packet that
        did not decode. Nothing when such a decoder cannot be made."""
        import av

        try:
            serial = av.CodecContext.create(self.codec.name, "r")
            serial.extradata = self.codec.extradata
            serial.width, serial.height = self.codec.width, self.codec.height
            serial.thread_count = 1
            serial.copy_opaque = True
            serial.options = {"max_pixels": str(self.max_pixels)}
        except (av.error.FFmpegError, ValueError, TypeError) as exc:
            log.info("the last frames are not judged again (%s)", _why(exc))
            return
        for packet in [*self.packets, None]:
            try:
                frames = serial.decode(packet)
            except av.error.FFmpegError:
                yield None
                continue
            for frame in frames:
                frame.time_base = self.time_base
                yield frame


class LiveAvSource(AvSource):
    """A camera or network stream read through FFmpeg, reopened when it breaks: a read error, a reset or closed
    connection before the end, a device gone, or :data:`OPEN_TIMEOUT_S` without data. It is reopened with backoff
    (:data:`RECONNECT_FIRST_S` doubling to :data:`RECONNECT_MAX_S`) for up to ``reconnect_s`` seconds per outage (a
    reopen that yields no frame does not end the outage), each step a warning on stderr; one that ends cleanly
    (FFmpeg's end of file: the server said it was complete) has ended and is not reopened. ``reconnects`` counts the
    reopenings, ``lost`` says it did not come back."""

    live = True
    media = "live"

    def __init__(self, uri: str, *, fmt: str | None = None, options: dict[str, str] | None = None, reconnect_s: float = RECONNECT_S) -> None:
        super().__init__(uri, fmt=fmt, options=options)
        self.reconnect_s = reconnect_s
        self.reconnects = 0  # times the stream was reopened after it stopped
        self.lost = False  # it stopped and did not come back within reconnect_s
        self.stopping = threading.Event()  # set by the consumer: no more reconnecting

    def frames(self) -> Iterator[Frame]:
        outage: float | None = None  # when the current outage began: a reconnect that yields no frame does not end it
        while True:
            self.stopped_by = None
            for frame in super().frames():
                outage = None
                yield frame
            if self.stopping.is_set() or self.stopped_by is None:  # stopped by the consumer, or the server ended it
                return
            outage = time.monotonic() if outage is None else outage
            if not self._reconnect(self.stopped_by, outage):
                return

    def _reconnect(self, why: str, outage: float) -> bool:
        """Reopen with backoff until ``reconnect_s`` after ``outage`` (a monotonic time); False (and ``lost``) when the
        source did not come back."""
        import av

        if self.container is not None:
            self.container.close()
            self.container = None
        if self.reconnect_s <= 0:
            log.warning("%s: the stream stopped (%s); not reconnecting (--reconnect 0)", self.name, why)
            self.lost = True
            return False
        start = outage
        deadline = start + self.reconnect_s
        log.warning("%s: the stream stopped (%s); reconnecting for up to %.0f s", self.name, why, max(0.0, deadline - time.monotonic()))
        delay, tries, last_error = RECONNECT_FIRST_S, 0, why
        while (remaining := deadline - time.monotonic()) > 0:
            if self.stopping.wait(min(delay, remaining)):
                return False
            tries += 1
            try:
                self.container = self._open_container()
                self._configure(self.container.streams.video[0])
            except (av.error.FFmpegError, OSError, IndexError) as exc:
                last_error = _why(exc) if not isinstance(exc, IndexError) else "no video stream"
                if self.container is not None:
                    self.container.close()
                    self.container = None
                delay = min(delay * 2, RECONNECT_MAX_S)
                if deadline - time.monotonic() > 0:
                    log.warning("%s: reconnect try %d failed (%s); next in %.1f s", self.name, tries, last_error,
                                min(delay, deadline - time.monotonic()))
                continue
            self.reconnects += 1
            log.warning("%s: reconnected after %.1f s (try %d)", self.name, time.monotonic() - start, tries)
            return True
        log.warning("%s: gave up reconnecting after %.0f s (%s); the stream ends here", self.name, time.monotonic() - start, last_error)
        self.lost = True
        return False


class CameraSource(LiveAvSource):
    """A V4L2 camera: ``/dev/videoN`` or the index ``N`` (USB webcams; a Jetson's CSI camera through its V4L2 node)."""

    kind = "camera"

    def __init__(self, uri: str) -> None:
        device = f"/dev/video{uri}" if is_number(uri) else uri
        super().__init__(device, fmt="v4l2" if sys.platform.startswith("linux") else None)

    def open(self) -> None:
        if sys.platform.startswith("linux") and not Path(self.uri).exists():
            here = sorted(glob.glob("/dev/video*"))
            raise StreamError(f"camera {self.name} does not exist (cameras here: {', '.join(here) if here else 'none'})")
        super().open()

    def _open_container(self) -> Any:
        import av

        # the device demuxer opens the device node itself (the name was checked: /dev/videoN)
        options = {**self.options, "protocol_whitelist": "file"}
        return _open_interruptibly(lambda: av.open(self.uri, format=self.fmt, options=self._bounded(options), timeout=OPEN_TIMEOUT_S))


class NetworkSource(LiveAvSource):
    """An RTSP / RTMP / HTTP / UDP stream (RTSP over TCP, which passes firewalls and loses no packets).

    FFmpeg gets the ``protocol_whitelist`` of the URL's scheme (:data:`PROTOCOLS`), the demuxers that read only their
    input, no redirect (HTTP), and open and read timeouts (:data:`OPEN_TIMEOUT_S`); reopened as
    :class:`LiveAvSource` says."""

    kind = "network"

    def __init__(self, uri: str, reconnect_s: float = RECONNECT_S) -> None:
        scheme = uri.split(":", 1)[0].lower()
        options = {"protocol_whitelist": PROTOCOLS.get(scheme, scheme), "format_whitelist": ",".join(SINGLE_INPUT_FORMATS + ("rtsp", "rtp"))}
        if scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = "tcp"
        if scheme in ("http", "https"):
            options["max_redirects"] = "0"
        super().__init__(uri, options=options, reconnect_s=reconnect_s)
        self.scheme = scheme

    def _open_container(self) -> Any:
        import av

        return _open_interruptibly(lambda: av.open(self.uri, options=self._bounded(self.options), timeout=OPEN_TIMEOUT_S))

    def _why_not(self, exc: Exception) -> str:
        why = _why(exc)
        if self.scheme in ("http", "https") and getattr(exc, "errno", None) == errno.EIO:
            where = _redirect_target(self.uri)
            if where is not None:
                return f"the server redirects to {where[:200]}; redirects are not followed: give that URL if you trust it"
        if "whitelist" in why.lower() or getattr(exc, "errno", None) == errno.EINVAL:  # format_whitelist's answer
            return ("the server sends a playlist or manifest (HLS, DASH) that would open further URLs, or no video stream: "
                    "refused; give the stream itself")
        return why

class CsiSource(VideoSource):
    """A Jetson CSI camera, ``csi://N``: nvarguscamerasrc through OpenCV's GStreamer backend (JetPack's OpenCV has it)."""

    kind = "csi"
    live = True
    own_decoder = "nvarguscamerasrc (GStreamer through OpenCV)"
    PIPELINE = ("nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1 ! "
                "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1")

    def open(self) -> None:
        require_modules("a CSI camera", "cv2")
        import cv2

        if "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise StreamError(f"{self.name}: this OpenCV has no GStreamer backend (JetPack's OpenCV has it); "
                              f"read the camera through V4L2 instead: /dev/video0")
        self.cap = cv2.VideoCapture(self.PIPELINE.format(sensor=int(self.uri[len("csi://"):])), cv2.CAP_GSTREAMER)
        if not self.cap.isOpened():
            raise StreamError(f"{self.name}: GStreamer could not open the camera")

    def frames(self) -> Iterator[Frame]:
        import cv2

        index = 0
        t0 = time.perf_counter()
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                return
            self.check_size(bgr.shape[1], bgr.shape[0])
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
    an unreadable file, or one of more than :attr:`max_pixels` (its header is held to
    :data:`~edge_inception.limits.MAX_DECODED_PIXELS` before it is decoded), is skipped and counted."""

    kind = "folder"
    media = "photos"

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
            raise StreamError(f"{self.name}: no images")
        self.total = len(self.paths)
        self.codec = "jpeg"  # what a photo decoder is chosen for (other formats go through Pillow file by file)

    def frames(self) -> Iterator[Frame]:
        """Each readable file, decoded by the chosen decoder (:data:`PHOTO_READERS`; Pillow where none was chosen)."""
        decode = PHOTO_READERS[self.decoder.name if self.decoder is not None else "pillow"](self)
        index = 0
        for path in self.paths:
            t0 = time.perf_counter()
            try:
                rgb, full = decode(path)
            except ImageError as exc:
                log.info("%s", exc)
                self.corrupt += 1
                continue
            if full[0] * full[1] > self.max_pixels:  # a bound lowered below MAX_DECODED_PIXELS, which the header was held to
                log.info("%s: %d x %d pixels is more than the %d this source takes", path, full[0], full[1], self.max_pixels)
                self.corrupt += 1
                continue
            yield Frame(index, None, rgb, full, (time.perf_counter() - t0) * 1e3, name=str(path))
            index += 1

    def _pillow(self) -> Callable[[Path], tuple[np.ndarray, tuple[int, int]]]:
        """Pillow: a JPEG decoded at the scale the model needs (``draft``), or fully (the exact path)."""

        def decode(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
            if self.draft:
                image, full = decode_for(path, self.image_size)
            else:
                image = load_image(path)
                full = image.size
            return np.asarray(image), full

        return decode


def _why(exc: Exception) -> str:
    if type(exc).__name__ == "ExitError":  # FFmpeg's interrupt callback: PyAV's open/read timeout ran out
        return f"no data for {OPEN_TIMEOUT_S:.0f} s"
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r"\s+", " ", str(text)).strip()[:200]


def _open_regular_file(path: str) -> Any:
    """``path`` opened for reading as bytes, if it is a regular file: never a FIFO, a device or a socket (opening
    one could block or read what is not a file); ``O_NONBLOCK`` so that a FIFO swapped in meanwhile cannot hang."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class _Input:
    """The opened file as FFmpeg sees it: read/seek/tell, and a neutral name (``input`` + the file's suffix, letters and
    digits only) that FFmpeg's format probes may score, never a path or URL it could open."""

    def __init__(self, f: Any, path: str) -> None:
        self._f = f
        suffix = Path(path).suffix[1:]
        self.name = "input." + suffix.lower() if suffix.isascii() and suffix.isalnum() and len(suffix) <= 8 else "input"

    @property
    def descriptor(self) -> int:
        """The file's descriptor, for a hardware decoder's reader (not ``fileno``: FFmpeg gets bytes, never the fd)."""
        return int(self._f.fileno())

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


_SIGNATURES = ((b"#EXTM3U", "an HLS playlist"), (b"ffconcat", "a concat list"), (b"v=0", "an SDP description"),
               (b"<?xml", "a manifest (DASH or XML)"), (b"<MPD", "a DASH manifest"))


def _sniff(path: str) -> str | None:
    """What a refused local file looks like, to name it in the error (its first bytes; None when unknown)."""
    try:
        with _open_regular_file(path) as f:
            head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return None
    return next((what for sig, what in _SIGNATURES if head.startswith(sig)), None)


def _open_interruptibly(open_fn: Callable[[], Any]) -> Any:
    """``open_fn()`` (a blocking ``av.open`` of a network stream or device) in a helper thread, the caller waiting in
    short steps: Ctrl-C and SIGTERM reach the caller at once (a signal is handled between Python steps, never inside
    FFmpeg's open). The open itself is bounded by PyAV's timeout (FFmpeg's interrupt callback); an abandoned one is
    closed by its thread when it returns."""
    done = threading.Event()
    box: dict[str, Any] = {}
    abandoned = threading.Event()

    def work() -> None:
        try:
            box["value"] = open_fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            done.set()
            if abandoned.is_set() and "value" in box:
                box["value"].close()

    if threading.current_thread() is not threading.main_thread():
        return open_fn()  # only the main thread hears signals; elsewhere the caller's own stop flag applies
    thread = threading.Thread(target=work, name="stream-open", daemon=True)
    thread.start()
    try:
        while not done.wait(0.05):
            pass
    except BaseException:
        abandoned.set()
        if done.is_set() and "value" in box:
            box["value"].close()
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def _redirect_target(url: str) -> str | None:
    """Where an HTTP(S) URL redirects to (its ``Location``), asked once with the open timeout; None if it does not."""
    try:
        parts = urllib.parse.urlsplit(url)
        conn_type = http.client.HTTPSConnection if parts.scheme.lower() == "https" else http.client.HTTPConnection
        conn = conn_type(parts.hostname or "", parts.port, timeout=OPEN_TIMEOUT_S)
        try:
            conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
            reply = conn.getresponse()
            return reply.getheader("Location") if 300 <= reply.status < 400 else None
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None


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


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def shown_uri(uri: str) -> str:
    """``uri`` as messages, logs and the summary name it: a URL's user information (``rtsp://admin:PASSWORD@camera/``,
    what an IP camera's address usually carries) replaced by ``***``; anything else as given."""
    return _USERINFO.sub(r"\1***@", uri)


def open_source(uri: str, image_size: int = 224) -> VideoSource:
    """The source for ``uri`` (not yet opened): ``csi://N``, ``/dev/videoN`` or ``N``, ``rtsp://...`` / ``http://...``,
    a folder, glob or image, or a video file. Raises :class:`StreamError` naming the forms when none matches."""
    for kind in SOURCE_KINDS:
        if kind.matches(uri):
            return kind.make(uri, image_size)
    raise StreamError(f"{shown_uri(uri)}: no such file, folder or camera (a source is a video file, an image folder or glob, /dev/videoN, "
                      f"a camera index, csi://N, or an rtsp:// or http:// URL)")


def _nvdec_frames(src: AvSource) -> Iterator[Frame]:
    """A video file through NVDEC (PyNvVideoCodec): its demuxer reads, by a callback, the file this source opened and
    checked (the same descriptor, read with ``pread``: nothing else is opened), the decoder hands NV12 pictures to host
    memory, and FFmpeg's scaler cuts the model's crop out of them as on the CPU path. Not run on NVIDIA hardware in this
    project's tests (none was lent); the choice and the CPU fallback are (tests/test_stream_decoders.py)."""
    import ctypes

    import av
    import PyNvVideoCodec as nvc

    if src.file is None or src.container is None:
        raise StreamError(f"{src.name}: open() first")
    fd = src.file.descriptor
    codec = src.container.streams.video[0].codec_context
    width, height, rate = codec.width, codec.height, src.fps or 30.0
    offset = 0

    def feed(buffer: Any) -> int:
        nonlocal offset
        data = os.pread(fd, len(buffer), offset)
        buffer[: len(data)] = data
        offset += len(data)
        return len(data)

    demuxer = nvc.CreateDemuxer(feed)
    decoder = nvc.CreateDecoder(gpuid=0, codec=demuxer.GetNvCodecId(), cudacontext=0, cudastream=0, usedevicememory=False)
    t0 = time.perf_counter()
    for packet in demuxer:
        for decoded in decoder.Decode(packet):
            size = decoded.framesize()
            if size != width * height * 3 // 2:
                raise StreamError(f"{src.name}: NVDEC gave a {size}-byte picture, not {width} x {height} NV12")
            pointer = ctypes.cast(decoded.GetPtrToPlane(0), ctypes.POINTER(ctypes.c_uint8))
            nv12 = np.ctypeslib.as_array(pointer, shape=(size,)).reshape(height * 3 // 2, width).copy()
            yield src._picture(av.VideoFrame.from_ndarray(nv12, format="nv12"), src._next_index / rate, t0)
            t0 = time.perf_counter()


def _gstreamer_frames(src: AvSource) -> Iterator[Frame]:
    """A video file through a Jetson's hardware decoder: GStreamer's ``decodebin`` (which picks ``nvv4l2decoder`` on
    JetPack) through OpenCV, reading the descriptor this source opened and checked (``fdsrc``: nothing else is
    opened); BGR frames, the model's crop cut by the stream's preprocessing. Not run on a Jetson here."""
    if src.file is None:
        raise StreamError(f"{src.name}: open() first")
    fd = src.file.descriptor
    where = os.lseek(fd, 0, os.SEEK_CUR)  # FFmpeg's reading position, put back after (the CPU fallback reads on from it)
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        yield from _gstreamer_read(src, fd)
    finally:
        os.lseek(fd, where, os.SEEK_SET)


def _gstreamer_read(src: AvSource, fd: int) -> Iterator[Frame]:
    import cv2

    pipeline = (f"fdsrc fd={fd} ! decodebin ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
                "appsink sync=false")
    cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not cap.isOpened():
        raise StreamError(f"{src.name}: GStreamer could not decode it (nvv4l2decoder)")
    rate = src.fps or 30.0
    try:
        t0 = time.perf_counter()
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            src.check_size(bgr.shape[1], bgr.shape[0])
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield Frame(src._next_index, src._next_index / rate, rgb, (rgb.shape[1], rgb.shape[0]), (time.perf_counter() - t0) * 1e3)
            src._next_index += 1
            t0 = time.perf_counter()
    finally:
        cap.release()


def _nvjpeg(src: FolderSource) -> Callable[[Path], tuple[np.ndarray, tuple[int, int]]]:
    """JPEGs through nvJPEG (DALI's ``decoders.image`` on the GPU, EXIF orientation applied), one file a batch; other
    formats through Pillow. The header is checked first, as :func:`~edge_inception.data.images.load_image` does. Not
    run on NVIDIA hardware in this project's tests (none was lent)."""
    from nvidia.dali import fn, pipeline_def, types

    from ..data.images import opened_image

    @pipeline_def(batch_size=1, num_threads=1, device_id=0, prefetch_queue_depth=1)
    def jpeg_pipeline() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        return fn.decoders.image(encoded, device="mixed", output_type=types.RGB)

    pipe = jpeg_pipeline()
    pipe.build()
    pillow = src._pillow()

    def decode(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        try:
            with opened_image(path, path) as opened:
                is_jpeg = opened.format == "JPEG"
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"not a readable image: {path}") from exc
        if not is_jpeg:
            return pillow(path)
        pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8)])
        try:
            (out,) = pipe.run()
        except RuntimeError as exc:
            raise ImageError(f"not a readable image: {path} (nvJPEG: {str(exc).splitlines()[0][:200]})") from exc
        rgb = np.asarray(out.as_cpu().at(0))
        return rgb, (rgb.shape[1], rgb.shape[0])

    return decode


# Decoder name (plan.DECODERS) -> how a source reads through it.
VIDEO_READERS: dict[str, Callable[[AvSource], Iterator[Frame]]] = {
    "ffmpeg": AvSource._ffmpeg_frames,
    "nvdec": _nvdec_frames,
    "nvv4l2decoder": _gstreamer_frames,
}
PHOTO_READERS: dict[str, Callable[[FolderSource], Callable[[Path], tuple[np.ndarray, tuple[int, int]]]]] = {
    "pillow": FolderSource._pillow,
    "nvjpeg": _nvjpeg,
}

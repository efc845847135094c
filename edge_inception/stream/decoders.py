"""What the decoders of :data:`~edge_inception.stream.plan.DECODERS` need at run time: probing what imports and which
devices exist here (:func:`probe`), and the fast path's cut of a decoded frame (:class:`ModelCrop`: the region the
model's crop reads, cut in the decoder's own pixel format, its planes resampled as the exact path resamples, then
converted as the exact path converts). :class:`ModelScaler` (FFmpeg's own crop + scale, one pass) is the yardstick the
benchmarks time the decode stage against.

The sources (:mod:`.sources`) read through the decoder :func:`~edge_inception.stream.plan.choose_decoder` picks, each
source kind keeping a table from decoder name to its reading method.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from .plan import (
    DECODERS,
    PLANAR_YUV,
    SCALE_FLAGS,
    Conversion,
    CropScale,
    DecoderRegion,
    DecoderSpec,
    decoder_crop,
    decoder_region,
    model_crop_conversion,
    resample_weights,
    subsampled,
)

log = logging.getLogger(__name__)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception as exc:  # noqa: BLE001 - a module that is present but cannot load here (no driver) is not usable
        log.info("%s does not import here: %s", module, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False


def _cv2_gstreamer() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return "GStreamer:                   YES" in cv2.getBuildInformation()


# What each name in a DecoderSpec's ``needs`` means here (a module to import, or a capability to look for).
CAPABILITIES: dict[str, Callable[[], bool]] = {
    "PyNvVideoCodec": lambda: _imports("PyNvVideoCodec"),
    "nvidia.dali": lambda: _imports("nvidia.dali.fn"),
    "cv2-gstreamer": _cv2_gstreamer,
}


def probe(table: tuple[DecoderSpec, ...] = DECODERS, exists: Callable[[str], bool] = os.path.exists) -> tuple[frozenset[str], frozenset[str]]:
    """(importable, present) for :func:`~edge_inception.stream.plan.choose_decoder`: the device paths of ``table`` that
    exist, and the needs that load here, probed only for rows whose device exists (so a machine without the hardware
    imports nothing)."""
    present = frozenset(d for spec in table for d in spec.devices if exists(d))
    wanted = {n for spec in table if present.intersection(spec.devices) for n in spec.needs}
    importable = frozenset(n for n in sorted(wanted) if CAPABILITIES.get(n, lambda: False)())
    return importable, present


class _CropGraph(ABC):
    """A PyAV filter graph from a decoded frame (its own size and pixel format) through :meth:`filters`, built for the
    first frame and rebuilt when the frames change size or pixel format; :meth:`run` pushes a frame and pulls the result.
    ``threads``: the graph's threads (FFmpeg's slice threads; 1 keeps the decode stage on its share of the cores)."""

    def __init__(self, image_size: int, threads: int = 1) -> None:
        self.image_size, self.threads = image_size, threads
        self.key: tuple[int, int, str] | None = None
        self.graph: Any = None

    @abstractmethod
    def filters(self, width: int, height: int) -> list[tuple[str, str]]:
        """The (filter, arguments) chain for frames of ``width`` x ``height``, in order (each subclass says its own)."""

    def run(self, frame: Any) -> Any:
        """``frame`` (a PyAV ``VideoFrame``) through the graph: the filtered ``VideoFrame``."""
        key = (frame.width, frame.height, frame.format.name)
        if key != self.key:
            from fractions import Fraction

            import av

            graph = av.filter.Graph()
            graph.threads = self.threads
            nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                                      time_base=frame.time_base or Fraction(1, 1000))]
            nodes += [graph.add(name, args) for name, args in self.filters(frame.width, frame.height)]
            nodes.append(graph.add("buffersink"))
            graph.link_nodes(*nodes).configure()
            self.graph, self.key = graph, key
        self.graph.push(frame)
        return self.graph.pull()


class ModelScaler(_CropGraph):
    """FFmpeg's filter graph ``crop`` (in the frame's own pixel format: a 4:2:0 frame is cut, never converted) then
    ``scale`` to the model's size with :data:`~edge_inception.stream.plan.SCALE_FLAGS` then ``format=rgb24``: one
    conversion, of the pixels the model sees. ``__call__(frame)``: a PyAV ``VideoFrame`` -> size x size x 3 uint8 RGB.
    The graph is rebuilt when the frames change size or pixel format. ``threads``: the scaler's threads (FFmpeg's
    slice threads; 1 keeps the decode stage on its share of the cores)."""

    crop: CropScale | None = None

    def filters(self, width: int, height: int) -> list[tuple[str, str]]:
        self.crop = c = decoder_crop(width, height, self.image_size)
        return [("crop", f"{c.width}:{c.height}:{c.x}:{c.y}:exact=1"), ("scale", f"{c.size}:{c.size}:flags={SCALE_FLAGS}"),
                ("format", "rgb24")]

    def __call__(self, frame: Any) -> np.ndarray:
        out: np.ndarray = self.run(frame).to_ndarray()
        return out


def _plane(plane: Any) -> np.ndarray:
    """A PyAV ``VideoPlane`` as a height x width uint8 view (its line padding cut off); writable where the plane is."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


def _chroma(pixel_format: Any) -> tuple[int, int]:
    """A PyAV ``VideoFormat``'s chroma subsampling: luma pixels per chroma sample across and down (1, 1 for RGB)."""
    side = 1 << 12
    return side // max(1, pixel_format.chroma_width(side)), side // max(1, pixel_format.chroma_height(side))


class ModelCrop(_CropGraph):
    """The fast path's model crop of a decoded frame: the exact path's filter and geometry on the few pixels it needs.

    FFmpeg's ``crop`` filter cuts :func:`~edge_inception.stream.plan.decoder_region`'s region in the frame's own pixel
    format (even offsets: 4:2:0 chroma is cut with its luma). Each plane of the region (Y, and U and V at their own
    size: 1.5 planes of a 4:2:0 frame, not 3 of RGB) is resampled to the model's size by the exact path's resample as
    two sparse products (:func:`~edge_inception.stream.plan.resample_weights`: Pillow's antialiased bilinear of the
    crop box, the chroma's weights :func:`~edge_inception.stream.plan.subsampled` as FFmpeg's conversion repeats each
    chroma sample), rounded to 8 bits, and the small picture is converted to RGB by FFmpeg's own conversion, the exact
    path's (``to_ndarray(format="rgb24")``: same pixel format, colour matrix and range as the frame; the luma repeated
    to the chroma's grid, then one pixel per chroma sample kept). Conversion and resample are both linear up to
    rounding and clipping, so the order is what differs from the exact path: about a third of a level on average, a
    few levels where a colour clips (measured on clips of the bundled photos, README; bounded in
    ``tests/test_stream_decoders.py``).

    That holds only where FFmpeg converts the whole frame pixel by pixel with each chroma sample repeated
    (:func:`~edge_inception.stream.plan.model_crop_conversion` says where: :attr:`.Conversion.PLANES`). A frame in
    another pixel format (10-bit, NV12, RGB) whose chroma tiles the frame has its region converted to RGB by the exact
    path's call and each colour resampled the same way (:attr:`.Conversion.REGION`; a packed one-plane format that the
    ``crop`` filter would convert first, such as a USB camera's YUYV, is cut by slicing its plane's rows and bytes). A
    frame that FFmpeg converts through its generic scaler with chroma interpolated at the frame's own ratio (4:2:0 or
    4:2:2 with an odd number of rows; NV12, YUYV and other non-planar 4:2:0 / 4:2:2 of an odd width or height), or
    whose format neither cut takes as it is, is converted whole, exactly as the exact path converts it, and the
    region's colours resampled (:attr:`.Conversion.FRAME`): one level at most from the exact path, at the cost of a
    full-frame conversion, only on such frames. :attr:`conversion` says which the last frame took.

    ``__call__(frame)``: a PyAV ``VideoFrame`` -> size x size x 3 uint8 RGB. The graph and the weights are rebuilt when
    the frames change size or pixel format. Needs SciPy (its sparse products)."""

    region: DecoderRegion | None = None
    conversion: Conversion | None = None

    def __init__(self, image_size: int, threads: int = 1) -> None:
        super().__init__(image_size, threads)
        self._weights: dict[tuple[tuple[int, ...], tuple[int, int]], tuple[Any, Any]] = {}  # (shape, factor) -> (rows, columns)
        self._conversions: dict[tuple[int, int, str], Conversion] = {}  # (width, height, pixel format) -> how
        self._packed: set[tuple[int, int, str]] = set()  # frames the crop filter does not cut: sliced here (_packed_cut)
        self._reformatter: Any = None

    def _region(self, width: int, height: int) -> DecoderRegion:
        """The region of a ``width`` x ``height`` frame (the weights are dropped when it changes)."""
        r = decoder_region(width, height, self.image_size)
        if r != self.region:
            self.region, self._weights = r, {}
        return r

    def filters(self, width: int, height: int) -> list[tuple[str, str]]:
        r = self._region(width, height)
        return [("crop", f"{r.width}:{r.height}:{r.x}:{r.y}:exact=1")]

    def _resample(self, plane: np.ndarray, factor: tuple[int, int] = (1, 1)) -> np.ndarray:
        """A height x width plane of the region (one sample per ``factor`` luma pixels across, down) -> size x size
        float32, the crop box resampled."""
        key = (plane.shape, factor)
        if key not in self._weights:
            from scipy import sparse

            r, n = self.region, self.image_size
            assert r is not None  # set by _region() for this frame
            rows = subsampled(resample_weights(r.height, r.box[1], r.box[3], n), factor[1])
            columns = subsampled(resample_weights(r.width, r.box[0], r.box[2], n), factor[0])
            self._weights[key] = (sparse.csr_array(rows), sparse.csr_array(columns))
        rows, columns = self._weights[key]
        out: np.ndarray = (columns @ (rows @ plane.astype(np.float32)).T).T  # sparse @ dense: SciPy's fast order
        return out

    @staticmethod
    def _packed_cut(frame: Any, r: DecoderRegion) -> Any:
        """``frame``'s region ``r`` in its own one-plane packed pixel format (YUYV: 2 bytes a pixel, a chroma pair per
        2 pixels; :func:`~edge_inception.stream.plan.model_crop_conversion` has checked that ``r`` starts and ends on
        whole chroma samples), its plane's rows and bytes copied, with the frame's colour matrix and range."""
        import av

        step = frame.format.padded_bits_per_pixel // 8
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        cut = av.VideoFrame(r.width, r.height, frame.format.name)
        cut.colorspace, cut.color_range = frame.colorspace, frame.color_range
        out: Any = cut.planes[0]
        np.frombuffer(out, np.uint8).reshape(out.height, out.line_size)[:, :r.width * step] = \
            rows[r.y:r.y + r.height, r.x * step:(r.x + r.width) * step]
        return cut

    def _colours(self, rgb: np.ndarray) -> np.ndarray:
        """The region in RGB (height x width x 3 uint8) -> the crop, each colour resampled: size x size x 3 uint8."""
        return np.stack([_to_uint8(self._resample(rgb[:, :, c])) for c in range(3)], axis=2)

    def __call__(self, frame: Any) -> np.ndarray:
        r = self._region(frame.width, frame.height)
        key = (frame.width, frame.height, frame.format.name)
        if key not in self._conversions:
            self._conversions[key] = model_crop_conversion(frame.format.name, _chroma(frame.format), frame.width, frame.height, r)
        self.conversion = self._conversions[key]
        if self.conversion is Conversion.FRAME:  # as the exact path converts it, then the region's pixels
            return self._colours(frame.to_ndarray(format="rgb24")[r.y:r.y + r.height, r.x:r.x + r.width])
        cut = self._packed_cut(frame, r) if key in self._packed else self.run(frame)
        if cut.format.name != frame.format.name:  # the crop filter does not take this format: FFmpeg converted it first
            if self.conversion is Conversion.REGION and len(frame.planes) == 1 and frame.format.padded_bits_per_pixel % 8 == 0:
                self._packed.add(key)  # one plane of whole bytes per pixel (packed YUYV, UYVY): its rows and bytes sliced
                cut = self._packed_cut(frame, r)
            else:
                log.info("FFmpeg's crop filter does not cut %s; these frames are converted whole", frame.format.name)
                self._conversions[key] = Conversion.FRAME
                return self(frame)
        if self.conversion is Conversion.REGION:
            return self._colours(cut.to_ndarray(format="rgb24"))
        import av

        n, (fx, fy) = self.image_size, PLANAR_YUV[cut.format.name]
        down = 2 if n * fy % 2 else fy  # rows of the small picture per output row: an even count, so FFmpeg repeats its chroma
        y, u, v = (_to_uint8(self._resample(_plane(p), (fx, fy) if i else (1, 1))) for i, p in enumerate(cut.planes[:3]))
        small = av.VideoFrame(n * fx, n * down, cut.format.name)  # one chroma sample per output pixel
        small.colorspace, small.color_range = frame.colorspace, frame.color_range
        _plane(small.planes[0])[:] = y.repeat(down, axis=0).repeat(fx, axis=1)
        _plane(small.planes[1])[:], _plane(small.planes[2])[:] = u.repeat(down // fy, axis=0), v.repeat(down // fy, axis=0)
        if self._reformatter is None:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()  # keeps FFmpeg's converter from frame to frame
        rgb = self._reformatter.reformat(small, format="rgb24").to_ndarray()
        return np.ascontiguousarray(rgb[::down, ::fx])


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)

"""What the decoders of :data:`~edge_inception.stream.plan.DECODERS` need at run time: probing what imports and which
devices exist here (:func:`probe`), and the fast path's cut of a decoded frame (:class:`ModelCrop`: the region the
model's crop reads, cut in the decoder's own pixel format, converted as the exact path converts, resampled as the exact
path resamples). :class:`ModelScaler` (FFmpeg's own crop + scale, one pass) is the yardstick the benchmarks time the
decode stage against.

The sources (:mod:`.sources`) read through the decoder :func:`~edge_inception.stream.plan.choose_decoder` picks, each
source kind keeping a table from decoder name to its reading method.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .plan import DECODERS, SCALE_FLAGS, CropScale, DecoderRegion, DecoderSpec, decoder_crop, decoder_region

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


class _CropGraph:
    """A PyAV filter graph from a decoded frame (its own size and pixel format) through :meth:`filters`, built for the
    first frame and rebuilt when the frames change size or pixel format; :meth:`run` pushes a frame and pulls the result.
    ``threads``: the graph's threads (FFmpeg's slice threads; 1 keeps the decode stage on its share of the cores)."""

    def __init__(self, image_size: int, threads: int = 1) -> None:
        self.image_size, self.threads = image_size, threads
        self.key: tuple[int, int, str] | None = None
        self.graph: Any = None

    def filters(self, width: int, height: int) -> list[tuple[str, str]]:
        """The (filter, arguments) chain for frames of ``width`` x ``height``, in order."""
        raise NotImplementedError

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


class ModelCrop(_CropGraph):
    """The fast path's model crop of a decoded frame, the exact path's pixels without its full-frame work: FFmpeg's
    ``crop`` filter cuts :func:`~edge_inception.stream.plan.decoder_region`'s region in the frame's own pixel format (even
    offsets: 4:2:0 chroma is cut, never resampled), PyAV converts that region to RGB with the exact path's own call
    (``to_ndarray(format="rgb24")``: FFmpeg's conversion is per 2 x 2 block, so the region's RGB is the same region of
    the whole frame's, bit for bit), and Pillow resamples only the crop (``resize(box=...)``, the exact path's filter
    and taps). What differs from the exact path is Pillow's arithmetic for a box (its corners as 32-bit floats): about
    one pixel value in 2,000 moves by one level (measured on clips of the bundled photos, README).
    ``__call__(frame)``: a PyAV ``VideoFrame`` -> size x size x 3 uint8 RGB. The graph is rebuilt when the frames
    change size or pixel format. ``reducing_gap``: Pillow's (None, the exact path's: no box-average first); 2.0 first
    averages 2 x 2 blocks or more where the crop shrinks 4 x or more, cheaper and further from exact (measured: up to 8
    levels at 224 px, 10 at 64 px, top-1 unchanged on a 150-frame 1080p clip; offered to the benchmark, not the stream)."""

    region: DecoderRegion | None = None

    def __init__(self, image_size: int, threads: int = 1, reducing_gap: float | None = None) -> None:
        super().__init__(image_size, threads)
        self.reducing_gap = reducing_gap

    def filters(self, width: int, height: int) -> list[tuple[str, str]]:
        self.region = r = decoder_region(width, height, self.image_size)
        return [("crop", f"{r.width}:{r.height}:{r.x}:{r.y}:exact=1")]

    def __call__(self, frame: Any) -> np.ndarray:
        from PIL import Image

        rgb = self.run(frame).to_ndarray(format="rgb24")
        assert self.region is not None  # set by filters() when run() built the graph
        out: np.ndarray = np.asarray(Image.fromarray(rgb).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR,
                                                                  box=self.region.box, reducing_gap=self.reducing_gap))
        return out

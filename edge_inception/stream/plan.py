"""The stream's pure decisions (no I/O, no heavy import): where the decoder crops and scales a frame, how the cores are
shared between decoding and the engine, and which decoder reads a source.

- :func:`decoder_crop`: the fast path's geometry (torchvision's resize of the short side to ``size * 256 / 224``, then
  the centre crop) expressed as one crop of the source, on even pixels so that 4:2:0 chroma is cut where its luma is,
  then one scale to ``size x size`` by FFmpeg's scaler (:data:`SCALE_FLAGS`).
- :func:`decoder_region`: the exact path's own geometry for the fast path: the region of the source that the reference
  resize reads for the model's crop (its taps included), on even pixels, and the crop box inside it, so that the
  decoder cuts only that region, and :func:`resample_weights`, the exact path's resample (Pillow's antialiased
  bilinear) of that box as a matrix per axis, with :func:`subsampled` for a chroma plane, and
  :func:`model_crop_conversion`: where FFmpeg's conversion of the whole frame is local enough for the cut to be
  converted alone (and where the whole frame must be converted, as the exact path does).
- :func:`split_threads`: (cores, where the engine runs, a hardware decoder) -> decoder threads and engine threads
  where nothing is measured (an engine on a GPU, a hardware decoder, the user's ``--threads``).
- :func:`split_candidates` and :func:`choose_split`: the splits worth measuring on a CPU, and the fastest of those
  measured (the measurement itself is :mod:`.calibrate`'s).
- :func:`choose_decoder`: (what a source holds, its codec, what imports here, what devices exist) -> a row of
  :data:`DECODERS`, hardware first where it can run, the CPU's decoder as the fallback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..data.images import reference_geometry

# FFmpeg's scaler for the one crop+scale: bilinear (a triangle filter widened by the downscale factor, as Pillow's
# antialiased bilinear that the exact path uses), rounding accurately. Measured against the exact path (--preprocess
# exact: FFmpeg's default YUV -> RGB conversion of the whole frame, then Pillow's resize and crop) on 140-frame clips of
# the bundled photos (1920 x 1080, 1280 x 720, 720 x 1280; crf 23) with a seeded colour-sensitive classifier: top-1
# agreement 418 of 420 frames. full_chroma_int (chroma interpolated to full resolution before the conversion) was
# measured too and moves the answers further from the exact path's conversion (137 of 140 at 1080p), so it is left out;
# bicubic, area and the chroma siting changed nothing that mattered. Per 1080p frame the crop+scale costs about what
# FFmpeg's full-frame RGB conversion alone costs, and saves the second resample.
SCALE_FLAGS = "bilinear+accurate_rnd"
CROP_ALIGN = 2  # 4:2:0 and 4:2:2 chroma: one chroma sample per two luma pixels


@dataclass(frozen=True)
class CropScale:
    """The source rectangle (``x``, ``y``, ``width``, ``height`` in source pixels) scaled to ``size`` x ``size``."""

    x: int
    y: int
    width: int
    height: int
    size: int


def decoder_crop(width: int, height: int, image_size: int = 224, align: int = CROP_ALIGN) -> CropScale:
    """The part of a ``width`` x ``height`` frame that the model sees, as the decoder crops it.

    :func:`~edge_inception.data.images.reference_geometry`'s crop box mapped back to source pixels, each edge rounded to
    the nearest multiple of ``align`` (at most ``align / 2`` source pixels from the exact edge, a fraction
    ``align / 2 * 256 / 224 / short side`` of the model's input: 0.2 output pixels for 1080p), kept inside the frame and
    at least ``align`` wide. Raises ValueError for a frame with no pixels.
    """
    if width < 1 or height < 1 or image_size < 1 or align < 1:
        raise ValueError(f"no crop of a {width} x {height} frame to {image_size} px (align {align})")
    g = reference_geometry(width, height, image_size)
    sx, sy = width / g.resized[0], height / g.resized[1]
    left, top, right, bottom = g.box

    def edge(v: float, limit: int) -> int:
        return min(max(0, align * round(v / align)), limit - limit % align)

    x0, x1 = edge(left * sx, width), edge(right * sx, width)
    y0, y1 = edge(top * sy, height), edge(bottom * sy, height)
    w, h = max(x1 - x0, min(align, width)), max(y1 - y0, min(align, height))
    x0, y0 = min(x0, width - w), min(y0, height - h)
    return CropScale(x0, y0, w, h, image_size)


# Pillow's BILINEAR (the exact path's resize) is a triangle of support 1 source pixel, widened by the downscale factor:
# the taps of an output pixel reach int(centre +- support + 0.5).
RESAMPLE_SUPPORT = 1.0


@dataclass(frozen=True)
class DecoderRegion:
    """The fast path's cut of a frame: the region ``x``, ``y``, ``width``, ``height`` (source pixels, even offsets) that
    the decoder cuts, and ``box`` (left, top, right, bottom), the reference crop in that region's pixels, which
    :func:`resample_weights` scales to ``size`` x ``size`` (Pillow's ``resize(box=...)``, the exact path's filter)."""

    x: int
    y: int
    width: int
    height: int
    box: tuple[float, float, float, float]
    size: int


def decoder_region(width: int, height: int, image_size: int = 224, align: int = CROP_ALIGN) -> DecoderRegion:
    """Where the fast path cuts a ``width`` x ``height`` frame so that resampling the cut gives the exact path's crop.

    The reference (``--preprocess exact``) resizes the whole frame with Pillow's antialiased bilinear filter and crops
    :func:`~edge_inception.data.images.reference_geometry`'s box. The crop's output pixels read only the source pixels
    under their taps: the box mapped to source pixels, widened by the filter's support (:data:`RESAMPLE_SUPPORT` x the
    downscale factor) and one pixel, each edge moved out to a multiple of ``align`` (4:2:0 chroma is cut where its luma
    is) and kept inside the frame. Pillow clips its taps at the picture's edges, so a region that stops short of an
    edge must hold every tap (it does: the margin), and one that reaches it clips where the whole frame does. Raises
    ValueError for a frame with no pixels.
    """
    if width < 1 or height < 1 or image_size < 1 or align < 1:
        raise ValueError(f"no crop of a {width} x {height} frame to {image_size} px (align {align})")
    g = reference_geometry(width, height, image_size)
    sx, sy = width / g.resized[0], height / g.resized[1]
    left, top, right, bottom = g.box
    mx, my = math.ceil(RESAMPLE_SUPPORT * max(sx, 1.0)) + 1, math.ceil(RESAMPLE_SUPPORT * max(sy, 1.0)) + 1
    x0, y0 = max(0, math.floor((left * sx - mx) / align) * align), max(0, math.floor((top * sy - my) / align) * align)
    x1, y1 = min(width, math.ceil((right * sx + mx) / align) * align), min(height, math.ceil((bottom * sy + my) / align) * align)
    return DecoderRegion(x0, y0, x1 - x0, y1 - y0, (left * sx - x0, top * sy - y0, right * sx - x0, bottom * sy - y0), image_size)


def resample_weights(size: int, start: float, stop: float, out: int) -> np.ndarray:
    """Pillow's ``BILINEAR`` resize (the exact path's) of the span ``start``-``stop`` of a row of ``size`` source pixels
    to ``out`` pixels, as a matrix: ``out`` x ``size`` float32, row ``i`` the weights of output pixel ``i`` (they sum to
    1). Pillow's geometry to the tap (``precompute_coeffs`` in its ``Resample.c``): pixel ``j`` is centred at ``j + 0.5``,
    output ``i`` at ``start + (i + 0.5) * scale`` (``scale = (stop - start) / out``); the triangle's half-width is
    :data:`RESAMPLE_SUPPORT` x ``max(scale, 1)`` (widened by the downscale factor: antialiased); the taps run from
    ``int(centre - support + 0.5)`` to ``int(centre + support + 0.5)``, clipped to the row. Applied per axis
    (``rows @ plane @ columns.T``) it is the exact path's resample in float arithmetic (Pillow rounds to 8 bits between
    its two passes). Raises ValueError for an empty span or no output."""
    if size < 1 or out < 1 or not stop > start:
        raise ValueError(f"no resample of {start}-{stop} of {size} pixels to {out}")
    scale = (stop - start) / out
    filterscale = max(scale, 1.0)
    support = RESAMPLE_SUPPORT * filterscale
    centre = start + (np.arange(out) + 0.5) * scale
    first = np.clip(np.trunc(centre - support + 0.5), 0, size)[:, None]  # C's (int): towards zero
    last = np.clip(np.trunc(centre + support + 0.5), 0, size)[:, None]
    j = np.arange(size)
    w = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - centre[:, None]) / filterscale)) * ((j >= first) & (j < last))
    total = w.sum(axis=1, keepdims=True)
    return (w / np.where(total > 0, total, 1.0)).astype(np.float32)


def subsampled(weights: np.ndarray, factor: int) -> np.ndarray:
    """``weights`` (out x luma pixels, :func:`resample_weights`) for a chroma plane with one sample per ``factor`` luma
    pixels: the weights of the luma pixels that share a chroma sample added up (out x ceil(luma / factor)). This is the
    exact path's chroma: FFmpeg's YUV -> RGB conversion repeats each chroma sample over its ``factor`` luma pixels, and
    the resample of the repeated plane is the resample of the chroma plane with these weights."""
    out, size = weights.shape
    padded = np.pad(weights, ((0, 0), (0, -size % factor)))
    return padded.reshape(out, -1, factor).sum(axis=2)


class Conversion(Enum):
    """How :class:`~edge_inception.stream.decoders.ModelCrop` gets the exact path's colours for the model's crop of a
    frame (:func:`model_crop_conversion` says which)."""

    PLANES = "the region's YUV planes resampled, the small picture converted"
    REGION = "the region converted to RGB, each colour resampled"
    FRAME = "the whole frame converted to RGB (the exact path's call), the region's colours resampled"


# 8-bit planar YUV whose planes ModelCrop resamples as they are: chroma samples per luma pixel across and down.
PLANAR_YUV: dict[str, tuple[int, int]] = {"yuv420p": (2, 2), "yuvj420p": (2, 2), "yuv422p": (2, 1), "yuvj422p": (2, 1),
                                          "yuv444p": (1, 1), "yuvj444p": (1, 1)}


def model_crop_conversion(pixel_format: str, chroma: tuple[int, int], width: int, height: int, region: DecoderRegion) -> Conversion:
    """Which :class:`Conversion` gives the exact path's colours for ``region`` of a ``width`` x ``height`` frame in
    ``pixel_format`` (FFmpeg's name; ``chroma``: its chroma subsampling, luma pixels per chroma sample across and down).

    The exact path converts the whole frame with FFmpeg's swscale (``to_ndarray(format="rgb24")``). The fast path may
    convert less only where that conversion is local, the same pixels whether the whole frame or a cut is converted:

    - 4:2:0 and 4:2:2 planar (:data:`PLANAR_YUV`) with an even number of rows: swscale's unscaled converter
      (``ff_get_unscaled_swscale`` in ``libswscale/swscale_unscaled.c``: yuv420p / yuv422p, their yuvj forms being the
      same with full range, only where ``!(dstH & 1)``) repeats each chroma sample over its luma pixels, which
      :func:`subsampled` models: :attr:`Conversion.PLANES`. With an odd number of rows swscale takes its generic scaler
      instead (chroma interpolated by a filter whose phase follows the frame's size, other rounding): measured 1-1.5
      levels off on average, up to 24-42, for 321 x 241 and 64 x 47 frames: :attr:`Conversion.FRAME`.
    - 4:4:4 planar: no chroma to interpolate, converted pixel by pixel at any size: :attr:`Conversion.PLANES`.
    - any other format (NV12, 10-bit, packed, RGB, grey) goes through the generic scaler. Without chroma subsampling
      it converts pixel by pixel: :attr:`Conversion.REGION`. With it, it interpolates chroma from the chroma plane's
      size to the picture's (half the width for RGB; the full width, another filter, where the width is odd:
      "Forcing full internal H chroma due to odd output size"), so a cut converts as the frame does only where the
      frame's width is even and the subsampling tiles the frame and the region's offsets and sizes:
      :attr:`Conversion.REGION`; otherwise :attr:`Conversion.FRAME`.
    """
    if pixel_format in PLANAR_YUV:
        return Conversion.PLANES if PLANAR_YUV[pixel_format] == (1, 1) or height % 2 == 0 else Conversion.FRAME
    cx, cy = max(1, chroma[0]), max(1, chroma[1])
    if (cx, cy) == (1, 1):
        return Conversion.REGION
    tiled = (width % 2 == 0 and all(v % cx == 0 for v in (width, region.x, region.width))
             and all(v % cy == 0 for v in (height, region.y, region.height)))
    return Conversion.REGION if tiled else Conversion.FRAME


@dataclass(frozen=True)
class ThreadSplit:
    """Threads per stage: ``decoder`` (FFmpeg's ``thread_count`` for the decoder, 1 for a decoder that uses none),
    ``engine`` (the engine's intra-op threads: ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
    ``INFERENCE_NUM_THREADS``; None: the artifact's own setting), and ``why``, one line. ``decoder`` 0 with ``engine``
    None are the runtimes' own defaults (FFmpeg picks its threads, the engine takes every core)."""

    decoder: int
    engine: int | None
    why: str

    @property
    def label(self) -> str:
        """The split in a few words: ``runtimes' defaults`` or ``1 decoder + 1 engine thread(s)``."""
        if self.decoder == 0 and self.engine is None:
            return "runtimes' defaults"
        return f"{self.decoder or 'auto'} decoder + {self.engine or 'default'} engine thread{'s' if (self.engine or 2) > 1 else ''}"


def split_threads(cores: int, engine_device: str = "cpu", hardware_decoder: bool = False, engine_threads: int | None = None) -> ThreadSplit:
    """Share ``cores`` between the decode thread (decode + crop + scale) and the engine so that they do not contend.

    The stream is a two-stage pipeline: its rate is set by the slower stage, so each stage gets cores of its own. On the
    CPU the engine needs about twice the decoder's time per 1080p frame (GoogLeNet at 224 px against FFmpeg's H.264
    decode + one scale), so it gets the larger share: one decoder thread per four cores (at least one), the rest to
    the engine. An engine on a GPU leaves the cores to the decoder but one (the thread that feeds the GPU); a hardware
    decoder needs one core (demuxing, the copy out), the engine the rest. ``engine_threads`` (the user's ``--threads``)
    is kept and the decoder gets what it leaves. One core: both stages share it, one thread each.
    """
    cores = max(1, int(cores))
    gpu_engine = engine_device != "cpu"
    if engine_threads:
        engine = engine_threads
        decoder = 1 if hardware_decoder else max(1, cores - engine)
        return ThreadSplit(decoder, engine, f"--threads {engine} for the engine, the decoder the {decoder} left")
    if cores == 1:
        return ThreadSplit(1, 1, "one core: decoder and engine take turns")
    if gpu_engine:
        decoder = 1 if hardware_decoder else cores - 1
        return ThreadSplit(decoder, None, f"the engine computes on the GPU: {decoder} decoder thread{'s' if decoder > 1 else ''}, "
                           "one core feeds the GPU")
    if hardware_decoder:
        return ThreadSplit(1, cores - 1, f"hardware decoding: 1 core demuxes, {cores - 1} for the engine")
    decoder = max(1, cores // 4)
    return ThreadSplit(decoder, cores - decoder, f"{cores} cores: {decoder} for decoding, {cores - decoder} for the engine")


RUNTIME_DEFAULTS = (0, None)  # FFmpeg's own thread count, the engine's own (every core)
SPLIT_NOISE = 0.03  # measured rates closer than this fraction of the fastest are a tie (run-to-run noise)


def split_candidates(cores: int) -> tuple[tuple[int, int | None], ...]:
    """The (decoder threads, engine threads) pairs worth measuring for a CPU engine and a CPU decoder on ``cores``: the
    runtimes' defaults first, then one decoder thread per four cores, one per two, and one, the engine the rest (no pair
    twice; one core: the defaults only, there is nothing to share)."""
    cores = max(1, int(cores))
    pairs: list[tuple[int, int | None]] = [RUNTIME_DEFAULTS]
    for d in (max(1, cores // 4), max(1, cores // 2), 1):
        if cores - d >= 1 and (d, cores - d) not in pairs:
            pairs.append((d, cores - d))
    return tuple(pairs)


@dataclass(frozen=True)
class SplitRate:
    """One measured split: ``decoder`` / ``engine`` threads (0 / None: the runtimes' own) and the ``fps`` it streamed
    at (frames per second end to end)."""

    decoder: int
    engine: int | None
    fps: float


def choose_split(rates: Sequence[SplitRate], noise: float = SPLIT_NOISE) -> SplitRate:
    """The split to stream with, from measured rates: the fastest, except that a split measured earlier in ``rates``
    (the order of :func:`split_candidates`: the runtimes' defaults first) within ``noise`` of the fastest is kept, so
    that run-to-run noise does not flip the choice away from the simpler split. Rates that are not positive finite
    numbers (a split that failed) never win. Raises ValueError when none is usable."""
    usable_rates = [r for r in rates if math.isfinite(r.fps) and r.fps > 0]
    if not usable_rates:
        raise ValueError("no thread split was measured")
    best = max(r.fps for r in usable_rates)
    return next(r for r in usable_rates if r.fps >= best * (1.0 - noise))


@dataclass(frozen=True)
class DecoderSpec:
    """One decoder: ``media`` it reads ("video": a file; "live": a camera or network stream; "photos": image files),
    ``codecs`` (FFmpeg's codec names; None: any), what it needs (``needs``: every module or capability, probed by
    :func:`~edge_inception.stream.decoders.probe`; ``devices``: any one of these paths), the extra that installs it."""

    name: str
    what: str
    media: frozenset[str]
    codecs: frozenset[str] | None = None
    needs: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    extra: str | None = None

    @property
    def hardware(self) -> bool:
        return bool(self.devices)


NVIDIA_GPU = "/dev/nvidia0"
JETSON = ("/etc/nv_tegra_release", "/dev/nvhost-nvdec")
NVDEC_CODECS = frozenset({"h264", "hevc", "av1", "vp9", "vp8", "mpeg2video", "mpeg4", "mjpeg"})

# Tried in order: the first row whose media, codec, needs and devices fit reads the source.
DECODERS: tuple[DecoderSpec, ...] = (
    DecoderSpec("nvdec", "NVDEC (PyNvVideoCodec)", frozenset({"video"}), NVDEC_CODECS, ("PyNvVideoCodec",), (NVIDIA_GPU,), "nvdec"),
    DecoderSpec("nvv4l2decoder", "nvv4l2decoder (GStreamer through OpenCV)", frozenset({"video"}),
                frozenset({"h264", "hevc", "vp9", "av1", "mpeg2video", "mpeg4"}), ("cv2-gstreamer",), JETSON, None),
    DecoderSpec("ffmpeg", "FFmpeg (PyAV) on the CPU", frozenset({"video", "live"}), None, (), (), "stream"),
    DecoderSpec("nvjpeg", "nvJPEG (DALI)", frozenset({"photos"}), frozenset({"jpeg"}), ("nvidia.dali",), (NVIDIA_GPU,), "nvjpeg"),
    DecoderSpec("pillow", "Pillow on the CPU", frozenset({"photos"}), None, (), (), None),
)


def usable(spec: DecoderSpec, media: str, codec: str | None, importable: frozenset[str], present: frozenset[str]) -> str | None:
    """None when ``spec`` can read ``media`` of ``codec`` here; else why not, in a few words."""
    if media not in spec.media:
        return f"does not read {media}"
    if spec.codecs is not None and codec not in spec.codecs:
        return f"does not decode {codec or 'an unknown codec'}"
    if spec.devices and not present.intersection(spec.devices):
        return f"no {' or '.join(spec.devices)}"
    missing = [n for n in spec.needs if n not in importable]
    if missing:
        return f"{', '.join(missing)} not importable" + (f" (pip install 'edge-inception[{spec.extra}]')" if spec.extra else "")
    return None


def choose_decoder(media: str, codec: str | None, importable: frozenset[str], present: frozenset[str],
                   table: tuple[DecoderSpec, ...] = DECODERS) -> DecoderSpec:
    """The first row of ``table`` that reads ``media`` of ``codec`` with what imports here (``importable``: modules and
    capabilities) and the device paths that exist (``present``). Raises LookupError when none does (the CPU rows take
    any codec, so :data:`DECODERS` always has one)."""
    for spec in table:
        if usable(spec, media, codec, importable, present) is None:
            return spec
    raise LookupError(f"no decoder reads {media} ({codec})")

"""The stream's pure decisions (no I/O, no heavy import): where the decoder crops and scales a frame, how the cores are
shared between decoding and the engine, and which decoder reads a source.

- :func:`decoder_crop`: the fast path's geometry (torchvision's resize of the short side to ``size * 256 / 224``, then
  the centre crop) expressed as one crop of the source, on even pixels so that 4:2:0 chroma is cut where its luma is,
  then one scale to ``size x size`` by FFmpeg's scaler (:data:`SCALE_FLAGS`).
- :func:`split_threads`: (cores, where the engine runs, a hardware decoder) -> decoder threads and engine threads.
- :func:`choose_decoder`: (what a source holds, its codec, what imports here, what devices exist) -> a row of
  :data:`DECODERS`, hardware first where it can run, the CPU's decoder as the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ThreadSplit:
    """Threads per stage: ``decoder`` (FFmpeg's ``thread_count`` for the decoder, 1 for a decoder that uses none),
    ``engine`` (the engine's intra-op threads: ONNX Runtime's ``intra_op_num_threads``, OpenVINO's
    ``INFERENCE_NUM_THREADS``; None: the artifact's own setting), and ``why``, one line."""

    decoder: int
    engine: int | None
    why: str


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

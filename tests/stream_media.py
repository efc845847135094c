"""Test media for the stream tests and benchmarks: a tiny real ONNX classifier and videos made with PyAV from
scikit-image's bundled photos (pans and zooms over real pixels)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np


def tiny_classifier(path: Path, image_size: int = 64, classes: int = 10, seed: int = 0, names: bool = True) -> Path:
    """A small but real image classifier as ONNX: conv 5x5/2 -> ReLU -> conv 3x3/2 -> ReLU -> global pool -> Gemm.

    Seeded random weights; its top-1 depends on colour and texture, so a changed pixel can change its answer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (16, 3, 5, 5)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (32, 16, 3, 3)).astype(np.float32)
    w3 = rng.normal(0, 0.5, (classes, 32)).astype(np.float32)
    b3 = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], strides=[2, 2], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, image_size, image_size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"), (b3, "b3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = [("image_size", str(image_size)), ("num_classes", str(classes))]
    if names:
        meta.append(("class_names", json.dumps([f"class{i}" for i in range(classes)])))
    for key, value in meta:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def pan_zoom_frames(width: int, height: int, count: int, photos: list[Path] | None = None):
    """``count`` RGB frames (H x W x 3 uint8) panning and zooming over the bundled photos, a few frames per photo."""
    from PIL import Image

    from edge_inception.data.images import bundled_photos, load_image

    images = [load_image(p) for p in (photos or bundled_photos())]
    per = max(1, count // len(images))
    for i in range(count):
        im = images[(i // per) % len(images)]
        t = (i % per) / max(1, per - 1)
        zoom = 1.0 - 0.4 * t  # the visible part shrinks: a zoom in
        w, h = im.size
        cw, ch = w * zoom, min(h * zoom, w * zoom * height / width)
        cw = ch * width / height
        left, top = (w - cw) * t, (h - ch) * (1 - t) / 2
        yield np.asarray(im.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)))


def unreadable_images(folder: Path, width: int = 96, height: int = 64) -> int:
    """Into ``folder`` (made here): real photos cut to a third of their bytes (two frames, each as a JPEG and a PNG) and
    garbage named .jpg, so that no image decodes; how many files (5)."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(pan_zoom_frames(width, height, 2)):
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, fmt)
            (folder / f"{i}.{fmt.lower()}").write_bytes(buf.getvalue()[: buf.tell() // 3])
    (folder / "9.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return 5


def make_video(path: Path, frames, fps: int = 10, codec: str = "libx264", options: dict[str, str] | None = None,
               container_options: dict[str, str] | None = None, pix_fmt: str | None = None) -> Path:
    """Encode RGB frames with FFmpeg through PyAV into ``path`` (container from the suffix); ``options`` are the encoder's,
    ``container_options`` the muxer's (e.g. ``{"movflags": "+faststart"}``: an MP4's index before its data); ``pix_fmt``
    the encoder's pixel format (default yuvj420p for MJPEG, yuv420p otherwise; FFV1 takes any size, odd ones too)."""
    import av

    with av.open(str(path), mode="w", options=container_options or {}) as out:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=Fraction(fps))
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = pix_fmt or ("yuvj420p" if codec == "mjpeg" else "yuv420p")
                stream.options = options or {}
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        assert stream is not None
        for packet in stream.encode():
            out.mux(packet)
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a video as FFmpeg decodes it, RGB."""
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

"""Issue 40: the decoder cuts the model's crop in its own pixel format and scales it once (FFmpeg's scaler), the cores
are split between the decoder and the engine, the engine is measured alone, and the decoder is chosen from a table
(hardware where present, the CPU as the fallback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app
from edge_inception.data.images import normalize, preprocess, reference_geometry
from edge_inception.stream.plan import (
    DECODERS,
    JETSON,
    NVIDIA_GPU,
    CropScale,
    choose_decoder,
    decoder_crop,
    split_threads,
    usable,
)

from .stream_media import make_video, pan_zoom_frames, tiny_classifier

pytest.importorskip("av")
runner = CliRunner()


# --- the geometry: a crop of the source, on even pixels, then one scale ----------------------------------------------

def test_decoder_crop_hand_worked():
    # 1920 x 1080 at 224: resized to 455 x 256 (int(256 * 1920 / 1080) = 455), crop box (116, 16, 340, 240) in resized
    # pixels (round(115.5) = 116); back in source pixels x 489.5..1434.7, y 67.5..1012.5 -> even: 490..1434, 68..1012
    assert decoder_crop(1920, 1080, 224) == CropScale(490, 68, 944, 944, 224)
    assert decoder_crop(1080, 1920, 224) == CropScale(68, 490, 944, 944, 224)  # portrait: the same, transposed
    # 640 x 480: resized 341 x 256, box (58, 16, 282, 240) (round(58.5) = 58); x 108.9..529.3 -> 108..530, y 30..450
    assert decoder_crop(640, 480, 224) == CropScale(108, 30, 422, 420, 224)
    # no crop leaves the frame or is narrower than one chroma sample
    assert decoder_crop(2, 2, 64) == CropScale(0, 0, 2, 2, 64)
    for w, h in ((3, 1000), (1000, 3), (17, 9), (4000, 3000)):
        c = decoder_crop(w, h, 224)
        assert 0 <= c.x and c.x + c.width <= w and 0 <= c.y and c.y + c.height <= h and c.width >= 2 and c.height >= 2
        assert c.x % 2 == c.y % 2 == 0
    with pytest.raises(ValueError):
        decoder_crop(0, 10)


def _decoded(path: Path) -> list:
    import av

    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def _centroid(gray: np.ndarray) -> np.ndarray:
    w = np.clip(gray.astype(np.float64) - 128.0, 0, None)
    ys, xs = np.indices(gray.shape)
    return np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])


@pytest.mark.parametrize("width,height", [(640, 360), (360, 640), (318, 238)])
def test_decoder_crop_puts_a_marker_where_the_exact_path_does(tmp_path, width, height):
    """A white square on black at known places, encoded losslessly: its centre in the decoder's 224 x 224 crop is where
    the exact path (the whole frame resized, then cropped) puts it, within what the even edges can move it."""
    from PIL import Image

    from edge_inception.stream.decoders import ModelScaler

    size = 224
    g = reference_geometry(width, height, size)
    sx, sy = width / g.resized[0], height / g.resized[1]
    box = np.array(g.box, dtype=float) * [sx, sy, sx, sy]  # the exact crop in source pixels
    c = decoder_crop(width, height, size)
    # the bound from the method: each edge moved by at most one source pixel, scaled to output pixels, and the filters'
    # rounding (a quarter of an output pixel)
    moved = np.abs(np.array([c.x, c.y, c.x + c.width, c.y + c.height]) - box)
    bound = float(max(moved[0::2].max() * size / c.width, moved[1::2].max() * size / c.height)) + 0.25
    frames = []
    spots = [(0.5, 0.5), (0.3, 0.4), (0.7, 0.62), (0.42, 0.71)]  # places inside the crop, as fractions of it
    for fx, fy in spots:
        rgb = np.zeros((height, width, 3), np.uint8)
        cx, cy = int(box[0] + fx * (box[2] - box[0])), int(box[1] + fy * (box[3] - box[1]))
        rgb[cy - 8:cy + 8, cx - 8:cx + 8] = 255
        frames.append(rgb)
    video = make_video(tmp_path / "marks.mkv", frames, options={"qp": "0", "preset": "veryfast"})
    scaler = ModelScaler(size)
    for vf in _decoded(video):
        ours = scaler(vf)
        assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
        exact = preprocess(Image.fromarray(vf.to_ndarray(format="rgb24")), size)
        ours_gray = ours.mean(axis=2)
        exact_gray = (exact.transpose(1, 2, 0) * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]).mean(axis=2) * 255
        assert np.linalg.norm(_centroid(ours_gray) - _centroid(exact_gray)) <= bound
    assert bound < 1.5  # the method keeps the crop within about a pixel of the exact one


def test_decoder_crop_agrees_with_the_exact_path_on_real_photos(tmp_path):
    """A clip of the bundled photos (pans and zooms, crf 23): the decoder's crop against the exact path on every frame.
    Pixels: both are bilinear resamplings of the same picture from crops at most a source pixel apart, differing by
    FFmpeg's and Pillow's filter weights, the chroma upsampling (4:2:0 scaled, not converted first) and rounding: they
    differ on edges, within 1 % of the range on average. Answers: scores move by at most what that
    moves them (``moved``); wherever the exact path's top-1 leads by more than twice that, the fast top-1 is the same."""
    from PIL import Image

    from edge_inception.engines.registry import open_runner
    from edge_inception.evaluate.predict import softmax
    from edge_inception.stream.decoders import ModelScaler

    size = 64
    model = tiny_classifier(tmp_path / "tiny.onnx", image_size=size)
    video = make_video(tmp_path / "photos.mp4", pan_zoom_frames(640, 360, 28), fps=10, options={"crf": "23", "preset": "veryfast"})
    scaler = ModelScaler(size)
    ours, exact = [], []
    for vf in _decoded(video):
        ours.append(scaler(vf))
        exact.append(preprocess(Image.fromarray(vf.to_ndarray(format="rgb24")), size))
    exact_pixels = np.stack([(e.transpose(1, 2, 0) * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]) * 255 for e in exact])
    assert np.abs(np.stack(ours).astype(float) - exact_pixels).mean() < 0.01 * 255
    with open_runner(model) as r:
        p_fast = softmax(r.run(np.stack([normalize(o) for o in ours])))
        p_exact = softmax(r.run(np.stack(exact)))
    moved = float(np.abs(p_fast - p_exact).max())
    top2 = np.sort(p_exact, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * moved
    assert decided.sum() >= len(decided) // 2, "the check needs frames the model decides clearly"
    assert (p_fast.argmax(1) == p_exact.argmax(1))[decided].all()
    assert len(set(p_exact.argmax(1).tolist())) >= 2


# --- the thread split ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cores,device,hw,user,decoder,engine", [
    (1, "cpu", False, None, 1, 1),     # one core: turns
    (2, "cpu", False, None, 1, 1),     # 2 // 4 = 0 -> at least 1 decoder thread, 1 left for the engine
    (4, "cpu", False, None, 1, 3),
    (8, "cpu", False, None, 2, 6),
    (16, "cpu", False, None, 4, 12),
    (8, "cuda", False, None, 7, None),  # a GPU engine: the CPU decodes, one core feeds the GPU; the engine keeps its own
    (8, "cpu", True, None, 1, 7),      # a hardware decoder: one core demuxes
    (8, "cuda", True, None, 1, None),
    (8, "cpu", False, 6, 2, 6),        # the user's --threads is kept; the decoder gets what is left
    (4, "cpu", False, 6, 1, 6),        # ... at least one
])
def test_split_threads_hand_worked(cores, device, hw, user, decoder, engine):
    s = split_threads(cores, device, hw, user)
    assert (s.decoder, s.engine) == (decoder, engine) and s.why


def test_split_threads_never_oversubscribes_a_cpu_engine():
    for cores in range(2, 65):
        s = split_threads(cores)
        assert s.decoder >= 1 and s.engine is not None and s.engine >= 1 and s.decoder + s.engine == cores
        assert s.engine >= s.decoder  # the engine is the heavier stage


# --- the decoder table: hardware where present, the CPU as the fallback ---------------------------------------------

GPU = frozenset({NVIDIA_GPU})


def test_hardware_decoders_are_chosen_only_with_their_module_and_device():
    assert choose_decoder("video", "h264", frozenset({"PyNvVideoCodec"}), GPU).name == "nvdec"
    assert choose_decoder("video", "hevc", frozenset({"PyNvVideoCodec"}), GPU).name == "nvdec"
    assert choose_decoder("photos", "jpeg", frozenset({"nvidia.dali"}), GPU).name == "nvjpeg"
    assert choose_decoder("video", "h264", frozenset({"cv2-gstreamer"}), frozenset({JETSON[0]})).name == "nvv4l2decoder"
    assert choose_decoder("video", "h264", frozenset({"cv2-gstreamer"}), frozenset({JETSON[1]})).name == "nvv4l2decoder"
    # the fallback: no module, no device, a codec the hardware does not take, a live source
    assert choose_decoder("video", "h264", frozenset(), GPU).name == "ffmpeg"
    assert choose_decoder("video", "h264", frozenset({"PyNvVideoCodec"}), frozenset()).name == "ffmpeg"
    assert choose_decoder("video", "prores", frozenset({"PyNvVideoCodec"}), GPU).name == "ffmpeg"
    assert choose_decoder("live", "h264", frozenset({"PyNvVideoCodec"}), GPU).name == "ffmpeg"
    assert choose_decoder("photos", "jpeg", frozenset({"PyNvVideoCodec"}), GPU).name == "pillow"
    assert choose_decoder("photos", "jpeg", frozenset({"nvidia.dali"}), frozenset()).name == "pillow"
    assert choose_decoder("video", "h264", frozenset({"cv2-gstreamer"}), GPU).name == "ffmpeg"  # GStreamer on a PC: not Jetson's
    with pytest.raises(LookupError):
        choose_decoder("sonar", None, frozenset(), frozenset())


def test_why_a_decoder_is_not_used_is_said():
    nvdec = next(d for d in DECODERS if d.name == "nvdec")
    assert "no /dev/nvidia0" in (usable(nvdec, "video", "h264", frozenset({"PyNvVideoCodec"}), frozenset()) or "")
    assert "edge-inception[nvdec]" in (usable(nvdec, "video", "h264", frozenset(), GPU) or "")
    assert usable(nvdec, "video", "h264", frozenset({"PyNvVideoCodec"}), GPU) is None


def test_probe_imports_nothing_where_no_device_exists():
    import sys

    from edge_inception.stream.decoders import probe

    before = set(sys.modules)
    assert probe(exists=lambda p: False) == (frozenset(), frozenset())
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in ("PyNvVideoCodec", "nvidia", "cv2")}
    # a device without its module: present, not importable (here the modules are not installed)
    importable, present = probe(exists=lambda p: p == NVIDIA_GPU)
    assert present == GPU


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("decoders")
    return {"model": tiny_classifier(d / "tiny.onnx"), "video": make_video(d / "clip.mp4", pan_zoom_frames(160, 112, 20), fps=10)}


def test_the_stream_names_its_decoder_and_split_and_measures_the_engine_alone(clip):
    from edge_inception.stream.decoders import probe
    from edge_inception.stream.run import run_stream, usable_cores

    s = run_stream(clip["model"], str(clip["video"]))
    assert s.frames == 20
    assert s.decoder == choose_decoder("video", "h264", *probe()).what  # here: FFmpeg on the CPU, the fallback, run for real
    assert (s.threads.decoder, s.threads.engine) == (lambda t: (t.decoder, t.engine))(split_threads(usable_cores(), "cpu", False))
    a = s.engine_alone
    assert a is not None and 3 <= a.runs <= 30 and a.batch == 1 and "alone after the stream" in a.how
    assert a.fps == pytest.approx(1e3 / a.mean_ms, rel=1e-2)
    d = s.as_dict()
    assert d["end_to_end_of_engine_alone"] == pytest.approx(s.fps / a.fps, abs=1e-4)  # the ratio uses the alone figure
    assert d["engine_alone"]["how"] == a.how and "inside the stream" in d["ms_measured"]
    assert run_stream(clip["model"], str(clip["video"]), engine_alone=False).engine_alone is None


def test_the_cli_summary_says_which_figures_are_alone_and_which_inside(clip):
    r = runner.invoke(app, ["stream", str(clip["model"]), str(clip["video"]), "--threads", "1"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    s = json.loads(next(x for x in lines if x.startswith("summary: "))[len("summary: "):])
    alone = next(x for x in lines if "the engine alone" in x)
    assert "measured alone after the stream" in alone
    assert f"end to end is {s['fps'] / s['engine_alone']['fps']:.0%} of it" in alone
    assert any("per stage, inside the stream" in x for x in lines)
    assert any(x.strip().startswith("decoder: ") and "threads:" in x for x in lines)
    assert s["threads"]["engine"] == 1


def test_a_split_given_is_used(clip):
    from edge_inception.stream.plan import ThreadSplit
    from edge_inception.stream.run import run_stream

    s = run_stream(clip["model"], str(clip["video"]), split=ThreadSplit(2, 1, "given"), engine_alone=False, max_frames=3)
    assert s.threads == ThreadSplit(2, 1, "given") and s.frames == 3


def test_a_hardware_decoder_that_fails_at_its_start_hands_over_to_the_cpu(clip, monkeypatch, caplog):
    """A decoder row whose reader fails before its first frame (as NVDEC with a driver too old would): the stream
    reads every frame through FFmpeg on the CPU, says so, and the summary names the decoder that did the work."""
    from edge_inception.errors import StreamError
    from edge_inception.stream import sources
    from edge_inception.stream.plan import DecoderSpec
    from edge_inception.stream.run import run_stream

    def broken(src):
        raise StreamError("no NVDEC session")
        yield  # a generator, as the readers are

    spec = DecoderSpec("broken-hw", "a broken hardware decoder", frozenset({"video"}), None, (), ("/dev/x",))
    monkeypatch.setitem(sources.VIDEO_READERS, "broken-hw", broken)
    source = sources.open_source(str(clip["video"]))
    real_use = source.use_decoder
    monkeypatch.setattr(source, "use_decoder", lambda _spec, threads: real_use(spec, threads))
    with caplog.at_level("WARNING"):
        s = run_stream(clip["model"], source, engine_alone=False)
    assert s.frames == 20 and s.decoder == "FFmpeg (PyAV) on the CPU"
    assert any("a broken hardware decoder failed (no NVDEC session); decoding on the CPU" in r.getMessage() for r in caplog.records)

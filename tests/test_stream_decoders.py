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
    RUNTIME_DEFAULTS,
    Conversion,
    CropScale,
    DecoderRegion,
    SplitRate,
    ThreadSplit,
    choose_decoder,
    choose_split,
    decoder_crop,
    decoder_region,
    split_candidates,
    split_threads,
    usable,
)
from edge_inception.vocab import PreprocessMode

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


def test_decoder_region_hand_worked():
    """1080p to 224: the reference resizes to 455 x 256 (4.2198 / 4.21875 source pixels per output pixel) and crops
    (116, 16, 340, 240); in source pixels 489.49-1434.73 x 67.5-1012.5; the taps reach ceil(4.22) + 1 = 6 pixels further;
    out to even pixels: x 482-1442, y 60-1020. The box is the crop in the region's pixels."""
    r = decoder_region(1920, 1080, 224)
    assert (r.x, r.y, r.width, r.height, r.size) == (482, 60, 960, 960, 224)
    assert r.box == pytest.approx((116 * 1920 / 455 - 482, 16 * 4.21875 - 60, 340 * 1920 / 455 - 482, 240 * 4.21875 - 60), abs=1e-9)
    p = decoder_region(1080, 1920, 224)  # portrait: the same, transposed
    assert (p.x, p.y, p.width, p.height) == (60, 482, 960, 960)
    # upscaled (240 rows to 256): 320 x 240 -> 341 x 256, crop (58, 16, 282, 240), 0.9384 / 0.9375 source pixels per
    # output pixel; in source pixels 54.43-264.63 x 15-225; the taps reach 1 + 1 pixels further; out to even pixels
    u = decoder_region(320, 240, 224)
    assert (u.x, u.y, u.width, u.height) == (52, 12, 216, 216)
    assert u.box == pytest.approx((58 * 320 / 341 - 52, 15 - 12, 282 * 320 / 341 - 52, 225 - 12), abs=1e-9)
    assert decoder_region(2, 2, 64) == decoder_region(2, 2, 64, 2) and decoder_region(2, 2, 64).width == 2  # the whole frame
    with pytest.raises(ValueError):
        decoder_region(0, 10)


def _photo_clip(tmp_path: Path, width: int, height: int, frames: int) -> Path:
    return make_video(tmp_path / f"photos{width}x{height}.mp4", pan_zoom_frames(width, height, frames), fps=10,
                      options={"crf": "23", "preset": "veryfast"})


def test_resample_weights_hand_worked():
    """4 pixels to 2 (scale 2, the triangle 2 pixels wide each side): output 0 is centred at 1.0, its taps run from
    int(1 - 2 + 0.5) = 0 (clipped) to int(1 + 2 + 0.5) = 3, weighted 1 - |j + 0.5 - 1| / 2 = 0.75, 0.75, 0.25, then
    normalised; output 1 (centre 3.0) mirrors it. Upscaling 2 pixels to 4 (scale 0.5, the triangle 1 pixel wide):
    output 0 is centred at 0.25, its taps run from 0 to int(1.75) = 1: pixel 0 alone; output 1 (centre 0.75) reads
    pixels 0 and 1 at 0.75 and 0.25. A box inside a row of 10 (2.5-6.5 to 2, scale 2): output 0 is centred at 3.5, its
    taps 2-5 weighted 0.5, 1, 0.5, 0 before normalising."""
    from edge_inception.stream.plan import resample_weights, subsampled

    w = resample_weights(4, 0.0, 4.0, 2)
    assert w.shape == (2, 4) and w.dtype == np.float32
    np.testing.assert_allclose(w, [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]], rtol=1e-6)
    np.testing.assert_allclose(resample_weights(2, 0.0, 2.0, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], rtol=1e-6)
    box = resample_weights(10, 2.5, 6.5, 2)
    np.testing.assert_allclose(box[0], [0, 0, 0.25, 0.5, 0.25, 0, 0, 0, 0, 0], atol=1e-7)
    # a chroma plane at half the width: the weights of the two luma pixels that share a chroma sample, added
    np.testing.assert_allclose(subsampled(w, 2), [[6 / 7, 1 / 7], [1 / 7, 6 / 7]], rtol=1e-6)
    assert subsampled(resample_weights(5, 0.0, 5.0, 2), 2).shape == (2, 3)  # an odd width: the last chroma sample alone
    with pytest.raises(ValueError):
        resample_weights(4, 2.0, 2.0, 2)


@pytest.mark.parametrize("box,size", [((30.25, 20.5, 471.25, 501.875), 224), ((0.0, 0.0, 512.0, 512.0), 64), ((10.0, 5.0, 60.0, 50.0), 224)])
def test_resample_weights_are_pillows_resize(box, size):
    """Applied as Pillow applies its coefficients (across, rounded to 8 bits, then down), the weights give Pillow's own
    ``resize(box=..., BILINEAR)`` of a bundled photo: at most one level apart (Pillow's weights are fixed-point), on
    under 2 % of the pixels; downscaled 7.5 x, kept whole, and upscaled 4.5 x."""
    from PIL import Image

    from edge_inception.data.images import bundled_photos, load_image
    from edge_inception.stream.plan import resample_weights

    photo = load_image(bundled_photos()[0]).convert("L")
    plane = np.asarray(photo, dtype=np.float64)
    rows = resample_weights(plane.shape[0], box[1], box[3], size)
    columns = resample_weights(plane.shape[1], box[0], box[2], size)
    across = np.clip(np.rint(plane @ columns.T.astype(np.float64)), 0, 255)
    ours = np.clip(np.rint(rows.astype(np.float64) @ across), 0, 255)
    pillow = np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.float64)
    diff = np.abs(ours - pillow)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def _bt709(vf):
    vf.colorspace = 1  # AVCOL_SPC_BT709: the frame says so, and both paths must convert with it
    return vf


def test_model_crop_conversion_hand_worked():
    """Where FFmpeg converts a frame pixel by pixel with each chroma sample repeated (4:2:0 / 4:2:2 planar with an even
    number of rows; 4:4:4 at any size) the planes are resampled; elsewhere a region whose chroma the subsampling tiles
    is converted alone, and the rest (an odd size in subsampled chroma, a cut between chroma samples) whole."""
    from edge_inception.stream.plan import model_crop_conversion

    r = decoder_region(640, 360, 224)
    assert model_crop_conversion("yuv420p", (2, 2), 640, 360, r) is Conversion.PLANES
    assert model_crop_conversion("yuv420p", (2, 2), 641, 360, decoder_region(641, 360)) is Conversion.PLANES  # odd width
    for fmt, chroma in (("yuv420p", (2, 2)), ("yuvj420p", (2, 2)), ("yuv422p", (2, 1)), ("yuvj422p", (2, 1))):
        assert model_crop_conversion(fmt, chroma, 640, 361, decoder_region(640, 361)) is Conversion.FRAME  # odd height
    assert model_crop_conversion("yuv444p", (1, 1), 63, 47, decoder_region(63, 47, 64)) is Conversion.PLANES
    assert model_crop_conversion("nv12", (2, 2), 640, 360, r) is Conversion.REGION
    assert model_crop_conversion("yuv420p10le", (2, 2), 640, 360, r) is Conversion.REGION
    assert model_crop_conversion("rgb24", (1, 1), 63, 47, decoder_region(63, 47, 64)) is Conversion.REGION
    assert model_crop_conversion("nv12", (2, 2), 63, 48, decoder_region(63, 48, 64)) is Conversion.FRAME
    assert model_crop_conversion("nv12", (2, 2), 64, 47, decoder_region(64, 47, 64)) is Conversion.FRAME
    assert model_crop_conversion("yuv440p", (1, 2), 64, 48, decoder_region(64, 48, 64)) is Conversion.REGION
    # an odd width: swscale interpolates the full chroma width for the frame, half of it for an even cut
    assert model_crop_conversion("yuv440p", (1, 2), 63, 48, decoder_region(63, 48, 64)) is Conversion.FRAME
    # 4:1:1 (NTSC DV, 720 x 480): 4 luma pixels per chroma sample across; at 224 px the region starts at x 146, between
    # two chroma samples; at 64 px it starts on one (136) but is 442 wide, half a chroma sample over
    dv224, dv64 = decoder_region(720, 480, 224), decoder_region(720, 480, 64)
    assert (dv224.x, dv64.x, dv64.width) == (146, 136, 442)
    assert model_crop_conversion("yuv411p", (4, 1), 720, 480, dv224) is Conversion.FRAME
    assert model_crop_conversion("yuv411p", (4, 1), 720, 480, dv64) is Conversion.FRAME
    tiled = DecoderRegion(136, 18, 444, 438, dv64.box, 64)
    assert model_crop_conversion("yuv411p", (4, 1), 720, 480, tiled) is Conversion.REGION


def _as(pixel_format):
    def convert(vf):
        return vf.reformat(format=pixel_format)

    convert.__name__ = pixel_format
    return convert


P, R, F = Conversion.PLANES, Conversion.REGION, Conversion.FRAME
# (width, height, model size, codec, encoder pixel format, the frame as handed to the cut, how the fast path converts):
# FFV1 takes odd sizes (x264 does not in 4:2:0). R and F convert to RGB before the resample (the region, or the whole
# frame where FFmpeg's conversion of it is not pixel by pixel): only the resample's rounding differs from the exact path
VIDEO_CASES = [
    (640, 360, 224, "libx264", None, None, P),   # upscaled (360 rows to 256)
    (1280, 720, 64, "libx264", None, None, P),
    (360, 640, 64, "libx264", None, None, P),    # portrait
    (640, 360, 64, "mjpeg", None, None, P),      # yuvj420p: full range
    (640, 360, 64, "libx264", None, _bt709, P),  # a BT.709 frame
    (640, 360, 64, "libx264", None, _as("nv12"), R),  # not planar YUV: cut in RGB, each colour resampled
    # odd sizes: FFmpeg converts 4:2:0 / 4:2:2 with an odd number of rows through its generic scaler (chroma
    # interpolated, not repeated), and NV12 whose chroma does not tile the frame likewise
    (321, 241, 64, "ffv1", "yuv420p", None, F),
    (64, 47, 64, "ffv1", "yuv420p", None, F),
    (63, 48, 64, "ffv1", "yuv420p", None, P),    # an odd width alone: FFmpeg still repeats the chroma
    (321, 241, 64, "ffv1", "yuv422p", None, F),
    (64, 47, 64, "ffv1", "yuv422p", None, F),
    (63, 48, 64, "ffv1", "yuv422p", None, P),
    (160, 120, 63, "ffv1", "yuv422p", None, P),  # an odd model size: the small 4:2:2 picture has an even number of rows
    (321, 241, 64, "mjpeg", "yuvj420p", None, F),  # full range
    (64, 47, 64, "mjpeg", "yuvj422p", None, F),
    (63, 47, 64, "ffv1", "yuv444p", None, P),    # no chroma subsampling: pixel by pixel at any size
    (64, 47, 64, "ffv1", "yuv420p", _as("nv12"), F),
    (63, 48, 64, "ffv1", "yuv420p", _as("nv12"), F),
    (64, 48, 64, "ffv1", "yuv422p", _as("yuyv422"), R),  # packed (a USB camera's): FFmpeg's crop filter would convert it
    (63, 48, 64, "ffv1", "yuv422p", _as("uyvy422"), F),
    (63, 48, 64, "ffv1", "yuv444p", _as("yuv440p"), F),  # odd width: FFmpeg interpolates the frame's chroma in full
    (720, 480, 64, "ffv1", "yuv444p", _as("yuv411p"), F),  # DV's 4:1:1: the region is not whole chroma samples wide
]


@pytest.mark.parametrize("width,height,size,codec,pix_fmt,frame,conversion", VIDEO_CASES,
                         ids=[f"{c[0]}x{c[1]}-{c[2]}-{c[4] or c[3]}-{getattr(c[5], '__name__', 'as-is')}" for c in VIDEO_CASES])
def test_the_fast_video_path_is_the_exact_path_up_to_rounding(tmp_path, width, height, size, codec, pix_fmt, frame, conversion):
    """A clip of the bundled photos (pans and zooms): the region the decoder cuts is the same pixels as the exact path's
    whole frame; the model's crop resampled from its planes and converted after is the exact path's crop up to
    rounding (under half a level on average, more than 2 levels on under 1 % of the values: where a colour clips, the
    exact path clips each pixel before the resample), and one level at most where the frame is converted to RGB first
    (the region, or the whole frame where FFmpeg's conversion of it is not pixel by pixel: then only the resample's
    rounding differs); the tiny colour-sensitive classifier answers the same top-1 on every frame."""
    from PIL import Image

    from edge_inception.engines.registry import open_runner
    from edge_inception.evaluate.predict import softmax
    from edge_inception.stream.decoders import ModelCrop, _plane

    model = tiny_classifier(tmp_path / "tiny.onnx", image_size=size)
    cut = ModelCrop(size)
    ours, exact = [], []
    clip = (_photo_clip(tmp_path, width, height, 12) if codec == "libx264" else
            make_video(tmp_path / "photos.mkv", pan_zoom_frames(width, height, 12), codec=codec, pix_fmt=pix_fmt,
                       options={"qscale": "3"} if codec == "mjpeg" else {}))
    for vf in _decoded(clip):
        vf = frame(vf) if frame is not None else vf
        assert (vf.width, vf.height) == (width, height) and (pix_fmt is None or frame is not None or vf.format.name == pix_fmt)
        full = vf.to_ndarray(format="rgb24")
        ours.append(cut(vf))
        r = cut.region
        assert r is not None and r.x % 2 == 0 and r.y % 2 == 0
        assert cut.conversion is conversion
        if cut.conversion is Conversion.PLANES:
            cut.graph.push(vf)  # the region as the decoder cuts it: the same luma as the whole frame's, bit for bit
            assert np.array_equal(_plane(cut.graph.pull().planes[0]), _plane(vf.planes[0])[r.y:r.y + r.height, r.x:r.x + r.width])
        exact.append(preprocess(Image.fromarray(full), size))
    exact_pixels = np.rint(np.stack([(e.transpose(1, 2, 0) * [0.229, 0.224, 0.225] + [0.485, 0.456, 0.406]) * 255 for e in exact]))
    diff = np.abs(np.stack(ours).astype(float) - exact_pixels)
    if conversion is not Conversion.PLANES:
        assert diff.max() <= 1
    else:
        assert diff.mean() < 0.5 and (diff > 2).mean() < 0.01
    with open_runner(model) as runner:
        p_fast = softmax(runner.run(np.stack([normalize(o) for o in ours])))
        p_exact = softmax(runner.run(np.stack(exact)))
    assert (p_fast.argmax(1) == p_exact.argmax(1)).all()
    assert len(set(p_exact.argmax(1).tolist())) >= 2  # the answers depend on the picture


def test_the_stream_fast_path_is_the_decoders_crop(tmp_path):
    """``stream --preprocess fast`` on a video classifies the decoder's cut (ModelCrop), and its answers are the exact
    path's on every frame of a real-photo clip."""
    from edge_inception.stream.run import run_stream

    model = tiny_classifier(tmp_path / "tiny.onnx", image_size=64)
    video = _photo_clip(tmp_path, 640, 360, 16)
    fast: list = []
    exact: list = []
    run_stream(model, str(video), top_k=1, on_frame=lambda r: fast.append(r.top[0]), engine_alone=False, split_cache=tmp_path / "c")
    run_stream(model, str(video), top_k=1, mode=PreprocessMode.exact, on_frame=lambda r: exact.append(r.top[0]), engine_alone=False,
               split_cache=tmp_path / "c")
    assert len(fast) == len(exact) == 16
    assert [f[0] for f in fast] == [e[0] for e in exact]
    assert max(abs(f[2] - e[2]) for f, e in zip(fast, exact)) < 0.05


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


@pytest.mark.parametrize("cores,pairs", [
    (1, [RUNTIME_DEFAULTS]),                          # nothing to share
    (2, [RUNTIME_DEFAULTS, (1, 1)]),                  # 2 // 4 -> 1, 2 // 2 = 1, 1: the same pair once
    (4, [RUNTIME_DEFAULTS, (1, 3), (2, 2)]),
    (8, [RUNTIME_DEFAULTS, (2, 6), (4, 4), (1, 7)]),
    (16, [RUNTIME_DEFAULTS, (4, 12), (8, 8), (1, 15)]),
])
def test_split_candidates_hand_worked(cores, pairs):
    assert list(split_candidates(cores)) == pairs


@pytest.mark.parametrize("rates,chosen", [
    # the quiet 2-core EPYC of issue 40: the runtimes' defaults 187 FPS, 1 + 1 149 FPS
    ([(0, None, 187.4), (1, 1, 149.5)], (0, None)),
    ([(0, None, 149.5), (1, 1, 187.4)], (1, 1)),
    ([(0, None, 100.0), (1, 1, 102.9)], (0, None)),    # within 3 %: the earlier (simpler) split is kept
    ([(0, None, 100.0), (1, 1, 103.1)], (1, 1)),       # beyond it: the faster
    ([(0, None, 0.0), (1, 3, 40.0), (2, 2, 41.0)], (1, 3)),  # the defaults failed; 40 is within 3 % of 41
    ([(0, None, float("nan")), (2, 6, 10.0), (4, 4, 30.0), (1, 7, 29.5)], (4, 4)),
])
def test_choose_split_hand_worked(rates, chosen):
    r = choose_split([SplitRate(*x) for x in rates])
    assert (r.decoder, r.engine) == chosen


def test_choose_split_refuses_nothing_measured():
    with pytest.raises(ValueError):
        choose_split([])
    with pytest.raises(ValueError):
        choose_split([SplitRate(0, None, 0.0), SplitRate(1, 1, float("inf"))])


def _key(**changes):
    from edge_inception.stream.calibrate import SplitKey

    base = {"cpu": "CPU X", "flags": ("avx2",), "cores": 2, "model_sha256": "ab" * 32, "media": "video", "codec": "h264",
            "frame_size": (1920, 1080), "preprocess": "fast", "libraries": (("av", "1"),)}
    return SplitKey(**{**base, **changes})


def test_a_split_is_measured_once_remembered_and_a_tampered_record_measured_again(tmp_path):
    """calibrated_split: the first call measures every candidate and writes a hashed record; the next one reads it
    (nothing measured); a record edited by hand (a rate changed, its hash not) or another key's record is not believed:
    measured again and rewritten. The rates here are given, as the stream's measurement would give them."""
    from edge_inception.stream.calibrate import calibrated_split

    measured: list = []

    def rate(pair):
        measured.append(pair)
        return {RUNTIME_DEFAULTS: 187.4, (1, 1): 149.5}[pair]

    first = calibrated_split(_key(), split_candidates(2), rate, tmp_path)
    assert (first.decoder, first.engine) == RUNTIME_DEFAULTS and "measured now" in first.why and "187.4" in first.why
    assert measured == [RUNTIME_DEFAULTS, (1, 1)]
    (record,) = tmp_path.iterdir()
    again = calibrated_split(_key(), split_candidates(2), rate, tmp_path)
    assert measured == [RUNTIME_DEFAULTS, (1, 1)] and "remembered from" in again.why and (again.decoder, again.engine) == RUNTIME_DEFAULTS
    # tampered: 1 + 1 made the fastest without fixing the hash -> not believed, measured again, the defaults chosen
    doc = json.loads(record.read_text())
    doc["rates"][1]["fps"] = 999.0
    record.write_text(json.dumps(doc))
    measured.clear()
    redone = calibrated_split(_key(), split_candidates(2), rate, tmp_path)
    assert measured == [RUNTIME_DEFAULTS, (1, 1)] and "measured now" in redone.why and (redone.decoder, redone.engine) == RUNTIME_DEFAULTS
    assert json.loads(record.read_text())["rates"][1]["fps"] == 149.5
    # another CPU, frame size or preprocessing is another record
    for other in (_key(cpu="CPU Y"), _key(frame_size=(3840, 2160)), _key(preprocess="exact"), _key(cores=4)):
        assert other.digest() != _key().digest()
    measured.clear()
    calibrated_split(_key(frame_size=(640, 360)), split_candidates(2), rate, tmp_path)
    assert len(measured) == 2
    # a live source is read once: the remembered split where there is one, else the runtimes' defaults, said so
    live = calibrated_split(_key(codec="hevc"), split_candidates(2), None, tmp_path)
    assert (live.decoder, live.engine) == RUNTIME_DEFAULTS and "not measured" in live.why


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
    return {"model": tiny_classifier(d / "tiny.onnx"), "video": make_video(d / "clip.mp4", pan_zoom_frames(160, 112, 20), fps=10),
            "cache": d / "split-cache"}


def test_the_stream_names_its_decoder_and_split_and_measures_the_engine_alone(clip):
    from edge_inception.limits import usable_cpus
    from edge_inception.stream.decoders import probe
    from edge_inception.stream.run import run_stream

    s = run_stream(clip["model"], str(clip["video"]), split_cache=clip["cache"])
    assert s.frames == 20
    assert s.decoder == choose_decoder("video", "h264", *probe()).what  # here: FFmpeg on the CPU, the fallback, run for real
    if usable_cpus() > 1:  # measured on the first frames, each candidate streamed for real, and remembered
        assert (s.threads.decoder, s.threads.engine) in split_candidates(usable_cpus()) and "measured now" in s.threads.why
        assert all(f"{ThreadSplit(d, e, '').label} " in s.threads.why for d, e in split_candidates(usable_cpus()))
        again = run_stream(clip["model"], str(clip["video"]), split_cache=clip["cache"], engine_alone=False)
        assert "remembered from" in again.threads.why and (again.threads.decoder, again.threads.engine) == (s.threads.decoder, s.threads.engine)
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


def test_the_fast_path_without_scipy_is_one_line_naming_the_extra(clip, monkeypatch):
    """The fast video path resamples with SciPy: where it is not installed, ``stream`` says so in one line naming the
    ``[stream]`` extra, before any frame; ``--preprocess exact`` needs no SciPy and runs."""
    import sys

    monkeypatch.setitem(sys.modules, "scipy", None)  # not importable here, as on a device without it
    r = runner.invoke(app, ["stream", str(clip["model"]), str(clip["video"]), "--threads", "1"])
    assert r.exit_code not in (0, None) and isinstance(r.exception, SystemExit), r.output  # a clean exit, no traceback
    said = [x for x in r.output.splitlines() if "scipy" in x]
    assert len(said) == 1 and "stream (video decoding) needs scipy" in said[0] and "edge-inception[stream]" in said[0], r.output
    r = runner.invoke(app, ["stream", str(clip["model"]), str(clip["video"]), "--threads", "1", "--preprocess", "exact"])
    assert r.exit_code == 0, r.output


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


def test_max_seconds_bounds_a_stream(clip):
    """What bounds each calibration run: ``max_seconds`` 0 classifies nothing; a bound the clip fits in classifies it all."""
    from edge_inception.stream.run import run_stream

    given = {"split": split_threads(2), "engine_alone": False}
    assert run_stream(clip["model"], str(clip["video"]), max_seconds=0.0, **given).frames == 0
    assert run_stream(clip["model"], str(clip["video"]), max_seconds=3600.0, **given).frames == 20

"""How large a frame ``stream`` decodes (issue 40): a video whose header declares frames beyond the toolkit's pixel
limit (:data:`~edge_inception.limits.MAX_DECODED_PIXELS`, the bound image files are held to) is refused in one line
before FFmpeg decodes anything, and one whose frames grow beyond it mid-way stops there, on the fast and the exact
path. The files are real: a YUV4MPEG header as a hostile file would write it, H.264 clips made with PyAV."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from edge_inception.errors import StreamError
from edge_inception.limits import MAX_DECODED_PIXELS

from .stream_media import make_video, pan_zoom_frames, tiny_classifier

pytest.importorskip("av")

from edge_inception.stream.sources import Wanted, open_source  # noqa: E402

SMALL, LARGE = (64, 48), (128, 96)  # the two frame sizes of the clip whose size changes mid-way
COUNT = 8  # frames of each size
WANTS = {"fast": Wanted(64, model=True, full=False), "exact": Wanted(64, model=False, full=True)}


def _y4m(path: Path, width: int, height: int) -> Path:
    """A YUV4MPEG2 file whose header declares ``width`` x ``height`` 4:2:0 frames, followed by a few bytes of one
    frame (a hostile or broken file: what a decoder would allocate is the header's size)."""
    path.write_bytes(b"YUV4MPEG2 W%d H%d F25:1 Ip A1:1 C420jpeg\nFRAME\n" % (width, height) + bytes(range(256)) * 40)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares ``width`` x ``height`` RGB, its pixel data cut short."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 10) + b"IDAT" + b"\x78\x9c" + b"\x00" * 8)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("limits")
    small = list(pan_zoom_frames(*SMALL, COUNT))
    large = list(pan_zoom_frames(*LARGE, COUNT))
    # an MPEG-TS whose picture size changes mid-way (a camera switched to a higher resolution): two clips, one after the other
    a, b = make_video(d / "a.ts", small, fps=25), make_video(d / "b.ts", large, fps=25)
    (d / "grows.ts").write_bytes(a.read_bytes() + b.read_bytes())
    return {"dir": d, "model": tiny_classifier(d / "tiny.onnx"), "small": make_video(d / "small.mp4", small), "grows": d / "grows.ts"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_inception", "stream", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _frames(path: Path, want: Wanted, max_pixels: int | None = None) -> list:
    src = open_source(str(path), 64)
    src.want = want
    if max_pixels is not None:
        src.max_pixels = max_pixels
    with src:
        return list(src.frames())


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_declared_huge_frame_is_refused_in_one_line(media, mode):
    """12000 x 12000 (144 MP, FFmpeg itself takes it): exit 1, one line naming the file, the size and the limit."""
    clip = _y4m(media["dir"] / "huge.y4m", 12000, 12000)
    r = _cli(str(media["model"]), str(clip), "--preprocess", mode, "--threads", "1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines == [f"error: {clip}: declares frames of 12000 x 12000 pixels (144 MP), more than the 64 MP this toolkit decodes"], r.stderr
    assert "summary: " not in r.stdout


def test_a_frame_more_elongated_than_an_image_may_be_is_refused(media):
    """Found by an attack: a 1.2 MB Y4M of 400000 x 2 frames (0.8 MP, under the pixel bound) took 4.9 GB and 14 s through
    the exact path's resize. Video frames share the images' 20:1 bound: one line, before a frame is decoded."""
    clip = _y4m(media["dir"] / "wide.y4m", 400_000, 2)
    r = _cli(str(media["model"]), str(clip), "--preprocess", "exact", "--threads", "1")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"error: {clip}: declares frames of 400000 x 2 pixels, more elongated than the 20:1 this "
                                             "toolkit decodes"], r.stderr


def test_video_and_image_files_share_one_limit(media, tmp_path):
    """At the limit's edge (8000 x 8000 is 64 MP): a video and an image file one column wider are both refused for
    their size, and at 8000 x 8000 neither is (each then fails only for its cut-short data)."""
    assert MAX_DECODED_PIXELS == 8000 * 8000
    with pytest.raises(StreamError, match="8001 x 8000 pixels"):
        open_source(str(_y4m(tmp_path / "over.y4m", 8001, 8000))).open()
    src = open_source(str(_y4m(tmp_path / "at.y4m", 8000, 8000)))
    with src:
        assert src.frame_size == (8000, 8000)
    from edge_inception.data.images import load_image
    from edge_inception.errors import ImageError

    with pytest.raises(ImageError, match="64.008 MP is more than the 64 MP"):  # Pillow's own check, set to the same bound
        load_image(_png_header(tmp_path / "over.png", 8001, 8000))
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(_png_header(tmp_path / "at.png", 8000, 8000))


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_the_limit_is_the_sources_setting(media, mode):
    """A real H.264 clip of 64 x 48: read whole with the limit at its size, refused at open one pixel below it."""
    w, h = SMALL
    assert len(_frames(media["small"], WANTS[mode], w * h)) == COUNT
    with pytest.raises(StreamError, match=f"small.mp4: declares frames of {w} x {h} pixels"):
        _frames(media["small"], WANTS[mode], w * h - 1)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_frame_size_that_grows_mid_way_is_refused(media, mode):
    """64 x 48 then 128 x 96 in one MPEG-TS: with the limit between the two, the small frames come and the stream
    stops at the first large one, naming its size: FFmpeg's decoder refuses to make that picture (its ``max_pixels``),
    so the stop comes from the decoder's refusal, not from a picture already made;
    with the limit above both, every frame of both sizes comes, none counted corrupt."""
    src = open_source(str(media["grows"]), 64)
    src.want, src.max_pixels = WANTS[mode], SMALL[0] * SMALL[1]
    got: list = []
    with src, pytest.raises(StreamError, match=f"grows.ts: changes to frames of {LARGE[0]} x {LARGE[1]} pixels"):
        got.extend(src.frames())
    assert 0 < len(got) <= COUNT and {f.full_size for f in got} == {SMALL}
    frames = _frames(media["grows"], WANTS[mode], LARGE[0] * LARGE[1])
    assert [f.full_size for f in frames] == [SMALL] * COUNT + [LARGE] * COUNT
    pictures = [f.model_rgb if mode == "fast" else f.rgb for f in frames]
    assert all(isinstance(p, np.ndarray) for p in pictures)


def _mjpeg_with(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """An MKV of MJPEG pictures of the given sizes (each a whole JPEG from Pillow; the container says the first size)."""
    import io
    from fractions import Fraction

    import av
    from PIL import Image

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = *sizes[0], "yuvj420p"
        for i, (rgb, size) in enumerate(zip(pan_zoom_frames(*LARGE, len(sizes)), sizes)):
            jpeg = io.BytesIO()
            Image.fromarray(rgb).resize(size).save(jpeg, "JPEG")
            packet = av.Packet(jpeg.getvalue())
            packet.pts = packet.dts = i
            packet.time_base, packet.stream, packet.is_keyframe = Fraction(1, 10), stream, True
            out.mux(packet)
    return path


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_an_mjpeg_picture_beyond_the_limit_is_skipped_and_counted(tmp_path, mode):
    """MJPEG pictures stand alone: one beyond the limit is refused by FFmpeg's decoder (max_pixels), which then says
    no size, so it is skipped and counted corrupt as a broken picture is, and the stream goes on (README)."""
    clip = _mjpeg_with(tmp_path / "mixed.mkv", [SMALL, SMALL, LARGE, SMALL])
    src = open_source(str(clip), 64)
    src.want, src.max_pixels = WANTS[mode], SMALL[0] * SMALL[1]
    with src:
        assert [f.full_size for f in src.frames()] == [SMALL] * 3 and src.corrupt == 1
    assert [f.full_size for f in _frames(clip, WANTS[mode], LARGE[0] * LARGE[1])] == [SMALL, SMALL, LARGE, SMALL]


def test_a_folder_source_takes_the_same_setting(tmp_path):
    """Images one pixel row over a lowered ``max_pixels`` are skipped and counted, as an unreadable image is; the
    one at the bound is read."""
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    frames = list(pan_zoom_frames(*SMALL, 2))
    Image.fromarray(frames[0]).save(folder / "a.png")
    Image.fromarray(np.concatenate([frames[1], frames[1][:1]])).save(folder / "b.png")  # 64 x 49
    src = open_source(str(folder), 64)
    src.max_pixels = SMALL[0] * SMALL[1]
    with src:
        got = list(src.frames())
    assert [Path(f.name).name for f in got] == ["a.png"] and src.corrupt == 1


def test_a_glob_never_walks_a_link_to_a_folder_and_its_folder_is_an_input(tmp_path):
    """Found by an attack: `stream ART 'f/**/*.png'` (and predict) with links f/a -> . and f/b -> . walked an exponential
    tree (memory growing, no output, 90 s until killed), and f/r -> / the whole disk; with 'f/*' as the source,
    --json-lines f/x.png replaced the photo (a glob's matches were not protected as the command's inputs). Now '**' does
    not follow links to folders, a link to a folder that a pattern matches is skipped, and the glob's folder is an input."""
    from PIL import Image
    from typer.testing import CliRunner

    from edge_inception.cli import app
    from edge_inception.data.images import find_images

    f = tmp_path / "f"
    (f / "sub").mkdir(parents=True)
    Image.new("RGB", (48, 40), "red").save(f / "one.png")
    Image.new("RGB", (48, 40), "blue").save(f / "sub" / "two.png")
    for name, target in (("a", "."), ("b", "."), ("r", "/")):
        (f / name).symlink_to(target)
    deep = find_images([str(f / "**" / "*.png")])
    assert deep.images == [f / "one.png", f / "sub" / "two.png"], deep
    flat = find_images([str(f / "*")])
    assert flat.images == [f / "one.png", f / "sub" / "two.png"] and sorted(p.name for p in flat.skipped) == ["a", "b", "r"], flat
    model = tiny_classifier(tmp_path / "m.onnx")
    before = (f / "one.png").read_bytes()
    r = CliRunner().invoke(app, ["stream", str(model), str(f / "*"), "--json-lines", str(f / "one.png")])
    assert r.exit_code == 1 and "an input of this command" in r.output and (f / "one.png").read_bytes() == before, r.output
    r = CliRunner().invoke(app, ["stream", str(model), str(f / "**" / "*.png"), "--json-lines", str(tmp_path / "out.jsonl")])
    assert r.exit_code == 0 and len((tmp_path / "out.jsonl").read_text().splitlines()) == 2, r.output


def test_a_glob_in_the_current_folder_hidden_folders_and_a_rerun(tmp_path, monkeypatch):
    """Found by the attack on this change: `stream m.onnx '*.png'` in the current folder gave a traceback (the folder '.'
    has no name); 'd/*/*.png' matched files in a hidden folder, which glob.glob never did; and a second run of
    `stream 'f/*.png' --json-lines f/out.jsonl` was refused, its own output protected as an input (only the matches are)."""
    from PIL import Image
    from typer.testing import CliRunner

    from edge_inception.cli import app
    from edge_inception.data.images import find_images

    d = tmp_path / "d"
    for sub in ("vis", ".hid"):
        (d / sub).mkdir(parents=True)
        Image.new("RGB", (48, 40), "red").save(d / sub / "a.png")
    assert find_images([str(d / "*" / "*.png")]).images == [d / "vis" / "a.png"]
    assert find_images([str(d / "**" / "*.png")]).images == [d / "vis" / "a.png"]
    model = tiny_classifier(tmp_path / "m.onnx")
    monkeypatch.chdir(d / "vis")
    for _ in range(2):
        r = CliRunner().invoke(app, ["stream", str(model), "*.png", "--json-lines", str(d / "vis" / "out.jsonl")])
        assert r.exit_code == 0 and len((d / "vis" / "out.jsonl").read_text().splitlines()) == 1, r.output

"""edge-inception stream: a video made here streamed end to end and checked frame by frame against predict on the
same decoded frames; folders; corrupt frames and cut files; a missing camera; Ctrl-C and SIGTERM; and the fast
preprocessing's agreement with the reference on real photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_inception.cli import app

from .stream_media import decoded_frames, make_video, pan_zoom_frames, tiny_classifier

pytest.importorskip("av")
runner = CliRunner()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    frames = list(pan_zoom_frames(160, 112, 28))
    return {"dir": d, "model": tiny_classifier(d / "tiny.onnx"), "frames": frames, "video": make_video(d / "clip.mp4", frames, fps=10)}


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _summary(text: str) -> dict:
    line = next(x for x in text.splitlines() if x.startswith("summary: "))
    return json.loads(line[len("summary: "):])


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_video_stream_top1_equals_predict_on_the_same_frames(media, tmp_path, mode):
    lines = tmp_path / "frames.jsonl"
    r = runner.invoke(app, ["stream", str(media["model"]), str(media["video"]), "--top-k", "3", "--json-lines", str(lines),
                            "--preprocess", mode])
    assert r.exit_code == 0, r.output
    streamed = _json_lines(lines)
    # the same pixels the stream saw (FFmpeg's decode), saved losslessly, classified by predict
    frames = decoded_frames(media["video"])
    assert len(streamed) == len(frames) == 28
    from PIL import Image

    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(tmp_path / f"f{i:03d}.png")
    r = runner.invoke(app, ["predict", str(media["model"]), str(tmp_path), "--json", "--top-k", "3", "--preprocess", mode])
    assert r.exit_code == 0, r.output
    predicted = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    if mode == "exact":  # the same tensor: the same top-1 and scores
        assert [p["top"][0]["index"] for p in predicted] == [s["top"][0]["index"] for s in streamed]
        for p, s in zip(predicted, streamed):
            assert [t["score"] for t in p["top"]] == pytest.approx([t["score"] for t in s["top"]], abs=1e-5)
    else:  # fast: FFmpeg's scaler cuts the crop from the decoder's YUV (test_stream_decoders checks its pixels); predict
        # resamples the RGB frame with Pillow. Scores move by what a level of pixel difference moves: where predict's top-1
        # leads by more than twice the largest move, the stream's top-1 is the same.
        scores = [({t["index"]: t["score"] for t in p["top"]}, {t["index"]: t["score"] for t in s["top"]}) for p, s in zip(predicted, streamed)]
        moved = max(abs(a[i] - b[i]) for a, b in scores for i in a.keys() & b.keys())
        assert moved < 0.1
        decided = [(p, s) for p, s in zip(predicted, streamed) if p["top"][0]["score"] - p["top"][1]["score"] > 2 * moved]
        assert len(decided) >= len(streamed) // 2
        assert all(p["top"][0]["index"] == s["top"][0]["index"] for p, s in decided)
    assert len({s["top"][0]["index"] for s in streamed}) >= 2, "the model must tell frames apart for this check to mean anything"
    assert [s["index"] for s in streamed] == list(range(28))
    assert streamed[1]["timestamp"] == pytest.approx(0.1)
    assert set(streamed[0]["ms"]) == {"decode", "preprocess", "inference", "end_to_end"}


def test_save_writes_a_playable_annotated_video_and_summary(media, tmp_path):
    out = tmp_path / "out.mp4"
    r = runner.invoke(app, ["stream", str(media["model"]), str(media["video"]), "--save", str(out), "--top-k", "1"])
    assert r.exit_code == 0, r.output
    s = _summary(r.stdout)
    assert s["frames"] == 28 and s["dropped"] == 0 and s["corrupt"] == 0 and not s["truncated"] and s["saved"] == str(out)
    assert s["fps"] > 0 and all(s["ms"][k]["p90"] >= s["ms"][k]["p50"] > 0 for k in ("decode", "inference", "end_to_end"))
    written = decoded_frames(out)
    assert len(written) == 28 and written[0].shape == (112, 160, 3)
    original = decoded_frames(media["video"])[0].astype(int)
    # the label box is drawn top-left; the rest of the frame is the video
    assert np.abs(written[0][:20, :60].astype(int) - original[:20, :60]).mean() > 20
    assert np.abs(written[0][60:, 80:].astype(int) - original[60:, 80:]).mean() < 6
    assert not [p for p in tmp_path.iterdir() if p.name != "out.mp4"], "no temporary file left beside the video"


def test_folder_stream_skips_and_counts_unreadable_files(media, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, rgb in enumerate(media["frames"][:5]):
        Image.fromarray(rgb).save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    (folder / "9_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    lines = tmp_path / "l.jsonl"
    r = runner.invoke(app, ["stream", str(media["model"]), str(folder), "--json-lines", str(lines), "--save", str(tmp_path / "o.mp4")])
    assert r.exit_code == 0, r.output
    s = _summary(r.stdout)
    assert s["kind"] == "folder" and s["frames"] == 5 and s["corrupt"] == 1
    assert [Path(x["image"]).name for x in _json_lines(lines)] == ["0.png", "1.jpg", "2.png", "3.jpg", "4.png"]
    assert len(decoded_frames(tmp_path / "o.mp4")) == 5
    r = runner.invoke(app, ["stream", str(media["model"]), str(folder / "*.png")])  # a glob
    assert r.exit_code == 0 and _summary(r.stdout)["frames"] == 3


def test_a_corrupt_frame_is_skipped_and_counted(media, tmp_path):
    import av

    path = tmp_path / "corrupt.mkv"
    with av.open(str(path), "w") as out:  # MJPEG: every frame stands alone, so exactly one is lost
        st = out.add_stream("mjpeg", rate=10)
        st.width, st.height, st.pix_fmt = 160, 112, "yuvj420p"
        n = 0
        for rgb in media["frames"][:12]:
            for pk in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                if n == 5:
                    bad = av.Packet(b"\x12" * len(bytes(pk)))
                    bad.pts, bad.dts, bad.time_base, bad.stream = pk.pts, pk.dts, pk.time_base, st
                    pk = bad
                out.mux(pk)
                n += 1
        for pk in st.encode():
            out.mux(pk)
    r = runner.invoke(app, ["stream", str(media["model"]), str(path)])
    assert r.exit_code == 0, r.output
    s = _summary(r.stdout)
    assert (s["frames"], s["corrupt"]) == (11, 1)


def test_a_truncated_file_keeps_what_decoded(media, tmp_path):
    whole = make_video(tmp_path / "whole.mkv", media["frames"], fps=10)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])
    r = runner.invoke(app, ["stream", str(media["model"]), str(cut)])
    assert r.exit_code == 0, r.output
    s = _summary(r.stdout)
    assert 0 < s["frames"] < 28 and s["truncated"] is True
    cut_mp4 = tmp_path / "cut.mp4"  # an MP4 cut before its index cannot be read at all: one line
    cut_mp4.write_bytes(media["video"].read_bytes()[:2000])
    r = runner.invoke(app, ["stream", str(media["model"]), str(cut_mp4)])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "cannot open as video" in r.stderr


@pytest.mark.parametrize("camera", ["/dev/video97", "97"])
def test_a_missing_camera_is_one_line(media, camera):
    r = runner.invoke(app, ["stream", str(media["model"]), camera])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: camera /dev/video97 does not exist") and r.stderr.count("\n") == 1
    r = runner.invoke(app, ["stream", str(media["model"]), "/no/such/thing.mp4"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "no such file, folder or camera" in r.stderr


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_prints_the_summary_and_leaves_a_playable_video(media, tmp_path, sig, code):
    # a long clip: the stream is stopped part-way
    base = media["frames"][:8]
    video = make_video(tmp_path / "long.mkv", (np.roll(base[i % 8], i, axis=1) for i in range(1500)), fps=25,
                       options={"preset": "ultrafast"})
    out = tmp_path / "out.mp4"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edge_inception", "stream", str(media["model"]), str(video), "--json-lines", "-",
                             "--save", str(out), "--top-k", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            seen += line.startswith("{")
            if seen >= 10:
                break
        assert seen >= 10, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    s = _summary(stderr)
    assert s["interrupted"] == ("SIGINT" if sig == signal.SIGINT else "SIGTERM")
    assert 10 <= s["frames"] < 1500 and "Traceback" not in stderr
    written = decoded_frames(out)
    assert len(written) == s["frames"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fast_preprocessing_agrees_with_the_reference_on_real_photos(tmp_path):
    """Phone-sized JPEGs of the bundled photos and crops of them, through a real (small) classifier at 224: the fast
    path's top-1 agrees with the reference's and its logits point the same way (the benchmark checks 300+ images)."""
    import onnxruntime as ort
    from PIL import Image

    from edge_inception.data.images import bundled_photos, load_image, load_tensor
    from edge_inception.onnx_file import run_session
    from edge_inception.vocab import PreprocessMode

    model = tiny_classifier(tmp_path / "m224.onnx", image_size=224, classes=20, seed=3)
    rng = np.random.default_rng(0)
    paths = []
    for i, photo in enumerate(bundled_photos()):
        im = load_image(photo)
        for j in range(2):
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            scale = rng.uniform(1.5, 2.5)
            crop = im.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
            paths.append(tmp_path / f"{i}_{j}.jpg")
            crop.save(paths[-1], quality=int(rng.integers(80, 96)))
    exact = np.stack([load_tensor(p, 224, PreprocessMode.exact) for p in paths])
    fast = np.stack([load_tensor(p, 224, PreprocessMode.fast) for p in paths])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    a, b = run_session(session, exact), run_session(session, fast)
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert len(paths) >= 28 and len(set(a.argmax(1))) >= 3
    assert agreement >= 0.95, agreement
    assert cosine.min() > 0.999, cosine.min()


def test_eval_warns_on_integer_folders_in_two_orders_and_reports_the_rate(media, tmp_path):
    from PIL import Image

    model = tiny_classifier(tmp_path / "m12.onnx", classes=12, names=False)
    data = tmp_path / "data"
    for i in range(12):
        (data / str(i)).mkdir(parents=True)
        Image.fromarray(media["frames"][i]).save(data / str(i) / "a.tif")  # .tif: read in folders as by name
    r = runner.invoke(app, ["eval", str(model), "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert "warning: class folders" in r.stderr and "--folder-order imagefolder" in r.stderr
    assert "12 images" in r.stdout and "images/s end to end" in r.stdout
    r = runner.invoke(app, ["eval", str(model), "--data", str(data), "--folder-order", "imagefolder"])
    assert r.exit_code == 0 and "12 images" in r.stdout


def test_a_live_source_keeps_the_latest_frame_and_counts_the_stale(media, tmp_path):
    """A source faster than the consumer: frames are dropped, never queued up; every frame is classified or counted."""
    import time

    from PIL import Image

    from edge_inception.stream.run import run_stream
    from edge_inception.stream.sources import FolderSource

    folder = tmp_path / "burst"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(media["frames"][i % 28][:32, :32]).save(folder / f"{i:02d}.png")

    class Burst(FolderSource):  # a real folder read as a live source (as a camera's frames arrive)
        kind = "camera"
        live = True

    seen: list[int] = []
    summary = run_stream(media["model"], Burst(str(folder), 64), on_frame=lambda r: (seen.append(r.index), time.sleep(0.05)))
    assert summary.dropped > 0 and summary.frames + summary.dropped == 30
    assert seen == sorted(seen) and len(seen) == summary.frames
    files = run_stream(media["model"], FolderSource(str(folder), 64), on_frame=lambda r: time.sleep(0.01))
    assert (files.frames, files.dropped) == (30, 0)

"""Stream promises no other test ran (issue 41): WHICH frame a live source's bounded queue keeps (the newest, not the
oldest), ``--max-frames``, an unreachable RTSP/HTTP source and ``csi://`` without GStreamer (one line, exit 1, bounded)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from .stream_media import make_video, pan_zoom_frames, tiny_classifier

pytest.importorskip("av")
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "edge_inception"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream_promises")
    frames = list(pan_zoom_frames(96, 64, 20))
    return {"model": tiny_classifier(d / "tiny.onnx"), "video": make_video(d / "clip.mp4", frames, fps=10), "dir": d}


def test_a_live_source_keeps_the_newest_frame_not_the_oldest(media):
    """The consumer is held on frame 0 until the source has produced all the others: the one frame the queue (of one)
    holds then must be the last one produced, every frame in between dropped and counted."""
    from edge_inception.stream.run import run_stream
    from edge_inception.stream.sources import Frame, VideoSource

    total = 12
    first_taken, produced_all = threading.Event(), threading.Event()

    class Live(VideoSource):  # a camera that delivers its frames faster than the engine takes them
        kind = "camera"
        live = True

        def open(self) -> None:
            pass

        def frames(self):
            for i in range(total):
                if i == 1:
                    assert first_taken.wait(30), "frame 0 was never classified"  # bounded: a hang fails the test
                rgb = np.full((64, 64, 3), 10 * i, np.uint8)
                yield Frame(i, i / 30, rgb, (64, 64), 0.1)
            produced_all.set()  # the producer asked for more after queueing the last frame

    seen: list[int] = []

    def hold_first(r) -> None:
        seen.append(r.index)
        if len(seen) == 1:
            first_taken.set()
            assert produced_all.wait(30), "the source never finished"

    summary = run_stream(media["model"], Live("live://test"), on_frame=hold_first)
    assert seen[0] == 0
    assert seen == [0, total - 1]  # the newest frame kept; a queue that kept the oldest would give [0, 1]
    assert summary.frames == 2 and summary.dropped == total - 2


def test_max_frames_stops_after_that_many(media, tmp_path):
    out = tmp_path / "f.jsonl"
    r = subprocess.run([*CLI, "stream", str(media["model"]), str(media["video"]), "--max-frames", "5", "--json-lines", str(out)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["index"] for row in rows] == [0, 1, 2, 3, 4]
    summary = json.loads(next(x for x in r.stdout.splitlines() if x.startswith("summary: "))[len("summary: "):])
    assert summary["frames"] == 5
    r = subprocess.run([*CLI, "stream", str(media["model"]), str(media["video"]), "--max-frames", "0"], capture_output=True, text=True,
                       timeout=300, env=_env())
    assert r.returncode == 2 and "--max-frames" in r.stderr  # a usage error: Click's range


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: nothing listens there


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_an_unreachable_network_source_is_one_line_in_bounded_time(media, scheme):
    uri = f"{scheme}://127.0.0.1:{_closed_port()}/cam"
    t0 = time.monotonic()
    r = subprocess.run([*CLI, "stream", str(media["model"]), uri], capture_output=True, text=True, timeout=120, env=_env())
    took = time.monotonic() - t0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {uri}: cannot open as video"), r.stderr
    assert took < 60  # a refused connection answers at once; 60 s only catches a hang (the machine is loaded)


def test_csi_without_gstreamer_is_one_line(media):
    cv2 = pytest.importorskip("cv2")
    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer: csi:// would try the camera")
    r = subprocess.run([*CLI, "stream", str(media["model"]), "csi://0"], capture_output=True, text=True, timeout=120, env=_env())
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1
    assert lines == ["error: csi://0: this OpenCV has no GStreamer backend (JetPack's OpenCV has it); read the camera through V4L2 "
                     "instead: /dev/video0"], r.stderr

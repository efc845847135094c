"""edge-inception stream at its trust boundary and under faults, with real FFmpeg (PyAV), real servers on 127.0.0.1
and real photos: FFmpeg reads only what the user named (issue 38, kind 5); Ctrl-C / SIGTERM while a network source
is still opening (kind 3); a live HTTP source that drops and comes back, corrupt packets, a file-size limit and a full
filesystem, after which --save and --json-lines stay valid (issue 35)."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .stream_media import decoded_frames, make_video, pan_zoom_frames, tiny_classifier, unreadable_images
from .stream_servers import HttpServer, SilentServer, ok

pytest.importorskip("av")

from edge_inception.stream.sources import OPEN_TIMEOUT_S  # noqa: E402

SHORT, OTHER = 10, 18  # frames in the two clips: which one was read shows in the count


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    frames = list(pan_zoom_frames(160, 112, 40))
    return {
        "dir": d, "model": tiny_classifier(d / "tiny.onnx"), "short": make_video(d / "short.mp4", frames[:SHORT]),
        # served over HTTP too (counting_server): its index (moov) before its data, as an MP4 meant for HTTP is written
        "other": make_video(d / "other.mp4", frames[SHORT:SHORT + OTHER], container_options={"movflags": "+faststart"}),
        # 8 s of 25 FPS MPEG-TS with a key frame every second: a live stream's worth
        "ts": make_video(d / "live.ts", (frames[i % 40] for i in range(200)), fps=25, options={"g": "25"}),
        "long": make_video(d / "long.mkv", (np.roll(frames[i % 40], i, axis=1) for i in range(600)), fps=25, options={"preset": "ultrafast"}),
    }


def _cli(*args: str, cwd: Path | None = None, limit_bytes: int | None = None, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it (a fresh process: signals, limits and the working folder are its own; ``env``:
    variables set for it)."""
    def limit() -> None:
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "edge_inception", "stream", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, preexec_fn=limit, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_inception", "stream", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _one_error_line(r: subprocess.CompletedProcess, needle: str) -> None:
    """Exit 1, one ``error:`` line on stderr holding ``needle``, no traceback, no summary on stdout."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "summary: " not in r.stdout and "Traceback" not in r.stderr


def _summary(text: str) -> dict:
    line = next(x for x in text.splitlines() if x.startswith("summary: "))
    return json.loads(line[len("summary: "):])


def _one_error(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and "Traceback" not in stderr, stderr
    return stderr


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --- issue 38, kind 5: FFmpeg reads only what the user named -------------------------------------------------------

# names FFmpeg would read as a protocol: each would open other.mp4 (or stdin, or the network) instead of the file
PREFIXED = ["concat:other.mp4|other.mp4", "subfile,,start,0,end,0,,:other.mp4", "file:other.mp4", "http:x", "pipe:0", "tee:other.mp4",
            "async:other.mp4", "cache:other.mp4"]


@pytest.mark.parametrize("name", PREFIXED)
def test_a_local_name_is_that_file_never_a_protocol(media, tmp_path, name):
    import av

    (tmp_path / "other.mp4").write_bytes(media["other"].read_bytes())
    (tmp_path / name).write_bytes(media["short"].read_bytes())  # the named file holds the short clip
    lines = tmp_path / "l.jsonl"
    r = _cli(str(media["model"]), name, "--json-lines", str(lines), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _summary(r.stdout)["frames"] == SHORT and len(lines.read_text().splitlines()) == SHORT
    if name.startswith(("concat:", "subfile,", "file:", "async:", "cache:")):
        # the check can fail: FFmpeg given the name itself reads the other file
        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            with av.open(name) as c:
                assert sum(1 for _ in c.decode(video=0)) == OTHER
        finally:
            os.chdir(cwd)


def test_a_prefixed_name_that_is_no_file_is_not_opened(media, tmp_path):
    (tmp_path / "other.mp4").write_bytes(media["other"].read_bytes())
    for name in ("concat:other.mp4|other.mp4", "file:other.mp4", "subfile,,start,0,end,0,,:other.mp4"):
        r = _cli(str(media["model"]), name, cwd=tmp_path)
        assert r.returncode == 1 and "no such file, folder or camera" in _one_error(r.stderr)
    os.mkfifo(tmp_path / "fifo.mp4")  # a FIFO would block an open for reading: refused, never waited on
    r = _cli(str(media["model"]), str(tmp_path / "fifo.mp4"), timeout=60)
    assert r.returncode == 1 and "no such file" in _one_error(r.stderr)


def _with_external_reference(mp4: bytes, target: str) -> bytes:
    """``mp4`` (``moov`` after ``mdat``, as PyAV writes it) with its track's data reference (``dref``) replaced by a Mac
    alias record naming ``target``: the layout FFmpeg's mov demuxer reads (``mov_read_dref``: 150 bytes, then tagged
    fields, tag 2 the absolute path); the boxes around it grow by the same number of bytes."""
    import struct

    def child(start: int, end: int, name: bytes) -> tuple[int, int]:
        at = start
        while at + 8 <= end:
            size, kind = struct.unpack(">I4s", mp4[at:at + 8])
            if kind == name:
                return at, size
            at += size
        raise AssertionError(name)

    chain, start, end = [], 0, len(mp4)
    for name in (b"moov", b"trak", b"mdia", b"minf", b"dinf", b"dref"):
        at, size = child(start, end, name)
        chain.append((at, size))
        start, end = at + 8, at + size
    record = bytearray(150)
    record[10], record[11] = 1, ord("v")  # volume name "v"
    base = target.rsplit("/", 1)[-1].encode()[:63]
    record[50], record[51:51 + len(base)] = len(base), base
    record[130:134] = struct.pack(">HH", 1, 1)  # levels up from the alias / down to the target
    path = target.encode() + b"\0" * (len(target.encode()) & 1)
    body = b"alis" + bytes(4) + bytes(record) + struct.pack(">hH", 2, len(path)) + path + struct.pack(">hH", -1, 0)
    dref_body = struct.pack(">II", 0, 1) + struct.pack(">I", 4 + len(body)) + body
    dref = struct.pack(">I", 8 + len(dref_body)) + b"dref" + dref_body
    at, size = chain[-1]
    out = bytearray(mp4[:at] + dref + mp4[at + size:])
    for box_at, box_size in chain[:-1]:
        out[box_at:box_at + 4] = struct.pack(">I", box_size + len(dref) - size)
    return bytes(out)


def test_an_mp4_external_data_reference_is_not_followed(media, tmp_path):
    """An MP4 whose track's data lives in another file (a FIFO: opening it for reading would block, so a run that ends
    proves it was never opened). FFmpeg with external references on asks for the target; the stream asks for nothing."""
    import av

    target = tmp_path / "elsewhere.mp4"
    os.mkfifo(target)
    crafted = tmp_path / "refers.mp4"
    crafted.write_bytes(_with_external_reference(media["short"].read_bytes(), str(target)))
    asked: list[str] = []

    def record(url: str, flags: int, options: dict) -> io.BytesIO:
        asked.append(url)
        return io.BytesIO(b"")

    with open(crafted, "rb") as f, av.open(f, options={"enable_drefs": "1", "use_absolute_path": "1"}, io_open=record):
        pass
    assert asked == [str(target)]  # the check can fail: the file does refer to the FIFO
    r = _cli(str(media["model"]), str(crafted), "--json-lines", str(tmp_path / "l.jsonl"), timeout=60)
    # the track's data is elsewhere: no frame, where the header counts some: one line, no output left
    _one_error_line(r, f"{crafted}: no frame decoded: the file ends before its first frame (its header counts some)")
    assert not (tmp_path / "l.jsonl").exists()


@pytest.fixture
def counting_server(media):
    """An HTTP server on 127.0.0.1 that serves the other clip: whatever asks it for anything is counted.

    The clip arrives in paced pieces, as it does over a network or on a loaded machine, and FFmpeg cannot seek in an
    HTTP/1.0 body (no ranges): an MP4 with its index after its data (PyAV's default) plays only when the whole file
    happened to be in FFmpeg's read buffer when the index was reached, so it is written with its index first (media)."""
    data = media["other"].read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # faststart: playable as it arrives
    with HttpServer({"/other.mp4": lambda n: (ok("video/mp4", len(data)), data, None)}, pace_s=0.01, max_connections=10) as server:
        yield server


def test_local_playlists_lists_and_descriptions_are_refused_and_open_nothing(media, tmp_path, counting_server):
    other, url = media["other"], counting_server.url("/other.mp4")
    sources = {
        "remote.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}\n#EXT-X-ENDLIST\n",
        "local.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{other}\n#EXT-X-ENDLIST\n",
        "list.ffconcat": f"ffconcat version 1.0\nfile {other}\nfile {url}\n",
        "list.txt": f"ffconcat version 1.0\nfile {other}\n",
        "cam.sdp": f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video {counting_server.port} RTP/AVP 96\n"
                   "a=rtpmap:96 H264/90000\n",
        "manifest.mpd": f'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
                        f'<Representation id="1" bandwidth="1000"><BaseURL>{url}</BaseURL></Representation></AdaptationSet></Period></MPD>\n',
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
        r = _cli(str(media["model"]), str(tmp_path / name), "--save", str(tmp_path / "o.mp4"))
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        err = _one_error(r.stderr)
        assert "refused for a local source" in err or "not a video container" in err, err
    assert counting_server.requests == []
    assert not (tmp_path / "o.mp4").exists()


def test_an_http_redirect_is_not_followed_and_says_where(media, counting_server):
    target = counting_server.url("/other.mp4")
    with HttpServer({"/cam": lambda n: (f"HTTP/1.0 302 Found\r\nLocation: {target}\r\n", b"", None)}, max_connections=10) as redirector:
        r = _cli(str(media["model"]), redirector.url("/cam"))
    assert r.returncode == 1
    assert f"redirects to {target}; redirects are not followed" in _one_error(r.stderr)
    assert counting_server.requests == []  # the other host/port was never asked
    # the same stream asked for directly plays (a live source: frames the engine was too slow for are dropped, counted)
    r = _cli(str(media["model"]), target)
    assert r.returncode == 0, r.stderr
    s = _summary(r.stdout)
    assert s["frames"] + s["dropped"] == OTHER and s["reconnects"] == 0 and not s["lost"]
    assert counting_server.requests == ["/other.mp4"]  # ended with its length: not reopened


def test_an_http_playlist_is_refused_and_its_segments_are_not_fetched(media, counting_server):
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{counting_server.url('/other.mp4')}\n#EXT-X-ENDLIST\n".encode()
    with HttpServer({"/live.m3u8": lambda n: ("HTTP/1.0 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n", playlist, None)},
                    max_connections=10) as server:
        r = _cli(str(media["model"]), server.url("/live.m3u8"))
        assert server.requests == ["/live.m3u8"]
    assert r.returncode == 1 and "playlist or manifest" in _one_error(r.stderr)
    assert counting_server.requests == []


# --- issue 38, kind 3: a signal while a network source is still opening ---------------------------------------------

@pytest.mark.parametrize("scheme,sig,code", [("http", signal.SIGINT, 130), ("rtsp", signal.SIGTERM, 143), ("rtsp", signal.SIGINT, 130)])
def test_a_signal_is_heard_while_a_silent_server_is_opening(media, scheme, sig, code):
    """The server accepts and never answers; the open timeout is OPEN_TIMEOUT_S (10 s) from the open, which began before
    the signal: an exit sooner than that after the signal is the signal heard, not the timeout (the bound is the
    product's own timeout, not a speed figure, so a loaded machine does not make it fail)."""
    with SilentServer() as server:
        proc = _popen(str(media["model"]), f"{scheme}://127.0.0.1:{server.port}/cam", "--json-lines", str(media["dir"] / f"{scheme}.jsonl"))
        try:
            deadline = time.monotonic() + 60
            while server.accepted == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert server.accepted >= 1, proc.communicate()[1]
            time.sleep(0.3)  # well inside FFmpeg's open now
            t0 = time.monotonic()
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            _stop(proc)
    assert proc.returncode == code, stderr
    assert elapsed < OPEN_TIMEOUT_S, elapsed
    assert stderr.count("\n") == 1 and ("interrupted" if code == 130 else "terminated") in stderr and "Traceback" not in stderr
    assert not (media["dir"] / f"{scheme}.jsonl").exists() and not list(media["dir"].glob("*.tmp"))


# --- issue 35: a live source that drops, corrupt packets, a full disk ------------------------------------------------

def _check_outputs(summary: dict, video: Path, lines: Path, *, frames: int | None = None) -> list[dict]:
    """--save plays with the frames the summary says; --json-lines is whole lines, one per frame, in order."""
    records = [json.loads(x) for x in lines.read_text().splitlines()]
    assert lines.read_text().endswith("\n")
    assert len(records) == (summary["frames"] if frames is None else frames)
    assert len(decoded_frames(video)) == summary["saved_frames"] > 0
    return records


def test_a_dropped_http_stream_reconnects_says_so_and_ends_with_its_summary(media, tmp_path):
    """The server dies mid-stream (connections reset, port closed), comes back 1.5 s later, then serves a cut stream
    and answers 404 from then on: one reconnect, then the source is lost after --reconnect 3 s."""
    import av

    data = media["ts"].read_bytes()
    third = len(data) // 3 // 188 * 188
    routes = {"/live.ts": lambda n: (ok(), data, None) if n == 0 else (ok(), data, third) if n == 1 else ("HTTP/1.0 404 Not Found\r\n", b"", None)}
    video, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    server = HttpServer(routes, pace_s=0.02).start()  # 8 s of video in about 2 s
    try:
        proc = _popen(str(media["model"]), server.url("/live.ts"), "--reconnect", "3", "--save", str(video), "--json-lines", str(lines))
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)
        server.stop()  # the camera dies mid-stream
        time.sleep(1.5)
        server.start()  # and comes back on the same port
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        _stop(proc)
        server.stop()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    said = stderr.splitlines()
    assert any("the stream stopped" in x and "reconnecting for up to" in x for x in said), stderr
    assert any("reconnect try" in x and "Connection refused" in x for x in said), stderr  # while it was down
    assert any("reconnected after" in x for x in said) and any("gave up reconnecting" in x for x in said), stderr
    s = _summary(stdout)
    assert s["reconnects"] == 1 and s["lost"] is True and s["interrupted"] is None and s["kind"] == "network"
    assert "reconnected 1 time, source lost" in stdout
    with av.open(io.BytesIO(data[:third])) as c:  # frames in the cut reply alone: the stream had more than that
        cut_frames = sum(1 for _ in c.decode(video=0))
    assert s["frames"] + s["dropped"] > cut_frames
    records = _check_outputs(s, video, lines)
    assert [r["index"] for r in records] == sorted({r["index"] for r in records})  # indexes go on across the reconnect
    assert server.requests.count("/live.ts") >= 3


def test_ctrl_c_while_reconnecting_ends_at_once_with_valid_outputs(media, tmp_path):
    data = media["ts"].read_bytes()
    video, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    server = HttpServer({"/live.ts": lambda n: (ok(), data, len(data) // 2 // 188 * 188)}, pace_s=0.01).start()
    proc = _popen(str(media["model"]), server.url("/live.ts"), "--reconnect", "60", "--save", str(video), "--json-lines", str(lines))
    try:
        deadline = time.monotonic() + 60
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)
        server.stop()  # gone for good: the stream reconnects for up to 60 s
        assert proc.stderr is not None
        for line in proc.stderr:
            if "reconnecting for up to" in line:
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        _stop(proc)
        server.stop()
    # not heard, the run would reconnect for up to 60 s (--reconnect 60): half of that tells the two apart on a loaded machine
    assert proc.returncode == 130 and elapsed < 30, (elapsed, stderr)
    s = _summary(stdout)
    assert s["interrupted"] == "SIGINT" and s["frames"] > 0
    _check_outputs(s, video, lines)


def test_corrupt_packets_in_an_mpeg_ts_stream_to_the_end(media, tmp_path):
    data = bytearray(media["ts"].read_bytes())
    rng = np.random.default_rng(0)
    for k in range(40):  # 40 runs of 50 random bytes in the middle third
        at = len(data) // 3 + k * 1500
        data[at:at + 50] = rng.integers(0, 256, 50, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.ts"
    bad.write_bytes(bytes(data))
    video, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = _cli(str(media["model"]), str(bad), "--save", str(video), "--json-lines", str(lines))
    assert r.returncode == 0, r.stderr
    s = _summary(r.stdout)
    assert s["corrupt"] > 0 and 150 < s["frames"] < 200 and s["frames"] + s["corrupt"] >= 190
    records = _check_outputs(s, video, lines)
    assert records[-1]["timestamp"] > 7.0  # it went on to the end (the clip is 8 s)


def _kept(stderr: str) -> tuple[int, int]:
    """(video frames, JSON lines) the error line says were kept."""
    import re

    video = re.search(r"\((\d+) frames, to its last whole fragment\)", stderr)
    lines = re.search(r"\((\d+) whole lines\)", stderr)
    assert video and lines, stderr
    return int(video.group(1)), int(lines.group(1))


def test_a_file_size_limit_keeps_whole_fragments_and_whole_lines(media, tmp_path):
    """RLIMIT_FSIZE (ulimit -f) at 150 KiB: the write fails with EFBIG (SIGXFSZ is ignored, not fatal)."""
    video, lines = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    r = _cli(str(media["model"]), str(media["long"]), "--save", str(video), "--json-lines", str(lines), "--top-k", "1",
             limit_bytes=150 * 1024)
    assert r.returncode == 1, (r.stdout[-500:], r.stderr)
    err = _one_error(r.stderr)
    assert "File too large" in err and "the stream stopped after" in err
    s = _summary(r.stdout)
    assert s["output_error"] and 0 < s["frames"] < 600
    kept_video, kept_lines = _kept(err)
    assert kept_video == s["saved_frames"] and kept_lines == s["frames"]
    _check_outputs(s, video, lines)
    assert video.stat().st_size <= 150 * 1024 and not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 400 KiB tmpfs (root only: skipped elsewhere; the file-size limit test covers the same path)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_filesystem_keeps_what_was_written(media, small_filesystem):
    video, lines = small_filesystem / "out.mp4", small_filesystem / "out.jsonl"
    r = _cli(str(media["model"]), str(media["long"]), "--save", str(video), "--json-lines", str(lines), "--top-k", "1")
    assert r.returncode == 1, (r.stdout[-500:], r.stderr)
    err = _one_error(r.stderr)
    assert "No space left on device" in err
    s = _summary(r.stdout)
    kept_video, kept_lines = _kept(err)
    assert kept_video == s["saved_frames"] and kept_lines == s["frames"] > 0
    _check_outputs(s, video, lines)
    assert sorted(p.name for p in small_filesystem.iterdir()) == ["out.jsonl", "out.mp4"]


def test_a_fragmented_mp4_cut_anywhere_is_cut_back_to_frames_that_play(media, tmp_path):
    """The writer's fragments, cut at many places: whole_fragments' cut decodes to exactly the frames it counts."""
    from edge_inception.stream.writer import whole_fragments

    video = tmp_path / "out.mp4"
    r = _cli(str(media["model"]), str(media["long"]), "--save", str(video), "--max-frames", "120")
    assert r.returncode == 0, r.stderr
    whole = video.read_bytes()
    assert whole_fragments(video)[1] == 120 == len(decoded_frames(video))
    seen = set()
    for cut in np.linspace(2000, len(whole) - 1, 9).astype(int):
        part = tmp_path / f"cut{cut}.mp4"
        part.write_bytes(whole[:cut])
        good, samples = whole_fragments(part)
        part.write_bytes(whole[:good])
        assert samples == (len(decoded_frames(part)) if good else 0)
        seen.add(samples)
    assert len(seen) >= 3  # the cuts fell in different fragments


# --- a source that gives no frame because every frame failed (issue 40's attack pass) --------------------------------

def _garbled_mjpeg(path: Path, frames: list, every: bool) -> Path:
    """An MJPEG clip (every frame stands alone) whose packets are garbage of their own length (each of them, or none)."""
    import av

    with av.open(str(path), "w") as out:
        st = out.add_stream("mjpeg", rate=10)
        st.width, st.height, st.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuvj420p"
        packets = [pk for rgb in frames for pk in st.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24"))] + list(st.encode())
        for pk in packets:
            if every:
                bad = av.Packet(b"\x12" * len(bytes(pk)))
                bad.pts, bad.dts, bad.time_base, bad.stream = pk.pts, pk.dts, pk.time_base, st
                pk = bad
            out.mux(pk)
    return path


def test_a_clip_whose_every_frame_is_corrupt_is_one_error_line(media, tmp_path):
    """Every frame of the clip fails to decode: not a summary of 0 frames with exit 0, but one line and exit 1, and no
    output left behind (the thread split, measured afresh on the same clip, says nothing of its own). The same clip with
    its frames whole streams them all: the failure is the frames'."""
    frames = list(pan_zoom_frames(160, 112, 6))
    bad = _garbled_mjpeg(tmp_path / "all_corrupt.mkv", frames, every=True)
    out = tmp_path / "out"
    out.mkdir()
    r = _cli(str(media["model"]), str(bad), "--save", str(out / "o.mp4"), "--json-lines", str(out / "l.jsonl"),
             "--summary-json", str(out / "s.json"), timeout=120, env={"EDGE_INCEPTION_CACHE": str(tmp_path / "cache")})  # measured
    _one_error_line(r, f"{bad}: no frame decoded (6 corrupt); nothing was classified")
    assert list(out.iterdir()) == []
    good = _cli(str(media["model"]), str(_garbled_mjpeg(tmp_path / "whole.mkv", frames, every=False)), "--threads", "1", timeout=120)
    assert good.returncode == 0 and _summary(good.stdout)["frames"] == 6, good.stderr


def test_a_folder_whose_every_image_is_unreadable_is_one_error_line(media, tmp_path):
    """Real photos cut short (JPEG and PNG), garbage named .jpg: no image decodes, so nothing is classified: one line,
    exit 1. With one whole photo beside them the folder streams it and counts the rest."""
    from PIL import Image

    folder = tmp_path / "photos"
    unreadable_images(folder, 160, 112)
    r = _cli(str(media["model"]), str(folder), "--threads", "1", timeout=120)
    _one_error_line(r, f"{folder}: none of its 5 images decoded; nothing was classified")
    Image.fromarray(next(pan_zoom_frames(160, 112, 1))).save(folder / "whole.png")
    r = _cli(str(media["model"]), str(folder), "--threads", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert (_summary(r.stdout)["frames"], _summary(r.stdout)["corrupt"]) == (1, 5)


def test_a_clip_that_holds_no_frame_is_a_warning_as_in_ffmpeg(media, tmp_path):
    """An AVI with a video stream and no frame (nothing failed: there is nothing): FFmpeg says "Output file is empty,
    nothing was encoded" and exits 0; so does the stream, with a 0-frame summary and one warning line."""
    import av

    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as out:
        st = out.add_stream("mjpeg", rate=10)
        st.width, st.height, st.pix_fmt = 64, 48, "yuvj420p"
        out.start_encoding()
    r = _cli(str(media["model"]), str(empty), "--threads", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert _summary(r.stdout)["frames"] == 0 and r.stderr.strip() == f"warning: {empty}: holds no frame; nothing was classified"


@pytest.mark.parametrize("fields,why", [
    ({"frames": 3, "corrupt": 2, "truncated": True}, None),  # some frame was classified: the summary says the rest
    ({"kind": "folder", "corrupt": 1}, "none of its 1 image decoded; nothing was classified"),
    ({"corrupt": 4}, "no frame decoded (4 corrupt); nothing was classified"),
    ({"corrupt": 4, "truncated": True}, "no frame decoded (4 corrupt, and the file ends early); nothing was classified"),
    ({"truncated": True}, "no frame decoded: the file ends before its first frame (its header counts some); nothing was classified"),
    ({"kind": "network", "lost": True, "reconnects": 1}, "no frame came before the source was lost (reopened 1 time); nothing was classified"),
    ({}, None),  # a clip that holds no frame: a warning, not an error
])
def test_why_nothing_hand_worked(fields, why):
    from edge_inception.stream.run import StreamSummary

    s = StreamSummary("src", fields.pop("kind", "file"), "fast")
    for k, v in fields.items():
        setattr(s, k, v)
    assert s.why_nothing() == why


def test_a_cameras_password_in_its_url_is_never_shown_nor_written(media, tmp_path):
    """An IP camera's address carries its credentials (rtsp://admin:PASSWORD@host/). The stream named its source as given
    in every error and warning line, the summary on stdout and the --summary-json file: the password is now shown as
    ``***`` everywhere, for a stream that plays, one that is lost before its first frame, and one that cannot be opened."""
    data = media["ts"].read_bytes()
    routes = {"/live.ts": lambda n: (ok(), data[:len(data) // 4 // 188 * 188], None) if n == 0 else ("HTTP/1.0 404 Not Found\r\n", b"", None),
              "/garbage.ts": lambda n: (ok(), bytes(range(256)) * 64, None)}
    server = HttpServer(routes).start()
    try:
        played = _cli(str(media["model"]), f"http://admin:s3cret@127.0.0.1:{server.port}/live.ts", "--reconnect", "1", "--threads", "1",
                      "--summary-json", str(tmp_path / "s.json"), "--json-lines", str(tmp_path / "f.jsonl"))
        garbage = _cli(str(media["model"]), f"http://admin:s3cret@127.0.0.1:{server.port}/garbage.ts", "--reconnect", "0",
                       "--threads", "1")
    finally:
        server.stop()
    closed = _cli(str(media["model"]), f"rtsp://admin:s3cret@127.0.0.1:{server.port}/live", "--reconnect", "0", "--threads", "1")
    assert played.returncode == 0, played.stderr
    shown = f"http://***@127.0.0.1:{server.port}/live.ts"
    assert _summary(played.stdout)["source"] == shown and json.loads((tmp_path / "s.json").read_text())["source"] == shown
    assert any(line.startswith(f"warning: {shown}: ") for line in played.stderr.splitlines()), played.stderr  # the source was lost
    _one_error_line(garbage, f"http://***@127.0.0.1:{server.port}/garbage.ts: ")
    _one_error_line(closed, f"rtsp://***@127.0.0.1:{server.port}/live: ")
    for r in (played, garbage, closed):
        assert "s3cret" not in r.stdout + r.stderr
    assert not any("s3cret" in p.read_text() for p in tmp_path.iterdir())

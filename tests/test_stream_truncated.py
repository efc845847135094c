"""A cut MPEG-TS is judged alike whatever the decoder's thread count (issue 40): FFmpeg's frame threads do not always
flag the incomplete last picture that one thread flags, so the frames drained at the end are judged by a one-thread
decoder (``sources._SerialTail``). Real clips made with PyAV, cut at many places, decoded at 1, 2 and 4 threads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .stream_media import make_video, pan_zoom_frames, tiny_classifier

av = pytest.importorskip("av")

from edge_inception.stream.sources import Wanted, open_source  # noqa: E402

FRAMES = 24
TRIES = 3  # FFmpeg's threads race: each threaded decode is repeated


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cut")
    return make_video(d / "whole.ts", pan_zoom_frames(160, 112, FRAMES), fps=10)


@pytest.fixture(scope="module")
def raw_clip(tmp_path_factory) -> Path:
    """A raw H.264 stream (Annex B, no container): its packets have no presentation time."""
    d = tmp_path_factory.mktemp("raw")
    return make_video(d / "whole.h264", pan_zoom_frames(160, 112, FRAMES), fps=10)


def _verdict(path: Path, threads: int, ends: bool = False) -> tuple:
    """(frames given, frames counted corrupt[, whether it ends early]) reading ``path`` with ``threads`` decoder
    threads (0: FFmpeg's choice)."""
    src = open_source(str(path), 64)
    src.want = Wanted(64, model=True, full=False)
    with src:
        src.use_decoder(None, threads)
        given = sum(1 for _ in src.frames())
    return (given, src.corrupt, src.truncated) if ends else (given, src.corrupt)


def _first_frame_cut(clip: Path) -> int:
    """A byte offset inside the first picture's packet (between where it and the second one start)."""
    with av.open(str(clip)) as c:
        starts = [p.pos for p in c.demux(video=0) if p.size and p.pos is not None][:2]
    return (starts[0] + starts[1]) // 2


def test_a_cut_ts_is_judged_alike_at_any_thread_count(clip, tmp_path):
    """At every cut, 2 and 4 threads (each decode repeated) give the frames and the corrupt count one thread gives."""
    data = clip.read_bytes()
    cut_path = tmp_path / "cut.ts"
    flagged = 0
    for cut in [_first_frame_cut(clip), *np.linspace(len(data) // 8, len(data) - 100, 23).astype(int)]:
        cut_path.write_bytes(data[:cut])
        serial = _verdict(cut_path, 1)
        flagged += serial[1] > 0
        for threads in (2, 4):
            got = {_verdict(cut_path, threads) for _ in range(TRIES)}
            assert got == {serial}, f"cut at {cut} of {len(data)} bytes, {threads} threads: {got}, one thread: {serial}"
    assert flagged >= 5  # the cut picture is flagged at many of the cuts: the comparison is not of clean ends only


def test_a_cut_raw_h264_is_judged_alike_at_any_thread_count(raw_clip, tmp_path):
    """The same for a stream whose packets carry no presentation time (the recheck names its frames by the packet's
    number, FFmpeg's opaque, which the decoder copies from packet to picture; by pts, a raw stream's last frames were
    never judged again): at each cut
    (the cut picture flagged at most), 2 and 4 threads give one thread's frames and corrupt count, and no time is made up."""
    with av.open(str(raw_clip)) as c:
        assert all(p.pts is None for p in c.demux(video=0))
    assert _flagged_alike(raw_clip, tmp_path, 16) >= 8
    src = open_source(str(raw_clip), 64)
    src.want = Wanted(64, model=True, full=False)
    with src:
        src.use_decoder(None, 2)
        assert [f.timestamp_s for f in src.frames()] == [None] * FRAMES


def _flagged_alike(clip: Path, tmp_path: Path, cuts: int) -> int:
    """``clip`` cut at ``cuts`` places: each read with 2 and 4 threads (repeated) as one thread reads it (the frames, the
    corrupt count, whether it ends early); how many cuts one thread flags a corrupt picture at."""
    data = clip.read_bytes()
    cut_path = tmp_path / f"cut{clip.suffix}"
    flagged = 0
    for cut in np.linspace(len(data) // 10, len(data) - 100, cuts).astype(int):
        cut_path.write_bytes(data[:cut])
        serial = _verdict(cut_path, 1, ends=True)
        flagged += serial[1] > 0
        for threads in (2, 4):
            got = {_verdict(cut_path, threads, ends=True) for _ in range(TRIES)}
            assert got == {serial}, f"cut at {cut} of {len(data)} bytes, {threads} threads: {got}, one thread: {serial}"
    return flagged


GOPS = {"x264-params": "open-gop=1:keyint=10:bframes=3:scenecut=0"}  # short open groups: frames of the one before drain too


@pytest.mark.parametrize(("suffix", "options", "container_options"), [
    (".flv", None, None), (".mp4", None, {"movflags": "frag_keyframe+empty_moov"}), (".ts", GOPS, None)])
def test_a_cut_is_judged_alike_whatever_its_container_and_groups(tmp_path, suffix, options, container_options):
    """An FLV or a fragmented MP4 cut short: its last packet's error comes out of the threads' draining, which then
    dropped the frames they still held (2 whole frames and the flag of the cut one: 21 frames and 0 corrupt at 4
    threads where one thread gives 23 and 1); the frames after those given come as one thread gives them. An MPEG-TS
    of short open groups: frames of the group before the last, and the last group's leading pictures (which one
    thread, starting at its key frame, does not output), still come from the threads' draining."""
    frames = pan_zoom_frames(160, 112, FRAMES)
    clip = make_video(tmp_path / f"whole{suffix}", frames, fps=10, options=options, container_options=container_options)
    assert _flagged_alike(clip, tmp_path, 12) >= 8


@pytest.mark.parametrize("threads", [[], ["--threads", "1"]])
def test_a_ts_cut_in_its_first_frame_is_one_error_line(clip, tmp_path, threads):
    """Cut inside its first picture: no whole frame, so exit 1 with one line, with the split chosen for the CPU (its
    decoder threads) and with ``--threads 1`` (the decoder then gets the core left)."""
    cut = tmp_path / "first.ts"
    cut.write_bytes(clip.read_bytes()[:_first_frame_cut(clip)])
    assert _verdict(cut, 1) == (0, 1)
    model = tiny_classifier(tmp_path / "tiny.onnx")
    r = subprocess.run([sys.executable, "-m", "edge_inception", "stream", str(model), str(cut), *threads], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"error: {cut}: no frame decoded (1 corrupt); nothing was classified"], r.stderr


_PEAK = """
import re, sys
from edge_inception.stream.sources import Wanted, open_source
with open("/proc/self/clear_refs", "w") as f:  # the peak RSS (VmHWM) from here: not the parent's, kept across exec
    f.write("5")
src = open_source(sys.argv[1], 64)
src.want = Wanted(64, model=True, full=False)
with src:
    src.use_decoder(None, int(sys.argv[2]))
    n = sum(1 for _ in src.frames())
with open("/proc/self/status") as f:
    print(n, re.search(r"VmHWM:\\s*(\\d+) kB", f.read()).group(1))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak RSS reset")
def test_the_recheck_keeps_only_the_frames_it_gives(tmp_path):
    """A 280-frame group of pictures (640 x 360, one key frame): the one-thread decoder at the end keeps only the
    frames after those the threads gave, not every picture of the group (which held 100 MB more at 2 threads than
    at one: about 0.9 GB for 300 frames of 1080p): the peak memory at 2 threads is within 40 MB of one thread's."""
    frames = list(pan_zoom_frames(640, 360, 20))
    clip = make_video(tmp_path / "group.mp4", (frames[i % 20] for i in range(280)), fps=30,
                      options={"x264-params": "keyint=1000:min-keyint=1000:scenecut=0", "preset": "veryfast"})
    peaks = {}
    for threads in (1, 2):
        r = subprocess.run([sys.executable, "-c", _PEAK, str(clip), str(threads)], capture_output=True, text=True, timeout=120)
        count, peak_kib = map(int, r.stdout.split())
        assert count == 280, r.stderr
        peaks[threads] = peak_kib / 1024
    assert peaks[2] - peaks[1] < 40, peaks


def test_the_tail_keeps_the_last_two_groups_that_fit_and_no_more():
    """_SerialTail's bookkeeping on packets alone: the last two groups of pictures where they fit the bound, the last one
    alone where two do not, none (the threads' draining stands) where the last one alone does not; its counts always
    those of the packets it holds, and each packet taken in constant time (the bound is checked on running totals)."""
    from edge_inception.stream.sources import SERIAL_TAIL_PACKETS, _SerialTail

    def feed(groups: list[int], size: int = 10) -> _SerialTail:
        tail = _SerialTail(None, 1, None)
        for n in groups:
            for i in range(n):
                p = av.Packet(bytes(size))
                p.is_keyframe = i == 0
                tail.add(p)
        assert tail.kept == len(tail.packets) and tail.kept_bytes == sum(p.size for p in tail.packets)
        return tail

    half = SERIAL_TAIL_PACKETS // 2
    tail = feed([half, half - 10, half - 10])  # the last two fit: both kept, from the older one's key frame
    assert [len(g) for _, g in tail.groups] == [half - 10, half - 10] and tail.first == half and tail.whole
    tail = feed([half, half + 20, half + 20])  # two do not fit: the last alone
    assert [len(g) for _, g in tail.groups] == [half + 20] and tail.first == half + (half + 20) and tail.whole
    tail = feed([half, SERIAL_TAIL_PACKETS + 1])  # the last alone does not fit: nothing kept, nothing judged again
    assert tail.groups == [] and not tail.whole and tail.kept == 0 and tail.rest([]) is None
    for _ in range(1000):  # bad pictures while nothing is kept are not recorded: its memory stays bounded
        tail.failed(None)
        tail.flagged(type("Frame", (), {"opaque": tail.number - 1})())
    assert tail.bad == 0 and tail.bad_at == []
    tail = feed([SERIAL_TAIL_PACKETS + 1, 5])  # a group after one too long is kept again from its key frame
    assert [len(g) for _, g in tail.groups] == [5] and tail.whole


def test_a_ts_cut_inside_a_packet_says_input_truncated(clip, tmp_path):
    """Found by a new user's walk: a cut MPEG-TS streamed to its end as whole ('truncated': false), though the README
    says a cut TS shows `input truncated` (a TS has no duration in a header: FFmpeg estimates it from the cut file's own
    size). A size that is not a whole number of 188-byte packets is a cut; the whole clip is not."""
    data = clip.read_bytes()
    assert len(data) % 188 == 0 and _verdict(clip, 1, ends=True)[2] is False
    cut = tmp_path / "cut.ts"
    for at in (len(data) // 2 + 7, len(data) - 100):
        cut.write_bytes(data[:at])
        given, _, truncated = _verdict(cut, 1, ends=True)
        assert truncated and given > 0, at

"""``fleet``: a real Ray cluster of a head and three "boards" (worker nodes labelled with a board name and a target
preset), all started here on loopback with token auth, each in a session of its own and killed by PID at the end (also
on failure); the module ends by checking that nothing it started is alive.

Ray swaps 127.0.0.1 for the machine's routable address in a multi-node cluster (its GCS then listens on every interface),
so the nodes use 127.0.0.2: still the loopback interface, but an address Ray keeps as given."""

from __future__ import annotations

import json
import re
import secrets
import socket
import sys
import time
from pathlib import Path

import pytest

from tests import ray_procs
from tests.device_env import NOT_ON_A_DEVICE, device_pythonpath

pytest.importorskip("ray")

HOST = "127.0.0.2"
RAY = str(Path(sys.executable).with_name("ray"))
TOKEN = secrets.token_hex(32)
NODE_ARGS = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
BOARDS = {"board-a": "cpu", "board-b": "cpu", "board-c": "cpu"}
UP_TIMEOUT_S = 400  # hang detection: a node joins in ~10 s on an idle machine, minutes on a loaded one
RUN_TIMEOUT_S = 500
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",  # a killed board is seen dead in ~3 s
           "RAY_raylet_start_wait_time_s": "300"}  # a loaded machine: the default 60 s timed a node's start-up out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# What a board has: the runtime install (`pip install 'edge-inception[cluster]'`), not PyTorch, scikit-image, onnxsim or
# sympy (issue 37: "no PyTorch there"). Each board node starts with tests/device_env.py's sitecustomize, which makes them
# unimportable, and its Ray workers inherit it, so every fleet test runs the boards' verify/build/check/bench without them.
ON_EACH_BOARD = """
import importlib.util, sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1, max_retries=0)
def has(names):
    return {n: importlib.util.find_spec(n) is not None for n in names}

names = sys.argv[2].split(",")
for node in ray.nodes():
    board = node.get("Labels", {}).get("edge-inception-board")
    if node["Alive"] and board:
        found = ray.get(has.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(names))
        print(board, sorted(n for n, ok in found.items() if ok))
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(address, {board: (process, its TMPDIR)}): a head and three boards; every process killed by PID afterwards."""
    logs = tmp_path_factory.mktemp("ray-logs")
    board_path = device_pythonpath(tmp_path_factory.mktemp("no-export-extra"))
    port = _free_port()
    address = f"{HOST}:{port}"
    procs = []
    boards = {}
    try:
        head = ray_procs.start([RAY, "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(port), "--include-dashboard=false",
                                *NODE_ARGS[:1], "0", *NODE_ARGS[2:]], logs / "head.log", **RAY_ENV)
        procs.append(head)
        for name, target in BOARDS.items():
            tmpdir = tmp_path_factory.mktemp(name)
            p = ray_procs.start([RAY, "start", "--block", "--address", address, "--node-ip-address", HOST, *NODE_ARGS,
                                 "--labels", f"edge-inception-board={name},edge-inception-target={target}"],
                                logs / f"{name}.log", TMPDIR=str(tmpdir), PYTHONPATH=board_path, **RAY_ENV)
            procs.append(p)
            boards[name] = (p, tmpdir)
            deadline = time.monotonic() + UP_TIMEOUT_S  # one board at a time: three raylets starting at once overload 2 cores
            while True:
                r = ray_procs.run([sys.executable, "-m", "edge_inception", "fleet", "status", address], 120, **RAY_ENV)
                if r.returncode == 0 and sum(" alive " in line for line in r.stdout.splitlines()) == len(boards):
                    break
                assert p.poll() is None, f"{name} did not start: {(logs / f'{name}.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, f"boards not up: {r.stdout} {r.stderr[-2000:]}"
                time.sleep(3)
        yield address, boards, r.stdout
    finally:
        for p in reversed(procs):
            ray_procs.kill_session(p.pid)
        for p in procs:
            p.wait(timeout=30)
        left = ray_procs.kill_marked()
        assert not left, f"processes left running: {left}"


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    from edge_inception.deploy.bundle import make_bundle

    return make_bundle(trained.onnx, "cpu", tmp_path_factory.mktemp("bundle") / "demo.cpu.bundle", references=4).folder


def _bench(address: str, bundle: Path, out: Path, *extra: str) -> tuple[ray_procs.subprocess.CompletedProcess, dict]:
    r = ray_procs.run([sys.executable, "-m", "edge_inception", "fleet", "bench", str(bundle), "--cluster", address, "--iterations", "5",
                       "--rounds", "1", "--json", str(out / "fleet.json"), "--markdown", str(out / "fleet.md"), *extra], RUN_TIMEOUT_S, **RAY_ENV)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return r, json.loads((out / "fleet.json").read_text())


def test_fleet_status_lists_the_three_boards_with_their_facts(fleet):
    _, _, status = fleet
    lines = [line for line in status.splitlines() if line.startswith("board-")]
    assert [line.split()[:3] for line in lines] == [[name, "alive", "cpu"] for name in BOARDS]
    from edge_inception.evaluate.cpu import cpu_info

    assert all(cpu_info().model[:20] in line for line in lines)


def test_boards_have_the_runtime_install_only(fleet):
    """The boards' own workers cannot import PyTorch, scikit-image, onnxsim or sympy (the fixture's blocker holds on each),
    while onnxruntime is there: the fleet tests' builds, checks and benches ran on the runtime install alone."""
    address, _, _ = fleet
    r = ray_procs.run([sys.executable, "-c", ON_EACH_BOARD, address, ",".join((*NOT_ON_A_DEVICE, "onnxruntime"))], 180, **RAY_ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(r.stdout.splitlines()) == [f"{name} ['onnxruntime']" for name in sorted(BOARDS)], r.stdout


def test_fleet_bench_gives_one_ranked_row_per_board(fleet, bundle, tmp_path):
    address, _, _ = fleet
    r, report = _bench(address, bundle, tmp_path, "--batch", "1,2", "--plot", str(tmp_path / "fleet.png"))
    rows = report["boards"]
    assert sorted(row["board"] for row in rows) == sorted(BOARDS)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["check"]["passed"] and row["manifest"]["target"] == "cpu" and row["manifest"]["backend"] == "ort"
        assert [b["batch"] for b in row["bench"]] == [1, 2] and all(b["latency_ms"]["p50"] > 0 for b in row["bench"])
        assert row["facts"]["simd"] and row["facts"]["memory_mib"] > 0
    p50 = [row["bench"][0]["latency_ms"]["p50"] for row in rows]
    assert p50 == sorted(p50)  # ranked
    md = (tmp_path / "fleet.md").read_text()
    assert all(name in md for name in BOARDS) and (tmp_path / "fleet.png").stat().st_size > 1000
    assert "board-a" in r.stdout


def test_a_bundle_edited_after_bundle_is_refused_on_the_board(fleet, bundle, tmp_path):
    import shutil

    address, _, _ = fleet
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    (edited / "labels.txt").write_text((edited / "labels.txt").read_text().replace("cat", "dog", 1))
    _, report = _bench(address, edited, tmp_path, "--boards", "board-a")
    [row] = report["boards"]
    assert row["board"] == "board-a" and row["status"] == "refused"
    assert "labels.txt: does not match bundle.json" in row["error"] and "manifest" not in row


HOLD_HALF_OF_EACH = """
import sys, time
from pathlib import Path
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1])
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
half = ray.remote(num_cpus=0.5)(type("Half", (), {"ready": lambda self: True}))
held = [half.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
ray.get([h.ready.remote() for h in held], timeout=300)
while ray.available_resources().get("CPU", 0) > 0.5 * len(nodes) + 0.01:  # the head's view has caught up
    time.sleep(0.1)
Path(sys.argv[2]).write_text(str(ray.available_resources().get("CPU", 0)))
time.sleep(3600)  # until the test kills this job's session
"""


def test_half_a_cpu_free_on_each_node_is_no_free_worker(fleet, tmp_path):
    """Another job holds half of each board's one CPU: Ray's cluster-wide sum says 1.5 CPUs free, but an actor takes one
    CPU on one node, and none has it. ``eval --workers 1`` counted the sum (one worker free) and then waited for an actor
    that no node could place; it is refused once joined, in one line, counting whole CPUs node by node."""
    from edge_inception.data.images import bundled_photos, load_image
    from tests.stream_media import tiny_classifier

    address, _, _ = fleet
    model = tiny_classifier(tmp_path / "m.onnx")
    folder = tmp_path / "val" / "class0"
    folder.mkdir(parents=True)
    load_image(bundled_photos()[0]).resize((80, 64)).save(folder / "0.png")
    held = tmp_path / "held"
    job = ray_procs.start([sys.executable, "-c", HOLD_HALF_OF_EACH, address, str(held)], tmp_path / "holder.log", **RAY_ENV)
    try:
        ray_procs.wait_for_file(held, job, tmp_path / "holder.log", time.monotonic() + UP_TIMEOUT_S, "the holding job taking its CPUs")
        assert float(held.read_text()) >= 1  # Ray's sum: a worker's worth "free"
        r = ray_procs.run([sys.executable, "-m", "edge_inception", "eval", str(model), "--data", str(tmp_path / "val"), "--cluster", address,
                           "--workers", "1"], 180, **RAY_ENV)  # hang detection: it waited for an actor no node could place
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert re.fullmatch(rf"error: --workers 1: the Ray cluster at {re.escape(address)} has [23] CPU\(s\) in all, 0 free now \(other "
                            r"jobs hold the rest: ray status\); at most 0 now, or wait for them \(each worker takes one, and Ray would "
                            r"run fewer than asked\)", lines[0]), lines[0]
    finally:
        ray_procs.kill_session(job.pid)
        job.wait(timeout=30)


def test_a_board_killed_mid_run_is_reported_and_the_others_finish(fleet, bundle, tmp_path):
    """Board b's node is killed once its task has started (its temporary folder appeared in the node's own TMPDIR)."""
    address, boards, _ = fleet
    proc, tmpdir = boards["board-b"]
    timeout_s = 240
    t0 = time.monotonic()
    run = ray_procs.start([sys.executable, "-m", "edge_inception", "fleet", "bench", str(bundle), "--cluster", address, "--iterations", "5",
                           "--rounds", "1", "--timeout", str(timeout_s), "--json", str(tmp_path / "fleet.json")], tmp_path / "bench.log", **RAY_ENV)
    try:
        while not list(Path(tmpdir).glob("edge-inception-board-*")):
            assert run.poll() is None, (tmp_path / "bench.log").read_text()[-3000:]
            assert time.monotonic() - t0 < RUN_TIMEOUT_S, "board-b's task never started"
            time.sleep(0.2)
        ray_procs.kill_session(proc.pid, grace_s=0.0)  # SIGTERM then SIGKILL at once: the board drops off
        assert run.wait(timeout=timeout_s + 120) == 0, (tmp_path / "bench.log").read_text()[-3000:]
    finally:
        ray_procs.kill_session(run.pid)
    elapsed = time.monotonic() - t0
    rows = {row["board"]: row for row in json.loads((tmp_path / "fleet.json").read_text())["boards"]}
    assert rows["board-a"]["status"] == rows["board-c"]["status"] == "ok"
    assert rows["board-b"]["status"] in ("lost", "timed out", "failed") and rows["board-b"]["error"], rows["board-b"]
    assert elapsed < timeout_s + 120

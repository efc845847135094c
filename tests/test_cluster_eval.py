"""``eval --cluster``: a real Ray cluster (a private one, ``local``: token auth, 127.0.0.1) gives plain eval's report
image by image. Every run is a subprocess in a session of its own, bounded in time and killed by PID afterwards; the
module ends by checking that no process it started (marked in its environment) is still alive."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests import ray_procs

pytest.importorskip("ray")

RUN_TIMEOUT_S = 400  # hang detection only: a private cluster is up in ~10 s, Ray Data's first batch ~20 s on 2 loaded cores


@pytest.fixture(scope="module", autouse=True)
def _no_ray_process_outlives_the_module():
    yield
    left = ray_procs.kill_marked()
    assert not left, f"processes left running: {left}"


@pytest.fixture(scope="module")
def big_val(tmp_path_factory) -> Path:
    """>= 500 labelled 64 px crops (the demo photos, cropped afresh), plus an unreadable image and a non-image file."""
    from edge_inception.data.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("big"), train_per_class=0, val_per_class=52, crop_px=64, seed=7) / "val"
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_eval_cluster_local_equals_plain_eval_image_by_image(built_fp32, big_val, tmp_path):
    from edge_inception.evaluate.predict import evaluate, predict

    plain = evaluate(built_fp32, big_val, 16)
    assert plain.images == 520 and plain.skipped == 2
    per_image = {p.image: [i for i, _, _ in p.top] for p in predict(built_fp32, [big_val], top_k=5, batch_size=16).predictions}

    script = textwrap.dedent("""
        import json, sys, warnings
        from edge_inception.limits import usable_cpus
        from edge_inception.cluster.evaluate import evaluate_on_cluster
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = evaluate_on_cluster(sys.argv[1], sys.argv[2], "local", workers=min(2, usable_cpus()), batch_size=16)
        import ray
        assert not ray.is_initialized()
        ours = [f"{w.category.__name__}: {w.message}" for w in caught
                if issubclass(w.category, DeprecationWarning) and "edge_inception" in w.filename]
        json.dump({"images": r.images, "top1": r.top1, "top5": r.top5, "skipped": r.skipped, "top": r.top, "failed": r.failed,
                   "startup_s": r.startup_s, "workers_s": r.workers_s, "seconds": r.seconds, "deprecations": ours}, open(sys.argv[3], "w"))
    """)
    out = tmp_path / "cluster.json"
    r = ray_procs.run([sys.executable, "-c", script, str(built_fp32), str(big_val), str(out)], RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert (got["images"], got["skipped"]) == (plain.images, plain.skipped)
    assert (got["top1"], got["top5"]) == (plain.top1, plain.top5)
    assert list(got["failed"]) == [str((big_val / "cat" / "broken.png").resolve())]
    assert len(got["top"]) == len(per_image) == 520
    assert {str(Path(p).resolve()): t for p, t in per_image.items()} == got["top"]
    # the rate is the steady state: the workers' start (actors started, each opening the model) is set apart, as plain
    # eval's rate leaves out its model load
    assert got["startup_s"] > 0 and got["workers_s"] > 0 and got["seconds"] > 0
    # no library deprecation pinned on our calls (Ray Data's of map_batches(**ray_remote_args), say): each is an API that
    # a pinned upgrade removes
    assert got["deprecations"] == []
    assert not ray_procs.marked()


def test_eval_cluster_command_prints_plain_evals_report(built_fp32, big_val):
    cli = [sys.executable, "-m", "edge_inception", "eval", str(built_fp32), "--data", str(big_val)]
    plain = ray_procs.run(cli, RUN_TIMEOUT_S)
    assert plain.returncode == 0, plain.stderr
    cluster = ray_procs.run([*cli, "--cluster", "local", "--workers", "1"], RUN_TIMEOUT_S)
    assert cluster.returncode == 0, cluster.stderr[-3000:]
    assert "Traceback" not in cluster.stderr and "cluster local: 1 worker(s), ready after" in cluster.stderr

    def report(text: str) -> str:  # "520 images: top-1 ..., top-5 ... (2 files skipped); N images/s end to end": the rate differs
        return text.strip().splitlines()[-1].split(";")[0]

    assert report(cluster.stdout) == report(plain.stdout)
    assert "520 images" in report(plain.stdout) and "(2 files skipped)" in report(plain.stdout)
    assert not ray_procs.marked()


def test_eval_cluster_refuses_a_bad_address_and_a_missing_token(built_fp32, big_val):
    cli = [sys.executable, "-m", "edge_inception", "eval", str(built_fp32), "--data", str(big_val)]
    r = ray_procs.run([*cli, "--cluster", "no-port"], 120)
    assert r.returncode == 1 and r.stderr.strip().startswith("error: cluster address must be 'local' or HOST:PORT"), r.stderr
    r = ray_procs.run([*cli, "--cluster", "127.0.0.1:9"], 120, RAY_AUTH_TOKEN="", HOME="/nonexistent")
    assert r.returncode == 1 and "error: no Ray token" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = ray_procs.run([*cli, "--cluster", "127.0.0.1:9"], 120, RAY_AUTH_TOKEN="x" * 32)  # port 9 (discard): nothing listens
    assert r.returncode == 1 and "error: no Ray head answers at 127.0.0.1:9" in r.stderr, r.stderr


def test_workers_beyond_the_cpus_are_refused_with_the_most_that_can_run():
    """The decision (pure): a count within the CPUs passes; beyond them, local and joined clusters each get a line that
    says the most that can run; a cluster with no CPU at all says so; a cgroup quota rounds up to whole CPUs."""
    from edge_inception.cluster.capacity import check_workers
    from edge_inception.cluster.connect import ClusterError
    from edge_inception.limits import cgroup_cpus

    check_workers(2, 2, "local")
    check_workers(4, 4.5, "10.0.0.5:6379")
    with pytest.raises(ClusterError, match=r"^--workers 3 for --cluster local: this machine gives this process 2 CPU\(s\); at most 2 "):
        check_workers(3, 2, "local")
    with pytest.raises(ClusterError, match=r"^--workers 5: the Ray cluster at 10.0.0.5:6379 has 4 CPU\(s\) in all \(ray status\); at most 4 "):
        check_workers(5, 4.5, "10.0.0.5:6379")
    with pytest.raises(ClusterError, match=r"has no CPU for a worker"):
        check_workers(1, 0.0, "10.0.0.5:6379")
    # CPUs other jobs hold: the line says both counts; the total's refusal comes first; free CPUs enough pass; a
    # private cluster (sized to the workers) is not asked
    check_workers(2, 4, "10.0.0.5:6379", free=2.5)
    check_workers(2, 2, "local", free=0)
    with pytest.raises(ClusterError, match=r"^--workers 3: the Ray cluster at 10.0.0.5:6379 has 4 CPU\(s\) in all, 1 free now \(other jobs "
                                           r"hold the rest: ray status\); at most 1 now, or wait"):
        check_workers(3, 4, "10.0.0.5:6379", free=1.5)
    with pytest.raises(ClusterError, match=r" 0 free now .*; at most 0 now"):
        check_workers(1, 4, "10.0.0.5:6379", free=-0.0)
    with pytest.raises(ClusterError, match=r"has 4 CPU\(s\) in all \(ray status\)"):
        check_workers(5, 4, "10.0.0.5:6379", free=4)
    assert [cgroup_cpus(t) for t in ("max 100000", "150000 100000", "50000 100000", "200000 100000\n", "junk", "-1 100000")] == [
        None, 2, 1, 2, None, None]


def test_workers_that_fit_count_whole_cpus_node_by_node():
    """An actor's CPU is on one node: the count is each node's whole CPUs, not Ray's cluster-wide sum (two nodes with half
    a CPU free each: available_resources() says 1.0, and no worker fits; Ray Data would then run none, or fewer than
    asked, under "N worker(s)"). What is not a finite number (a head's odd answer) is none, not a traceback."""
    from edge_inception.cluster.capacity import workers_that_fit

    assert workers_that_fit([{"CPU": 0.5, "memory": 1e9}, {"CPU": 0.5}]) == 0
    assert workers_that_fit([{"CPU": 1.5}, {"CPU": 1.5}, {"CPU": 1.5}, {}]) == 3
    assert workers_that_fit([{"CPU": float("nan")}, {"CPU": float("inf")}, {"CPU": -2.0}, {"CPU": "4"}, {"CPU": 2.0}]) == 2
    assert workers_that_fit([]) == 0


def test_eval_cluster_local_refuses_more_workers_than_this_machine_has_cpus(tmp_path):
    """256 workers on a private cluster were accepted (Ray warned, the run crawled): refused in one line before any work
    (the model and folder named here do not exist), and no Ray process started."""
    from edge_inception.limits import usable_cpus

    cpus = usable_cpus()
    for n in (cpus + 1, 256):
        r = ray_procs.run([sys.executable, "-m", "edge_inception", "eval", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "val"),
                           "--cluster", "local", "--workers", str(n)], 120)
        assert r.returncode == 1 and r.stderr.strip().splitlines() == [
            f"error: --workers {n} for --cluster local: this machine gives this process {cpus} CPU(s); at most {cpus} (each worker "
            "is a process with an engine of its own)"], r.stderr[-3000:]
    assert not ray_procs.marked()


def test_eval_cluster_prints_one_line_of_its_own_and_no_library_warning(tmp_path):
    """`eval --cluster local` on a tiny real classifier: stderr is the one cluster note. Ray Data warned (two lines:
    its deprecation of ``ray_remote_args`` and the product's source line) on every run; Python's warnings now go
    through the CLI's one-line printer, and a library's deprecation of its own API is not the user's business."""
    from edge_inception.data.images import bundled_photos, load_image
    from tests.stream_media import tiny_classifier

    model = tiny_classifier(tmp_path / "m.onnx")
    folder = tmp_path / "val" / "class0"
    folder.mkdir(parents=True)
    for i, p in enumerate(bundled_photos()[:4]):
        load_image(p).resize((80, 64)).save(folder / f"{i}.png")
    r = ray_procs.run([sys.executable, "-m", "edge_inception", "eval", str(model), "--data", str(tmp_path / "val"),
                       "--cluster", "local", "--workers", "1"], RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster local: 1 worker(s), ready after"), r.stderr[-3000:]
    assert "s, the workers' engines open after " in lines[0] and lines[0].endswith(" s more (neither in the rate below)")
    assert not ray_procs.marked()


def test_an_actor_on_a_joined_cluster_runs_one_engine_thread_per_ray_cpu(tmp_path):
    """Without --threads, an actor's engine runs as many threads as CPUs Ray gave it (assigned_cpus), so that actors
    sharing a node share its cores instead of each starting one thread per core."""
    script = textwrap.dedent("""
        import json, sys
        from edge_inception.cluster.connect import connect
        from edge_inception.cluster.evaluate import assigned_cpus
        with connect("local", num_cpus=3):
            import ray
            task = ray.remote(assigned_cpus)
            cpus = [ray.get(task.options(num_cpus=n).remote(), timeout=120) for n in (1, 3)]
        json.dump(cpus, open(sys.argv[1], "w"))
    """)
    out = tmp_path / "cpus.json"
    r = ray_procs.run([sys.executable, "-c", script, str(out)], RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(out.read_text()) == [1, 3]
    assert not ray_procs.marked()

"""Which tests run together on one pytest-xdist worker in `make test` (`-n 3 --dist loadgroup`).

Each test file is one group, so it runs whole on one worker and its module fixtures (a tritonserver, a Ray cluster, a
build) start and stop once there; the files that start Ray clusters share one group, so two clusters never run side by
side. Scheduled by the group directly (:func:`make_scheduler`, xdist's ``pytest_xdist_make_scheduler`` hook, from
``tests/conftest.py``) rather than by ``xdist_group`` marks: pytest-xdist 3.8 passes a mark's group to its scheduler by
appending ``@group`` to each test's id in ``Item._nodeid``, which pytest 9.2 no longer reads (its ids are structured), so
every test became a group of its own and each file was split over both workers, every module fixture started on each
(pytest-xdist issue 1386, open). No import of pytest-xdist here at module level: serial runs work without it.
"""

from __future__ import annotations

from typing import Any

# files that share a group (a file not named here is a group of its own)
SHARED = {"test_cluster_eval.py": "ray", "test_cluster_fleet.py": "ray", "test_cluster_verdicts.py": "ray",
          "test_unreadable_inputs.py": "ray"}  # its `eval --cluster local` starts a Ray cluster too
# the long groups, handed out first so that no worker is left with one at the end while the other idles: seconds of wall
# time measured in one `make test` on a 2-core EPYC (tests split over both workers then; the order matters, not the
# figures); a group not named here goes after them, in xdist's order (the most tests first)
LONG = {"ray": 270, "tests/test_quantize.py": 120, "tests/test_pipeline.py": 107, "tests/test_hostile.py": 95, "tests/test_serve.py": 61,
        "tests/test_holdout.py": 59, "tests/test_candidates.py": 58, "tests/test_bench_agreement.py": 50, "tests/test_stream_faults.py": 46,
        "tests/test_export.py": 41, "tests/test_engines.py": 40, "tests/test_first_hour.py": 39, "tests/test_loadgen.py": 38,
        "tests/test_architecture.py": 35, "tests/test_serve_client.py": 31, "tests/test_bench.py": 26, "tests/test_int8_peers.py": 22}
# handed out before the long groups, in this order: the first builds the trained net on an empty cache (the others that
# need it wait on its lock for the ~55 s it takes, while training keeps about 1.3 of the 2 cores busy), the next three need
# no trained net, so they run meanwhile (with two, the worker that finished first took the Ray group and waited on the
# lock: the cores were 24-33 % idle for 15 s at the end of training, vmstat of an empty-cache run); with the builds cached
# the order costs nothing (README, "Testing")
FIRST = ("tests/test_quantize.py", "tests/test_serve.py", "tests/test_candidates.py", "tests/test_stream_faults.py")


def _rank(name: str) -> tuple[int, float]:
    """Where the group ``name`` goes in the queue: :data:`FIRST` in its order, then the :data:`LONG` ones, longest first."""
    return (FIRST.index(name), 0.0) if name in FIRST else (len(FIRST), -LONG.get(name, 0))


def group(nodeid: str) -> str:
    """The group of the test ``nodeid`` (``tests/test_x.py::test_y[param]``): its file, or the group its file shares."""
    path = nodeid.split("::", 1)[0]
    return SHARED.get(path.rsplit("/", 1)[-1], path)


def make_scheduler(config: Any, log: Any) -> Any:
    """For ``--dist loadgroup``: xdist's scope scheduling (a whole group to one worker at a time) by :func:`group`, the
    :data:`FIRST` groups, then the :data:`LONG` ones; None (xdist's own choice) for any other ``--dist``. Uses what ``LoadScopeScheduling``'s
    subclasses override in xdist itself (``_split_scope``), its queue of groups (``workqueue``) and the method that
    hands out the next group (``_assign_work_unit``)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group(nodeid)

        ordered = False

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the queue is complete and nothing is handed out yet: FIRST, then the long groups
                self.ordered = True
                queued = sorted(self.workqueue.items(), key=lambda item: _rank(item[0]))  # stable: xdist's order after
                self.workqueue.clear()
                self.workqueue.update(queued)
            super()._assign_work_unit(node)

    return FileGroupScheduling(config, log)

"""The CPUs this process may use (``--workers`` for ``eval --cluster local``, the stream's thread split): the affinity
mask lowered to the CPU quota of every cgroup above the process, cgroup v1 and v2. Cgroup trees are real folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_inception.limits import cgroup_quota, usable_cpus


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("files,self_cgroup,cpus", [
    # cgroup v1 (Docker on a v1 host, this kind of machine): the cpu controller's quota was not read at all
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "2:cpu,cpuacct:/\n1:memory:/\n0::/", 2),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, "2:cpu,cpuacct:/", 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "2:cpu,cpuacct:/", None),  # v1: no quota
    # v1, the process in a sub-cgroup with the quota set on its parent
    ({"cpu/a/cpu.cfs_quota_us": "300000", "cpu/a/cpu.cfs_period_us": "100000", "cpu/a/b/cpu.cfs_quota_us": "-1",
      "cpu/a/b/cpu.cfs_period_us": "100000"}, "4:cpu:/a/b", 3),
    # cgroup v2: a systemd unit's CPUQuota sits on the process's own cgroup or a slice above it, not at the root
    ({"system.slice/cpu.max": "200000 100000\n", "system.slice/app.service/cpu.max": "max 100000\n"}, "0::/system.slice/app.service", 2),
    ({"system.slice/cpu.max": "max 100000\n", "system.slice/app.service/cpu.max": "100000 100000\n"}, "0::/system.slice/app.service", 1),
    ({"cpu.max": "400000 100000\n", "a/cpu.max": "300000 100000"}, "0::/a", 3),  # the fewest wins
    ({"cpu.max": "250000 100000\n"}, "0::/docker/0123abcd", 3),  # a container that sees the host's path: its root's file
    ({"cpu.max": "max 100000\n"}, "0::/", None),
    ({"../escape/cpu.max": "100000 100000"}, "0::/../escape", None),  # a path that climbs out of the tree is not followed
    ({}, "garbage\n\n::", None),
])
def test_a_cgroup_quota_above_the_process_limits_its_cpus(tmp_path, files, self_cgroup, cpus):
    (tmp_path / "cgroup").mkdir()
    root = _tree(tmp_path / "cgroup", files)
    assert cgroup_quota(root, self_cgroup) == cpus


def test_usable_cpus_is_at_most_the_affinity_mask():
    import os

    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))

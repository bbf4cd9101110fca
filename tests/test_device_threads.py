"""CPU thread sizing (medseg.device): affinity, cgroup quotas (v1 and v2), other processes' load."""

from __future__ import annotations

import pytest

from medseg import device
from medseg.device import available_cpus, busy_cpus, cgroup_cpu_limit, choose_threads


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_quota_on_the_root_and_on_the_process_group(tmp_path):
    no_self = str(tmp_path / "no_self_cgroup")
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), no_self) == 1.5
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), no_self) is None
    # the process's own group (from /proc/self/cgroup) is read before the root
    me = _write(tmp_path / "self_cgroup", "0::/jobs/job7\n")
    _write(tmp_path / "jobs" / "job7" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path), str(me)) == 0.5


def test_cgroup_v1_quota_and_none(tmp_path):
    no_self = str(tmp_path / "none")
    assert cgroup_cpu_limit(str(tmp_path), no_self) is None
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(str(tmp_path), no_self) is None          # -1: no quota
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "300000\n")
    assert cgroup_cpu_limit(str(tmp_path), no_self) == 3.0


def test_available_cpus_is_affinity_capped_by_the_quota_rounded_up():
    assert available_cpus(affinity={0, 1, 2, 3}, quota=None) == 4
    assert available_cpus(affinity={0, 1, 2, 3}, quota=1.5) == 2
    assert available_cpus(affinity={0, 1, 2, 3}, quota=2.0) == 2
    assert available_cpus(affinity={2}, quota=8.0) == 1
    assert available_cpus(affinity={0, 1}, quota=0.2) == 1


def _tasks(root, states):
    """A fake ``/proc/self/task``: one thread per state letter (the name holds a ')' as real names may)."""
    for i, st in enumerate(states):
        _write(root / str(100 + i) / "stat", f"{100 + i} (py)thon) {st} 1 2 3\n")
    return root


def test_busy_cpus_reads_the_run_queue_less_this_process(tmp_path):
    stat = _write(tmp_path / "stat", "cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n")
    one = _tasks(tmp_path / "one", "RS")
    assert busy_cpus(stat=str(stat), samples=2, interval_s=0, own_tasks=str(one)) == 2.0   # 3 running: 1 ours
    # a BLAS thread of ours spinning after an import is not another process's work
    two = _tasks(tmp_path / "two", "RRS")
    assert busy_cpus(stat=str(stat), samples=2, interval_s=0, own_tasks=str(two)) == 1.0
    assert busy_cpus(stat=str(stat), samples=1, own_tasks=str(tmp_path / "gone")) == 2.0   # unreadable: us only
    assert busy_cpus(stat=str(tmp_path / "missing"), samples=1) == 0.0


@pytest.mark.parametrize("cpus, busy, host, expected", [
    (2, 0.0, 2, 2),      # idle 2-core machine: both cores
    (2, 0.4, 2, 2),
    (2, 1.0, 2, 1),      # one core taken by another process
    (2, 1.75, 2, 1),     # the training run of the measurements
    (2, 7.0, 2, 1),      # load 7-8: one thread (1.74x faster than 2 there)
    (4, 3.0, 64, 4),     # a 4-core quota on a 64-core host with 3 busy threads elsewhere
    (8, 60.0, 64, 4),    # the host nearly full: only the free cores
])
def test_choose_threads_uses_the_cores_left_free(cpus, busy, host, expected):
    assert choose_threads(cpus=cpus, busy=busy, host_cpus=host) == expected


def test_explicit_threads_and_omp_num_threads_win(monkeypatch):
    monkeypatch.setattr(device, "available_cpus", lambda: 8)
    monkeypatch.setattr(device, "busy_cpus", lambda: 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads() == 2
    assert choose_threads(5) == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "")                    # empty: not set
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert choose_threads() == 8                                    # 8 cores, none busy

"""Resolve the compute device once, at the entry point (library code follows ``tensor.device``), and
size the CPU thread pool to the cores actually free (:func:`choose_threads`)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from medseg.errors import ConfigError

#: what may run a network (medseg.inference.backends): ``--backend`` of predict and wsi features
BACKEND_CHOICES = ("auto", "torch", "openvino")


#: device files of GPU drivers torch can use (NVIDIA, AMD ROCm, WSL2's GPU bridge)
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")


def no_gpu_here() -> bool:
    """True when no GPU driver's device file exists: CUDA (or ROCm) cannot be available, and torch need not
    be imported to find that out."""
    import os

    return not any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def device_name(spec: str = "auto") -> Any:
    """:func:`resolve_device`, without importing torch where it cannot matter: ``"cpu"`` (a string) for
    ``cpu``, and for ``auto`` on a machine without a GPU driver (:func:`no_gpu_here`); else the
    ``torch.device`` of :func:`resolve_device`."""
    s = (spec or "auto").strip().lower()
    if s == "cpu" or (s == "auto" and no_gpu_here()):
        return "cpu"
    return resolve_device(spec)


def resolve_device(spec: str = "auto"):
    """``'auto'`` -> CUDA when available else CPU; ``'cpu'``; ``'cuda'`` or ``'cuda:N'``."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' asked for, but CUDA is not available here; use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices)")
        return dev
    raise ConfigError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")


# ------------------------------------------------------------------ CPU threads
def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs this process may use by its cgroup's CPU quota (``cpu.max`` of cgroup v2, else
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of v1), or None without a quota."""
    import os

    candidates = []
    try:           # cgroup v2: "0::/path" in /proc/self/cgroup; the quota may sit on the process's own group
        with open(self_cgroup) as f:
            for line in f:
                parts = line.strip().split(":", 2)
                if len(parts) == 3 and parts[0] == "0" and parts[2] not in ("", "/"):
                    candidates.append(os.path.join(root, parts[2].lstrip("/"), "cpu.max"))
    except OSError:
        pass
    candidates.append(os.path.join(root, "cpu.max"))
    for path in candidates:
        try:
            with open(path) as f:
                quota, period = (f.read().split() + ["100000"])[:2]
        except (OSError, ValueError):
            continue
        if quota == "max":
            return None
        try:
            q, p = float(quota), float(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    for v1 in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            with open(os.path.join(root, v1, "cpu.cfs_quota_us")) as f:
                q = float(f.read().strip())
            with open(os.path.join(root, v1, "cpu.cfs_period_us")) as f:
                p = float(f.read().strip())
        except (OSError, ValueError):
            continue
        return q / p if q > 0 and p > 0 else None
    return None


def available_cpus(*, affinity: set[int] | None = None, quota: float | None | bool = True) -> int:
    """Cores this process may run on: its CPU affinity (``os.sched_getaffinity``), capped by the cgroup
    quota rounded up (``quota=True``: read it, see :func:`cgroup_cpu_limit`; a number: that quota;
    None: none). At least 1."""
    import math
    import os

    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):      # not Linux
            affinity = set(range(os.cpu_count() or 1))
    n = max(1, len(affinity))
    limit = cgroup_cpu_limit() if quota is True else quota
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:
        n = min(n, max(1, math.ceil(limit - 1e-9)))
    return n


def busy_cpus(*, samples: int = 8, interval_s: float = 0.005, stat: str = "/proc/stat",
              own_tasks: str = "/proc/self/task") -> float:
    """Threads of other processes that are running or waiting for a core right now: the mean over a few
    samples of the kernel's ``procs_running`` less this process's own running threads (the reading one,
    and for example the BLAS threads numpy starts, which spin for ~0.1 s after an import or a call before
    they sleep: counted as other work, they made an idle 2-core machine look half busy). 0 where
    ``/proc/stat`` cannot be read."""
    import time

    counts = []
    for i in range(max(1, samples)):
        try:
            with open(stat) as f:
                for line in f:
                    if line.startswith("procs_running"):
                        counts.append(int(line.split()[1]) - _own_running(own_tasks))
                        break
        except (OSError, ValueError, IndexError):
            return 0.0
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0.0, sum(counts) / len(counts)) if counts else 0.0


def _own_running(tasks: str) -> int:
    """This process's threads in state R (at least 1: the caller), from ``/proc/self/task/*/stat``."""
    import os

    n = 0
    try:
        names = os.listdir(tasks)
    except OSError:
        return 1
    for t in names:
        try:
            with open(os.path.join(tasks, t, "stat")) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        n += state == "R"
    return max(1, n)


def choose_threads(requested: int | None = None, *, cpus: int | None = None, busy: float | None = None,
                   host_cpus: int | None = None) -> int:
    """Intra-op threads for the model: ``requested`` when given (``--threads``), else ``OMP_NUM_THREADS``
    when set in the environment (the usual way to pin a process's threads); otherwise the cores
    available to this process (:func:`available_cpus`) that other processes leave free
    (:func:`busy_cpus` runnable threads on the ``host_cpus`` cores), rounded, at least 1.

    Why not all cores always: a thread of a parallel region that shares its core with another
    process finishes last, and every other thread waits for it at the region's end; with the cores
    busy, 2 PyTorch threads ran the network 1.74x slower than 1 (and 2 beat 1 by 1.7x when idle).

    >>> choose_threads(cpus=2, busy=0.1, host_cpus=2), choose_threads(cpus=2, busy=1.8, host_cpus=2)
    (2, 1)
    >>> choose_threads(cpus=4, busy=3.0, host_cpus=64), choose_threads(3)
    (4, 3)
    """
    import os

    if requested is not None:
        return max(1, int(requested))
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0 and cpus is None and busy is None:
        return int(env)
    n = available_cpus() if cpus is None else int(cpus)
    others = busy_cpus() if busy is None else float(busy)
    host = (os.cpu_count() or n) if host_cpus is None else int(host_cpus)
    free = min(float(n), host - others)
    return max(1, min(n, int(free + 0.5)))


@lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library (glibc's allocator calls below), or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``); False where there is
    no such call (another C library). After a freed block above the mmap threshold, glibc raises the
    threshold (up to 32 MiB), so the slab-sized temporaries of a large volume's resampling stay in the
    heap once freed: 60-150 MiB of resident memory held through the rest of a CT's prediction."""
    trim = getattr(_libc(), "malloc_trim", None)
    return trim is not None and trim(0) is not None


HEAP_MMAP_BYTES = 16 << 20


def bound_heap(mmap_bytes: int = HEAP_MMAP_BYTES) -> bool:
    """Fix glibc's thresholds for the rest of the process (``mallopt``): blocks of ``mmap_bytes`` or more
    are mapped apart and go back to the system when freed, and the heap's free top is trimmed past twice
    that. By default glibc raises the mmap threshold to the size of each mapped block freed (up to
    32 MiB), after which a large volume's slab-sized temporaries pile up in the heap, free but resident:
    measured 60-140 MiB on a 512 x 512 x 300 CT. Blocks below ``mmap_bytes`` (a window batch) are reused
    as before. False where there is no such call."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3          # glibc's mallopt parameter numbers
    return bool(mallopt(m_mmap_threshold, int(mmap_bytes)) and mallopt(m_trim_threshold, 2 * int(mmap_bytes)))

def passive_thread_waits() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set a policy: torch's OpenMP threads sleep between
    parallel regions instead of spinning, which stole the cores from OpenVINO's threads, the readers and
    writers, and other processes (20 hippocampus cases, 1 fold: 9 % less wall time). Takes effect only
    before torch is first imported (False after, or when the user's setting stands)."""
    import os
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True

"""The process ``medseg predict`` sets up (issue 18). The C heap after a large volume: glibc keeps freed
slab-sized blocks resident once a mapped block of up to 32 MiB has been freed (its dynamic mmap
threshold); ``bound_heap`` (what ``medseg predict`` calls first) and ``release_free_memory`` give them
back (measured in fresh interpreters, RSS from /proc). OpenMP waits: passive unless the user chose,
set before torch loads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.paths import REPO

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/status"),
                                reason="glibc's allocator and /proc only")

CODE = r'''
import sys, numpy as np
from medseg.device import bound_heap, release_free_memory
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
mode = sys.argv[1]
if mode == "bound":
    print("SET", bound_heap())
big = np.ones(30 << 18, np.float32); del big   # a 30 MiB mapped block freed: glibc raises its threshold
base = rss()
keep, blocks = [], []
for i in range(12):                            # 12 x 20 MiB, each followed by a small block kept alive
    b = np.empty(5 << 20, np.float32); b.fill(1.0); blocks.append(b)
    keep.append(np.ones(2000))
del blocks
after = rss()
if mode == "trim":
    print("SET", release_free_memory())
print("MIB", after - base, rss() - base)
'''


def _run(mode: str) -> tuple[int, int]:
    r = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    if mode != "default":
        assert "SET True" in r.stdout, r.stdout
    freed, last = r.stdout.split("MIB")[1].split()
    return int(freed), int(last)


@glibc_only
def test_freed_slabs_stay_resident_by_default_and_go_back_with_bound_heap_or_a_trim():
    held, _ = _run("default")
    assert held >= 200                       # 240 MiB of freed 20 MiB blocks, still resident
    bounded, _ = _run("bound")
    assert bounded <= 60                     # mapped apart: returned on free
    before_trim, trimmed = _run("trim")
    assert before_trim >= 200 and trimmed <= 60


PREDICT = r'''
import os, sys
from medseg.cli.main import main
seen = {}
import medseg.device as d
real = d.passive_thread_waits
def spy():
    seen["torch_before"] = "torch" in sys.modules
    return real()
d.passive_thread_waits = spy
code = main(["predict", "--model", "hippocampus_unet", "--input", sys.argv[1], "--output", sys.argv[2]])
print("RESULT", code, os.environ.get("OMP_WAIT_POLICY"), seen.get("torch_before"), "torch" in sys.modules)
'''


@pytest.mark.parametrize("user_policy", [None, "ACTIVE"])
def test_predict_makes_openmp_waits_passive_before_torch_loads(tmp_path, user_policy):
    """``medseg predict`` sets OMP_WAIT_POLICY=PASSIVE before anything imports torch (libgomp reads it when
    torch loads), unless the user chose a policy. A missing input stops the run after that point."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user_policy:
        env["OMP_WAIT_POLICY"] = user_policy
    r = subprocess.run([sys.executable, "-c", PREDICT, str(tmp_path / "missing"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120, env=dict(env, PYTHONPATH=str(REPO)))
    words = r.stdout.split("RESULT")[1].split()
    assert words[1] == (user_policy or "PASSIVE")
    assert words[2] == "False"          # torch was not imported yet when the policy was set

"""The C heap after a large volume (issue 18): glibc keeps freed slab-sized blocks resident once a mapped
block of up to 32 MiB has been freed (its dynamic mmap threshold); ``bound_heap`` (what ``medseg predict``
calls first) and ``release_free_memory`` give them back. Measured in fresh interpreters, RSS from /proc."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/status"),
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


def test_freed_slabs_stay_resident_by_default_and_go_back_with_bound_heap_or_a_trim():
    held, _ = _run("default")
    assert held >= 200                       # 240 MiB of freed 20 MiB blocks, still resident
    bounded, _ = _run("bound")
    assert bounded <= 60                     # mapped apart: returned on free
    before_trim, trimmed = _run("trim")
    assert before_trim >= 200 and trimmed <= 60

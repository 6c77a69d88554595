"""Peak resident memory of a call on Linux, beyond what was resident before it.

Resets the kernel's high-water mark (/proc/self/clear_refs, value 5), runs the
call, reads VmHWM. Counts every allocation, torch's CPU allocator included.
"""
from __future__ import annotations

import ctypes
import gc

import vico_flow


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_extra_mb(fn) -> float:
    """MB of peak RSS during fn() above the RSS just before it (Linux only)."""
    gc.collect()
    # Give freed memory back to the OS first (the heap, and the blocks the CPU
    # kernels keep for later outputs), or reusing it would not show in RSS.
    vico_flow.empty_cpu_cache()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return (peak - before) / 1024.0

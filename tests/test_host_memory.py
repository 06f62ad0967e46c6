"""rll_repro.host_memory: freed host memory kept for reuse (glibc's malloc told once per process).
Each case runs in a child process: the settings are process-wide and made once. glibc's own
accounting (mallinfo2) says where a block came from: a 64 MB tensor is above glibc's largest dynamic
mmap threshold (32 MB), so by default it is mapped for itself and unmapped when freed; kept, it comes
from the heap and stays there, free, for the next step."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import ctypes, json, torch
from rll_repro.host_memory import retain_freed_memory

class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); raise SystemExit
libc.mallinfo2.restype = Info
applied = retain_freed_memory()
assert retain_freed_memory() == applied  # idempotent
mapped_before = libc.mallinfo2().hblkhd  # blocks mapped while torch was imported
x = torch.ones(16 << 20)  # 64 MB
mapped_while_alive = libc.mallinfo2().hblkhd - mapped_before
del x
free_in_heap = libc.mallinfo2().fordblks
print(json.dumps({"applied": applied, "mapped": mapped_while_alive, "free": free_in_heap}))
"""


def _child(env_extra):
    import json

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_freed_64_mb_block_stays_in_the_heap_instead_of_being_unmapped():
    kept = _child({})
    if kept is None or not kept["applied"]:
        pytest.skip("not glibc >= 2.33")
    assert kept["mapped"] == 0  # from the heap, not mapped for itself
    assert kept["free"] >= 64 << 20  # freed, it stays in the heap for the next step
    default = _child({"RLL_REPRO_RETAIN_MEMORY": "0"})
    assert not default["applied"]  # switched off by the environment
    assert default["mapped"] >= 64 << 20 and default["free"] < 64 << 20  # glibc's defaults: mapped, unmapped

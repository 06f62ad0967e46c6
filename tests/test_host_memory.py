"""rll_repro.host_memory: freed host memory kept for reuse (glibc's malloc told once per process).
Each case runs in a child process: the settings are process-wide and made once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import resource, torch
from rll_repro.host_memory import retain_freed_memory
applied = retain_freed_memory()
assert retain_freed_memory() == applied  # idempotent
def step():  # activations of a few sizes alive together, then freed, as in a train step
    xs = [torch.ones(n) for n in (4 << 20, 1 << 20, 8 << 20, 4 << 20, 2 << 20)]
    del xs
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, faults = _child({})
    if not applied:
        pytest.skip("not glibc")
    off, faults_off = _child({"RLL_REPRO_RETAIN_MEMORY": "0"})
    assert not off  # switched off by the environment
    # a step touches 76 MB (19,456 pages): kept, they fault in only once (glibc 2.36's defaults
    # fault 12,000-16,000 of them in again every step, a figure left to glibc's version)
    assert faults < 2000, (faults, faults_off)

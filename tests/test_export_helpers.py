"""Helpers shared by the export tests (no tests here): run generated modules in a process where
``import rll_repro`` fails, run ONNX files with onnxruntime, and the relative error they are held to.

Tolerance of every export test: max |exported − reference| / max |reference| <= 1e-5, the oracle
tests' float32 bound. The generated module does the Net's own torch operations (observed 0 to a few
ulps); onnxruntime's kernels sum in another order and fuse Conv with the BatchNormalization / Mul /
Add after it at load time, which moves values by a few float32 ulps (~1e-7 relative each).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

TOL = 1e-5

# Runs in the child: rll_repro is made unimportable before anything else, then each generated
# module is imported from its file, its state_dict loaded, and its outputs saved.
RUNNER = textwrap.dedent('''
    import sys

    class HideRllRepro:
        def find_spec(self, name, path=None, target=None):
            if name == "rll_repro" or name.startswith("rll_repro."):
                raise ImportError("rll_repro is not installed here")
            return None

    sys.meta_path.insert(0, HideRllRepro())
    try:
        import rll_repro  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("rll_repro is importable in the standalone process")

    import importlib.util
    import json

    import numpy as np
    import torch

    for k, item in enumerate(json.load(open(sys.argv[1]))):
        spec = importlib.util.spec_from_file_location(f"generated_{k}", item["py"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.Net()
        model.load_state_dict(torch.load(item["pt"], weights_only=True))
        model.eval()
        inputs = np.load(item["inputs"])
        with torch.no_grad():
            out = model(*(torch.from_numpy(inputs[n]) for n in module.INPUTS))
        out = out if isinstance(out, tuple) else (out,)
        np.savez(item["out"], **{f"o{i}": t.numpy() for i, t in enumerate(out)})
    assert not any(m == "rll_repro" or m.startswith("rll_repro.") for m in sys.modules)
    print("standalone ok")
''')


def rel(ours, ref) -> float:
    """max |ours − ref| / max |ref| in float64 (the absolute max when ref is all zero)."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    ours = ours.reshape(ref.shape)
    scale = np.abs(ref).max() if ref.size else 0.0
    err = np.abs(ours - ref).max() if ref.size else 0.0
    return float(err / scale) if scale else float(err)


def run_standalone(jobs: list[tuple[object, dict[str, np.ndarray]]], folder: Path) -> list[dict[str, np.ndarray]]:
    """Write each (GeneratedModule, inputs) as NAME.py + NAME.pt, run them all in one child process
    where rll_repro cannot be imported, and return each one's outputs by Caffe blob name."""
    manifest = []
    folder.mkdir(parents=True, exist_ok=True)
    for k, (generated, inputs) in enumerate(jobs):
        py, pt = folder / f"net_{k}.py", folder / f"net_{k}.pt"
        py.write_text(generated.source)
        torch.save(generated.state_dict, pt)
        np.savez(folder / f"in_{k}.npz", **inputs)
        manifest.append({"py": str(py), "pt": str(pt), "inputs": str(folder / f"in_{k}.npz"),
                         "out": str(folder / f"out_{k}.npz")})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "runner.py").write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(folder / "runner.py"), str(folder / "manifest.json")],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "standalone ok" in proc.stdout, proc.stderr[-3000:]
    results = []
    for (generated, _), item in zip(jobs, manifest):
        z = np.load(item["out"])
        results.append({b: z[f"o{i}"] for i, b in enumerate(generated.outputs)})
    return results


def onnxruntime_or_skip():
    try:
        import onnxruntime
    except ImportError:
        pytest.skip("onnxruntime is not installed (optional test dependency: pip install onnx onnxruntime)")
    return onnxruntime


def run_onnx(data: bytes, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort = onnxruntime_or_skip()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, inputs)))


def onnx_bytes_or_skip(generated, **kwargs) -> bytes:
    try:
        import onnx  # noqa: F401
    except ImportError:
        pytest.skip("onnx is not installed (optional test dependency: pip install onnx onnxruntime)")
    onnxruntime_or_skip()
    from rll_repro.export.onnx import to_onnx_bytes

    return to_onnx_bytes(generated, **kwargs)


def net_outputs(net, generated, inputs) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.forward(blobs=list(generated.outputs), **inputs)
    return {b: np.array(out[b], copy=True) for b in generated.outputs}

"""How far an exported model is from :class:`rll_repro.Net`: max differences on a random batch.

Each row: one output blob of one exported form (the generated PyTorch module, the ONNX file under
onnxruntime), with max |exported − Net| and that divided by max |Net| (the relative measure the
oracle tests hold at 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Difference:
    form: str
    blob: str
    max_abs: float
    max_rel: float
    non_finite: int = 0  # non-finite values of the Net's output (matched: inf/NaN at the same places)


def random_inputs(generated, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of the declared shapes (batch ``batch`` if given)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in generated.inputs:
        shape = tuple(generated.input_shapes[name])
        if batch is not None and shape:
            shape = (batch,) + shape[1:]
        out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def differences(reference: dict[str, np.ndarray], form: str, outputs: dict[str, np.ndarray]) -> list[Difference]:
    """One row per blob: max |got − ref| and that / max |ref| over the finite values of ``ref``; where
    ``ref`` is inf or NaN ``got`` must be the same there, else the difference is inf."""
    rows = []
    for blob, ref in reference.items():
        ref64 = np.asarray(ref, np.float64)
        got = np.asarray(outputs[blob], np.float64).reshape(ref64.shape)
        finite = np.isfinite(ref64)
        same_non_finite = np.array_equal(got[~finite], ref64[~finite], equal_nan=True)
        diff = np.abs(got[finite] - ref64[finite])
        err = float(diff.max()) if diff.size else 0.0
        err = err if same_non_finite and np.isfinite(err) else float("inf")
        scale = float(np.abs(ref64[finite]).max()) if diff.size else 0.0
        rows.append(Difference(form, blob, err, err / scale if scale else err, int((~finite).sum())))
    return rows


def net_outputs(net, generated, inputs) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = net.forward(blobs=list(generated.outputs), **inputs)
    return {b: np.array(out[b], copy=True) for b in generated.outputs}


def module_outputs(model, generated, inputs) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(*(torch.from_numpy(inputs[n]) for n in generated.inputs))
    if not isinstance(out, tuple):
        out = (out,)
    return {b: t.numpy() for b, t in zip(generated.outputs, out)}


def onnx_outputs(onnx_bytes: bytes, generated, inputs) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {n: inputs[n] for n in generated.inputs})
    return dict(zip(names, values))


def format_table(rows: list[Difference]) -> str:
    width = max([len(r.blob) for r in rows] + [4])
    lines = [f"{'exported as':24s} {'blob':{width}s} {'max |diff|':>11s} {'relative':>9s}"]
    for r in rows:
        lines.append(f"{r.form:24s} {r.blob:{width}s} {r.max_abs:11.3e} {r.max_rel:9.2e}")
    for r in rows:
        if r.non_finite:
            lines.append(f"note: {r.blob!r} of Net holds {r.non_finite} inf/NaN values on this random batch "
                         f"(the export has the same ones); the differences are over the finite values")
    return "\n".join(lines)

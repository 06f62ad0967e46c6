"""ONNX export of a Caffe net, through the generated standalone module (:mod:`.pysource`).

torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) traces the generated
module; it needs only the ``onnx`` package (the dynamo exporter would also need onnxscript). Names:

- graph inputs and outputs are the Caffe blob names; axis 0 of each is the dynamic ``batch`` unless
  ``dynamic_batch=False``;
- each node is named after the Caffe layer it computes (the layer's last node gets the layer's name
  exactly, earlier ones ``<layer>/<op>_<k>``);
- each value a layer produces is named after its Caffe top; a blob rewritten in place (ReLU, or
  BatchNorm/Scale on the convolution's top) keeps its plain name on the last version, earlier versions
  are ``<blob>@<layer that wrote it>``;
- initializers keep the generated module's state_dict keys (``conv1.weight``, ``conv1_bn.mean``, ...).

BatchNorm and Scale stay two operations (BatchNormalization without affine, then Mul and Add) unless
``fold_bn``; onnxruntime's graph optimiser may still fuse them into the preceding Conv at load time.
"""
from __future__ import annotations

import io
import warnings

import torch

from rll_repro.errors import RLLReproError
from rll_repro.export.pysource import GeneratedModule, instantiate

OPSET = 17


def _require_onnx():
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise RLLReproError("writing ONNX needs the 'onnx' package (pip install onnx; onnxruntime to run it)") from exc
    return onnx


def to_onnx_bytes(generated: GeneratedModule, dynamic_batch: bool = True, opset: int = OPSET) -> bytes:
    """Serialized ONNX model of the generated module, with Caffe layer and blob names."""
    onnx = _require_onnx()
    model = instantiate(generated)
    _freeze_batchnorm_statistics(model)
    declared = [tuple(generated.input_shapes[n]) for n in generated.inputs]
    outputs = list(generated.outputs)
    axes = {n: {0: "batch"} for n in list(generated.inputs) + outputs} if dynamic_batch else None

    def trace(shapes) -> bytes:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(
                model, tuple(torch.zeros(s) for s in shapes), buffer, dynamo=False,
                input_names=list(generated.inputs), output_names=outputs, dynamic_axes=axes, opset_version=opset,
                # EVAL would let the exporter fold BatchNorm into the Conv before it (its "eval
                # peephole"); the module is in eval mode, so PRESERVE exports the same graph, unfused
                training=torch.onnx.TrainingMode.PRESERVE,
                do_constant_folding=False,  # keeps the initializers named after the state_dict
            )
        return buffer.getvalue()

    try:  # with a dynamic batch axis one sample is enough (the SOP deploy net declares 10 at 227 px)
        data = trace([(1,) + s[1:] if dynamic_batch and s else s for s in declared])
    except RuntimeError:  # shapes that fix the batch (a Reshape to explicit dims): trace as declared
        data = trace(declared)
    proto = onnx.load_from_string(data)
    _caffe_names(proto, generated)
    return proto.SerializeToString()


def _freeze_batchnorm_statistics(model) -> None:
    """Give each global-statistics BatchNorm its mean and variance as buffers (``running_mean``,
    ``running_var``: the sums times 1/s, computed once with the same float32 operations as its
    forward), so that the graph holds them as initializers instead of recomputing them per run."""
    for module in model.modules():
        if hasattr(module, "statistics") and getattr(module, "use_global_stats", False):
            with torch.no_grad():
                mean, variance = module.statistics()
            module.register_buffer("running_mean", mean.clone())
            module.register_buffer("running_var", variance.clone())
            module.statistics = lambda m=module: (m.running_mean, m.running_var)


def _caffe_names(proto, generated: GeneratedModule) -> None:
    """Rename nodes after their Caffe layer and the values they produce after the Caffe tops."""
    graph = proto.graph
    scope_nodes: dict[str, list[int]] = {}  # attribute -> indices of its nodes ("/<attr>/<Op>")
    scope_of: dict[int, str] = {}
    for k, node in enumerate(graph.node):
        parts = node.name.split("/")
        attr = parts[1] if len(parts) > 2 and parts[0] == "" else None
        if attr in generated.attributes:
            scope_nodes.setdefault(attr, []).append(k)
            scope_of[k] = attr
    consumers: dict[str, set[str | None]] = {}  # value -> scopes of the nodes reading it
    for k, node in enumerate(graph.node):
        for value in node.input:
            consumers.setdefault(value, set()).add(scope_of.get(k))
    protected = {v.name for v in graph.input} | {v.name for v in graph.output}
    writers: dict[str, list[str]] = {}  # blob -> attributes writing it, in order (in-place versions)
    for attr, tops in generated.tops.items():
        for t in tops:
            writers.setdefault(t, []).append(attr)
    rename: dict[str, str] = {}
    used = {init.name for init in graph.initializer} | protected
    for attr, indices in scope_nodes.items():
        layer = generated.attributes[attr]
        nodes = [graph.node[k] for k in indices]
        for k, node in enumerate(nodes):
            node.name = layer if k == len(nodes) - 1 else f"{layer}/{node.op_type}_{k}"
        # the values this layer hands to other layers (or to the graph), in production order
        produced = [o for n in nodes if n.op_type != "Constant" for o in n.output
                    if o in protected or consumers.get(o, set()) - {attr}]
        tops = generated.tops.get(attr, [])
        if len(produced) != len(tops) or not tops:
            continue
        for value, top in zip(produced, tops):
            name = top if writers[top][-1] == attr else f"{top}@{layer}"
            if value in protected or name in used:
                continue
            used.add(name)
            rename[value] = name
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        node.output[:] = [rename.get(o, o) for o in node.output]
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)


def write_onnx(path, generated: GeneratedModule, dynamic_batch: bool = True, opset: int = OPSET) -> bytes:
    """Write the ONNX file atomically; returns its bytes."""
    from rll_repro.fileio import atomic_write_bytes

    data = to_onnx_bytes(generated, dynamic_batch, opset)
    atomic_write_bytes(path, data)
    return data

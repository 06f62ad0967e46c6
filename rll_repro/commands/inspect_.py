"""rll-repro inspect: what is in a Caffe file (any kind, auto-detected)."""
from __future__ import annotations

import math

HELP = "show what a Caffe file holds: net layers and blob shapes, solver schedule, solverstate, mean"
DESCRIPTION = """\
Read any Caffe file and print a summary. The kind is detected from the content, not the name:

  net prototxt      layers (name, type, bottoms -> tops), layer type counts, net inputs
  caffemodel        the same plus every layer's blob shapes and parameter counts
                    (V0/V1 files are upgraded the way Caffe does; legacy 4-D blob shapes are shown
                    the way the layers use them, e.g. an InnerProduct weight 1x1x500x800 -> 500x800)
  solver prototxt   solver type, learning-rate schedule, momentum, weight decay, snapshots
  solverstate       iteration, learning-rate step, history blob shapes
  binaryproto       a BlobProto such as a mean image: shape and value range

--json prints one JSON object for scripts:
  {"kind": "caffemodel", "file": ..., "layers": [{"name", "type", "bottoms", "tops",
   "blobs": [[shape...], ...]}, ...], "num_params": ..., ...}

A file that is none of these (empty, truncated, not UTF-8, a syntax error, an unknown field)
gives one line naming the file (and line:column for text) and exit code 2.

examples:
  rll-repro inspect googlenet_bn.caffemodel
  rll-repro inspect prototxt/rll/sop/train.prototxt
  rll-repro inspect prototxt/rll/sop/solver.prototxt --json
  rll-repro inspect snapshot_iter_1000.solverstate
  rll-repro inspect train.prototxt --shapes --input-shape data=32,3,227,227   every blob's shape
"""


def add_arguments(parser) -> None:
    parser.add_argument("file", help="a prototxt, caffemodel, solverstate or binaryproto")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_shape_arguments(parser)


# -- hooks for blob-shape inference (a net's blob shapes need the layers; see rll_repro.net) ----


def add_shape_arguments(parser) -> None:
    """Extra options for net kinds: --shapes / --input-shape data=N,C,H,W (rll_repro.net)."""
    parser.add_argument("--shapes", action="store_true",
                        help="build the net (rll_repro.net.Net) and print every blob's shape")
    parser.add_argument("--input-shape", action="append", default=[], metavar="BLOB=N,C,H,W",
                        help="with --shapes: reshape an input blob first (repeatable)")
    parser.add_argument("--phase", choices=("train", "test"), default="test",
                        help="with --shapes: the phase whose layers are built (default test)")


def shape_section(net_param, args, where: str) -> dict | None:
    """{"blob_shapes": {blob: [dims]}} when --shapes is given: Caffe's Reshape through the built net.
    Build errors name ``where`` (the inspected file)."""
    if not getattr(args, "shapes", False):
        if getattr(args, "input_shape", None):
            from rll_repro.errors import RLLReproError

            raise RLLReproError("--input-shape needs --shapes")
        return None
    from rll_repro.errors import NetError, RLLReproError
    from rll_repro.net import Net

    try:
        net = Net(net_param, phase=args.phase, seed=0)
    except NetError as exc:
        raise NetError(f"{where}: {exc}") from exc
    for spec in args.input_shape:
        name, _, dims = spec.partition("=")
        try:
            shape = [int(d) for d in dims.split(",") if d.strip()]
        except ValueError:
            shape = []
        if not name or not shape or any(d < 0 for d in shape):
            raise RLLReproError(f"--input-shape {spec!r}: expected BLOB=N,C,H,W with non-negative integers")
        if name not in net.inputs:
            raise RLLReproError(f"--input-shape {spec!r}: {name!r} is not an input blob (inputs: {', '.join(net.inputs)})")
        net.blobs[name].reshape(*shape)
    net.reshape()
    return {"blob_shapes": {name: list(shape) for name, shape in net.blob_shapes.items()}}


# -- reports ------------------------------------------------------------------------------------


def run(args) -> int:
    import json
    from pathlib import Path

    from rll_repro.caffe import io as caffe_io

    path = Path(args.file)
    kind, message = caffe_io.read_any(path)
    report = {"kind": kind, "file": str(path), "bytes": path.stat().st_size}
    if kind in ("net_prototxt", "caffemodel"):
        report.update(net_report(message, raw_path=path, kind=kind))
        extra = shape_section(message, args, str(path))
        if extra:
            report.update(extra)
    elif kind == "solver_prototxt":
        report.update(solver_report(message))
    elif kind == "solverstate":
        report.update(solverstate_report(message))
    else:
        report.update(binaryproto_report(message, str(path)))
    report = _text_only(report)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    return 0


def _text_only(value):
    """``value`` with every bytes object decoded: protobuf hands back a string field that is not
    valid UTF-8 as bytes; show it as text with its bad bytes escaped (b'\\xff' -> '\\xff')."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_text_only(k): _text_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_text_only(v) for v in value]
    return value


def _format_of(path, kind) -> str:
    """'V2', 'V1' or 'V0': the layer format the file was written in (before upgrading)."""
    from rll_repro.caffe import caffe_pb2
    from rll_repro.caffe import io as caffe_io

    raw = (caffe_io.read_net_prototxt(path, upgrade=False) if kind == "net_prototxt"
           else caffe_io.read_caffemodel(path, upgrade=False))
    if len(raw.layers):
        return "V0" if any(v1.HasField("layer") for v1 in raw.layers) else "V1"
    del caffe_pb2
    return "V2"


def net_report(net, raw_path=None, kind="net_prototxt") -> dict:
    from collections import Counter

    from rll_repro.caffe.weights import blob_is_legacy, blob_shape, net_shape

    layers, total = [], 0
    for layer in net.layer:
        blobs = []
        for i, blob in enumerate(layer.blobs):
            shape = blob_shape(blob)
            if blob_is_legacy(blob):
                shape = net_shape(layer.type, i, shape)
            blobs.append(list(shape))
        count = sum(_prod(s) for s in blobs)
        total += count
        entry = {"name": layer.name, "type": layer.type, "bottoms": list(layer.bottom), "tops": list(layer.top),
                 "blobs": blobs, "num_params": count}
        phases = sorted({("TRAIN", "TEST")[r.phase] for r in layer.include if r.HasField("phase")})
        if phases:
            entry["phase"] = phases[0] if len(phases) == 1 else phases
        if layer.type == "Input" and len(layer.input_param.shape):
            entry["input_shapes"] = [list(s.dim) for s in layer.input_param.shape]
        layers.append(entry)
    report = {"name": net.name, "num_layers": len(layers), "num_params": total,
              "layer_types": dict(Counter(layer.type for layer in net.layer).most_common())}
    if raw_path is not None:
        report["format"] = _format_of(raw_path, kind)
    report["layers"] = layers
    return report


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def lr_schedule(solver, points: int = 5) -> list[list]:
    """[iteration, learning rate] pairs: every change for fixed/step/multistep, samples otherwise.

    Informational (float64 arithmetic, Caffe's SGDSolver::GetLearningRate formulas).
    """
    base, policy, gamma, power = solver.base_lr, solver.lr_policy, solver.gamma, solver.power
    max_iter = solver.max_iter
    if policy == "fixed" or not policy:
        return [[0, base]]
    if policy == "multistep":
        return [[0, base]] + [[int(s), base * gamma ** (k + 1)] for k, s in enumerate(solver.stepvalue)]
    if policy == "step" and solver.stepsize > 0:
        steps = list(range(0, max(max_iter, 1), solver.stepsize))[:21]
        return [[it, base * gamma ** (it // solver.stepsize)] for it in steps]
    formulas = {
        "exp": lambda it: base * gamma ** it,
        "inv": lambda it: base * (1 + gamma * it) ** (-power),
        "poly": lambda it: base * (1 - it / max_iter) ** power if max_iter else base,
        "sigmoid": lambda it: base / (1 + math.exp(-gamma * (it - solver.stepsize))),
    }
    if policy not in formulas:
        return []
    iters = sorted({round(max_iter * k / (points - 1)) for k in range(points)}) if max_iter else [0]
    return [[it, _rate(formulas[policy], it)] for it in iters]


def _rate(formula, it: int) -> float:
    """The formula's value, as C's float arithmetic gives it: inf on overflow, nan where the
    formula is undefined (0 ** -p, a negative base to a fractional power)."""
    try:
        value = formula(it)
    except OverflowError:
        return math.inf
    except (ZeroDivisionError, ValueError):
        return math.nan
    return math.nan if isinstance(value, complex) else float(value)


def solver_report(solver) -> dict:
    fields = ["net", "train_net", "type", "base_lr", "lr_policy", "gamma", "power", "stepsize", "stepvalue",
              "max_iter", "momentum", "momentum2", "delta", "weight_decay", "regularization_type", "iter_size",
              "clip_gradients", "test_iter", "test_interval", "display", "average_loss", "snapshot",
              "snapshot_prefix", "solver_mode", "random_seed",
              "negative_threshold", "pn_margin", "p_temperature", "n_temperature"]
    report = {}
    for name in fields:
        field = solver.DESCRIPTOR.fields_by_name[name]
        if _is_repeated(field):
            values = [_float32_repr(v) if field.type == field.TYPE_FLOAT else v for v in getattr(solver, name)]
            if values:
                report[name] = values
        elif solver.HasField(name) or name in ("type", "momentum", "weight_decay", "regularization_type"):
            value = getattr(solver, name)
            if field.type == field.TYPE_FLOAT:
                value = _float32_repr(value)
            if field.enum_type is not None:
                value = field.enum_type.values_by_number[value].name
            report[name] = value
    report["lr_schedule"] = lr_schedule(solver)
    return report


def _is_repeated(field) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 6.30; older runtimes only have .label
    return bool(repeated) if repeated is not None else field.label == field.LABEL_REPEATED


def _float32_repr(value: float) -> float:
    """The shortest decimal that is the same float32 (0.01, not 0.009999999776482582)."""
    import numpy as np

    return float(str(np.float32(value)))


def solverstate_report(state) -> dict:
    from rll_repro.caffe.weights import blob_shape

    shapes = [list(blob_shape(b)) for b in state.history]
    return {"iter": state.iter, "current_step": state.current_step, "learned_net": state.learned_net,
            "num_history": len(shapes), "num_values": sum(_prod(s) for s in shapes), "history": shapes}


def binaryproto_report(blob, where) -> dict:
    import numpy as np

    from rll_repro.caffe.weights import blob_to_array

    array = blob_to_array(blob, where)
    report = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if array.size:
        report.update(min=float(array.min()), max=float(array.max()), mean=float(array.mean()))
        if array.ndim == 4 and array.shape[1] <= 4:
            report["channel_means"] = [float(m) for m in np.mean(array, axis=(0, 2, 3))]
    return report


# -- text output ------------------------------------------------------------------------------


def format_report(report: dict) -> str:
    kind = report["kind"]
    lines = [f"{report['file']}: {kind.replace('_', ' ')}, {report['bytes']:,} bytes"]
    if kind in ("net_prototxt", "caffemodel"):
        fmt = f" ({report['format']} format, upgraded)" if report.get("format", "V2") != "V2" else ""
        lines.append(f"net {report['name']!r}{fmt}: {report['num_layers']} layers, "
                     f"{report['num_params']:,} parameters")
        lines.append("layer types: " + ", ".join(f"{t or '?'} x{n}" for t, n in report["layer_types"].items()))
        rows = [("layer", "type", "bottoms -> tops", "blobs", "params")]
        for layer in report["layers"]:
            io_ = f"{','.join(layer['bottoms'])} -> {','.join(layer['tops'])}"
            if "phase" in layer:
                io_ += f"  [{layer['phase'] if isinstance(layer['phase'], str) else '/'.join(layer['phase'])}]"
            shapes = layer.get("input_shapes") or layer["blobs"]
            blobs = " ".join("x".join(str(d) for d in s) or "scalar" for s in shapes)
            rows.append((layer["name"], layer["type"], io_, blobs, f"{layer['num_params']:,}" if layer["blobs"] else ""))
        lines += _table(rows)
        for key, value in report.items():
            if key not in ("kind", "file", "bytes", "name", "num_layers", "num_params", "layer_types", "layers",
                           "format", "blob_shapes"):
                lines.append(f"{key}: {value}")
        if "blob_shapes" in report:
            lines.append("blob shapes:")
            lines += _table([("blob", "shape")] + [
                (name, "x".join(str(d) for d in shape) or "scalar") for name, shape in report["blob_shapes"].items()])
    elif kind == "solver_prototxt":
        for key, value in report.items():
            if key not in ("kind", "file", "bytes", "lr_schedule"):
                lines.append(f"  {key}: {value}")
        if report["lr_schedule"]:
            lines.append("  learning rate: " + ", ".join(f"iter {it}: {lr:.6g}" for it, lr in report["lr_schedule"]))
    elif kind == "solverstate":
        lines.append(f"  iter {report['iter']}, current_step {report['current_step']}, "
                     f"learned_net {report['learned_net']!r}")
        lines.append(f"  {report['num_history']} history blobs, {report['num_values']:,} values: "
                     + " ".join("x".join(map(str, s)) for s in report["history"][:12])
                     + (" ..." if report["num_history"] > 12 else ""))
    else:
        lines.append(f"  shape {'x'.join(map(str, report['shape']))} {report['dtype']}")
        if "min" in report:
            lines.append(f"  min {report['min']:.6g}  max {report['max']:.6g}  mean {report['mean']:.6g}")
        if "channel_means" in report:
            lines.append("  channel means " + " ".join(f"{m:.6g}" for m in report["channel_means"]))
    return "\n".join(lines)


def _table(rows) -> list[str]:
    widths = [min(max(len(str(r[i])) for r in rows), 48) for i in range(len(rows[0]))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]

"""rll-repro forward: run a net once (and optionally backward) and save every blob like Caffe holds it."""
from __future__ import annotations

import math

HELP = "run a net's forward (and backward) pass on inputs from an .npz; save every blob, diff and param"
DESCRIPTION = """\
Build NET.prototxt in the given phase, load --weights (copy by layer name, as Caffe's
copy_from), feed the arrays of --inputs (keys = input blob names, e.g. data, label; an 'input/'
prefix is accepted) and run Forward. With --backward, run Backward too: loss tops get their
loss_weight as top diff (Caffe's rule); 'topdiff/<blob>' arrays in the inputs file seed other tops.

The output .npz holds what Caffe holds around Forward/Backward (the ../shared/oracle case layout):
  blob/<name>            every blob's data after Forward
  diff/<name>            every blob's diff after Backward            (with --backward)
  param/<layer>/<i>      every learnable blob as loaded, before Forward
  bnblobs_after_fwd/<layer>/<i>  the same after Forward (BatchNorm's running sums move in TRAIN)
  paramdiff/<layer>/<i>  every learnable blob's diff                 (with --backward)
  loss_fwd/<top>         every loss top and scalar net output after Forward
  loss/<top>             the same after Backward (the RLL loss writes its value in Backward)

examples:
  rll-repro forward net.prototxt --weights net.caffemodel --inputs in.npz --out out.npz
  rll-repro forward train.prototxt --inputs batch.npz --phase train --backward --out grads.npz
  rll-repro forward ../shared/oracle/rll/layers/bn_scale_train/net.prototxt \\
      --weights ../shared/oracle/rll/layers/bn_scale_train/weights.caffemodel \\
      --inputs ../shared/oracle/rll/layers/bn_scale_train/case.npz --phase train --backward --out out.npz
      (a recorded case file is a valid --inputs file; compare out.npz with it key by key)
"""


def add_arguments(parser) -> None:
    from rll_repro.commands.device_options import add_device_arguments

    add_device_arguments(parser, fast=False)
    parser.add_argument("net", help="net prototxt")
    parser.add_argument("--weights", help="caffemodel to copy weights from (by layer name)")
    parser.add_argument("--inputs", required=True, help=".npz with one array per input blob")
    parser.add_argument("--phase", choices=("train", "test"), default="test", help="net phase (default test)")
    parser.add_argument("--backward", action="store_true", help="also run backward and save the diffs")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fillers of layers absent from --weights")
    parser.add_argument("--dialect", choices=("rll", "osm", "bvlc"), default=None,
                        help="fork arithmetic (default: osm if the net uses an OSM+CAA-only layer, else rll)")
    parser.add_argument("--out", required=True, help="output .npz")


def _check_numeric(array, where: str) -> None:
    from rll_repro.errors import DataError

    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: a {array.dtype} array; net inputs are real numbers")


def check_inputs(inputs: dict, net, where: str) -> None:
    """Every input array is numeric and fits its input blob: the blob's shape, or another batch
    size with the same other axes (the net is reshaped, as pycaffe's reshape + forward does), or
    the same number of values in fewer axes (Net.forward's rule); else a DataError naming ``where``."""
    from rll_repro.errors import DataError

    for name, array in inputs.items():
        _check_numeric(array, f"{where}: {name}")
        shape = tuple(net.blobs[name].shape)
        got = tuple(array.shape)
        same_size = array.ndim < len(shape) and array.size == math.prod(shape)
        if got == shape or same_size or (len(got) == len(shape) and got[1:] == shape[1:] and len(got)):
            continue
        raise DataError(f"{where}: input {name!r} has shape {got}, the net's input blob has shape {shape}"
                        + (" (only the batch axis may differ)" if len(got) == len(shape) else ""))


def run(args) -> int:
    import io

    import numpy as np

    from rll_repro.errors import DataError
    from rll_repro.fileio import atomic_write_bytes, read_npz
    from rll_repro.net import Net

    from rll_repro.commands.device_options import device_from_args

    net = Net(args.net, weights=args.weights, phase=args.phase, seed=args.seed, dialect=args.dialect,
              device=device_from_args(args))
    archive = read_npz(args.inputs, "net inputs")
    inputs, top_diffs = {}, {}
    for key, array in archive.items():
        if key.startswith("topdiff/"):
            top_diffs[key[len("topdiff/"):]] = array
        else:
            name = key[len("input/"):] if key.startswith("input/") else key
            if name in net.inputs:
                inputs[name] = array
    missing = [n for n in net.inputs if n not in inputs]
    if missing:
        raise DataError(f"{args.inputs}: no array for input blob(s) {', '.join(missing)} (has: {', '.join(archive)})")
    check_inputs(inputs, net, args.inputs)
    unknown = [n for n in top_diffs if n not in net.blobs]
    if unknown:
        raise DataError(f"{args.inputs}: 'topdiff/{unknown[0]}' names no blob of {args.net}")
    for name, array in top_diffs.items():
        _check_numeric(array, f"{args.inputs}: topdiff/{name}")
    out = {}
    for layer, blobs in net.params.items():  # as loaded, before Forward (BatchNorm's sums change in it)
        for i, blob in enumerate(blobs):
            out[f"param/{layer}/{i}"] = np.array(blob.data)
    net.forward(**inputs)
    for name, blob in net.blobs.items():  # as after Forward (the RLL loss top changes in Backward)
        out[f"blob/{name}"] = np.array(blob.data)
    scalar_tops = list(net.loss_tops) + [n for n in net.outputs if n not in net.loss_tops and not net.blobs[n].shape]
    for name in scalar_tops:
        out[f"loss_fwd/{name}"] = np.array(net.blobs[name].data)
    if args.backward:
        for name, array in top_diffs.items():
            shape = tuple(net.blobs[name].shape)
            if tuple(array.shape) != shape and array.size != math.prod(shape):
                raise DataError(f"{args.inputs}: topdiff/{name} has shape {tuple(array.shape)}, "
                                f"the blob {name!r} of {args.net} has shape {shape}")
        net.backward(**top_diffs)
        for name, blob in net.blobs.items():
            out[f"diff/{name}"] = np.array(blob.diff)
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            out[f"bnblobs_after_fwd/{layer}/{i}"] = np.array(blob.data)
            if args.backward:
                out[f"paramdiff/{layer}/{i}"] = np.array(blob.diff)
    for name in scalar_tops:
        out[f"loss/{name}"] = np.array(net.blobs[name].data)
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {len(out)} arrays to {args.out}")
    _warn_nonfinite(inputs, out, args)


def _warn_nonfinite(inputs, out, args) -> None:
    """One stderr line when the result holds NaN/Inf (Caffe would propagate them silently): which
    output, and which input already had them."""
    import sys

    import numpy as np

    bad_out = [k for k, v in out.items() if k.startswith(("loss", "blob/")) and v.dtype.kind == "f"
               and not np.isfinite(v).all()]
    if not bad_out:
        return
    bad_in = [f"{n} ({int((~np.isfinite(np.asarray(a, np.float64))).sum())} values)" for n, a in inputs.items()
              if not np.isfinite(np.asarray(a, np.float64)).all()]
    cause = f"; {args.inputs} has NaN/Inf in input {', '.join(bad_in)}" if bad_in else ""
    print(f"rll-repro forward: warning: {len(bad_out)} arrays hold NaN or Inf, first {bad_out[0]!r}{cause}",
          file=sys.stderr)
    return 0

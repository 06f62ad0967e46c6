"""rll-repro forward: run a net once (and optionally backward) and save every blob like Caffe holds it."""
from __future__ import annotations

HELP = "run a net's forward (and backward) pass on inputs from an .npz; save every blob, diff and param"
DESCRIPTION = """\
Build NET.prototxt in the given phase, load --weights (copy by layer name, as Caffe's
copy_from), feed the arrays of --inputs (keys = input blob names, e.g. data, label; an 'input/'
prefix is accepted) and run Forward. With --backward, run Backward too: loss tops get their
loss_weight as top diff (Caffe's rule); 'topdiff/<blob>' arrays in the inputs file seed other tops.

The output .npz holds, as Caffe would after Forward/Backward:
  blob/<name>            every blob's data
  diff/<name>            every blob's diff             (with --backward)
  param/<layer>/<i>      every learnable blob
  paramdiff/<layer>/<i>  every learnable blob's diff   (with --backward)
  loss/<top>             every loss top (after backward when --backward)

examples:
  rll-repro forward net.prototxt --weights net.caffemodel --inputs in.npz --out out.npz
  rll-repro forward train.prototxt --inputs batch.npz --phase train --backward --out grads.npz
"""


def add_arguments(parser) -> None:
    parser.add_argument("net", help="net prototxt")
    parser.add_argument("--weights", help="caffemodel to copy weights from (by layer name)")
    parser.add_argument("--inputs", required=True, help=".npz with one array per input blob")
    parser.add_argument("--phase", choices=("train", "test"), default="test", help="net phase (default test)")
    parser.add_argument("--backward", action="store_true", help="also run backward and save the diffs")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fillers of layers absent from --weights")
    parser.add_argument("--dialect", choices=("rll", "osm", "bvlc"), default=None,
                        help="fork arithmetic (default: osm if the net uses an OSM+CAA-only layer, else rll)")
    parser.add_argument("--out", required=True, help="output .npz")


def run(args) -> int:
    import io

    import numpy as np

    from rll_repro.errors import DataError
    from rll_repro.fileio import atomic_write_bytes
    from rll_repro.net import Net

    net = Net(args.net, weights=args.weights, phase=args.phase, seed=args.seed, dialect=args.dialect)
    try:
        archive = np.load(args.inputs)
    except (OSError, ValueError) as exc:
        raise DataError(f"{args.inputs}: cannot read inputs ({exc})") from None
    inputs, top_diffs = {}, {}
    for key in archive.files:
        if key.startswith("topdiff/"):
            top_diffs[key[len("topdiff/"):]] = archive[key]
        else:
            name = key[len("input/"):] if key.startswith("input/") else key
            if name in net.inputs:
                inputs[name] = archive[key]
    missing = [n for n in net.inputs if n not in inputs]
    if missing:
        raise DataError(f"{args.inputs}: no array for input blob(s) {', '.join(missing)} (has: {', '.join(archive.files)})")
    net.forward(**inputs)
    if args.backward:
        net.backward(**top_diffs)
    out = {}
    for name, blob in net.blobs.items():
        out[f"blob/{name}"] = np.array(blob.data)
        if args.backward:
            out[f"diff/{name}"] = np.array(blob.diff)
    for layer, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            out[f"param/{layer}/{i}"] = np.array(blob.data)
            if args.backward:
                out[f"paramdiff/{layer}/{i}"] = np.array(blob.diff)
    for name in net.loss_tops:
        out[f"loss/{name}"] = np.array(net.blobs[name].data)
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {len(out)} arrays to {args.out}")
    return 0

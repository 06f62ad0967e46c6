"""rll-repro export: a Caffe deploy net as an ONNX file or as standalone PyTorch source (+ weights)."""
from __future__ import annotations

HELP = "export a deploy net + caffemodel to ONNX or to a standalone PyTorch module (.py + .pt)"
DESCRIPTION = """\
Build NET.prototxt in the TEST phase, copy the weights of MODEL.caffemodel, and write OUT:

  OUT.onnx   an ONNX model (torch's TorchScript exporter, opset 17): inputs and outputs named after
             the Caffe blobs, nodes after the Caffe layers, a dynamic batch axis (--static-batch to
             keep the declared one); run it with onnxruntime.InferenceSession(OUT.onnx)
  OUT.py     readable PyTorch source of an nn.Module named Net that imports only torch (one attribute
             per Caffe layer, forward in the net's order, Caffe's pooling/BatchNorm/LRN/Normalization
             rules), plus OUT.pt with its state_dict:
             import OUT; m = OUT.Net(); m.load_state_dict(torch.load("OUT.pt")); m.eval()

BatchNorm and the Scale after it stay two operations, as in Caffe. --fold-bn merges each pair into
one affine batch normalisation (gamma/sqrt(var+eps) and beta applied by one kernel): fewer roundings
than Caffe's normalise, then x gamma, then + beta, so results move by a few float32 ulps; the table
shows by how much.

Before exiting, export runs the written model and rll_repro's Net on one random standard-normal batch
(2 samples, or the declared batch with --static-batch) and prints, per output blob, the max absolute
and relative (/ max |Net|) difference. The ONNX row needs onnxruntime (pip install onnxruntime).

Only deploy-time layers export: data layers, Python layers and loss layers are errors (export the
deploy prototxt, whose Input layer or input: fields feed the net).

examples:
  rll-repro export deploy.prototxt model.caffemodel model.onnx
  rll-repro export deploy.prototxt model.caffemodel model.onnx --input-shape 1,3,227,227 --static-batch
  rll-repro export deploy.prototxt model.caffemodel model.py       (writes model.py and model.pt)
"""


def add_arguments(parser) -> None:
    parser.add_argument("net", metavar="NET.prototxt", help="deploy net prototxt (built in the TEST phase)")
    parser.add_argument("weights", metavar="MODEL.caffemodel", help="trained weights (copied by layer name)")
    parser.add_argument("output", metavar="OUT", help="OUT.onnx, or OUT.py (OUT.pt is written beside it)")
    parser.add_argument("--input-shape", metavar="N,C,H,W",
                        help="shape of the first input blob (default: the shape the prototxt declares)")
    parser.add_argument("--static-batch", action="store_true", help="ONNX: keep the batch axis fixed")
    parser.add_argument("--fold-bn", action="store_true",
                        help="merge each BatchNorm with its Scale into one affine batch normalisation")
    parser.add_argument("--dialect", choices=("rll", "osm", "bvlc"), default=None,
                        help="fork arithmetic (default: osm if the net uses an OSM+CAA-only layer, else rll)")


def _parse_shape(text: str) -> tuple[int, ...]:
    from rll_repro.errors import RLLReproError

    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise RLLReproError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 1,3,227,227")
    return shape


def _load_module(path, state_path):
    """Import the written OUT.py from its path and load OUT.pt into it (what a user does)."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(f"_rll_repro_export_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.Net()
    model.load_state_dict(torch.load(state_path, weights_only=True))
    return model.eval()


def run(args) -> int:
    import io
    from pathlib import Path

    import torch

    from rll_repro.caffe import io as caffe_io
    from rll_repro.errors import NetError, RLLReproError
    from rll_repro.export import check
    from rll_repro.export.pysource import check_exportable_param, generate
    from rll_repro.fileio import atomic_write_bytes, atomic_write_text
    from rll_repro.net import Net

    out = Path(args.output)
    kind = out.suffix.lower()
    if kind not in (".onnx", ".py"):
        raise RLLReproError(f"{args.output}: the output must end in .onnx or .py (got {out.suffix or 'no extension'!r})")
    shape = _parse_shape(args.input_shape) if args.input_shape else None
    try:
        check_exportable_param(caffe_io.read_net_prototxt(args.net), "test")
    except NetError as exc:
        raise NetError(f"{args.net}: {exc}") from exc
    net = Net(args.net, weights=args.weights, phase="test", dialect=args.dialect)
    if shape is not None:
        if not net.inputs:
            raise NetError(f"{args.net}: the net has no input blob for --input-shape")
        try:
            net.blobs[net.inputs[0]].reshape(*shape)
            net.reshape()
        except NetError as exc:
            raise NetError(f"{args.net}: --input-shape {args.input_shape} for input {net.inputs[0]!r}: {exc}") from exc
    try:
        generated = generate(net, fold_bn=args.fold_bn)
    except NetError as exc:
        raise NetError(f"{args.net}: {exc}") from exc

    batch = None if args.static_batch else 2
    inputs = check.random_inputs(generated, batch)
    reference = check.net_outputs(net, generated, inputs)
    rows = []
    if kind == ".onnx":
        from rll_repro.export.onnx import write_onnx

        data = write_onnx(out, generated, dynamic_batch=not args.static_batch)
        print(f"wrote {out} ({len(data) / 1e6:.1f} MB; inputs {', '.join(generated.inputs)}; "
              f"outputs {', '.join(generated.outputs)}{'' if args.static_batch else '; dynamic batch axis'})")
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("onnxruntime is not installed: the ONNX file was not run (pip install onnxruntime); "
                  "the module it was traced from:")
            from rll_repro.export.pysource import instantiate

            rows += check.differences(reference, "traced PyTorch module", check.module_outputs(instantiate(generated), generated, inputs))
        else:
            rows += check.differences(reference, "ONNX (onnxruntime)", check.onnx_outputs(data, generated, inputs))
    else:
        state_path = out.with_suffix(".pt")
        buffer = io.BytesIO()
        torch.save(generated.state_dict, buffer)
        atomic_write_text(out, generated.source)
        atomic_write_bytes(state_path, buffer.getvalue())
        print(f"wrote {out} (class Net, {len(generated.attributes)} layer attributes) and {state_path} "
              f"({len(generated.state_dict)} tensors)")
        model = _load_module(out, state_path)
        rows += check.differences(reference, "PyTorch module", check.module_outputs(model, generated, inputs))
    n = next(iter(inputs.values())).shape[0] if inputs else 0
    print(f"max difference to rll_repro.Net on a random standard-normal batch of {n}:")
    print(check.format_table(rows))
    return 0

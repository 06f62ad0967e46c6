"""rll-repro convert: Caffe weights to numpy / PyTorch and back; old prototxts to the V2 format."""
from __future__ import annotations

HELP = "convert caffemodel <-> .npz / .pt weights, and V0/V1 prototxts or caffemodels to V2"
DESCRIPTION = """\
Convert IN to OUT, chosen by the file extensions:

  model.caffemodel -> weights.npz   one array per blob, key '<layer name>/<blob index>'
                                    (e.g. 'conv1/0', 'inception_3a/1x1/1'), shaped the way the
                                    layers use them: legacy 4-D blobs are mapped as Caffe maps
                                    them (InnerProduct 1x1xNxK -> NxK, biases 1x1x1xN -> N)
  model.caffemodel -> weights.pt    the same keys in a dict of torch tensors (torch.save)
  weights.npz|.pt  -> model.caffemodel --net NET.prototxt
                                    NET supplies the layer order, types and settings; every key
                                    must name a layer of NET; layers without keys get no blobs
  weights.npz <-> weights.pt        between the two array formats
  old.caffemodel   -> new.caffemodel  V0/V1 'layers' upgraded to V2 'layer' (blobs unchanged)
  old.prototxt     -> new.prototxt    V0/V1 net upgraded like Caffe's upgrade_net_proto_text;
                                      a solver's old solver_type enum becomes the type string

Float32 stays float32; a caffemodel holding double_data gives float64 arrays. Written caffemodels
hold float32 'data' unless --double. Output files are written atomically.

examples:
  rll-repro convert googlenet_bn.caffemodel googlenet_bn.npz
  rll-repro convert googlenet_bn.npz back.caffemodel --net prototxt/rll/sop/train.prototxt
  rll-repro convert lenet_v1.prototxt lenet_v2.prototxt
"""

WEIGHT_EXTS = {".caffemodel", ".npz", ".pt", ".pth"}


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="input file (.caffemodel, .npz, .pt, .prototxt)")
    parser.add_argument("output", metavar="OUT", help="output file; its extension picks the format")
    parser.add_argument("--net", help="net prototxt giving layer order and types (when writing a caffemodel "
                        "from .npz/.pt)")
    parser.add_argument("--double", action="store_true", help="write caffemodel blobs as double_data")


def _ext(path) -> str:
    from pathlib import Path

    name = Path(path).name.lower()
    return ".caffemodel" if name.endswith(".caffemodel") else Path(name).suffix


def run(args) -> int:
    from rll_repro.caffe import io as caffe_io
    from rll_repro.errors import FormatError

    src, dst = _ext(args.input), _ext(args.output)
    if src == ".prototxt" or dst == ".prototxt":
        if not (src == ".prototxt" and dst == ".prototxt"):
            raise FormatError(f"{args.output}: a prototxt converts only to a prototxt (got {src} -> {dst})")
        kind = caffe_io.detect_kind(args.input)
        if kind == "net_prototxt":
            caffe_io.write_net_prototxt(args.output, caffe_io.read_net_prototxt(args.input))
        elif kind == "solver_prototxt":
            caffe_io.write_solver_prototxt(args.output, caffe_io.read_solver_prototxt(args.input))
        else:
            raise FormatError(f"{args.input}: is a {caffe_io.KIND_NAMES[kind]}, not a prototxt")
        print(f"wrote {args.output} ({kind.replace('_', ' ')}, V2)")
        return 0
    if src not in WEIGHT_EXTS:
        raise FormatError(f"{args.input}: cannot convert from '{src or args.input}' files "
                          "(use .caffemodel, .npz, .pt or .prototxt)")
    if dst not in WEIGHT_EXTS:
        raise FormatError(f"{args.output}: cannot convert to '{dst or args.output}' files "
                          "(use .caffemodel, .npz, .pt or .prototxt)")

    if args.net and not (dst == ".caffemodel" and src != ".caffemodel"):
        raise FormatError(f"{args.net}: --net is only used when writing a caffemodel from .npz/.pt weights "
                          f"(this converts {src} -> {dst})")
    if src == ".caffemodel" and dst == ".caffemodel":
        net = caffe_io.read_caffemodel(args.input)
        caffe_io.write_caffemodel(args.output, net)
        print(f"wrote {args.output} ({len(net.layer)} layers, V2)")
        return 0
    weights = load_weights(args.input)
    if dst == ".caffemodel":
        if not args.net:
            raise FormatError(f"{args.output}: writing a caffemodel from {src} needs --net NET.prototxt "
                              "(the layer order and types)")
        from rll_repro.caffe.weights import net_with_weights

        net = net_with_weights(caffe_io.read_net_prototxt(args.net), weights, where=args.net, double=args.double)
        caffe_io.write_caffemodel(args.output, net)
    else:
        save_weights(args.output, weights)
    count = sum(a.size for arrays in weights.values() for a in arrays)
    print(f"wrote {args.output} ({len(weights)} layers with blobs, {count:,} values)")
    return 0


def load_weights(path) -> "dict[str, list]":
    """{layer: [arrays]} from a caffemodel, an .npz or a .pt with '<layer>/<i>' keys."""
    from rll_repro.caffe import io as caffe_io
    from rll_repro.caffe.weights import weights_from_net
    from rll_repro.errors import FormatError
    from rll_repro.fileio import read_npz

    ext = _ext(path)
    if ext == ".caffemodel":
        return weights_from_net(caffe_io.read_caffemodel(path), where=str(path))
    if ext == ".npz":
        flat = read_npz(path, "weights")
    else:
        import torch

        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a bad file
            raise FormatError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(loaded, dict):
            raise FormatError(f"{path}: holds a {type(loaded).__name__}, expected a dict of tensors")
        flat = {}
        for key, value in loaded.items():
            if not isinstance(value, torch.Tensor):
                raise FormatError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
            flat[key] = value.detach().cpu().numpy()
    return unflatten(flat, str(path))


def unflatten(flat: dict, where: str) -> "dict[str, list]":
    """'<layer>/<i>' keys (the layer name may contain '/') -> {layer: [arrays in index order]}."""
    from rll_repro.errors import FormatError

    import numpy as np

    grouped: dict[str, dict[int, object]] = {}
    for key, array in flat.items():
        layer, sep, index = key.rpartition("/")
        if not sep or not index.isdigit() or not layer:
            raise FormatError(f"{where}: key {key!r} is not '<layer name>/<blob index>'")
        kind = np.asarray(array).dtype
        if kind.kind not in "biuf":
            raise FormatError(f"{where}: key {key!r} holds a {kind} array; Caffe blobs hold real numbers")
        grouped.setdefault(layer, {})[int(index)] = array
    out = {}
    for layer, blobs in grouped.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise FormatError(f"{where}: layer {layer!r} has blob indices {sorted(blobs)}; expected 0..{len(blobs) - 1}")
        out[layer] = [blobs[i] for i in range(len(blobs))]
    return out


def save_weights(path, weights: dict) -> None:
    """Write {layer: [arrays]} as .npz (or .pt: a dict of tensors), atomically."""
    import io

    import numpy as np

    from rll_repro.fileio import atomic_write_bytes

    flat = {f"{layer}/{i}": np.asarray(a) for layer, arrays in weights.items() for i, a in enumerate(arrays)}
    buffer = io.BytesIO()
    if _ext(path) == ".npz":
        np.savez(buffer, **flat)
    else:
        import torch

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())

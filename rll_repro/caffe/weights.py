"""Weights view of a caffemodel: ``{layer name: [numpy blob, ...]}`` and back.

Fast paths (a BN-Inception caffemodel has ~11M floats): arrays are cut straight out of the packed
``data`` / ``double_data`` bytes with ``np.frombuffer`` and written back as packed bytes, never
element by element through Python (which takes seconds for 45 MB).

Shapes follow Caffe's ``Blob::FromProto``: ``shape.dim`` when present, else the legacy
``num x channels x height x width`` 4-D shape. :func:`weights_from_net` then maps legacy 4-D
shapes to the shapes the layers use, as Caffe's legacy ``ShapeEquals`` accepts them (right-aligned,
leading 1s dropped): InnerProduct weights 1x1xNxK -> (N, K), biases and other vectors 1x1x1xN ->
(N,), convolution weights stay 4-D.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from rll_repro.caffe import caffe_pb2
from rll_repro.errors import FormatError
from rll_repro.limits import check_shape

_LEGACY_FIELDS = ("num", "channels", "height", "width")
_CONV_TYPES = {"Convolution", "Deconvolution"}


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _packed_payloads(serialized: bytes) -> dict[int, list[memoryview]]:
    """Length-delimited payloads of the top-level fields 5 (data) and 8 (double_data) of a
    BlobProto serialised by protobuf (which writes repeated floats packed, however they were read)."""
    view = memoryview(serialized)
    found: dict[int, list[memoryview]] = {5: [], 8: []}
    pos = 0
    while pos < len(serialized):
        key, pos = _read_varint(serialized, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(serialized, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _read_varint(serialized, pos)
            if field in found:
                found[field].append(view[pos:pos + size])
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return found


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """Caffe's Blob::FromProto shape: legacy num/channels/height/width if any is set, else shape.dim."""
    if any(blob.HasField(name) for name in _LEGACY_FIELDS):
        return tuple(int(getattr(blob, name)) for name in _LEGACY_FIELDS)
    return tuple(int(d) for d in blob.shape.dim)


def blob_is_legacy(blob: caffe_pb2.BlobProto) -> bool:
    return any(blob.HasField(name) for name in _LEGACY_FIELDS)


def blob_to_array(blob: caffe_pb2.BlobProto, where: str = "blob") -> np.ndarray:
    """The blob's values as a new array: float32 from ``data``, float64 from ``double_data``.

    Like Caffe, ``double_data`` is used when it is non-empty; a legacy blob gets its 4-D shape.
    The shape is checked as Blob::Reshape checks it (at most kMaxBlobAxes = 32 axes, no negative
    dimension, a count that does not overflow) and must match the number of values stored.
    """
    shape = check_shape(blob_shape(blob), where, FormatError)
    count = math.prod(shape)  # exact: a product of int64 dims cannot wrap around here
    if len(blob.double_data):
        field, dtype, values = 8, np.dtype("<f8"), blob.double_data
    else:
        field, dtype, values = 5, np.dtype("<f4"), blob.data
    if len(values) != count:  # checked on the parsed field before copying anything
        raise FormatError(f"{where}: has {len(values)} values but its shape {list(shape)} needs {count}")
    # Only the wanted field is serialised: a copy of the blob without the other big fields.
    payloads = _packed_payloads(blob.SerializeToString())[field]
    if len(payloads) == 1:
        array = np.frombuffer(payloads[0], dtype=dtype).copy()
    elif payloads:
        array = np.frombuffer(b"".join(bytes(p) for p in payloads), dtype=dtype).copy()
    else:
        array = np.zeros(0, dtype=dtype)
    return array.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def array_to_blob(array, double: bool = False, legacy_shape: bool = False,
                  where: str = "blob") -> caffe_pb2.BlobProto:
    """A BlobProto holding ``array`` (float32 ``data``, or float64 ``double_data`` if ``double``).

    The shape goes to ``shape.dim`` (as Caffe's Blob::ToProto writes it); ``legacy_shape`` writes
    num/channels/height/width instead (arrays of at most 4 axes, right-aligned, padded with 1s).
    """
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(_blob_bytes(array, double, legacy_shape, where))
    return blob


def _blob_bytes(array, double: bool = False, legacy_shape: bool = False, where: str = "blob") -> bytes:
    """The serialised BlobProto of ``array`` (see :func:`array_to_blob`), built from the raw bytes.
    Only real numbers fit a blob: other arrays are a FormatError naming ``where``."""
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise FormatError(f"{where}: a {arr.dtype} array cannot be a Caffe blob (blobs hold real numbers)")
    check_shape(arr.shape, where, FormatError)
    dtype = np.dtype("<f8") if double else np.dtype("<f4")
    raw = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    parts = []
    if legacy_shape:
        if arr.ndim > 4:
            raise FormatError(f"a legacy blob holds at most 4 axes, got shape {list(arr.shape)}")
        dims = (1,) * (4 - arr.ndim) + tuple(arr.shape)
        for number, value in zip((1, 2, 3, 4), dims):
            parts.append(_varint(number << 3) + _varint(int(value)))
    field = 8 if double else 5
    parts.append(_varint((field << 3) | 2) + _varint(len(raw)) + raw)
    if not legacy_shape and arr.ndim:  # Blob::ToProto writes no shape for a 0-axis blob
        dims = b"".join(_varint(int(d)) for d in arr.shape)
        shape_msg = _varint((1 << 3) | 2) + _varint(len(dims)) + dims
        parts.append(_varint((7 << 3) | 2) + _varint(len(shape_msg)) + shape_msg)
    return b"".join(parts)


def net_shape(layer_type: str, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a layer uses for a legacy 4-D blob (Caffe's legacy ShapeEquals, right-aligned)."""
    if len(shape) != 4:
        return shape
    if layer_type in _CONV_TYPES and index == 0:
        return shape
    if layer_type == "InnerProduct" and index == 0:
        return shape[2:]
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


def weights_from_net(net: caffe_pb2.NetParameter, where: str = "net") -> "OrderedDict[str, list[np.ndarray]]":
    """``{layer name: [arrays]}`` for every layer with blobs, in file order (V1 nets upgraded first)."""
    if len(net.layers) or len(net.input):
        from rll_repro.caffe.upgrade import upgrade_net

        net = upgrade_net(net, where)
    out: "OrderedDict[str, list[np.ndarray]]" = OrderedDict()
    for layer in net.layer:
        if not len(layer.blobs):
            continue
        if layer.name in out:
            raise FormatError(f"{where}: two layers named {layer.name!r} both have blobs")
        arrays = []
        for i, blob in enumerate(layer.blobs):
            array = blob_to_array(blob, f"{where}: layer {layer.name!r} blob {i}")
            if blob_is_legacy(blob):
                array = array.reshape(net_shape(layer.type, i, array.shape))
            arrays.append(array)
        out[layer.name] = arrays
    return out


def net_with_weights(net: caffe_pb2.NetParameter, weights: dict, where: str = "net",
                     double: bool = False) -> caffe_pb2.NetParameter:
    """A copy of ``net`` (V2 layers) whose layers carry ``weights[name]`` as blobs.

    Every name in ``weights`` must be a layer of ``net``; layers not in ``weights`` keep no blobs.
    """
    from rll_repro.caffe.upgrade import upgrade_net

    bare = caffe_pb2.NetParameter()
    bare.CopyFrom(net)
    for layer in bare.layer:
        del layer.blobs[:]
    for v1 in bare.layers:
        del v1.blobs[:]
    out = upgrade_net(bare, where)
    names = [layer.name for layer in out.layer]
    missing = [name for name in weights if name not in names]
    if missing:
        raise FormatError(f"{where}: has no layer named {', '.join(repr(m) for m in missing[:5])}"
                          + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    for layer in out.layer:
        for i, array in enumerate(weights.get(layer.name, ())):
            blob_where = f"{where}: layer {layer.name!r} blob {i}"
            layer.blobs.add().ParseFromString(_blob_bytes(array, double=double, where=blob_where))
    return out

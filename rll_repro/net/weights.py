"""A net's weights in and out: Caffe's ``CopyTrainedLayersFrom``, ``ToProto`` and ``Save``.

- ``copy_from``: by layer name; layers missing from the file keep their filler values; source layers
  the net lacks are skipped ("Ignoring source layer X", as Caffe logs); the blob count and shapes
  must match (legacy num/channels/height/width blobs compare as 4-D, Caffe's ``ShapeEquals``).
  Caffe silently trains from the fillers when no layer name matches at all (a model of another
  net); here that is an error naming the file and the net unless ``allow_no_match=True``.
- Values travel through the host once per blob and land on the net's device.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from rll_repro.errors import NetError, RLLReproError

log = logging.getLogger("rll_repro.net")


def blob_shape_equals(blob, shape: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals(BlobProto): legacy num/channels/height/width compare as a 4-D shape
    (the target padded with leading 1s, at most 4 axes), else the ``shape`` dims exactly."""
    legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
    if legacy:
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        return padded == (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim) == tuple(shape)


def describe_blob_shape(blob) -> tuple[int, ...]:
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


class WeightsIO:
    """copy_from / to_proto / save (a mixin of :class:`rll_repro.net.Net`)."""

    def copy_from(self, source, *, allow_no_match: bool = False) -> list[str]:
        """Caffe's Net::CopyTrainedLayersFrom: copy blobs by layer name from a caffemodel (path or
        NetParameter). Returns the names of the source layers that were ignored."""
        from rll_repro.caffe import io as caffe_io
        from rll_repro.caffe.weights import blob_to_array

        self.sync_host_to_device()  # host edits made before the copy land first (then are overwritten)
        where = str(source) if isinstance(source, (str, os.PathLike)) else "weights"
        net_param = caffe_io.read_caffemodel(source) if isinstance(source, (str, os.PathLike)) else source
        by_name = {name: layer for name, layer in zip(self.layer_names, self.layers)}
        ignored, matched, with_blobs = [], 0, 0
        for src in net_param.layer:
            with_blobs += bool(len(src.blobs))
            layer = by_name.get(src.name)
            if layer is None:
                ignored.append(src.name)
                log.info("Ignoring source layer %s", src.name)
                continue
            targets = layer.blobs
            if len(src.blobs) != len(targets):
                raise NetError(
                    f"{where}: layer {src.name!r} has {len(src.blobs)} blobs, the net's layer has {len(targets)}"
                )
            matched += bool(len(targets))
            for j, (blob, target) in enumerate(zip(src.blobs, targets)):
                shape = tuple(target.shape)
                if not blob_shape_equals(blob, shape):
                    raise NetError(
                        f"{where}: layer {src.name!r} blob {j}: source shape {describe_blob_shape(blob)} "
                        f"does not match the net's {shape}"
                    )
                try:
                    array = blob_to_array(blob)
                except RLLReproError as exc:
                    raise NetError(f"{where}: layer {src.name!r} blob {j}: {exc}") from None
                with torch.no_grad():
                    host = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(shape))
                    target.data.copy_(host.to(target.device))
        if with_blobs and not matched and not allow_no_match:
            net = self.source or (self.name and f"net {self.name!r}") or "the net"
            raise NetError(f"{where}: no layer of this file matches a layer of {net} "
                           f"(the file's layers: {', '.join(l.name for l in net_param.layer[:5])}"
                           f"{', ...' if len(net_param.layer) > 5 else ''}); is it a model of another net?")
        return ignored

    def to_proto(self, write_diff: bool = False):
        """Caffe's Net::ToProto: the net's layers (this phase) with their blobs."""
        from rll_repro.caffe import caffe_pb2
        from rll_repro.caffe.weights import array_to_blob

        self.sync_host_to_device()
        out = caffe_pb2.NetParameter()
        if self.name:
            out.name = self.name
        for lp, layer in zip(self.layer_params, self.layers):
            dst = out.layer.add()
            dst.CopyFrom(lp)
            del dst.blobs[:]
            for p in layer.blobs:
                blob = dst.blobs.add()
                blob.CopyFrom(array_to_blob(p.detach().to("cpu").numpy()))
                if write_diff and p.grad is not None:
                    blob.diff.extend(p.grad.detach().to("cpu").numpy().ravel().tolist())
        return out

    def save(self, path) -> None:
        """Write the net's weights as a caffemodel (Caffe's Net::ToProto + WriteProtoToBinaryFile)."""
        from rll_repro.caffe import io as caffe_io

        caffe_io.write_caffemodel(path, self.to_proto())

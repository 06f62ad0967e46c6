"""Caffe's ``upgrade_proto``: V0 and V1 nets to the V2 ``layer`` format, legacy inputs, old solvers.

Matches ``caffe/src/caffe/util/upgrade_proto.cpp`` (UpgradeNetAsNeeded, UpgradeSolverAsNeeded):

* V0 (``layers { layer { type: "conv" ... } }``) -> V1, with "padding" layers folded into the
  pad of the convolution/pooling that consumes them (UpgradeV0Net, UpgradeV0PaddingLayers);
* V1 data layers' deprecated scale/mean_file/crop_size/mirror -> ``transform_param``
  (UpgradeNetDataTransformation);
* V1 (``layers { type: CONVOLUTION blobs_lr: 1 }``) -> V2 ``layer { type: "Convolution" param
  { lr_mult: 1 } }`` (UpgradeV1Net: enum type -> type string, blobs_lr/weight_decay/param names/
  blob_share_mode -> ParamSpec);
* net-level ``input`` + ``input_dim``/``input_shape`` -> one Input layer named "input" placed
  first (UpgradeNetInput);
* solver ``solver_type`` enum -> ``type`` string (UpgradeSolverType).

Blobs are moved unchanged; legacy num/channels/height/width shapes stay in the BlobProto (Caffe
keeps them too) and are mapped to the net's shapes by :mod:`rll_repro.caffe.weights`.
Not applied on purpose: BVLC's UpgradeNetBatchNorm (dropping three BatchNorm ParamSpecs), which
the papers' forks do not do (SPEC rll 0.6: their BatchNorm statistics are learnable).
"""
from __future__ import annotations

from rll_repro.caffe import caffe_pb2
from rll_repro.errors import FormatError

V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                     "ADADELTA": "AdaDelta", "ADAM": "Adam"}

# V0 type strings -> V1 enum names (UpgradeV0LayerType)
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V1 fields copied one to one into the V2 layer (same message type, same name)
_V1_COPIED_PARAMS = [
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "hdf5_output_param", "hinge_loss_param", "image_data_param", "infogain_loss_param",
    "inner_product_param", "lrn_param", "memory_data_param", "mvn_param", "pooling_param", "power_param",
    "relu_param", "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
]


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True if the net uses V0/V1 layers or legacy net-level inputs."""
    return bool(len(net.layers) or len(net.input))


def upgrade_net(net: caffe_pb2.NetParameter, where: str = "net") -> caffe_pb2.NetParameter:
    """Caffe's UpgradeNetAsNeeded on a copy: returns a V2 NetParameter (the input is untouched)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if len(out.layers):
        if len(out.layer):
            raise FormatError(f"{where}: net mixes V1 'layers' and V2 'layer' fields")
        if any(v1.HasField("layer") for v1 in out.layers):
            _upgrade_v0_net(out, where)
        _upgrade_data_transformation(out)
        _upgrade_v1_net(out, where)
    if len(out.input):
        _upgrade_net_input(out, where)
    return out


# -- V1 -> V2 ---------------------------------------------------------------------------------


def _upgrade_v1_net(net: caffe_pb2.NetParameter, where: str) -> None:
    v1_layers = list(net.layers)
    del net.layers[:]
    for v1 in v1_layers:
        net.layer.add().CopyFrom(upgrade_v1_layer(v1, where))


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, where: str = "net") -> caffe_pb2.LayerParameter:
    """Caffe's UpgradeV1LayerParameter."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    def param_spec(i: int) -> caffe_pb2.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param_spec(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param_spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in _V1_COPIED_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))
    if v1.HasField("layer"):
        raise FormatError(f"{where}: layer {v1.name!r} still has a V0 'layer' field after the V0 upgrade")
    return layer


def _upgrade_data_transformation(net: caffe_pb2.NetParameter) -> None:
    """Caffe's UpgradeNetDataTransformation: deprecated data-layer transform fields -> transform_param."""
    V1 = caffe_pb2.V1LayerParameter
    for v1 in net.layers:
        for type_value, field in ((V1.DATA, "data_param"), (V1.IMAGE_DATA, "image_data_param"),
                                  (V1.WINDOW_DATA, "window_data_param")):
            if v1.type != type_value or not v1.HasField(field):
                continue
            param = getattr(v1, field)
            for name in ("scale", "mean_file", "crop_size", "mirror"):
                if param.HasField(name):
                    setattr(v1.transform_param, name, getattr(param, name))
                    param.ClearField(name)


def _upgrade_net_input(net: caffe_pb2.NetParameter, where: str) -> None:
    """Caffe's UpgradeNetInput: inputs become the tops of one Input layer named "input", placed first."""
    names = list(net.input)
    if len(net.input_shape):
        shapes = [list(s.dim) for s in net.input_shape]
    elif len(net.input_dim):
        dims = list(net.input_dim)
        if len(dims) != 4 * len(names):
            raise FormatError(f"{where}: {len(names)} net inputs need {4 * len(names)} input_dim values, "
                              f"found {len(dims)}")
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        shapes = []
    if shapes and len(shapes) != len(names):
        raise FormatError(f"{where}: {len(names)} net inputs but {len(shapes)} input_shape entries")
    layers = list(net.layer)
    del net.layer[:]
    input_layer = net.layer.add()
    input_layer.name = "input"
    input_layer.type = "Input"
    input_layer.top.extend(names)
    for dims in shapes:
        input_layer.input_param.shape.add().dim.extend(dims)
    for layer in layers:
        net.layer.add().CopyFrom(layer)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# -- V0 -> V1 ---------------------------------------------------------------------------------


def _upgrade_v0_net(net: caffe_pb2.NetParameter, where: str) -> None:
    """Caffe's UpgradeV0Net: fold padding layers, then convert each V0 layer to V1."""
    _fold_v0_padding_layers(net, where)
    for v1 in net.layers:
        if v1.HasField("layer"):
            _upgrade_v0_layer(v1, where)


def _fold_v0_padding_layers(net: caffe_pb2.NetParameter, where: str) -> None:
    """Caffe's UpgradeV0PaddingLayers: a "padding" layer's pad moves into the conv/pool reading it."""
    producer: dict[str, int] = {}
    for i, v1 in enumerate(net.layers):
        for top in v1.top:
            producer[top] = i
    for name in net.input:
        producer.setdefault(name, -1)
    kept = []
    for v1 in net.layers:
        if v1.layer.type == "padding":
            continue
        for j, bottom in enumerate(list(v1.bottom)):
            src = producer.get(bottom, -1)
            if src < 0:
                continue
            pad_layer = net.layers[src]
            if pad_layer.layer.type != "padding":
                continue
            if v1.layer.type not in ("conv", "pool"):
                raise FormatError(f"{where}: V0 padding layer {pad_layer.layer.name!r} feeds a "
                                  f"{v1.layer.type!r} layer; only conv and pool can absorb padding")
            v1.layer.pad = pad_layer.layer.pad
            v1.bottom[j] = pad_layer.bottom[0]
        kept.append(v1)
    del net.layers[:]
    for v1 in kept:
        net.layers.add().CopyFrom(v1)


def _upgrade_v0_layer(v1: caffe_pb2.V1LayerParameter, where: str) -> None:
    """Caffe's UpgradeV0LayerParameter, in place on the V1 wrapper."""
    v0 = caffe_pb2.V0LayerParameter()
    v0.CopyFrom(v1.layer)
    v1.ClearField("layer")
    if v0.HasField("name"):
        v1.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise FormatError(f"{where}: V0 layer {v0.name!r} has unknown type {kind!r}")
        v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(V0_TYPES[kind])
    for blob in v0.blobs:
        v1.blobs.add().CopyFrom(blob)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)

    def bad(field: str):
        return FormatError(f"{where}: V0 layer {v0.name!r} of type {kind!r} cannot have {field!r}")

    def put(field: str, targets: dict[str, tuple[str, str]]):
        if not v0.HasField(field):
            return
        if kind not in targets:
            raise bad(field)
        param_name, name = targets[kind]
        param = getattr(v1, param_name)
        value = getattr(v0, field)
        target = getattr(param, name)
        if hasattr(target, "append"):
            target.append(value)
        elif hasattr(target, "CopyFrom"):
            target.CopyFrom(value)
        else:
            setattr(param, name, value)

    conv, ip, pool = "convolution_param", "inner_product_param", "pooling_param"
    data, images, window = "data_param", "image_data_param", "window_data_param"
    put("num_output", {"conv": (conv, "num_output"), "innerproduct": (ip, "num_output")})
    put("biasterm", {"conv": (conv, "bias_term"), "innerproduct": (ip, "bias_term")})
    put("weight_filler", {"conv": (conv, "weight_filler"), "innerproduct": (ip, "weight_filler")})
    put("bias_filler", {"conv": (conv, "bias_filler"), "innerproduct": (ip, "bias_filler")})
    put("pad", {"conv": (conv, "pad"), "pool": (pool, "pad")})
    put("kernelsize", {"conv": (conv, "kernel_size"), "pool": (pool, "kernel_size")})
    put("group", {"conv": (conv, "group")})
    put("stride", {"conv": (conv, "stride"), "pool": (pool, "stride")})
    if v0.HasField("pool"):
        if kind != "pool":
            raise bad("pool")
        v1.pooling_param.pool = v0.pool  # same enum values
    put("dropout_ratio", {"dropout": ("dropout_param", "dropout_ratio")})
    for field in ("local_size", "alpha", "beta", "k"):
        put(field, {"lrn": ("lrn_param", field)})
    put("source", {"data": (data, "source"), "hdf5_data": ("hdf5_data_param", "source"),
                   "images": (images, "source"), "window_data": (window, "source"),
                   "infogain_loss": ("infogain_loss_param", "source")})
    put("scale", {"data": (data, "scale"), "images": (images, "scale"), "window_data": (window, "scale")})
    put("meanfile", {"data": (data, "mean_file"), "images": (images, "mean_file"),
                     "window_data": (window, "mean_file")})
    put("batchsize", {"data": (data, "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                      "images": (images, "batch_size"), "window_data": (window, "batch_size")})
    put("cropsize", {"data": (data, "crop_size"), "images": (images, "crop_size"),
                     "window_data": (window, "crop_size")})
    put("mirror", {"data": (data, "mirror"), "images": (images, "mirror"), "window_data": (window, "mirror")})
    put("rand_skip", {"data": (data, "rand_skip"), "images": (images, "rand_skip")})
    put("shuffle_images", {"images": (images, "shuffle")})
    put("new_height", {"images": (images, "new_height")})
    put("new_width", {"images": (images, "new_width")})
    put("concat_dim", {"concat": ("concat_param", "concat_dim")})
    put("det_fg_threshold", {"window_data": (window, "fg_threshold")})
    put("det_bg_threshold", {"window_data": (window, "bg_threshold")})
    put("det_fg_fraction", {"window_data": (window, "fg_fraction")})
    put("det_context_pad", {"window_data": (window, "context_pad")})
    put("det_crop_mode", {"window_data": (window, "crop_mode")})
    if v0.HasField("hdf5_output_param"):
        if kind != "hdf5_output":
            raise bad("hdf5_output_param")
        v1.hdf5_output_param.CopyFrom(v0.hdf5_output_param)


# -- solver -----------------------------------------------------------------------------------


def solver_needs_upgrade(solver: caffe_pb2.SolverParameter) -> bool:
    return solver.HasField("solver_type")


def upgrade_solver(solver: caffe_pb2.SolverParameter, where: str = "solver") -> caffe_pb2.SolverParameter:
    """Caffe's UpgradeSolverAsNeeded on a copy: the deprecated solver_type enum -> the type string."""
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(solver)
    if out.HasField("solver_type"):
        if out.HasField("type"):
            raise FormatError(f"{where}: both the old solver_type enum and the type string are set; keep only type")
        out.type = SOLVER_TYPE_NAMES[caffe_pb2.SolverParameter.SolverType.Name(out.solver_type)]
        out.ClearField("solver_type")
    return out

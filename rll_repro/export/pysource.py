"""Readable, standalone PyTorch source of an ``nn.Module`` for a built :class:`rll_repro.Net`.

The generated file imports only torch. It holds one attribute per computing Caffe layer, named after
the layer (a sanitised identifier; ``CAFFE_LAYERS`` maps it back to the Caffe name), and a forward
written out in the net's order, one line per layer with the Caffe layer name and type in a comment.
Blobs rewritten in place (``top == bottom``) reuse their variable, as Caffe reuses the memory. Split
and Dropout in TEST are plain aliases (identity). The Caffe rules that differ from PyTorch defaults
are kept: ceil-mode pooling with Caffe's clip of the last window (PyTorch's ``ceil_mode=True`` drops a
last window that would start in the right padding, which is Caffe's clip whenever pad > 0),
AVE pooling counting padding inside H + pad only, BatchNorm's three blobs (mean sum, variance sum,
scale factor s; statistics = sums · (1/s), 0 when s = 0) followed by a separate Scale (x·γ rounded,
then + β), LRN's formula (``k`` unused WITHIN_CHANNEL), both forks' Normalization (L2 per sample:
squared norm rounded to float32, pow in double; the OSM fork's L1 across the first N values),
InnerProduct flattening from ``axis``.

``fold_bn=True`` merges each BatchNorm with the Scale that directly follows it into one affine
``F.batch_norm`` (one ``BatchNormalization`` node in ONNX): y = (x − μ)·(γ/sqrt(σ² + eps)) + β
evaluated by the kernel with fewer roundings than Caffe's normalise, then ×γ, then +β (a few float32
ulps of the activations; :mod:`rll_repro.export.check` measures it).

Only the public surface of the Net is read (``layers``, ``layer_params``, ``layer_names``,
``bottom_names``, ``top_names``, ``inputs``, ``outputs``, ``blob_shapes``, ``params``, ``phase``).
"""
from __future__ import annotations

import keyword
import re
import types
from dataclasses import dataclass, field

import numpy as np
import torch

from rll_repro.errors import NetError

DATA_LAYER_TYPES = frozenset(
    {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "VideoData", "AnnotatedData"}
)
SUGGEST = "export the deploy net (an Input layer or input: fields instead of data layers, no loss layers)"

# Helper classes the generated file defines when a layer needs them (the Caffe rules torch lacks).
HELPERS = {
    "CaffeBatchNorm": '''
class CaffeBatchNorm(nn.Module):
    """Caffe's BatchNorm: blobs mean sum M, variance sum V, scale factor s; with global statistics
    mean = M·(1/s), var = V·(1/s) (0 when s = 0), else the batch's (biased variance, running sums not
    updated). With ``affine`` a following Scale's γ, β are folded in (one rounding fewer)."""

    def __init__(self, channels, eps, use_global_stats=True, affine=False):
        super().__init__()
        self.eps, self.use_global_stats = eps, use_global_stats
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.zeros(channels))
        self.register_buffer("scale_factor", torch.zeros(1))
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if affine else None

    def statistics(self):
        """The global mean and variance: Caffe's sums times 1/s (0 when s = 0), in float32."""
        s = self.scale_factor[0]
        k = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return self.mean * k, self.variance * k

    def forward(self, x):
        if not self.use_global_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        mean, variance = self.statistics()
        return F.batch_norm(x, mean, variance, self.weight, self.bias, False, 0.0, self.eps)
''',
    "CaffeScale": '''
class CaffeScale(nn.Module):
    """Caffe's Scale: y = x·γ, then + β (two roundings), γ/β broadcast over the axes from ``axis``
    of an ``ndim``-axis bottom; with two bottoms γ is the second bottom."""

    def __init__(self, shape, axis=1, ndim=4, bias_term=True, learned_scale=True):
        super().__init__()
        self.trailing = (1,) * (ndim - axis - len(shape))
        self.view = tuple(shape) + self.trailing
        self.weight = nn.Parameter(torch.ones(shape)) if learned_scale else None
        self.bias = nn.Parameter(torch.zeros(shape)) if bias_term else None

    def forward(self, x, gamma=None):
        gamma = self.weight.reshape(self.view) if gamma is None else gamma.reshape(gamma.shape + self.trailing)
        y = x * gamma
        return y if self.bias is None else y + self.bias.reshape(self.view)
''',
    "CaffeBias": '''
class CaffeBias(nn.Module):
    """Caffe's Bias: y = x + b, b broadcast over the axes from ``axis`` of an ``ndim``-axis bottom
    (b is the second bottom if given)."""

    def __init__(self, shape, axis=1, ndim=4, learned=True):
        super().__init__()
        self.trailing = (1,) * (ndim - axis - len(shape))
        self.view = tuple(shape) + self.trailing
        self.bias = nn.Parameter(torch.zeros(shape)) if learned else None

    def forward(self, x, b=None):
        return x + (self.bias.reshape(self.view) if b is None else b.reshape(b.shape + self.trailing))
''',
    "CaffeLRN": '''
class CaffeLRN(nn.Module):
    """Caffe's LRN. ACROSS_CHANNELS: y = x·(k + alpha/n·Σ x² over n channels centred on c)^−beta;
    WITHIN_CHANNEL: y = x·(1 + alpha·avgpool_n(x²))^−beta (padding counted, k unused)."""

    def __init__(self, size, alpha, beta, k, across_channels=True):
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.across = size, alpha, beta, k, across_channels

    def forward(self, x):
        pad = (self.size - 1) // 2
        sq = x * x
        if self.across:
            n, c, h, w = x.shape
            padded = F.pad(sq.reshape(n, 1, c, h * w), (0, 0, pad, pad))
            window = F.avg_pool2d(padded, (self.size, 1), 1, 0) * self.size
            scale = window.reshape(n, c, h, w) * (self.alpha / self.size) + self.k
        else:
            scale = F.avg_pool2d(sq, self.size, 1, pad, True, True) * self.alpha + 1.0
        return x * torch.pow(scale, -self.beta)
''',
    "CaffeL2Normalize": '''
class CaffeL2Normalize(nn.Module):
    """The forks' Normalization (L2, per sample): y = x·float(pow(q + eps, −0.5)), q = Σx² rounded
    to float32, the pow in double; eps 0 (RLL fork) or 1e-12 (OSM fork)."""

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        x2 = x.reshape(x.shape[0], -1)
        q = (x2 * x2).sum(1, keepdim=True, dtype=torch.float64).to(x.dtype)
        return (x2 * torch.pow(q.to(torch.float64) + self.eps, -0.5).to(x.dtype)).reshape(x.shape)
''',
    "CaffeL1BatchNormalize": '''
class CaffeL1BatchNormalize(nn.Module):
    """The OSM fork's Normalization (L1): the first N values of the blob are one vector,
    y = x·float(1/(Σ|x| + 1e-12)); the other values of the top are 0."""

    def forward(self, x):
        flat = x.reshape(-1)
        n = x.shape[0]
        head = flat[:n]
        scale = torch.pow(head.abs().sum(dtype=torch.float64).to(x.dtype).to(torch.float64) + 1e-12, -1.0)
        return torch.cat([head * scale.to(x.dtype), torch.zeros_like(flat[n:])]).reshape(x.shape)
''',
    "CaffeConcat": '''
class CaffeConcat(nn.Module):
    """Caffe's Concat along ``axis``."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        return torch.cat(xs, self.axis) if len(xs) > 1 else xs[0]
''',
    "CaffeEltwise": '''
class CaffeEltwise(nn.Module):
    """Caffe's Eltwise: SUM (y = Σ c_i·x_i, terms added in bottom order), PROD, MAX."""

    def __init__(self, operation, coeffs):
        super().__init__()
        self.operation, self.coeffs = operation, coeffs

    def forward(self, *xs):
        if self.operation == "SUM":
            y = None
            for c, x in zip(self.coeffs, xs):
                term = x if c == 1.0 else x * c
                y = term if y is None else y + term
            return y
        y = xs[0]
        for x in xs[1:]:
            y = y * x if self.operation == "PROD" else torch.maximum(y, x)
        return y
''',
    "CaffeReshape": '''
class CaffeReshape(nn.Module):
    """Caffe's Reshape: axes [axis, axis + num_axes) of the bottom become ``dims`` (0 copies the
    bottom's axis, −1 is inferred)."""

    def __init__(self, dims, axis=0, num_axes=-1):
        super().__init__()
        self.dims, self.axis, self.num_axes = dims, axis, num_axes

    def forward(self, x):
        start = self.axis + x.dim() + 1 if self.axis < 0 else self.axis
        end = x.dim() if self.num_axes == -1 else start + self.num_axes
        new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(self.dims)]
        return x.reshape(list(x.shape[:start]) + new + list(x.shape[end:]))
''',
    "CaffeSlice": '''
class CaffeSlice(nn.Module):
    """Caffe's Slice along ``axis`` into pieces of the given sizes."""

    def __init__(self, sizes, axis=1):
        super().__init__()
        self.sizes, self.axis = sizes, axis

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, self.axis))
''',
    "CaffeInnerProduct": '''
class CaffeInnerProduct(nn.Linear):
    """Caffe's InnerProduct: the bottom flattened from ``axis`` (N×C×H×W -> N×CHW), then x·Wᵀ + b."""

    def __init__(self, in_features, out_features, bias=True, axis=1):
        super().__init__(in_features, out_features, bias)
        self.axis = axis

    def forward(self, x):
        return super().forward(x.flatten(self.axis) if x.dim() > self.axis + 1 else x)
''',
    "CaffePower": '''
class CaffePower(nn.Module):
    """Caffe's Power: y = (shift + scale·x)^power."""

    def __init__(self, power, scale, shift):
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x):
        base = x * self.scale + self.shift if (self.scale != 1.0 or self.shift != 0.0) else x
        return base if self.power == 1.0 else torch.pow(base, self.power)
''',
    "CaffePReLU": '''
class CaffePReLU(nn.Module):
    """Caffe's PReLU: y = x if x > 0 else a_c·x (a per channel, or one shared)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x):
        a = self.weight.reshape((1, -1) + (1,) * (x.dim() - 2)) if self.weight.numel() > 1 else self.weight[0]
        return torch.where(x > 0, x, x * a)
''',
}

# A ReLU may overwrite its bottom when the layer that wrote it does not need its output for the
# backward pass and nothing else reads that value (the rule the Net itself follows).
_INPLACE_SAFE_PRODUCERS = frozenset({"Convolution", "InnerProduct", "BatchNorm", "Scale"})


@dataclass
class GeneratedModule:
    """The generated source and what goes with it.

    ``state_dict``: tensors for ``Net().load_state_dict``; ``attributes``: attribute -> Caffe layer
    name; ``inputs`` / ``outputs``: Caffe blob names in forward-argument / return order;
    ``tops``: attribute -> the Caffe top names it produces (for naming ONNX values)."""

    source: str
    state_dict: dict[str, torch.Tensor]
    attributes: dict[str, str]
    inputs: list[str]
    outputs: list[str]
    input_shapes: dict[str, tuple[int, ...]]
    tops: dict[str, list[str]] = field(default_factory=dict)


class _Names:
    """Unique Python identifiers derived from Caffe names."""

    RESERVED = {"self", "torch", "nn", "F", "math"}

    def __init__(self, extra_reserved=()):
        self.used: set[str] = set(self.RESERVED) | set(extra_reserved)

    def make(self, caffe_name: str, avoid_module_attrs: bool = False) -> str:
        base = re.sub(r"\W", "_", caffe_name).strip("_") or "blob"
        if base[0].isdigit():
            base = "l" + base
        if keyword.iskeyword(base) or (avoid_module_attrs and hasattr(torch.nn.Module, base)):
            base += "_"
        name, k = base, 2
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


_NO_RULE = "no export rule for this layer type"


def _loss_like(type_: str) -> bool:
    """Loss and metric layers (SoftmaxWithLoss, the papers' ...PairLossV12/V5, Accuracy)."""
    return "Loss" in type_ or type_ == "Accuracy"


def _unexportable(lp, layer) -> str | None:
    """Why a layer cannot be exported (None if it can)."""
    if lp.type in DATA_LAYER_TYPES:
        return "a data layer"
    if lp.type == "Python":
        return "a Python layer"
    if getattr(layer, "is_loss", False) or _loss_like(lp.type):
        return "a training-only loss layer"
    if lp.type not in _EMITTERS:
        return _NO_RULE
    return None


def unexportable_error(name: str, type_: str, reason: str, deploy_hint: bool = True) -> NetError:
    """The one-line error for a layer that cannot be exported (suggesting the deploy net where the
    layer is one that deploy nets leave out)."""
    hint = SUGGEST if deploy_hint else f"exportable types: {', '.join(sorted(EXPORTABLE_TYPES))}"
    return NetError(f"layer {name!r} (type {type_}) cannot be exported: {reason}; {hint}")


def check_exportable_param(net_param, phase: str = "test") -> None:
    """Before building the Net: the first data/Python/loss layer of ``net_param`` in ``phase`` raises
    the one-line export error (such nets cannot be built or exported)."""
    want = 1 if phase == "test" else 0
    for lp in net_param.layer:
        rules_in = [r for r in lp.include if r.HasField("phase")]
        if rules_in and all(int(r.phase) != want for r in rules_in):
            continue
        if any(r.HasField("phase") and int(r.phase) == want for r in lp.exclude):
            continue
        if lp.type in DATA_LAYER_TYPES or lp.type == "Python" or _loss_like(lp.type):
            reason = "a data layer" if lp.type in DATA_LAYER_TYPES else (
                "a Python layer" if lp.type == "Python" else "a training-only loss layer")
            raise unexportable_error(lp.name, lp.type, reason)


def generate(net, outputs=None, fold_bn: bool = False) -> GeneratedModule:
    """Standalone module source for ``net`` (a built :class:`rll_repro.Net`, weights loaded).

    ``outputs``: the blob names to return (default the net's outputs); only the layers they need are
    written. Raises :class:`NetError` naming the first needed layer that cannot be exported."""
    outputs = list(outputs if outputs is not None else net.outputs)
    names = list(net.layer_names)
    lps = list(net.layer_params)
    bottoms = net.bottom_names
    tops = net.top_names
    shapes = net.blob_shapes
    for b in outputs:
        if b not in shapes:
            raise NetError(f"no blob named {b!r} in the net")
    # Layers needed for the outputs: walk back from the last writer of each needed blob.
    needed_layers: set[int] = set()
    want = set(outputs)
    for i in range(len(names) - 1, -1, -1):
        if any(t in want for t in tops[names[i]]):
            needed_layers.add(i)
            for t in tops[names[i]]:
                if t not in bottoms[names[i]]:
                    want.discard(t)
            want.update(bottoms[names[i]])
    gen = _Generator(net, fold_bn)
    inputs = list(net.inputs)
    gen.declare_inputs(inputs)
    for i, (name, lp, layer) in enumerate(zip(names, lps, net.layers)):
        if i not in needed_layers or getattr(layer, "is_input", False):
            continue
        reason = _unexportable(lp, layer)
        if reason:
            raise unexportable_error(name, lp.type, reason, deploy_hint=reason != _NO_RULE)
        gen.emit(i, name, lp, layer, bottoms[name], tops[name])
    returned = [gen.var[o] for o in outputs]
    source = gen.render("Net", inputs, outputs, returned, {n: shapes[n] for n in inputs})
    return GeneratedModule(source, gen.state, gen.attributes, inputs, outputs,
                           {n: tuple(shapes[n]) for n in inputs}, gen.attr_tops)


class _Generator:
    def __init__(self, net, fold_bn):
        self.net, self.fold_bn = net, fold_bn
        self.shapes = net.blob_shapes
        self.layer_names = list(net.layer_names)
        self.types = [lp.type for lp in net.layer_params]
        self.bottoms = net.bottom_names
        self.tops = net.top_names
        self.attr_names = _Names()
        self.var_names = _Names()
        self.var: dict[str, str] = {}
        self.init: list[str] = []
        self.body: list[str] = []
        self.helpers: list[str] = []
        self.state: dict[str, torch.Tensor] = {}
        self.attributes: dict[str, str] = {}
        self.attr_tops: dict[str, list[str]] = {}
        self.folded: dict[int, str] = {}  # Scale layer index -> BatchNorm attribute it is folded into
        self.phase = getattr(net, "phase", "test")

    # -- helpers --------------------------------------------------------------------------------

    def declare_inputs(self, inputs):
        for name in inputs:
            self.var[name] = self.var_names.make(name)

    def helper(self, name):
        if name not in self.helpers:
            self.helpers.append(name)
        return name

    def blob(self, index, j) -> np.ndarray:
        return np.array(self.net.params[self.layer_names[index]][j].data, dtype=np.float32, copy=True)

    def put(self, attr, key, array):
        self.state[f"{attr}.{key}"] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def new_attr(self, name, ctor, tops):
        attr = self.attr_names.make(name, avoid_module_attrs=True)
        self.attributes[attr] = name
        self.attr_tops[attr] = list(tops)
        self.init.append(f"self.{attr} = {ctor}  # {name}")
        return attr

    def assign(self, tops, bottoms, expr, comment):
        """``top = expr`` (reusing the bottom's variable for an in-place top)."""
        targets = []
        for t in tops:
            if t in bottoms and t in self.var:
                targets.append(self.var[t])
            else:
                self.var[t] = self.var_names.make(t)
                targets.append(self.var[t])
        lhs = targets[0] if len(targets) == 1 else ", ".join(targets)
        self.body.append(f"{lhs} = {expr}  # {comment}")

    def producer(self, blob, before):
        for k in range(before - 1, -1, -1):
            if blob in self.tops[self.layer_names[k]]:
                return k
        return None

    # -- one layer ------------------------------------------------------------------------------

    def emit(self, i, name, lp, layer, bottoms, tops):
        if i in self.folded:
            self.body.append(f"# {name} (Scale): folded into self.{self.folded[i]}")
            return
        args = ", ".join(self.var[b] for b in bottoms)
        _EMITTERS[lp.type](self, i, name, lp, layer, bottoms, tops, args)

    def call(self, i, name, lp, ctor, bottoms, tops, args):
        attr = self.new_attr(name, ctor, tops)
        self.assign(tops, bottoms, f"self.{attr}({args})", f"{name} ({lp.type})")
        return attr

    # -- rendering ------------------------------------------------------------------------------

    def render(self, class_name, inputs, outputs, returned, input_shapes):
        net_name = getattr(self.net, "name", "") or "net"
        lines = [
            f'"""{class_name}: the Caffe net {net_name!r} ({self.phase.upper()} phase) as a plain PyTorch module.',
            "",
            "Generated by rll-repro export; imports only torch. Load the weights with",
            f"    m = {class_name}(); m.load_state_dict(torch.load('<this file>.pt')); m.eval()",
            f"forward({', '.join(self.var[n] for n in inputs)}) returns "
            + (f"the blob {outputs[0]!r}." if len(outputs) == 1 else f"the blobs {tuple(outputs)}, in that order."),
            '"""',
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
            "",
            f"INPUTS = {tuple(inputs)!r}  # Caffe blob names of forward's arguments",
            f"INPUT_SHAPES = {dict((k, tuple(v)) for k, v in input_shapes.items())!r}  # as declared (the batch may differ)",
            f"OUTPUTS = {tuple(outputs)!r}  # Caffe blob names of what forward returns",
            "CAFFE_LAYERS = {  # attribute -> Caffe layer name",
        ]
        lines += [f"    {attr!r}: {caffe!r}," for attr, caffe in self.attributes.items()]
        lines.append("}")
        for h in self.helpers:
            lines += ["", "", HELPERS[h].strip("\n")]
        lines += ["", "", f"class {class_name}(nn.Module):", "    def __init__(self):", "        super().__init__()"]
        lines += ["        " + line for line in self.init] or ["        pass"]
        lines += ["", f"    def forward(self, {', '.join(self.var[n] for n in inputs)}):"]
        lines += ["        " + line for line in self.body]
        ret = returned[0] if len(returned) == 1 else "(" + ", ".join(returned) + ")"
        lines.append(f"        return {ret}")
        return "\n".join(lines) + "\n"


# -- the emitters, one per Caffe type -----------------------------------------------------------


def _conv(g, i, name, lp, layer, bottoms, tops, args):
    cin = g.shapes[bottoms[0]][1]
    k, s, p, d = tuple(layer.kernel), tuple(layer.stride), tuple(layer.pad), tuple(layer.dilation)
    cls = "nn.ConvTranspose2d" if lp.type == "Deconvolution" else "nn.Conv2d"
    extra = f", dilation={d}" if d != (1, 1) else ""
    if layer.group != 1:
        extra += f", groups={layer.group}"
    ctor = f"{cls}({cin}, {layer.num_output}, {k}, stride={s}, padding={p}{extra}, bias={layer.bias_term})"
    if len(bottoms) != 1:
        raise unexportable_error(name, lp.type, "several bottoms sharing one convolution", deploy_hint=False)
    attr = g.call(i, name, lp, ctor, bottoms, tops, args)
    g.put(attr, "weight", g.blob(i, 0))
    if layer.bias_term:
        g.put(attr, "bias", g.blob(i, 1))


def _pool(g, i, name, lp, layer, bottoms, tops, args):
    shape = g.shapes[bottoms[0]]
    kernel = tuple(shape[2:]) if layer.global_pooling else tuple(layer.kernel)
    stride, pad = tuple(layer.stride), tuple(layer.pad)
    if any(2 * p > k for p, k in zip(pad, kernel)):
        raise unexportable_error(name, lp.type, f"pad {pad} larger than half the kernel {kernel}", deploy_hint=False)
    ceil = bool(layer.ceil)
    if layer.method == 0:
        ctor = f"nn.MaxPool2d({kernel}, stride={stride}, padding={pad}, ceil_mode={ceil})"
    else:
        ctor = f"nn.AvgPool2d({kernel}, stride={stride}, padding={pad}, ceil_mode={ceil}, count_include_pad=True)"
    if layer.global_pooling:
        ctor += f"  # global pooling over the bottom's {shape[2]}x{shape[3]}"
    g.call(i, name, lp, ctor, bottoms, tops, args)


def _batchnorm(g, i, name, lp, layer, bottoms, tops, args):
    channels = layer.channels
    fold = None
    if g.fold_bn:
        # the next layer reading this top is a one-bottom per-channel Scale on it
        readers = [k for k in range(i + 1, len(g.layer_names)) if tops[0] in g.bottoms[g.layer_names[k]]]
        if readers and g.types[readers[0]] == "Scale":
            k = readers[0]
            sc = g.net.layers[k]
            ok = (len(g.bottoms[g.layer_names[k]]) == 1 and sc.axis == 1 and tuple(sc.operand_shape) == (channels,)
                  and (len(readers) == 1 or g.tops[g.layer_names[k]][0] == tops[0]))
            fold = k if ok else None
    ctor = f"{g.helper('CaffeBatchNorm')}({channels}, eps={layer.eps!r}, use_global_stats={layer.use_global_stats}"
    ctor += ", affine=True)" if fold is not None else ")"
    if fold is not None:
        k = fold
        sc_name = g.layer_names[k]
        attr = g.new_attr(name, ctor, g.tops[sc_name])
        g.assign(g.tops[sc_name], bottoms, f"self.{attr}({args})", f"{name} (BatchNorm) + {sc_name} (Scale), folded")
        g.var.setdefault(tops[0], g.var[g.tops[sc_name][0]])
        g.folded[k] = attr
        sc = g.net.layers[k]
        g.put(attr, "weight", g.blob(k, 0))
        if sc.bias_term:
            g.put(attr, "bias", g.blob(k, sc.bias_index))
        else:
            g.put(attr, "bias", np.zeros(channels, np.float32))
    else:
        attr = g.call(i, name, lp, ctor, bottoms, tops, args)
    g.put(attr, "mean", g.blob(i, 0))
    g.put(attr, "variance", g.blob(i, 1))
    g.put(attr, "scale_factor", g.blob(i, 2))


def _scale(g, i, name, lp, layer, bottoms, tops, args):
    shape = tuple(layer.operand_shape)
    two = layer.two_bottoms
    ndim = len(g.shapes[bottoms[0]])
    ctor = (f"{g.helper('CaffeScale')}({shape}, axis={layer.axis}, ndim={ndim}, bias_term={layer.bias_term}, "
            f"learned_scale={not two})")
    attr = g.call(i, name, lp, ctor, bottoms, tops, args)
    if not two:
        g.put(attr, "weight", g.blob(i, 0))
    if layer.bias_term:
        g.put(attr, "bias", g.blob(i, layer.bias_index))


def _bias(g, i, name, lp, layer, bottoms, tops, args):
    two = layer.two_bottoms
    ndim = len(g.shapes[bottoms[0]])
    ctor = f"{g.helper('CaffeBias')}({tuple(layer.operand_shape)}, axis={layer.axis}, ndim={ndim}, learned={not two})"
    attr = g.call(i, name, lp, ctor, bottoms, tops, args)
    if not two:
        g.put(attr, "bias", g.blob(i, 0))


def _relu(g, i, name, lp, layer, bottoms, tops, args):
    slope = layer.negative_slope
    inplace = False
    if tops[0] == bottoms[0]:
        k = g.producer(bottoms[0], i)
        if k is not None and g.types[k] in _INPLACE_SAFE_PRODUCERS and bottoms[0] not in g.net.inputs:
            # nothing but this ReLU reads the producer's value
            readers = [j for j in range(k + 1, i) if bottoms[0] in g.bottoms[g.layer_names[j]]]
            inplace = not readers
    flag = ", inplace=True" if inplace else ""
    ctor = f"nn.ReLU({flag[2:]})" if slope == 0.0 else f"nn.LeakyReLU({slope!r}{flag})"
    g.call(i, name, lp, ctor, bottoms, tops, args)


def _simple(ctor):
    def emit(g, i, name, lp, layer, bottoms, tops, args):
        g.call(i, name, lp, ctor(g, layer, bottoms), bottoms, tops, args)
    return emit


def _prelu(g, i, name, lp, layer, bottoms, tops, args):
    attr = g.call(i, name, lp, f"{g.helper('CaffePReLU')}({g.net.params[name][0].data.size})", bottoms, tops, args)
    g.put(attr, "weight", g.blob(i, 0))


def _lrn(g, i, name, lp, layer, bottoms, tops, args):
    ctor = (f"{g.helper('CaffeLRN')}({layer.size}, alpha={layer.alpha!r}, beta={layer.beta!r}, k={layer.k!r}, "
            f"across_channels={layer.region == 0})")
    g.call(i, name, lp, ctor, bottoms, tops, args)


def _normalization(g, i, name, lp, layer, bottoms, tops, args):
    if layer.norm == 2:
        ctor = f"{g.helper('CaffeL2Normalize')}(eps={layer.eps!r})"
    else:
        ctor = f"{g.helper('CaffeL1BatchNormalize')}()"
    g.call(i, name, lp, ctor, bottoms, tops, args)


def _inner_product(g, i, name, lp, layer, bottoms, tops, args):
    ctor = (f"{g.helper('CaffeInnerProduct')}({layer.k}, {layer.num_output}, bias={layer.bias_term}, "
            f"axis={layer.axis})")
    attr = g.call(i, name, lp, ctor, bottoms, tops, args)
    w = g.blob(i, 0)
    g.put(attr, "weight", w.T if layer.transpose else w)
    if layer.bias_term:
        g.put(attr, "bias", g.blob(i, 1))


def _eltwise(g, i, name, lp, layer, bottoms, tops, args):
    op = {0: "PROD", 1: "SUM", 2: "MAX"}[layer.op]
    coeffs = [float(c) for c in layer.coeffs]
    g.call(i, name, lp, f"{g.helper('CaffeEltwise')}({op!r}, {coeffs!r})", bottoms, tops, args)


def _alias(g, i, name, lp, layer, bottoms, tops, args):
    """Split (every top is the bottom) and Dropout in TEST (identity): no operation."""
    if lp.type == "Dropout" and layer.train_phase:
        g.call(i, name, lp, f"nn.Dropout({layer.ratio!r})", bottoms, tops, args)
        return
    if lp.type == "Dropout" and not (layer.scale_train or layer.ratio == 0.0):
        g.call(i, name, lp, f"{g.helper('CaffePower')}(1.0, {1.0 - layer.ratio!r}, 0.0)", bottoms, tops, args)
        return
    src = g.var[bottoms[0]]
    what = "identity in TEST" if lp.type == "Dropout" else "every top is the bottom"
    for t in tops:
        if t != bottoms[0]:
            g.var[t] = g.var_names.make(t)
    targets = [g.var[t] for t in tops if t != bottoms[0]]
    if targets:
        g.body.append(f"{' = '.join(targets)} = {src}  # {name} ({lp.type}): {what}")
    else:
        g.body.append(f"# {name} ({lp.type}): {what}")


def _silence(g, i, name, lp, layer, bottoms, tops, args):
    g.body.append(f"# {name} (Silence): nothing")


def _slice(g, i, name, lp, layer, bottoms, tops, args):
    g.call(i, name, lp, f"{g.helper('CaffeSlice')}({list(layer.sizes)}, axis={layer.axis})", bottoms, tops, args)


def _softmax(g, layer, bottoms):
    return f"nn.Softmax(dim={layer.axis})"


def _concat(g, layer, bottoms):
    return f"{g.helper('CaffeConcat')}(axis={layer.axis})"


def _reshape(g, layer, bottoms):
    return f"{g.helper('CaffeReshape')}({list(layer.dims)}, axis={layer.axis_field}, num_axes={layer.num_axes})"


def _flatten(g, layer, bottoms):
    p = layer.param.flatten_param
    return f"nn.Flatten({int(p.axis)}, {int(p.end_axis)})"


def _power(g, layer, bottoms):
    return f"{g.helper('CaffePower')}({layer.power!r}, {layer.scale!r}, {layer.shift!r})"


_EMITTERS = {
    "Convolution": _conv,
    "Deconvolution": _conv,
    "Pooling": _pool,
    "BatchNorm": _batchnorm,
    "Scale": _scale,
    "Bias": _bias,
    "ReLU": _relu,
    "PReLU": _prelu,
    "Sigmoid": _simple(lambda g, layer, b: "nn.Sigmoid()"),
    "TanH": _simple(lambda g, layer, b: "nn.Tanh()"),
    "ELU": _simple(lambda g, layer, b: f"nn.ELU({layer.alpha!r})"),
    "BNLL": _simple(lambda g, layer, b: "nn.Softplus()"),
    "Power": _simple(_power),
    "LRN": _lrn,
    "Normalization": _normalization,
    "InnerProduct": _inner_product,
    "Eltwise": _eltwise,
    "Concat": _simple(_concat),
    "Softmax": _simple(_softmax),
    "Reshape": _simple(_reshape),
    "Flatten": _simple(_flatten),
    "Slice": _slice,
    "Split": _alias,
    "Dropout": _alias,
    "Silence": _silence,
}


EXPORTABLE_TYPES = frozenset(_EMITTERS) | {"Input"}


def instantiate(generated: GeneratedModule, load_state: bool = True) -> torch.nn.Module:
    """Run the generated source in a fresh module namespace and return its module (weights loaded)."""
    module = types.ModuleType("rll_repro_generated_net")
    exec(compile(generated.source, "<generated net>", "exec"), module.__dict__)
    if not load_state:
        return module.Net().eval()
    with torch.device("meta"):  # no filler work for weights about to be replaced
        model = module.Net()
    model.load_state_dict({k: v.clone() for k, v in generated.state_dict.items()}, assign=True)
    return model.eval()


__all__ = ["EXPORTABLE_TYPES", "GeneratedModule", "generate", "instantiate", "check_exportable_param", "unexportable_error"]

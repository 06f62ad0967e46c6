"""BN-Inception ("GoogLeNet V2") as the RLL and OSM+CAA prototxts spell it, plus their heads.

Every layer the originals write is reproduced with exactly the fields they set (names, blob names,
explicit ``pad: 0``, ``param`` blocks, fillers) and in their order, so the generated nets are
equal to the originals as NetParameter messages (rll SPEC §2.4, §5; osm_caa SPEC §1, §9):

- Convolutions have no bias, xavier weights, ``param {lr_mult: 1 decay_mult: 1}``, and are followed
  by ``<conv>/bn`` (BatchNorm, no parameters given), ``<conv>/bn/sc`` (Scale with bias) and the
  in-place ReLU ``<conv>/bn/sc/relu``. 71 convolutions in a train net, 73 BN/Scale/ReLU triples
  (the two hidden FCs ``loss1/fc``, ``loss2/fc`` have them too).
- Modules 3c and 4e are the stride-2 reductions (no 1x1 and no pool projection; MAX pool 3/2).
- The RLL train nets append the heads H (on inception_5b), L (on 3c), M (on 4e), in that order, each
  Reshape -> Normalization(L2) -> DistanceWeightedValidPairLossV12; the OSM+CAA nets interleave a
  weighted-softmax classifier head after 3c, 4e and 5b and end with the metric losses.
"""
from __future__ import annotations

from typing import Callable, Sequence

from .netspec import NetBuilder, param

XAVIER = {"type": "xavier"}
# (name, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool type, pool projection)
# A 1x1 of None marks a stride-2 reduction module (3c, 4e).
INCEPTION_MODULES = (
    ("3a", 64, 64, 64, 64, 96, "AVE", 32),
    ("3b", 64, 64, 96, 64, 96, "AVE", 64),
    ("3c", None, 128, 160, 64, 96, "MAX", None),
    ("4a", 224, 64, 96, 96, 128, "AVE", 128),
    ("4b", 192, 96, 128, 96, 128, "AVE", 128),
    ("4c", 160, 128, 160, 128, 160, "AVE", 96),
    ("4d", 96, 128, 192, 160, 192, "AVE", 96),
    ("4e", None, 128, 192, 192, 256, "MAX", None),
    ("5a", 352, 192, 320, 160, 224, "AVE", 128),
    ("5b", 352, 192, 320, 192, 224, "MAX", 128),
)


# --------------------------------------------------------------------------------------- blocks

def bn_scale_relu(b: NetBuilder, x: str) -> str:
    """``x/bn`` (BatchNorm), ``x/bn/sc`` (Scale, bias), ``x/bn/sc/relu`` (in place); returns ``x/bn/sc``."""
    b.add(f"{x}/bn", "BatchNorm", [x], [f"{x}/bn"])
    b.add(f"{x}/bn/sc", "Scale", [f"{x}/bn"], [f"{x}/bn/sc"], scale_param={"bias_term": True})
    b.add(f"{x}/bn/sc/relu", "ReLU", [f"{x}/bn/sc"], [f"{x}/bn/sc"])
    return f"{x}/bn/sc"


def conv_bn(b: NetBuilder, name: str, bottom: str, num_output: int, kernel: int = 1,
            pad: int = 0, stride: int = 1) -> str:
    """Convolution (no bias, xavier, lr/decay 1) + BN + Scale + ReLU; returns ``name/bn/sc``."""
    b.add(name, "Convolution", [bottom], [name], param=[param(1, 1)],
          convolution_param={"num_output": num_output, "pad": [pad], "kernel_size": [kernel],
                             "stride": [stride], "weight_filler": XAVIER, "bias_term": False})
    return bn_scale_relu(b, name)


def fc(b: NetBuilder, name: str, bottom: str, num_output: int, lr_mult: float | None,
       top: str | None = None) -> str:
    """InnerProduct without bias (xavier); ``lr_mult=None`` writes no ``param`` block."""
    fields = {"param": [param(lr_mult, 1)]} if lr_mult is not None else {}
    return b.add(name, "InnerProduct", [bottom], [top or name],
                 inner_product_param={"num_output": num_output, "weight_filler": XAVIER,
                                      "bias_term": False}, **fields)


def pool(b: NetBuilder, name: str, bottom: str, kind: str, kernel: int, stride: int,
         pad: int | None = None) -> str:
    fields = {"pool": kind, "kernel_size": kernel, "stride": stride}
    if pad is not None:
        fields["pad"] = pad
    return b.add(name, "Pooling", [bottom], [name], pooling_param=fields)


def inception(b: NetBuilder, spec, bottom: str) -> str:
    """One BN-Inception module; returns ``inception_<n>/output``."""
    n, n1, n3r, n3, nd3r, nd3, pool_kind, npp = spec
    p = f"inception_{n}"
    reduction = n1 is None
    stride = 2 if reduction else 1
    branches = []
    if not reduction:
        branches.append(conv_bn(b, f"{p}/1x1", bottom, n1))
    x = conv_bn(b, f"{p}/3x3_reduce", bottom, n3r)
    branches.append(conv_bn(b, f"{p}/3x3", x, n3, kernel=3, pad=1, stride=stride))
    x = conv_bn(b, f"{p}/double3x3_reduce", bottom, nd3r)
    x = conv_bn(b, f"{p}/double3x3a", x, nd3, kernel=3, pad=1)
    branches.append(conv_bn(b, f"{p}/double3x3b", x, nd3, kernel=3, pad=1, stride=stride))
    if reduction:
        branches.append(pool(b, f"{p}/pool", bottom, pool_kind, 3, 2))
    else:
        x = pool(b, f"{p}/pool", bottom, pool_kind, 3, 1, pad=1)
        branches.append(conv_bn(b, f"{p}/pool_proj", x, npp))
    return b.add(f"{p}/output", "Concat", branches, [f"{p}/output"])


def backbone(b: NetBuilder, after: dict[str, Callable[[str], None]] | None = None,
             stop_after: str = "5b") -> str:
    """Stem + inception modules from ``data`` up to ``inception_<stop_after>/output``.

    ``after[module](output_blob)`` is called right after that module (where the OSM+CAA nets put
    their auxiliary heads). Returns the last output blob.
    """
    after = after or {}
    x = conv_bn(b, "conv1/7x7_s2", "data", 64, kernel=7, pad=3, stride=2)
    x = pool(b, "pool1/3x3_s2", x, "MAX", 3, 2)
    x = conv_bn(b, "conv2/3x3_reduce", x, 64)
    x = conv_bn(b, "conv2/3x3", x, 192, kernel=3, pad=1)
    x = pool(b, "pool2/3x3_s2", x, "MAX", 3, 2)
    for spec in INCEPTION_MODULES:
        x = inception(b, spec, x)
        if spec[0] in after:
            after[spec[0]](x)
        if spec[0] == stop_after:
            break
    return x


def aux_trunk(b: NetBuilder, level: int, bottom: str) -> str:
    """The auxiliary trunk of level 1 (on 3c) or 2 (on 4e): AVE pool 5/3, 1x1 conv 128, FC 1024.

    Returns ``loss<level>/fc/bn/sc`` (post-ReLU, 1024-d).
    """
    x = pool(b, f"pool{level + 2}/5x5_s3", bottom, "AVE", 5, 3)
    x = conv_bn(b, f"loss{level}/conv", x, 128)
    fc(b, f"loss{level}/fc", x, 1024, lr_mult=1)
    return bn_scale_relu(b, f"loss{level}/fc")


def reshape_nc11(b: NetBuilder, name: str, bottom: str, top: str | None = None) -> str:
    return b.add(name, "Reshape", [bottom], [top or name],
                 reshape_param={"shape": {"dim": [0, 0, 1, 1]}})


def normalization(b: NetBuilder, name: str, bottom: str, norm: str) -> str:
    return b.add(name, "Normalization", [bottom], [name], normalization_param={"norm": norm})


# ----------------------------------------------------------------------------------------- RLL

RLL_HEADS = ("H", "L", "M")
# Per head: (level of the auxiliary trunk or None for H, embedding FC, its deploy top, loss layer,
# L2-normalised blob, reshape layer, dropout layer)
_RLL_HEAD = {
    "H": (None, "pool5/7x7_s1/fc", "pool5/fc", "WSiamese/loss_image", "features/L2Norm",
          "pool5/7x7_s1/reshape", "drop_H"),
    "L": (1, "loss1/fc/bn/sc/fc", "loss1/fc/bn/sc/fc", "WSiamese/loss_image1",
          "loss1/fc/bn/sc/fc/L2Norm", "loss1/fc/bn/sc/fc/reshape", "drop_L"),
    "M": (2, "loss2/fc/bn/sc/fc", "loss2/fc/bn/sc/fc", "WSiamese/loss_image2",
          "loss2/fc/bn/sc/fc/L2Norm", "loss2/fc/bn/sc/fc/reshape", "drop_M"),
}
_TAP = {1: "inception_3c/output", 2: "inception_4e/output", None: "inception_5b/output"}


def _rll_head_input(b: NetBuilder, head: str) -> str:
    level = _RLL_HEAD[head][0]
    if level is None:
        return pool(b, "pool5/7x7_s1/pre_fc", _TAP[None], "AVE", 7, 1)
    return aux_trunk(b, level, _TAP[level])


def rll_train_net(batch: int, dim: int, pn_margin: float, t_p: float, t_n: float,
                  dropout: bool, input_size: int = 227) -> NetBuilder:
    """The RLL train net: backbone, then heads H, L, M each ending in a V12 RLL loss (weight 1).

    ``dropout`` inserts the in-place ``drop_{H,L,M}`` (ratio 0.0, an identity) before each
    embedding FC, as the SOP net does. The embedding FCs have lr_mult 10.
    """
    b = NetBuilder("GoogleNet")
    b.legacy_input("data", (batch, 3, input_size, input_size))
    b.legacy_input("label", (batch, 1, 1, 1))
    backbone(b)
    for head in RLL_HEADS:
        _level, emb, _deploy_top, loss, l2, reshape, drop = _RLL_HEAD[head]
        x = _rll_head_input(b, head)
        if dropout:
            b.add(drop, "Dropout", [x], [x], dropout_param={"dropout_ratio": 0.0})
        x = fc(b, emb, x, dim, lr_mult=10)
        x = reshape_nc11(b, reshape, x)
        x = normalization(b, l2, x, "L2")
        b.add(loss, "DistanceWeightedValidPairLossV12", [x, "label"], [loss], loss_weight=[1],
              contrastive_loss_param_v2={"pn_margin": pn_margin},
              softmax_t_p_param={"scale": t_p}, softmax_t_n_param={"scale": t_n},
              propagate_down=[True, False])
    return b


def rll_deploy_net(dim: int, heads: Sequence[str], input_size: int) -> NetBuilder:
    """A RLL deploy net whose blob ``pool5/7x7_s1`` is the raw embedding of ``heads``.

    As in the originals: an H-only deploy stops after the H FC (whose top is then
    ``pool5/7x7_s1``); every other deploy keeps all three heads' FCs and ends with the Concat
    ``features_concat`` of the chosen raw FC outputs in the given order (rll SPEC §5). The H FC has
    no ``param`` block in the deploys; the L/M embedding FCs keep theirs (lr_mult 10).
    """
    b = NetBuilder("GoogleNet")
    b.legacy_input("data", (1, 3, input_size, input_size))
    backbone(b)
    h_only = tuple(heads) == ("H",)
    x = _rll_head_input(b, "H")
    fc(b, _RLL_HEAD["H"][1], x, dim, lr_mult=None, top="pool5/7x7_s1" if h_only else "pool5/fc")
    if h_only:
        return b
    for head in ("L", "M"):
        x = _rll_head_input(b, head)
        fc(b, _RLL_HEAD[head][1], x, dim, lr_mult=10)
    b.add("features_concat", "Concat", [_RLL_HEAD[h][2] for h in heads], ["pool5/7x7_s1"])
    return b


# ------------------------------------------------------------------------------------- OSM+CAA

def _classifier_head(b: NetBuilder, bottom: str, num_classes: int, label: str, classifier: str,
                     prob: str, extracted: str, loss: str, param_names=(None, None)) -> str:
    """Classifier -> Softmax -> ExtractProb -> Gaussian(0.5, 0.18) -> L1 -> WeightedSoftmaxWithLoss.

    Returns the ExtractProb blob (the ground-truth probability the CAA attention reads).
    """
    w, bias = param_names
    b.add(classifier, "InnerProduct", [bottom], [classifier],
          param=[param(1, 1, name=w), param(2, 0, name=bias)],
          inner_product_param={"num_output": num_classes, "weight_filler": XAVIER,
                               "bias_filler": {"type": "constant", "value": 0}})
    b.add(prob, "Softmax", [classifier], [prob])
    b.add(extracted, "ExtractProb", [prob, label], [extracted], propagate_down=[False, False])
    gauss = f"gaussian/{extracted}"
    b.add(gauss, "Gaussian", [extracted], [gauss], gaussian_param={"sigma": 0.18, "mean": 0.5},
          propagate_down=[False])
    weights = normalization(b, f"l1_norm/{extracted}", gauss, "L1")
    b.add(loss, "WeightedSoftmaxWithLoss", [classifier, label, weights], [loss], loss_weight=[1],
          propagate_down=[True, False, False])
    return extracted


def _caa(b: NetBuilder, name: str, prob: str) -> str:
    """Class-aware attention: Gaussian(mean 1.0, sigma 0.68) of the ground-truth probability."""
    return b.add(name, "Gaussian", [prob], [name], gaussian_param={"sigma": 0.68, "mean": 1.0},
                 propagate_down=[False])


def _osm_loss(b: NetBuilder, name: str, feature: str, label: str, attention: str,
              osm_sigma: float) -> str:
    return b.add(name, "DistanceWeightedValidPairLossV5", [feature, label, attention], [name],
                 loss_weight=[1], contrastive_loss_param={"margin": 1.2},
                 gaussian_param={"sigma": osm_sigma, "mean": 0.0},
                 propagate_down=[True, False, False])


def osm_train_net(batch: int, num_classes: int, osm_sigma: float,
                  tracklets: int | None = None) -> NetBuilder:
    """The OSM+CAA train net (CARS196/CUB, or MARS/LPW when ``tracklets`` is given).

    Three weighted-softmax heads (after 3c, 4e, 5b), the image-level OSM+CAA loss on the
    L2-normalised post-ReLU ``loss2/fc/bn/sc``, and for video the tracklet branch: Slice into
    ``tracklets`` groups, attention-weighted BatchPool, a fourth classifier and a tracklet-level
    OSM+CAA loss (osm_caa SPEC §1, §9).
    """
    b = NetBuilder("GoogleNet")
    b.legacy_input("data", (batch, 3, 224, 224))
    b.legacy_input("label", (batch, 1, 1, 1))
    if tracklets:
        b.legacy_input("tracklet_label", (tracklets, 1, 1, 1))
    b.legacy_input("image_attention", (batch, 1, 1, 1))
    if tracklets:
        b.legacy_input("tracklet_attention", (tracklets, 1, 1, 1))

    def head(level: int, names=(None, None)):
        def build(tap: str) -> None:
            x = aux_trunk(b, level, tap)
            _classifier_head(b, x, num_classes, "label", f"loss{level}/classifier_1",
                             f"loss{level}/prob", f"prob{level}", f"loss{level}/loss", names)
        return build

    x = backbone(b, after={"3c": head(1), "4e": head(2, ("ip_w2", "ip_b2"))})
    x = pool(b, "pool5/7x7_s1", x, "AVE", 7, 1)
    prob3 = _classifier_head(b, x, num_classes, "label", "loss3/classifier_1", "loss3/prob",
                             "prob3", "loss3/loss", ("ip_w", "ip_b"))
    if not tracklets:
        feat = reshape_nc11(b, "loss2/fc/bn/sc_reshape", "loss2/fc/bn/sc")
        feat = normalization(b, "middle_I_feature/L2Norm", feat, "L2")
        att = _caa(b, "attention/prob3", prob3)
        _osm_loss(b, "WSiamese/loss_image", feat, "label", att, osm_sigma)
        return b

    att = _caa(b, "attention/prob3", prob3)
    frames = reshape_nc11(b, "loss2/fc/bn/sc_reshape", "loss2/fc/bn/sc")
    idx = range(1, tracklets + 1)
    b.add("slice_data", "Slice", [frames], [f"data{i}" for i in idx], slice_param={"axis": 0})
    b.add("slice_attention", "Slice", [att], [f"attention_{i}" for i in idx],
          slice_param={"axis": 0})
    for i in idx:
        normalization(b, f"attention_{i}/l1_norm", f"attention_{i}", "L1")
    for i in idx:
        b.add(f"feature{i}", "BatchPool", [f"data{i}", f"attention_{i}/l1_norm"], [f"feature{i}"],
              propagate_down=[True, False])
    track = b.add("tracklet_feature", "Concat", [f"feature{i}" for i in idx],
                  ["tracklet_feature"], concat_param={"axis": 0})
    prob4 = _classifier_head(b, track, num_classes, "tracklet_label",
                             "tracklet_feature/classifier", "tracklet/prob", "prob4",
                             "tracklet/loss", ("ip_w_tracklet", "ip_b_tracklet"))
    track = normalization(b, "tracklet_feature/L2Norm", track, "L2")
    att4 = _caa(b, "attention/prob4", prob4)
    _osm_loss(b, "WSiamese/loss_tracklet", track, "tracklet_label", att4, osm_sigma)
    feat = normalization(b, "middle_I_feature/L2Norm", frames, "L2")
    _osm_loss(b, "WSiamese/loss_image", feat, "label", att, osm_sigma)
    return b


def osm_test_net() -> NetBuilder:
    """``test_M``: trunk to ``loss2/fc/bn/sc`` (1024-d, post-ReLU), reshaped into ``pool5/7x7_s1``."""
    b = NetBuilder("GoogleNet")
    b.legacy_input("data", (1, 3, 224, 224))
    x = backbone(b, stop_after="4e")
    x = aux_trunk(b, 2, x)
    reshape_nc11(b, "middle_representation", x, top="pool5/7x7_s1")
    return b

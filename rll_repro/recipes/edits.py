"""Field edits on built nets and solvers, and the field-level diff that proves what an edit changed.

The CVPR-era recipes (:mod:`.rll`) and the ablation knobs (:mod:`.ablations`) derive their
prototxts from a released one by changing named fields of the parsed message, never by copying
text; :func:`field_diff` lists the fields two messages differ in, so a test can require that a
derived file differs from its base in exactly the fields its edit names.

Field paths: ``layer[<name>].<sub>.<field>`` for a layer's field, ``input_dim[<i>]`` for one
element of a repeated scalar, ``<field>`` for a top-level one.
"""
from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from rll_repro.errors import RLLReproError

V12_TYPE = "DistanceWeightedValidPairLossV12"
"""The released RLL layer (rll SPEC §1.1-1.4): boundaries hard-coded 1 -/+ pn_margin/2."""
CVPR19_TYPE = "DistanceWeightedValidPairLossV12CVPR19"
"""The port's type string for the CVPR-era layer (SPEC §1.5; in Caffe it had the same V12 type
string): boundaries ``margin - pn_margin`` and ``margin``, ``margin`` being field 1 of
``contrastive_loss_param_v2`` (named ``negative_threshold`` in the released schema)."""
RLL_LOSS_TYPES = (V12_TYPE, CVPR19_TYPE)
EMBEDDING_FCS = ("pool5/7x7_s1/fc", "loss1/fc/bn/sc/fc", "loss2/fc/bn/sc/fc")
"""The three D-dimensional embedding InnerProducts (heads H, L, M) of the RLL train nets."""


class RecipeError(RLLReproError):
    """A recipe edit or an ablation knob that cannot be applied (one line, exit code 2)."""


def copy(msg):
    out = msg.__class__()
    out.CopyFrom(msg)
    return out


def rll_losses(net) -> list:
    """The RLL loss layers of a train net, in file order."""
    return [layer for layer in net.layer if layer.type in RLL_LOSS_TYPES]


def loss_type(net, where: str = "the train net") -> str:
    """The one RLL loss type of ``net`` (a RecipeError if it has none or mixes the two eras)."""
    types = {layer.type for layer in rll_losses(net)}
    if len(types) != 1:
        raise RecipeError(f"{where}: expected RLL loss layers of one type ({' or '.join(RLL_LOSS_TYPES)}), "
                          f"found {sorted(types) or 'none'}")
    return types.pop()


def _walk(msg, dotted: str):
    """(parent message, field name) of a dotted path such as ``softmax_t_n_param.scale``."""
    *parents, last = dotted.split(".")
    for name in parents:
        msg = getattr(msg, name)
    return msg, last


def set_field(msg, dotted: str, value) -> None:
    parent, name = _walk(msg, dotted)
    setattr(parent, name, value)


def get_field(msg, dotted: str):
    """The field's value (its proto default when unset)."""
    parent, name = _walk(msg, dotted)
    return getattr(parent, name)


def set_loss_field(net, dotted: str, value) -> None:
    """Set ``dotted`` (e.g. ``contrastive_loss_param_v2.pn_margin``) on every RLL loss layer."""
    for layer in rll_losses(net):
        set_field(layer, dotted, value)


def set_loss_type(net, type_: str) -> None:
    for layer in rll_losses(net):
        layer.type = type_


def set_batch(net, batch: int) -> None:
    """The train net's batch: ``input_dim[0]`` (data) and ``input_dim[4]`` (label), the legacy
    ``input:``/``input_dim:`` form every RLL train prototxt uses."""
    if list(net.input[:2]) != ["data", "label"] or len(net.input_dim) < 8:
        raise RecipeError("the train net must declare legacy inputs data, label (input_dim x 4 each)")
    net.input_dim[0] = int(batch)
    net.input_dim[4] = int(batch)


def set_lr_mult(net, layer_names, lr_mult: float) -> None:
    """``param[0].lr_mult`` of the named layers (each must exist and have one param block)."""
    by_name = {layer.name: layer for layer in net.layer}
    for name in layer_names:
        layer = by_name.get(name)
        if layer is None or len(layer.param) != 1:
            raise RecipeError(f"layer {name!r}: expected one param block to set lr_mult on")
        layer.param[0].lr_mult = lr_mult


def field_diff(a, b, prefix: str = "") -> list[str]:
    """Field paths in which messages ``a`` and ``b`` differ (presence-sensitive, as proto2 ``==``).

    Layers are matched by position and named by ``a``'s layer name; a different layer count is
    one ``layer`` entry.
    """
    out: list[str] = []
    for fd in a.DESCRIPTOR.fields:
        name, path = fd.name, prefix + fd.name
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if fd.is_repeated:
            va, vb = getattr(a, name), getattr(b, name)
            if len(va) != len(vb):
                out.append(path)
                continue
            for i, (x, y) in enumerate(zip(va, vb)):
                label = x.name if name == "layer" else str(i)
                if is_message:
                    out += field_diff(x, y, f"{path}[{label}].")
                elif x != y:
                    out.append(f"{path}[{label}]")
        elif is_message:
            has_a, has_b = a.HasField(name), b.HasField(name)
            if has_a != has_b:
                out.append(path)
            elif has_a:
                out += field_diff(getattr(a, name), getattr(b, name), path + ".")
        else:
            has_a, has_b = a.HasField(name), b.HasField(name)
            if has_a != has_b or getattr(a, name) != getattr(b, name):
                out.append(path)
    return out

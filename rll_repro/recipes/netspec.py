"""A tiny NetSpec-like builder: layers appended in prototxt order to a ``caffe_pb2.NetParameter``.

Unlike pycaffe's NetSpec, nothing is implied: only the fields a recipe names are set, because a
proto2 message remembers which fields were written (``pad: 0`` set explicitly is not equal to
``pad`` left unset). That is what lets the recipes reproduce the original prototxts message for
message (``tests/test_recipes_equivalence.py``).

Field values follow the text format: a dict is a sub-message, a list of dicts a repeated message, a
list of scalars a repeated scalar, and a string given to an enum field is the enum value's name
(``pool="MAX"``, ``norm="L2"``).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from google.protobuf import text_encoding, text_format
from google.protobuf.descriptor import FieldDescriptor

from rll_repro.caffe import caffe_pb2


def _set_fields(msg, fields: dict[str, Any]) -> None:
    """Assign ``fields`` (text-format-shaped Python values) onto the proto2 message ``msg``."""
    descriptor = msg.DESCRIPTOR
    for key, value in fields.items():
        if value is None:
            continue
        field = descriptor.fields_by_name.get(key)
        if field is None:
            raise KeyError(f"{descriptor.full_name} has no field {key!r}")
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if repeated:
                container = getattr(msg, key)
                for item in value:
                    _set_fields(container.add(), item)
            else:
                sub = getattr(msg, key)
                sub.SetInParent()  # an empty message given as {} is still "present"
                _set_fields(sub, value)
            continue
        values = list(value) if repeated else [value]
        if field.type == FieldDescriptor.TYPE_ENUM:
            values = [field.enum_type.values_by_name[v].number if isinstance(v, str) else v
                      for v in values]
        if repeated:
            getattr(msg, key).extend(values)
        else:
            setattr(msg, key, values[0])


def message(cls, **fields):
    """``cls`` instance with ``fields`` set as the text format would set them."""
    msg = cls()
    _set_fields(msg, fields)
    return msg


def param(lr_mult: float, decay_mult: float, name: str | None = None) -> dict:
    """One ``param { [name] lr_mult decay_mult }`` block (ParamSpec)."""
    spec = {"name": name} if name is not None else {}
    spec.update(lr_mult=lr_mult, decay_mult=decay_mult)
    return spec


class NetBuilder:
    """Append layers to a NetParameter in order; ``net`` holds the result."""

    def __init__(self, name: str):
        self.net = caffe_pb2.NetParameter(name=name)

    def legacy_input(self, blob: str, dims: Sequence[int]) -> None:
        """An old-style ``input: blob`` + four ``input_dim`` lines (the originals use these)."""
        self.net.input.append(blob)
        self.net.input_dim.extend(int(d) for d in dims)

    def add(self, name: str, type_: str, bottom: Iterable[str] = (), top: Iterable[str] = (),
            **fields) -> str:
        """Append one layer; returns its first top (or its name if it has none)."""
        layer = self.net.layer.add()
        layer.name = name
        layer.type = type_
        layer.bottom.extend(bottom)
        layer.top.extend(top)
        _set_fields(layer, fields)
        return layer.top[0] if layer.top else name

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.net.layer]


def render(msg, header: Sequence[str] = ()) -> str:
    """Text-format ``msg`` (protobuf's printer) preceded by ``# header`` comment lines.

    Two readability tweaks that do not change the parsed message: a net's legacy inputs are
    printed as the originals write them (each ``input`` followed by its four ``input_dim``), and a
    solver's ``net`` comes first.
    """
    lines = [f"# {line}".rstrip() for line in header]
    body = msg.__class__()
    body.CopyFrom(msg)
    if isinstance(msg, caffe_pb2.NetParameter) and msg.input and len(msg.input_dim) == 4 * len(msg.input):
        if msg.HasField("name"):
            lines.append(f"name: {_quote(msg.name)}")
        for i, blob in enumerate(msg.input):
            lines.append(f"input: {_quote(blob)}")
            lines += [f"input_dim: {d}" for d in msg.input_dim[4 * i:4 * i + 4]]
        for name in ("name", "input", "input_dim"):
            body.ClearField(name)
    elif isinstance(msg, caffe_pb2.SolverParameter) and msg.HasField("net"):
        lines.append(f"net: {_quote(msg.net)}")
        body.ClearField("net")
    return "\n".join(lines) + ("\n" if lines else "") + text_format.MessageToString(body)


def _quote(text: str) -> str:
    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def solver(**fields):
    """A SolverParameter with exactly ``fields`` set (field names as in the text format)."""
    return message(caffe_pb2.SolverParameter, **fields)

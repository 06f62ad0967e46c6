"""Caffe type string -> layer class.

Every module in :mod:`rll_repro.layers` registers its classes with :func:`register`; adding a layer
type is one new file. The net builder only ever calls :func:`layer_class`.
"""
from __future__ import annotations

import importlib
import pkgutil

from rll_repro.errors import NetError

_REGISTRY: dict[str, type] = {}
_BROKEN: dict[str, str] = {}  # module name -> why it could not be imported
_loaded = False


def register(cls):
    """Class decorator: register ``cls`` under each of its ``type_names``."""
    for name in cls.type_names:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"layer type {name!r} registered twice ({_REGISTRY[name]} and {cls})")
        _REGISTRY[name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import rll_repro.layers as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry"):
            try:
                importlib.import_module(f"rll_repro.layers.{info.name}")
            except Exception as exc:  # one broken module must not take every other layer type down
                _BROKEN[info.name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    _loaded = True


def supported_types() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def layer_class(type_name: str, layer_name: str = "?"):
    """The class implementing Caffe type ``type_name``; NetError naming the layer if unknown."""
    _load_all()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        broken = "".join(f"; module layers/{name}.py failed to import ({why})" for name, why in _BROKEN.items())
        raise NetError(
            f"layer {layer_name!r}: unknown layer type {type_name!r}; supported types: "
            + ", ".join(supported_types())
            + broken
        ) from None

"""PyTorch ports of the Caffe layers, one module per family, found by type string (registry.py)."""
from rll_repro.layers.base import BuildContext, Dialect, DIALECTS, Layer
from rll_repro.layers.registry import layer_class, register, supported_types

__all__ = ["BuildContext", "Dialect", "DIALECTS", "Layer", "layer_class", "register", "supported_types"]

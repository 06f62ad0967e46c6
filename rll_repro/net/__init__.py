"""The net: a NetParameter becomes a blob-name DAG of layer modules on one device.

- :mod:`~rll_repro.net.plan`: layer filtering by NetState, the blob graph, in-place and alias rules.
- :mod:`~rll_repro.net.params`: the learnable blobs (sharing, lr/decay multipliers).
- :mod:`~rll_repro.net.engine`: the run on tensors (``net(**tensors)``), autograd backward.
- :mod:`~rll_repro.net.pycaffe`: pycaffe's numpy ``blobs``/``params``/``forward``/``backward``.
- :mod:`~rll_repro.net.weights`: ``copy_from``/``save`` (caffemodels).
- :mod:`~rll_repro.net.net`: :class:`Net`, which puts them together.
"""
from rll_repro.net.net import Net
from rll_repro.net.plan import PHASES, TEST, TRAIN, filter_layers, load_net_param, pick_dialect, state_meets_rule
from rll_repro.net.pycaffe import Blob, ParamBlob
from rll_repro.net.weights import blob_shape_equals, describe_blob_shape

__all__ = ["Net", "Blob", "ParamBlob", "PHASES", "TRAIN", "TEST", "filter_layers", "load_net_param",
           "pick_dialect", "state_meets_rule", "blob_shape_equals", "describe_blob_shape"]

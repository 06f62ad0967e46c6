"""Data: the original .mat lists, samplers, MATLAB-exact preprocessing and DataLoader pipelines.

Modules (one concept each):

* :mod:`~rll_repro.data.lists` — read the original lists (SOP, In-shop, Market-1501, OSM CUB/CARS
  data cells, MARS/LPW tracklets) from v5 or v7.3 .mat files, remap paths with ``data_root``.
* :mod:`~rll_repro.data.writers` — build those lists from standard dataset folders
  (``rll-repro make-lists``).
* :mod:`~rll_repro.data.samplers` — the RLL (C x K with epochs over class subsets), OSM+CAA and
  tracklet mini-batch samplers; seeded and resumable.
* :mod:`~rll_repro.data.resize` — MATLAB ``imresize`` (exported here as :func:`imresize`).
* :mod:`~rll_repro.data.transforms` — the scripts' preprocessing to Caffe's BGR mean-subtracted CHW.
* :mod:`~rll_repro.data.loader` — ``make_train_loader`` / ``make_test_loader`` (see its docstring).
"""
from rll_repro.data.resize import imresize

__all__ = ["imresize"]

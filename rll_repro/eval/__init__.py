"""Evaluation with the original test scripts' rules, and the published numbers.

- :mod:`~rll_repro.eval.knn`: L2 normalisation (no epsilon), blocked similarity search in MATLAB's
  stable order (first-hit ranks for Recall@K, top-k neighbours), bounded memory.
- :mod:`~rll_repro.eval.metrics`: SOP / CUB / Cars / In-shop Recall@K, NMI and F1 by k-means,
  Market-1501 (single/multi-query, re-ranking), MARS and LPW.
- :mod:`~rll_repro.eval.extract`: features through a deploy/test net (heads, concatenations), files.
- :mod:`~rll_repro.eval.published`: the papers' and repositories' numbers (package data) by key.
- :mod:`~rll_repro.eval.resultfiles`: parser of the original result files.
- :mod:`~rll_repro.eval.diff`: comparison tables behind ``rll-repro diff``.
"""

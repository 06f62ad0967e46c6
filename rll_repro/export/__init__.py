"""Caffe nets as models that run without rll_repro: standalone PyTorch source (pysource) and ONNX
(onnx), each checked against :class:`rll_repro.Net` (check)."""

"""Data: the original .mat lists (lists), samplers, MATLAB-exact preprocessing (resize, transforms),
DataLoader pipelines (loader) and list writers for standard dataset layouts (writers).

``imresize`` is MATLAB's ``imresize`` (see :mod:`rll_repro.data.resize`).
"""
from rll_repro.data.resize import imresize

__all__ = ["imresize"]

"""rll_repro: an exact PyTorch port of the Caffe code of Ranked List Loss and OSM+CAA.

Public surface (pycaffe names): :class:`Net`, :func:`get_solver`. Everything else lives in the
sub-packages: ``caffe`` (file formats), ``layers``, ``net``, ``solver``, ``losses``, ``matfile``,
``data``, ``eval``.
"""
from __future__ import annotations


def _distribution_version() -> str:
    """The installed distribution's version (pyproject.toml's), "0+unknown" in an uninstalled tree."""
    from importlib import metadata

    try:
        return metadata.version("rll_repro")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _distribution_version()
__all__ = ["Net", "get_solver", "SGDSolver", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import rll_repro` (and the CLI's --help) does not import torch.
    if name == "Net":
        from rll_repro.net import Net

        return Net
    if name in ("get_solver", "SGDSolver"):
        from rll_repro import solver

        return getattr(solver, name)
    raise AttributeError(f"module 'rll_repro' has no attribute {name!r}")

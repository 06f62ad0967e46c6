"""Paper settings: generated prototxts + the data that drives ``rll-repro reproduce SETTING``.

>>> from rll_repro import recipes
>>> recipes.names()            # doctest: +SKIP
['rll-sop', 'rll-inshop', 'rll-market', 'osm-cars', 'osm-cars-bbox', 'osm-cub', ...]
>>> s = recipes.get('rll-sop'); s.train.path, s.batch_size, s.deploy('concat').heads
('prototxt/rll/sop/train.prototxt', 150, ('H', 'L', 'M'))

Modules: :mod:`.settings` (the dataclasses and the registry), :mod:`.rll` and :mod:`.osm_caa` (the
released configurations), :mod:`.bninception` (the nets), :mod:`.netspec` (the builder),
:mod:`.generate` (rendering ``prototxt/``). Engineer F's :mod:`.digits` registers ``digits`` when
present (it calls :func:`register` or defines ``SETTING``). Building a net needs the protobuf
bindings.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .settings import REGISTRY, Deploy, GeneratedFile, Original, Setting, register

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
REPO_ROOT = PACKAGE_ROOT.parent


def _load() -> None:
    from . import rll  # noqa: F401  (registers the RLL settings first)
    from . import osm_caa  # noqa: F401
    from . import baselines  # noqa: F401  (baseline-<loss>-cub / -cars)
    try:
        digits = importlib.import_module(f"{__name__}.digits")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.digits":
            raise
        return
    setting = getattr(digits, "SETTING", None)  # digits.py may call register() itself instead
    if isinstance(setting, Setting) and setting.name not in REGISTRY:
        register(setting)


def get(name: str) -> Setting:
    """The setting called ``name``; an unknown name raises a one-line error listing the known ones."""
    _load()
    if name not in REGISTRY:
        from rll_repro.errors import RLLReproError

        raise RLLReproError(f"unknown setting {name!r}; known settings: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> list[str]:
    _load()
    return list(REGISTRY)


def all_settings() -> list[Setting]:
    _load()
    return list(REGISTRY.values())


def path(rel: str) -> Path:
    """Absolute path of a repository-relative path such as ``setting.train.path``: the checkout's
    file, or in a (non-editable) installed package its copy inside the package (``rll_repro/prototxt``
    is a link to the repository's ``prototxt/``, so the wheel carries every shipped prototxt)."""
    in_repo = REPO_ROOT / rel
    if in_repo.exists():
        return in_repo
    return PACKAGE_ROOT / rel


__all__ = ["Deploy", "GeneratedFile", "Original", "Setting", "all_settings", "get", "names",
           "path", "register", "REGISTRY"]
